"""`korani train` under torchrun: two CPU processes (gloo) with DeepSpeed ZeRO-2 on the tiny model.

What a user of a multi-GPU box would notice, shrunk to two CPU processes:
the job finishes once (one output directory, one report, metadata from one
process), a global batch split over processes trains exactly like the same
batch in one process, and a process killed with SIGKILL ends the job with a
one-line reason and a checkpoint that `--resume` continues.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO, QuietProgress, run_korani, smoke_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

# The same recipe for both runs; only how the global batch of 8 is split differs.
COMPARE = [
    "korani-5.8b",
    "--deepspeed",
    "zero2",
    "max_steps=-1",
    "num_train_epochs=1",
    "lora_dropout=0",
    "learning_rate=1e-3",
    "warmup_ratio=0",
    "logging_steps=1",
    "eval_steps=1000",
    "save_steps=1000",
    "health_prompts=0",
    "max_length=64",
]
# float32 sums the two processes' gradients in another order than one process's
# larger batch does: the curves agree to ~1e-5 over an epoch (measured). 1e-3 leaves
# room for other CPUs' kernels and is still 100× below what a wrong split costs
# (unseeded LoRA init, or each process seeing the whole data, moves losses by >1e-2).
LOSS_TOLERANCE = 1e-3


def torchrun(*args: str) -> list[str]:
    # --standalone picks a free rendezvous port: tests running beside each other never meet.
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "korani_cli",
        "train",
        *args,
    ]


def launch(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun(*args), capture_output=True, text=True, timeout=timeout, cwd=REPO)


def losses(output: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (output / "logs.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.fixture(scope="module")
def tiny_base(prepared, tmp_path_factory) -> Path:
    """The --smoke model (random GPT-NeoX, tokenizer trained on the data), built once outside any run."""
    from korani_cli.train.smoke import smoke_adjust

    where = tmp_path_factory.mktemp("multi_base")
    return Path(
        smoke_adjust(smoke_config(prepared, where / "o"), where, prepared, QuietProgress()).base_model
    )


def test_two_processes_train_like_one_with_the_same_global_batch(prepared, tiny_base, tmp_path):
    common = [*COMPARE, "--data", str(prepared), f"base_model={tiny_base}"]
    one = run_korani(
        "train",
        *common,
        "--output",
        str(tmp_path / "one"),
        "per_device_train_batch_size=8",
        "gradient_accumulation_steps=1",
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    # 2 per device × 2 processes × 2 accumulation steps = the same 8 conversations per step.
    two = launch(
        *common,
        "--output",
        str(tmp_path / "two"),
        "per_device_train_batch_size=2",
        "gradient_accumulation_steps=2",
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert (
        "Traceback" not in two.stderr and "error" not in two.stderr.lower() and "mismatch" not in two.stderr
    )
    # One process speaks for the job: each notice and the summary once.
    assert two.stderr.count("note: no CUDA GPU: training in float32") == 1, two.stderr
    assert two.stderr.count("trained ") == 1 and two.stderr.count("korani_metadata.json in") == 1, two.stderr
    # One output directory, nothing moved aside or half-written beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]
    assert not [p for p in (tmp_path / "two").iterdir() if ".tmp-" in p.name or ".old-" in p.name]

    meta_one = json.loads((tmp_path / "one" / "korani_metadata.json").read_text())
    meta_two = json.loads((tmp_path / "two" / "korani_metadata.json").read_text())
    assert meta_two["deepspeed"] == "zero2" and meta_two["max_steps"] == meta_one["max_steps"]
    # An epoch is the same number of optimizer steps: the processes split the data instead of
    # each reading all of it (which would double the steps).
    assert meta_two["steps"] == meta_one["steps"] > 3
    # Each step logged once, by one process.
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "two" / "logs.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == list(range(1, meta_two["steps"] + 1))
    # Both processes saved their ZeRO-2 optimizer shards into the one checkpoint.
    shards = list((tmp_path / "two").glob("checkpoint-*/global_step*/*optim_states.pt"))
    assert len(shards) == 2, shards
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert a.keys() == b.keys()
    worst = max(abs(a[s] - b[s]) for s in a)
    assert worst <= LOSS_TOLERANCE, {s: (a[s], b[s]) for s in a}
    assert a[max(a)] < a[1] - 0.05  # it learned: the agreement is between two curves that move


def _workers(launcher: int) -> dict[int, int]:
    """RANK → pid of the launcher's worker processes (read from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher:
            for item in env:
                if item.startswith(b"RANK="):
                    found[int(item[5:])] = int(entry.name)
    return found


def test_kill_9_of_one_process_stops_the_job_and_resume_continues(prepared, tmp_path):
    out = tmp_path / "k"
    args = [
        "korani-5.8b",
        "--data",
        str(prepared),
        "--output",
        str(out),
        "--smoke",
        "--deepspeed",
        "zero2",
        "max_steps=40",
        "save_steps=5",
        "eval_steps=1000",
        "health_prompts=0",
        "dist_timeout=60",
    ]
    job = subprocess.Popen(
        torchrun(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (out / "checkpoint-5" / "trainer_state.json").exists():
            assert job.poll() is None, job.stderr.read()[-3000:]
            time.sleep(0.05)
        workers = _workers(job.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGKILL)
        # No hang: the launcher notices the death and ends the job.
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    # The surviving process says what happened and how to go on, in one line, and
    # torchrun's report names the process that was killed.
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, stderr[-3000:]
    assert "process 0 of 2 stopped at step" in ours[0] and "--resume" in ours[0], ours
    assert "Signal 9 (SIGKILL) received by PID " + str(workers[1]) in stderr
    assert "Exception ignored" not in stderr
    assert not (out / "korani_metadata.json").exists()
    done = sorted(
        int(p.name.split("-")[1]) for p in out.glob("checkpoint-*") if (p / "trainer_state.json").is_file()
    )
    assert done and done[-1] < 40

    resumed = launch(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    meta = json.loads((out / "korani_metadata.json").read_text())
    assert meta["steps"] == 40 and meta["resumed_from"].endswith(f"checkpoint-{done[-1]}")
    logged = {json.loads(line)["step"] for line in (out / "logs.jsonl").read_text().splitlines()}
    assert logged == set(range(1, 41))


def test_a_hung_process_ends_the_job_after_dist_timeout(prepared, tmp_path):
    """SIGSTOP, not SIGKILL: the process is alive, so only the process-group timeout can end the wait."""
    out, log = tmp_path / "h", tmp_path / "stderr.txt"
    args = [
        "korani-5.8b",
        "--data",
        str(prepared),
        "--output",
        str(out),
        "--smoke",
        "--deepspeed",
        "zero2",
        "max_steps=400",
        "save_steps=5",
        "eval_steps=1000",
        "health_prompts=0",
        "dist_timeout=10",
    ]
    with log.open("w") as err:
        job = subprocess.Popen(torchrun(*args), stdout=subprocess.DEVNULL, stderr=err, cwd=REPO)
    workers = {}
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not (out / "checkpoint-5" / "trainer_state.json").exists():
            assert job.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
        workers = _workers(job.pid)
        os.kill(workers[1], signal.SIGSTOP)
        stopped = time.monotonic()
        # Process 0 gives up on its own after dist_timeout (10 s), not after torch's default 30 minutes.
        while time.monotonic() < stopped + 90 and "error: process 0" not in log.read_text():
            time.sleep(0.2)
        waited = time.monotonic() - stopped
    finally:
        for pid in workers.values():  # torchrun would wait 30 s more for the stopped one
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        job.wait(timeout=120)
    text = log.read_text()
    ours = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "process 0 of 2 stopped at step" in ours[0] and "Timed out" in ours[0], text[
        -3000:
    ]
    assert "the last complete checkpoint is" in ours[0] and "--resume" in ours[0]
    assert 9 <= waited < 60, waited
    assert job.returncode != 0


def test_first_process_errors_are_printed_once(prepared, tmp_path):
    """A recipe error stops every process of the job; only the first one prints it."""
    proc = launch(
        "korani-5.8b",
        "--data",
        str(prepared),
        "--output",
        str(tmp_path / "x"),
        "--smoke",
        "lora_r=0",
        timeout=120,
    )
    assert proc.returncode != 0
    assert proc.stderr.count("error: ") == 1 and "'lora_r' is 0" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("env", "extra", "code", "fragment"),
    [
        # accelerate's CPU mode would silently train without ZeRO
        (
            {"ACCELERATE_USE_CPU": "true"},
            ["--deepspeed", "zero2"],
            2,
            "accelerate launch --cpu turns DeepSpeed off",
        ),
        ({"ACCELERATE_USE_CPU": "1"}, ["--deepspeed", "zero2"], 2, "--use_deepspeed --deepspeed_config_file"),
        ({}, ["dist_timeout=0"], 5, "'dist_timeout' is 0"),
        ({}, ["dist_timeout=many"], 5, "dist_timeout"),
    ],
)
def test_launch_settings_refused_before_loading(prepared, tmp_path, env, extra, code, fragment):
    proc = run_korani(
        "train",
        "korani-5.8b",
        "--data",
        str(prepared),
        "--output",
        str(tmp_path / "o"),
        "--smoke",
        *extra,
        env=env,
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], proc.stderr
    assert not (tmp_path / "o").exists()
