"""A model named inside a file: can it be a local path or a Hub id at all?

`base_model_name_or_path` in an adapter's adapter_config.json and `base_model`
in a training recipe come from files anybody may have written. Before this
check such a name went straight to `Path.exists()`, transformers and
huggingface_hub: a name longer than the system allows for a path raised
OSError ("File name too long", an internal error), and the Hub's validation
quoted all of it back in the error line. `problem` says in words why a name
can be neither (None when it could be one); `shorten` cuts a name for a
one-line message; `check_base` refuses an adapter's base that is neither
(exit 3). Whether a model stands behind a good name is the loaders'
business.
"""

from __future__ import annotations

import os

from korani_cli.errors import ModelLoadError

# What Linux allows: a whole path (PATH_MAX, with its NUL) and one of its parts (NAME_MAX), in bytes.
PATH_MAX = 4096
NAME_MAX = 255


def problem(name: str) -> str | None:
    """Why `name` can be neither a local path nor a Hub id, or None."""
    if "\x00" in name:
        return "it holds a NUL character"
    try:
        raw = os.fsencode(name)
    except UnicodeError:
        return "it is not text a file name can hold"
    if len(raw) >= PATH_MAX:
        return f"it is {len(name)} characters long, more than any path or Hub id can be"
    longest = max(len(part) for part in raw.split(b"/"))
    if longest > NAME_MAX:
        return f"a part of it is {longest} bytes long, more than a file name can be ({NAME_MAX})"
    return None


def shorten(name: str, limit: int = 60) -> str:
    """`name` cut to `limit` characters for a one-line message."""
    return name if len(name) <= limit else name[:limit] + "…"


BASE_FIX = "set base_model_name_or_path to the base model's Hub id or local directory"


def check_base(base: str, where: str, fix: str = BASE_FIX) -> str:
    """`base`, the base model named by `where` (an adapter's config), if it can be a path or
    a Hub id; otherwise a ModelLoadError (exit 3) that quotes only the start of it."""
    why = problem(base)
    if why:
        raise ModelLoadError(
            f"{where} names the base model '{shorten(base)}', which cannot be a path or a Hub id ({why})", fix
        )
    return base
