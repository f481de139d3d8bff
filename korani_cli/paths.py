"""Where korani keeps its files: config, cache (assembled demo models) and data.

`KORANI_HOME` puts all three under one directory (tests and portable installs);
otherwise the platform's usual places (platformdirs). Read at call time, never
at import, so a test can point it elsewhere.

A `KORANI_HOME` that cannot be a directory (it is a file, or lies under one) is
a config error the moment any path is asked for; a directory korani must write
to is created and checked by `ensure_dir`, so a read-only home is reported
in one line by the command that needs to write there, not by a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from korani_cli.errors import ConfigError

_HOME_FIX = "point KORANI_HOME at a directory korani may write to (it is created if missing), or unset it"


def _home() -> Path | None:
    raw = os.environ.get("KORANI_HOME")
    if not raw:
        return None
    home = Path(raw).expanduser()
    if home.exists() and not home.is_dir():
        raise ConfigError(f"KORANI_HOME={raw} is not a directory", _HOME_FIX)
    for parent in home.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(
                    f"KORANI_HOME={raw} lies under {parent}, which is not a directory", _HOME_FIX
                )
            break
    return home


def config_dir() -> Path:
    home = _home()
    if home:
        return home
    from platformdirs import user_config_dir

    return Path(user_config_dir("korani"))


def cache_dir() -> Path:
    home = _home()
    if home:
        return home / "cache"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("korani"))


def data_dir() -> Path:
    home = _home()
    if home:
        return home / "data"
    from platformdirs import user_data_dir

    return Path(user_data_dir("korani"))


def config_file() -> Path:
    return config_dir() / "config.toml"


def ensure_dir(path: Path) -> Path:
    """Create `path` (and its parents) if needed and check korani may write there."""
    fix = (
        _HOME_FIX
        if os.environ.get("KORANI_HOME")
        else f"check the permissions of {path}, or set KORANI_HOME to a writable directory"
    )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is not a directory", fix)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {path} ({exc.strerror})", fix) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{path} is not writable", fix)
    return path
