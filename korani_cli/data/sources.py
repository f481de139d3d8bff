"""Where a data source's files are: a local path, or a Hugging Face Hub dataset id.

Hub datasets are fetched with huggingface_hub (only the data files, into its
cache) and then read by the same streaming readers as local files — the
`datasets` library would load the 650 MB ShareGPT arrays whole.
"""

from __future__ import annotations

import re
from pathlib import Path

from korani_cli.data.readers import SUFFIXES, list_files
from korani_cli.errors import EXIT_DATA, KoraniError

HUB_FILES = {
    # The DeepL-Korean files only; the repo's other files are not the translation.
    "junelee/sharegpt_deepl_ko": ["ko_dataset.json", "ko_dataset_2.json"],
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Suffixes that name a file, never a Hub dataset ("beomi/KoAlpaca-v1.1a" has the "suffix" ".1a").
FILE_SUFFIXES = (*SUFFIXES, ".csv", ".tsv", ".txt", ".gz", ".zip", ".arrow", ".xz", ".bz2", ".zst")


class DataInputError(KoraniError):
    exit_code = EXIT_DATA


def resolve_source(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long, a loop of links
        raise DataInputError(
            f"cannot read the data source {spec} ({exc.strerror})", "check the path"
        ) from None
    if exists:
        try:
            files = list_files(path)
        except OSError as exc:
            raise DataInputError(
                f"cannot read {path} ({exc.strerror})", "check the path and its permissions"
            ) from None
        if not files:
            raise DataInputError(
                f"{path} holds no .json, .jsonl or .parquet files",
                "point at the data files or their directory",
            )
        for f in files:
            if not f.is_file():
                raise DataInputError(f"{f} is not a file", "point at the data files or their directory")
        return files
    if looks_like_path(spec) or not _HUB_ID.match(spec):
        raise DataInputError(
            _missing(spec), "check the path (or give a Hugging Face dataset id such as beomi/KoAlpaca-v1.1a)"
        )
    return _from_hub(spec)


def looks_like_path(spec: str) -> bool:
    """Whether a missing `spec` was meant as a local path rather than a Hub id:
    it names a data file, starts like a path, or its directory exists."""
    path = Path(spec).expanduser()
    if spec.startswith(("./", "../", "/", "~", ".\\", "..\\")) or spec in (".", ".."):
        return True
    if path.suffix.lower() in FILE_SUFFIXES:
        return True
    return path.parent != Path(".") and path.parent.is_dir()


def _missing(spec: str) -> str:
    """Say what is missing: the file, or the directory it should be in."""
    path = Path(spec).expanduser()
    parent = path.parent
    while parent != parent.parent and not parent.exists():
        missing_dir, parent = parent, parent.parent
        if parent.exists():
            return f"data source not found: {spec} (the directory {missing_dir} does not exist)"
    return f"data source not found: {spec} (no such file or directory)"


def _from_hub(repo_id: str) -> list[Path]:
    from huggingface_hub import snapshot_download

    patterns = HUB_FILES.get(repo_id, ["*.parquet", "*.jsonl", "*.json"])
    try:
        local = snapshot_download(repo_id, repo_type="dataset", allow_patterns=patterns)
    except Exception as exc:  # offline, missing repo, gated: all end the same way for the user
        raise DataInputError(
            f"cannot download the dataset '{repo_id}' from the Hugging Face Hub ({exc.__class__.__name__})",
            "download its files elsewhere and pass the local path instead",
        ) from None
    files = [f for f in list_files(Path(local)) if not f.name.startswith(".")]
    if not files:
        raise DataInputError(
            f"the dataset '{repo_id}' has no .json, .jsonl or .parquet files", "pass a local path"
        )
    return files
