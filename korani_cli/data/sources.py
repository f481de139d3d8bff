"""Where a data source's files are: a local path, or a Hugging Face Hub dataset id.

Hub datasets are fetched with huggingface_hub (only the data files, into its
cache) and then read by the same streaming readers as local files — the
`datasets` library would load the 650 MB ShareGPT arrays whole.
"""

from __future__ import annotations

import re
from pathlib import Path

from korani_cli.data.readers import list_files
from korani_cli.errors import KoraniError, EXIT_DATA

HUB_FILES = {
    # The DeepL-Korean files only; the repo's other files are not the translation.
    "junelee/sharegpt_deepl_ko": ["ko_dataset.json", "ko_dataset_2.json"],
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DataInputError(KoraniError):
    exit_code = EXIT_DATA


def resolve_source(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.exists():
        try:
            files = list_files(path)
        except OSError as exc:
            raise DataInputError(f"cannot read {path} ({exc.strerror})", "check the path and its permissions") from None
        if not files:
            raise DataInputError(f"{path} holds no .json, .jsonl or .parquet files", "point at the data files or their directory")
        for f in files:
            if not f.is_file():
                raise DataInputError(f"{f} is not a file", "point at the data files or their directory")
        return files
    if spec.startswith((".", "/", "~")) or not _HUB_ID.match(spec):
        raise DataInputError(f"data source not found: {spec}", "check the path (or give a Hugging Face dataset id such as beomi/KoAlpaca-v1.1a)")
    return _from_hub(spec)


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
        raise DataInputError(f"the dataset '{repo_id}' has no .json, .jsonl or .parquet files", "pass a local path")
    return files
