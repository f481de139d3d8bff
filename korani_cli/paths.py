"""Where korani keeps its files: config, cache (assembled demo models) and data.

`KORANI_HOME` puts all three under one directory (tests and portable installs);
otherwise the platform's usual places (platformdirs). Read at call time, never
at import, so a test can point it elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path


def _home() -> Path | None:
    home = os.environ.get("KORANI_HOME")
    return Path(home).expanduser() if home else None


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
