"""Process-wide policy that the commands and the core both follow: the debug
flag, silencing chatty libraries, and whether the Hugging Face Hub can be
reached right now.

Nothing here prints: showing things is console.py's job. Kept import-light
(the heavy libraries are imported inside the functions), as `korani --help`
imports it.
"""

from __future__ import annotations

import os

_debug = False  # set once by the root command (--debug); KORANI_DEBUG is read at call time


def set_debug(value: bool) -> None:
    global _debug
    _debug = value


def debug_enabled() -> bool:
    """--debug or KORANI_DEBUG=1: tracebacks and library chatter are shown, not hidden."""
    return _debug or os.environ.get("KORANI_DEBUG", "") not in ("", "0", "false", "no")


class _OptionalKernelFilter:
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward" record (see quiet_libraries)."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


def quiet_libraries() -> None:
    """Silence library progress bars, deprecation chatter and best-effort kernel
    warnings, which would bury korani's own one-line notices. --debug keeps them."""
    import logging
    import warnings

    if debug_enabled():
        return
    for category in (FutureWarning, UserWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes, imported by peft, logs at import on CPUs with AVX512-BF16 that it could not
    # fetch an optional CPU kernel from the Hub ("Failed to load CPU gemm_4bit_forward … pip install
    # kernels"); 4-bit layers work without it. Only that record is dropped: its other warnings stay.
    ops = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _OptionalKernelFilter) for f in ops.filters):
        ops.addFilter(_OptionalKernelFilter())
    # accelerate warns on every DeepSpeed run with gradient accumulation that it takes
    # the DeepSpeed config's value — which korani set to the recipe's own.
    logging.getLogger("accelerate").setLevel(logging.ERROR)
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ.setdefault(
                "DS_ACCELERATOR", "cpu"
            )  # say so instead of DeepSpeed warning that it guessed
    except ImportError:
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # read when datasets is imported


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub? Decided in seconds, not after
    huggingface_hub's minute of retries; when not, loads use the local cache only."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    parts = urlsplit(constants.ENDPOINT)
    try:
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=timeout):
            return True
    except OSError:
        return False
