"""tools/bench_quick.py, CI's guard against benchmarks that rot: it fails a bench whose RESULT line
is missing or unparseable, or that exits non-zero, and passes one that says it skipped."""

from __future__ import annotations

import subprocess
import sys

import pytest
from support import REPO

SCRIPT = REPO / "tools" / "bench_quick.py"

BENCHES = {
    "good.py": (
        'import sys\nassert sys.argv[1:] == ["--quick"], sys.argv\n'
        'print("table")\nprint(\'RESULT {"x": 1}\')\n'
    ),
    "skips.py": 'print(\'RESULT {"skipped": "no CUDA GPU"}\')\n',
    "silent.py": 'print("a table, then nothing")\n',
    "broken.py": "print('RESULT {\"x\": 1,')\n",
    "listed.py": "print('RESULT [1, 2]')\n",
    "crashes.py": "print('RESULT {\"x\": 1}')\nraise SystemExit(3)\n",
}


def run(tmp_path, *names: str) -> subprocess.CompletedProcess:
    for name in names:
        (tmp_path / name).write_text(BENCHES[name], encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *(str(tmp_path / n) for n in names), "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_benches_with_a_result_pass_and_a_skip_says_why(tmp_path):
    out = run(tmp_path, "good.py", "skips.py")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("ok   good.py") and lines[0].endswith("RESULT ok")
    assert lines[1].startswith("ok   skips.py") and lines[1].endswith("skipped: no CUDA GPU")
    assert lines[-1].startswith("2/2 benches ran")


@pytest.mark.parametrize(
    "name, why",
    [
        ("silent.py", "no RESULT line"),
        ("broken.py", "RESULT is not JSON"),
        ("listed.py", "RESULT is a JSON list, not an object"),
        ("crashes.py", "exit 3"),
    ],
)
def test_a_bench_without_a_readable_result_fails_the_run(tmp_path, name, why):
    out = run(tmp_path, "good.py", name)
    assert out.returncode == 1, out.stdout
    failing = next(line for line in out.stdout.splitlines() if line.startswith("FAIL"))
    assert failing.split()[1] == name and why in failing
    assert out.stdout.splitlines()[-1].startswith("1/2 benches ran")
    assert out.stderr.strip().splitlines() == [
        f"error: bench --quick failed: {name} — run each as shown above"
    ]
