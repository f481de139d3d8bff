"""CI's check that no benchmark rots: every bench/*.py runs with --quick and must end with a RESULT line.

A benchmark nobody runs breaks silently when the code under it changes (bench/chat.py once
did: the chat's events became typed and it died on its first turn). So each one runs here
in its own process, at the tiny sizes its --quick names, with the checkout first on
PYTHONPATH, one fresh KORANI_HOME for the run and the Hub switched off. A bench fails
when it exits non-zero, runs past --timeout, or its last `RESULT ` line is missing or not
a JSON object. A bench that cannot run on this machine says so in its RESULT
(`{"skipped": "why"}`, bench/gpu_qlora.py without a CUDA GPU) and passes.

Prints one line per bench with its seconds; exit 1 when any failed.

Run: .venv/bin/python tools/bench_quick.py [BENCH.py ...] [--timeout SECONDS]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREFIX = "RESULT "


def parse_result(stdout: str) -> dict:
    """The JSON object of the last `RESULT ` line of `stdout`; ValueError saying what is wrong."""
    lines = [line for line in stdout.splitlines() if line.startswith(PREFIX)]
    if not lines:
        raise ValueError("no RESULT line")
    text = lines[-1][len(PREFIX) :]
    try:
        result = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"RESULT is not JSON ({exc.msg} at column {exc.colno + len(PREFIX)})") from None
    if not isinstance(result, dict):
        raise ValueError(f"RESULT is a JSON {type(result).__name__}, not an object")
    return result


def run_one(bench: Path, env: dict, timeout: float) -> tuple[bool, float, str]:
    """(passed, seconds, what to say) for one bench run with --quick."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, str(bench), "--quick"],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - start, f"ran past {timeout:g} s"
    seconds = time.perf_counter() - start
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    if proc.returncode != 0:
        return False, seconds, f"exit {proc.returncode}\n{tail}"
    try:
        result = parse_result(proc.stdout)
    except ValueError as exc:
        return False, seconds, f"{exc}\n{tail}"
    if "skipped" in result:
        return True, seconds, f"skipped: {result['skipped']}"
    return True, seconds, "RESULT ok"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benches", nargs="*", type=Path, help="bench scripts [default: bench/*.py]")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one bench may run")
    args = parser.parse_args(argv)
    benches = args.benches or sorted((REPO / "bench").glob("*.py"))
    home = Path(tempfile.mkdtemp(prefix="korani-bench-quick-"))
    env = {
        **os.environ,
        "KORANI_HOME": str(home),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    failed = []
    total = time.perf_counter()
    try:
        for bench in benches:
            passed, seconds, said = run_one(bench, env, args.timeout)
            first, _, rest = said.partition("\n")
            print(f"{'ok  ' if passed else 'FAIL'} {bench.name:<20} {seconds:7.1f} s  {first}", flush=True)
            if not passed:
                failed.append(bench.name)
                if rest:
                    print("     " + rest.replace("\n", "\n     "), flush=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    print(f"{len(benches) - len(failed)}/{len(benches)} benches ran in {time.perf_counter() - total:.0f} s")
    if failed:
        print(f"error: bench --quick failed: {', '.join(failed)} — run each as shown above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
