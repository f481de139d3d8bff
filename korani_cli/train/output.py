"""The run's output directory: may this run use it, and which checkpoint does `--resume` mean?

A new run needs a new or empty directory, or — with `--overwrite` — one an
earlier `korani train` wrote (it holds `outputs.MARKER`, or, from before
markers, `korani_train.yaml`). It never takes the working directory, a parent
of it, the data directory or a local base model. The old run is moved aside,
not deleted, until the new one has its model loaded: a recipe that fails to
load gives the old run back, and a new run that fails that early leaves no
directory behind.

`--resume` writes into an earlier run, so it needs one (marked or legacy)
and a checkpoint in it that finished saving.

Only the first rank of a launched run calls `judge` and `take`; the others would see
its fresh files and mistake them for an earlier run.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from korani_cli import modelref
from korani_cli.errors import UsageError
from korani_cli.outputs import (
    guard_output_dir,
    is_ours,
    marker_command,
    put_back,
    reap_stale,
    set_aside,
    write_marker,
)
from korani_cli.untrusted import clean_line

LEGACY = ("korani_train.yaml",)  # every korani train output has had it since the first version
CHECKPOINT_STATE = "trainer_state.json"  # written last when transformers saves a checkpoint


def _holds_files(path: Path) -> bool:
    try:
        return path.is_dir() and any(path.iterdir())
    except OSError as exc:
        raise UsageError(
            f"cannot read {path} ({exc.strerror})", "check its permissions or choose another --output"
        ) from None


def _not_a_run(output: Path) -> None:
    """Another korani command's output (a `data prepare` data set) is not a run:
    neither to resume nor to replace with --overwrite."""
    command = marker_command(output) if output.is_dir() else None
    if command in (None, "train"):
        return
    shown = clean_line(command)[:40]
    what = (
        "a data set written by `korani data prepare`"
        if command == "data prepare"
        else f"korani {shown}'s output"
    )
    raise UsageError(
        f"--output {output} is {what}, not a training run",
        "pick another --output: a new or empty directory, or an earlier korani train run's",
    )


def judge(output: Path, *, sources: list[Path], resume: bool, overwrite: bool) -> None:
    """Refuse, with one line, an `output` this run must not use. Writes nothing."""
    _not_a_run(output)
    if resume:
        if overwrite:
            raise UsageError(
                "--resume and --overwrite contradict each other",
                "--resume continues the run in --output; --overwrite starts it over",
            )
        if (output.exists() or output.is_symlink()) and not output.is_dir():
            raise UsageError(
                f"--output {output} is not a directory", "pass the --output of an earlier korani train run"
            )
        if _holds_files(output) and not is_ours(output, LEGACY):
            raise UsageError(
                f"{output} holds files korani did not write; refusing to resume there",
                "pass the --output of an earlier korani train run",
            )
        return
    if not overwrite and _holds_files(output) and is_ours(output, LEGACY):
        raise UsageError(
            f"{output} already holds a run",
            "pass --resume to continue it, --overwrite to start over, or another --output",
        )
    guard_output_dir(output, overwrite=overwrite, sources=sources, legacy=LEGACY, flag="--output")


@dataclass(frozen=True)
class Taken:
    """What `take` did to the output directory, so that `settle` can undo it."""

    output: Path
    old: Path | None  # the earlier run, moved aside by --overwrite
    fresh: bool  # this run starts the directory (not a resume)
    existed: bool  # the directory was there (empty, or the earlier run) before


def take(output: Path, *, resume: bool) -> Taken:
    """Make the judged `output` ready for this run."""
    reap_stale(output)
    existed = output.is_dir()
    old = None
    if not resume and _holds_files(output):  # judged replaceable
        old = set_aside(output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if old is not None:
            put_back(old, output)
        raise UsageError(
            f"cannot create --output {output} ({exc.strerror})", "choose another --output"
        ) from None
    return Taken(output, old, fresh=not resume, existed=existed)


def mark(output: Path, **details) -> None:
    """Sign the directory as a korani train run (kept on resume; added to a legacy run)."""
    write_marker(output, "train", **details)


def settle(taken: Taken, *, ok: bool) -> None:
    """Once the model has loaded (`ok`), drop the earlier run. After a failure
    before that, leave things as they were: the earlier run back in place, or
    no half-started run directory."""
    output, old = taken.output, taken.old
    if ok:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return
    if not taken.fresh:
        return  # a resume wrote nothing but the marker and the recipe
    shutil.rmtree(output, ignore_errors=True)
    if old is not None:
        put_back(old, output)
    elif taken.existed:
        output.mkdir()


def _step(path: Path) -> int:
    tail = path.name.partition("-")[2]
    return int(tail) if tail.isdigit() else -1


def find_checkpoint(output: Path, resume: str) -> Path:
    """The checkpoint `--resume` names: the latest complete one in `output` for
    "last", else the given directory, which must be a checkpoint."""
    if resume == "last":
        found = sorted(
            (p for p in output.glob("checkpoint-*") if _step(p) >= 0 and p.is_dir()), key=_step, reverse=True
        )
        for path in found:
            if (path / CHECKPOINT_STATE).is_file():  # one killed mid-save lacks it
                return path
        raise UsageError(
            f"no checkpoint to resume from in {output}",
            "train without --resume first (a checkpoint is saved every save_steps)",
        )
    path = Path(resume)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise UsageError(
            f"--resume {resume} {what}; it must be a checkpoint directory",
            "pass a checkpoint-N directory of an earlier run, or --resume alone for the latest one",
        )
    if not (path / CHECKPOINT_STATE).is_file():
        raise UsageError(
            f"--resume {resume} is not a training checkpoint (no {CHECKPOINT_STATE})",
            "pass a checkpoint-N directory of an earlier run, or --resume alone for the latest one",
        )
    return path


def check_matches(
    checkpoint: Path, *, lora_r: int, lora_target_modules: list[str], base_model: str | None
) -> None:
    """A checkpoint holds LoRA weights of one shape: resuming it with another
    rank, other target modules or another base fails deep inside loading with
    a page of size mismatches. Say which recipe key differs instead.
    `base_model` is None when it cannot be compared (--smoke swaps it)."""
    import json

    path = checkpoint / "adapter_config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # not a LoRA checkpoint korani knows how to read; let the trainer judge it
    if not isinstance(saved, dict):
        return
    differences = []
    if saved.get("r") not in (None, lora_r):
        differences.append(f"lora_r {saved['r']} (now {lora_r})")
    targets = saved.get("target_modules")
    if isinstance(targets, (list, str)) and sorted(
        [targets] if isinstance(targets, str) else targets
    ) != sorted(lora_target_modules):
        differences.append(f"lora_target_modules {targets} (now {list(lora_target_modules)})")
    if base_model is not None and saved.get("base_model_name_or_path") not in (None, base_model):
        saved_base = modelref.shorten(str(saved["base_model_name_or_path"]))
        differences.append(f"base_model {saved_base} (now {base_model})")
    if differences:
        from korani_cli.errors import ConfigError

        raise ConfigError(
            f"{checkpoint} was trained with {'; '.join(differences)}",
            "resume with the recipe the run was started with (its korani_train.yaml), or start over with "
            "--overwrite",
        )
