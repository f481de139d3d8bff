"""The processes of one launched training job (torchrun, accelerate launch, deepspeed).

A launcher starts the same `korani train` once per device and tells each
process its place through RANK / LOCAL_RANK / WORLD_SIZE. This module reads
them, opens the process group early (gloo on CPU, NCCL on GPUs) with a
timeout, and gives the run three things it needs before the trainer's own
collectives start:

- `main_first`: the first process prepares the output directory (judge, move
  the old run aside, marker, --smoke base, recipe) while the others wait at a
  broadcast, not by polling files; when the first one fails, the others stop
  with the same exit code and print nothing (the first already said why).
- `any_rank`: a Ctrl-C seen by one process becomes a save-and-stop on all of
  them at the same step (a checkpoint is a collective under DeepSpeed).
- `lost_peer`: a collective that fails because another process died or hung
  becomes one line that says so and how to resume.

What it leaves to others: the launcher restarts nothing and kills the rest of
the job when one process dies (torchrun does); the trainer does the
data-parallel work itself.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from korani_cli.errors import EXIT_CONFIG, KoraniError


class ReportedByMainRank(KoraniError):
    """The first process failed and printed why; this one stops without a second line."""

    quiet = True

    def __init__(self, exit_code: int):
        super().__init__("the first process of this job failed")
        self.exit_code = exit_code


class PeerLost(KoraniError):
    """Another process of the job died or stopped answering: an environment
    failure (a killed process, an out-of-memory kill, a lost node), exit 5."""

    exit_code = EXIT_CONFIG


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def launched(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls) -> Ranks:
        def number(name: str, default: int) -> int:
            value = os.environ.get(name, "")
            return int(value) if value.strip().isdigit() else default

        return cls(number("RANK", 0), number("LOCAL_RANK", 0), number("WORLD_SIZE", 1))


def init(ranks: Ranks, *, cuda: bool, timeout_s: int) -> None:
    """Open the default process group, once, before anything waits on another
    process. The trainer (accelerate, DeepSpeed) finds it open and uses it, so
    `timeout_s` bounds every collective of the run: a hung peer becomes an
    error after that long instead of a job that waits forever."""
    if not ranks.launched:
        return
    from datetime import timedelta

    import torch
    import torch.distributed as td

    if td.is_initialized():
        return
    if cuda:
        torch.cuda.set_device(ranks.local_rank)
    # DeepSpeed makes its data-parallel groups with `new_group(ranks)` and no timeout, and
    # torch gives such a group its module default (30 minutes), not the world group's:
    # without this, a hung process would hold the others past `dist_timeout`.
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timedelta(seconds=timeout_s)
    backend = "nccl" if cuda else "gloo"
    td.init_process_group(
        backend=backend,
        timeout=timedelta(seconds=timeout_s),
        **({"device_id": torch.device("cuda", ranks.local_rank)} if cuda else {}),
    )


def _device():
    import torch
    import torch.distributed as td

    return (
        torch.device("cuda", torch.cuda.current_device())
        if td.get_backend() == "nccl"
        else torch.device("cpu")
    )


def _broadcast_code(ranks: Ranks, code: int) -> int:
    """Rank 0's `code` on every rank."""
    import torch
    import torch.distributed as td

    value = torch.tensor([code], dtype=torch.int64, device=_device())
    td.broadcast(value, src=0)
    return int(value.item())


@contextmanager
def main_first(ranks: Ranks) -> Iterator[None]:
    """Run the block on the first process only while the others wait for its
    outcome: on success every process goes on; on a `KoraniError` the first
    raises it and the others raise `ReportedByMainRank` with its exit code.
    Use it as `with main_first(r): if r.main: ...` — the block runs everywhere,
    and only rank 0 does work in it."""
    if not ranks.launched:
        yield
        return
    if ranks.main:
        try:
            yield
        except KoraniError as exc:
            ignore_teardown()  # say why before the launcher, seeing the others stop, ends this process
            _broadcast_code(ranks, exc.exit_code or 1)
            raise
        except BaseException:
            _broadcast_code(ranks, 1)
            raise
        _broadcast_code(ranks, 0)
        return
    yield
    with _quiet_when_ended():
        code = lost_peer_guard(
            lambda: _broadcast_code(ranks, 0), ranks, "while the first process prepared the output directory"
        )
        if code:
            ignore_teardown()  # the first process says why; the launcher's SIGTERM must not add a line
            raise ReportedByMainRank(code)


@contextmanager
def _quiet_when_ended() -> Iterator[None]:
    """While a process waits for the first one's outcome, the launcher's SIGTERM means the first
    process has ended (it exits as soon as it has broadcast its failure, and the launcher then
    stops the rest): stop without a line of our own, with the interrupted code. Without this, a
    SIGTERM that landed between the broadcast and the exit printed a second 'error: interrupted'
    under a loaded machine (CI)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ended(_signum, _frame):
        from korani_cli.errors import EXIT_INTERRUPTED

        raise ReportedByMainRank(EXIT_INTERRUPTED)

    previous = signal.signal(signal.SIGTERM, ended)
    yield  # on the way out with an error the handler stays (or ignore_teardown's SIG_IGN does)
    signal.signal(signal.SIGTERM, previous)


def recipe_failed_everywhere(ranks: Ranks, exc: KoraniError, wait_s: float = 30.0) -> None:
    """Every process of the job read the same bad recipe, before any of them joined the job.
    The first says why; the launcher ends the job when the first process exits, with a SIGTERM
    to the others. So the first ignores that SIGTERM (it must not be cut short before its line:
    under load it was, printing 'error: interrupted' instead of the recipe's error), and the
    others wait for it — that SIGTERM, or `wait_s` at most — and then stop quietly."""
    import signal
    import threading

    if ranks.main:
        ignore_teardown()
        return
    if threading.current_thread() is not threading.main_thread():
        return
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: done.set())
    done.wait(wait_s)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # on its way out with the first process's code


def ignore_teardown() -> None:
    """This process is on its way out with its reason about to be said: the launcher's
    SIGTERM to the rest of the job would only cut that short or add a second message."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def any_rank(ranks: Ranks, flag: bool) -> bool:
    """Whether `flag` is set on any process (one tiny all-reduce)."""
    if not ranks.launched:
        return flag
    import torch
    import torch.distributed as td

    value = torch.tensor([int(flag)], dtype=torch.int64, device=_device())
    td.all_reduce(value, op=td.ReduceOp.MAX)
    return bool(value.item())


def is_lost_peer(exc: BaseException) -> bool:
    """A collective failed because another process went away or hung.

    gloo reports a dead peer as a RuntimeError ("Connection closed by peer",
    "Connection reset by peer") and a hung one as a timeout; NCCL through
    torch's DistError family. Anything else is not ours to reword."""
    try:
        from torch.distributed import DistError
    except ImportError:  # an old torch
        DistError = ()  # noqa: N806
    if DistError and isinstance(exc, DistError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        marker in text
        for marker in ("connection closed by peer", "connection reset by peer", "timed out", "gloo", "nccl")
    )


def lost_peer_guard(call, ranks: Ranks, doing: str):
    """`call()`, with a collective's failure turned into `PeerLost`."""
    try:
        return call()
    except Exception as exc:
        if ranks.launched and is_lost_peer(exc):
            raise PeerLost(
                f"process {ranks.rank} of {ranks.world_size} lost the others {doing} ({first_line(exc)})",
                "see the launcher's report for the process that failed; rerun the same command to retry",
            ) from None
        raise


def lost_peer_message(ranks: Ranks, step: int, output: Path, checkpoint: Path | None) -> tuple[str, str]:
    """What a surviving process says when the job lost one of its processes mid-training."""
    saved = f"the last complete checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved yet"
    what = (
        f"process {ranks.rank} of {ranks.world_size} stopped at step {step}: another process of this job "
        f"died or stopped answering; {saved}"
    )
    fix = (
        "fix what stopped it (the launcher's report names the process), then rerun the same launch command "
        "with --resume"
        if checkpoint
        else (
            "fix what stopped it (the launcher's report names the process), then rerun the same launch "
            "command with --overwrite"
        )
    )
    return what, fix


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else exc.__class__.__name__
