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


# What korani asks of the libraries so that loading one never talks to the Hub unless a model or
# data set id is being fetched. Each is the library's own documented setting; a value the user set
# in the environment wins.
#  - HF_HUB_DISABLE_TELEMETRY: huggingface_hub's telemetry (TRL sends a HEAD /api/telemetry/trl/… at
#    every training run) and the "agent harnesses" registry huggingface_hub fetches once a day to
#    label its user agent (GET /api/agent-harnesses, alongside any download).
#  - HF_HUB_DISABLE_UPDATE_CHECK: huggingface_hub's own version and skill checks.
#  - LOCAL_KERNELS: on CPUs with AVX512-BF16, importing bitsandbytes (peft and sentence-transformers
#    import it) asks the kernel hub for an optional CPU 4-bit kernel; with kernels ≥ 0.19 that first
#    checks its publisher (GET /api/organizations/kernels-community/overview) or, offline, prints
#    "Skipping publisher trust check …". Pointing that one repository at a local path that holds no
#    kernel makes kernels fail at once, and bitsandbytes uses its own CPU code (korani trains in
#    float32 on CPU; 4-bit is a CUDA path).
NO_HUB_KERNEL = "kernels-community/quantization-bitsandbytes"
QUIET_ENVIRONMENT = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
}


def no_unasked_requests() -> None:
    """Set the libraries' own switches so that importing or loading them sends no request to the
    Hub (see QUIET_ENVIRONMENT). Called first thing by `korani` (and by the code that loads a
    heavy library, for in-process use); child processes (launchers, workers) inherit it.
    Fetching a model or data set id the user named still reaches the Hub."""
    import sys

    for key, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    local = os.environ.get("LOCAL_KERNELS", "")
    if not any(entry.split("=", 1)[0] == NO_HUB_KERNEL for entry in local.split(":") if entry):
        # os.devnull is not a directory, so kernels finds no build there and raises; bitsandbytes
        # catches that and keeps its own kernel.
        os.environ["LOCAL_KERNELS"] = ":".join(filter(None, [local, f"{NO_HUB_KERNEL}={os.devnull}"]))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and os.environ["HF_HUB_DISABLE_TELEMETRY"] not in ("", "0"):
        # Imported already (in-process use): it read its settings at import.
        constants.HF_HUB_DISABLE_TELEMETRY = True


class _OptionalKernelFilter:
    """Drops bitsandbytes' "Failed to load CPU gemm_4bit_forward" record (see quiet_libraries)."""

    def filter(self, record) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


def quiet_libraries() -> None:
    """Silence library progress bars, deprecation chatter and best-effort kernel
    warnings, which would bury korani's own one-line notices. --debug keeps them."""
    import logging
    import warnings

    no_unasked_requests()  # a network policy, not chatter: --debug keeps it
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
