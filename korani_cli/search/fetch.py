"""Hits → Pages: concurrent, bounded, guarded, decoded, extracted, cached.

httpx async: every page at once, each with its own timeout, all under one
overall deadline; bodies are streamed, decoded with a bound and cut at a
byte cap (korani_cli/net.py); redirects are followed by hand; every
connection is made by the SSRF guard's network backend (search/safety.py),
which resolves once, checks every address and dials the one it checked, so
the guard sees every hop. Only HTML, XHTML, plain text (and PDF, through
pypdf) are read. A page that fails is skipped
with its reason — the others still make it.

Enough is enough: with a soft deadline (`FetchOptions.soft_deadline`, the
`soft_deadline` setting) the batch stops waiting that many seconds after the
first page's body arrived; pages still loading then are skipped as "late"
(a page whose body is in is still read: the wait is for the network, not for
korani's own extraction). The overall deadline and each page's timeout still
hard-stop it ("timeout"). Before the soft deadline, whoever reads the pages may
say they are enough (`Enough.set`, from any thread): the wait ends then, the same
way ("late", with the reader's detail).
The soft deadline judges the network, not korani: when the event loop could
not run for a while (a busy CPU, or another thread holding the GIL — loading
Kiwi holds it for ~2.5 s, in every cold `korani ask --search`), bodies that
came in meanwhile sit unread in the socket buffers. So after such a hold-up
(`STALL`) the wait goes on for `GRACE` more, time enough to read what is
already there, before a page is called late. The overall deadline is never moved.
Each page is handed to `on_page` the moment it is read (from the network, the
cache or a local file), so that later stages work on it while others load.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urljoin

from korani_cli.search import workers
from korani_cli.search.cache import PageCache
from korani_cli.search.decode import decode_html
from korani_cli.search.extract import extract
from korani_cli.search.safety import (
    GuardedBackend,
    Hop,
    UnsafeURL,
    canonical_url,
    check_chain,
    check_scheme,
    literal_address,
    refuse,
)
from korani_cli.search.types import LATE, TIMEOUT, Hit, Page, Skipped

USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36 korani"
)
HTML_TYPES = ("text/html", "application/xhtml+xml", "text/plain")


@dataclass(frozen=True)
class FetchOptions:
    timeout: float = 8.0  # per request
    deadline: float = 12.0  # for the whole batch
    max_bytes: int = 2_000_000
    max_redirects: int = 5
    allow_private: bool = False
    offline: bool = False
    # Seconds to wait for more pages once the first readable one is in; None: wait for every page
    # (up to `timeout` and `deadline`).
    soft_deadline: float | None = None


@dataclass
class FetchReport:
    pages: list = field(default_factory=list)
    failures: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0


class FetchFailed(Exception):
    pass


class Enough:
    """Set (from any thread) when the pages read so far make a good enough context: a fetch
    with a soft deadline then stops waiting for more at once, as at its soft deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        self.detail = ""  # why, for the pages given up ("context was enough: …")

    def set(self, detail: str) -> None:
        with self._lock:
            if self.detail:
                return
            self.detail, wake = detail, self._wake
        if wake is not None:
            wake()

    def is_set(self) -> bool:
        return bool(self.detail)

    def _bind(self, wake: Callable[[], None]) -> None:
        """`wake` is called (once, on the setting thread) when it is set."""
        with self._lock:
            self._wake = wake
            already = bool(self.detail)
        if already:
            wake()


async def _fetch_one(
    client, backend: GuardedBackend, url: str, opts: FetchOptions, arrived: dict | None = None
) -> tuple[Page, list[Hop]]:
    """The page at `url`; when its body is in (before extraction), `arrived[url]` is the loop's time."""
    from korani_cli import net

    current = url
    hops: list[Hop] = []
    for _ in range(opts.max_redirects + 1):
        try:
            host, _ = check_scheme(current)
            literal = literal_address(host)
            if literal is not None and not opts.allow_private:
                refuse(host, [literal])  # spellings httpx would reject as a URL still get the guard's reason
            current = canonical_url(current)  # and with --allow-private, httpx dials the address judged
            async with client.stream("GET", current) as response:
                # The addresses the guarded backend resolved, checked and dialled for this hop.
                hops.append(Hop(current, backend.addresses(response.request.url)))
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchFailed(f"HTTP {response.status_code} without a Location")
                    current = urljoin(current, location)
                    continue
                if response.status_code >= 400:
                    raise FetchFailed(f"HTTP {response.status_code}")
                ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
                is_pdf = ctype == "application/pdf" or (not ctype and current.lower().endswith(".pdf"))
                if ctype and ctype not in HTML_TYPES and not is_pdf:
                    raise FetchFailed(f"unsupported content type {ctype}")
                try:
                    data = await net.aread_capped(response, opts.max_bytes, truncate=True)
                except net.UndecodableBody as exc:
                    raise FetchFailed(str(exc)) from None
                charset = response.charset_encoding
                if arrived is not None:
                    arrived[url] = asyncio.get_running_loop().time()
        except UnsafeURL as exc:
            raise FetchFailed(f"refused: {exc}") from None
        break
    else:
        raise FetchFailed(f"more than {opts.max_redirects} redirects")
    if is_pdf:
        title, text = _pdf_text(data)
        return Page(url, current, title or current, text, "application/pdf", None), hops
    title, text, encoding = await _page_text(data, charset, ctype == "text/plain", current)
    return Page(url, current, title, text, ctype or "text/html", encoding), hops


async def _page_text(data: bytes, charset: str | None, plain: bool, url: str):
    """Decoding and extraction are CPU work: off the event loop, in the worker
    processes, so pages that arrive together are parsed on all cores while
    others still download."""
    from concurrent.futures.process import BrokenProcessPool

    loop = asyncio.get_running_loop()
    executor = workers.pool()
    if executor is not None:
        try:
            return await loop.run_in_executor(executor, workers.page_text, data, charset, plain, url)
        except BrokenProcessPool:  # a worker was killed: this page in-process, a new pool next time
            workers.discard()
    return await loop.run_in_executor(workers.serial(), workers.page_text, data, charset, plain, url)


def _pdf_text(data: bytes) -> tuple[str, str]:
    import io

    try:
        from pypdf import PdfReader
    except ImportError:
        raise FetchFailed("reading PDF needs pypdf") from None
    try:
        reader = PdfReader(io.BytesIO(data))
        text = "\n".join((page.extract_text() or "") for page in reader.pages[:50])
        title = (reader.metadata.title if reader.metadata else None) or ""
    except Exception as exc:  # pypdf raises many types on damaged files
        raise FetchFailed(f"unreadable PDF ({exc.__class__.__name__})") from None
    return title, text


LOCAL_MAX_BYTES = 2_000_000  # a text or HTML file: as much as a web page may send
LOCAL_MAX_PDF_BYTES = 64_000_000  # a PDF cut short cannot be read at all


def read_local(url: str) -> Page:
    """A file:// hit from the local provider: the user chose the directory, so
    no address guard applies. The provider has already refused links that
    leave the directory; here only a regular file is opened (O_NOFOLLOW: not
    a link swapped in since; O_NONBLOCK: a FIFO cannot block the read), and at
    most the bytes a web page may send. Its text is cleaned like a page's."""
    import os
    import stat
    from pathlib import Path
    from urllib.parse import unquote_to_bytes, urlsplit

    from korani_cli.untrusted import clean

    # Bytes, then the file system's decoding: a name that is not UTF-8 still opens.
    path = Path(os.fsdecode(unquote_to_bytes(urlsplit(url).path)))
    suffix = path.suffix.lower()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FetchFailed("not a regular file")
        data = handle.read(LOCAL_MAX_PDF_BYTES if suffix == ".pdf" else LOCAL_MAX_BYTES)
    if suffix == ".pdf":
        title, text = _pdf_text(data)
        return Page(url, url, title or path.stem, text, "application/pdf", None)
    text, encoding = decode_html(data)
    if suffix in (".html", ".htm"):
        title, body = extract(text, url)
        return Page(url, url, title or path.stem, body, "text/html", encoding)
    from korani_cli.search.plaintext import title_and_text

    # Its first heading is its title (not the file name), and leaves the text with its `#` marks.
    title, body = title_and_text(text, markdown=suffix == ".md")
    return Page(url, url, clean(title) or path.stem, clean(body), "text/plain", encoding)


def _client(opts: FetchOptions):
    """An httpx client whose every connection goes through the SSRF guard.

    No environment proxies: a proxy would resolve and dial the names itself,
    past the guard (passing our own transport turns them off in httpx)."""
    import httpx

    from korani_cli import net

    backend = GuardedBackend(opts.allow_private)
    limits = httpx.Limits(max_connections=16)
    transport = httpx.AsyncHTTPTransport(limits=limits)
    net.use_backend(transport, backend, limits=limits)
    client = httpx.AsyncClient(
        transport=transport,
        trust_env=False,
        timeout=httpx.Timeout(opts.timeout),
        follow_redirects=False,
        headers={
            "User-Agent": USER_AGENT,
            "Accept-Language": "ko,en;q=0.8",
            "Accept-Encoding": net.ACCEPT_ENCODING,
        },
    )
    return client, backend


OnPage = Callable[[Page], None]
# The loop held up this long means bodies may be waiting unread; GRACE reads them (module docstring).
STALL = 0.25
GRACE = 0.25


def _ignore(page: Page) -> None:
    pass


async def fetch_all(
    hits: list[Hit],
    opts: FetchOptions,
    cache: PageCache | None = None,
    on_page: OnPage = _ignore,
    enough: Enough | None = None,
) -> FetchReport:
    """Every hit's page, or the reason it was skipped; pages in the order of their hits.
    `on_page` is called (on this thread) with each page as it is read; `enough`, once set,
    ends the wait for the others (with a soft deadline only: without one, every page is waited for)."""
    start = time.perf_counter()
    report = FetchReport()
    todo = _without_network(hits, opts, cache, report, on_page)
    if todo:
        await _download(todo, opts, cache, report, on_page, enough)
    order = {hit.url: i for i, hit in enumerate(hits)}
    report.pages.sort(key=lambda p: order.get(p.url, 0))
    report.seconds = time.perf_counter() - start
    return report


def _without_network(
    hits: list[Hit], opts: FetchOptions, cache: PageCache | None, report: FetchReport, on_page: OnPage
) -> list[str]:
    """Into `report`: local files, and pages the cache holds (if their redirect chain
    passes today's guard). Returned: the URLs that must be downloaded."""
    todo: list[str] = []
    for hit in hits:
        if hit.url.startswith("file://"):
            try:
                page = read_local(hit.url)
            except (OSError, FetchFailed) as exc:
                report.failures.append(Skipped(hit.url, str(exc)))
            else:
                if page.text.strip():
                    report.pages.append(page)
                    on_page(page)
            continue
        cached = cache.get(hit.url, any_age=opts.offline) if cache else None
        if cached is not None:
            try:
                # Where the page really came from (every hop) must pass today's guard:
                # a page cached under --allow-private is not served to a run without it.
                check_chain(cached.hops, opts.allow_private)
            except UnsafeURL as exc:
                report.failures.append(Skipped(hit.url, f"refused: {exc}"))
                continue
            report.pages.append(cached.page)
            on_page(cached.page)
        elif opts.offline:
            report.failures.append(Skipped(hit.url, "not in the cache (--offline)"))
        else:
            todo.append(hit.url)
    return todo


def stop_at(start: float, first_page: float | None, opts: FetchOptions) -> tuple[float, str]:
    """When a batch begun at `start` stops waiting, and the reason the pages still loading
    then are given: the soft deadline after the first page (LATE), else the deadline (TIMEOUT)."""
    hard = start + opts.deadline
    if first_page is not None and opts.soft_deadline is not None and first_page + opts.soft_deadline < hard:
        return first_page + opts.soft_deadline, LATE
    return hard, TIMEOUT


async def _download(
    urls: list[str],
    opts: FetchOptions,
    cache: PageCache | None,
    report: FetchReport,
    on_page: OnPage,
    enough: Enough | None = None,
) -> None:
    """Fetch `urls` at once, each under its timeout and all under the deadline, until the
    soft deadline after the first page (or `enough` is set); pages (cached with their hops)
    and reasons into `report`, each page to `on_page` as it comes."""
    client, backend = _client(opts)
    loop = asyncio.get_running_loop()
    arrived: dict[str, float] = {}  # url → when its body was in
    woken = loop.create_future()  # done when `enough` is set: the wait below returns at once

    def wake() -> None:
        try:
            loop.call_soon_threadsafe(lambda: woken.done() or woken.set_result(None))
        except RuntimeError:  # set after this fetch was over: nothing waits any more
            pass

    if enough is not None and opts.soft_deadline is not None:
        enough._bind(wake)
    else:
        enough = None
    async with client:
        tasks = {
            asyncio.ensure_future(
                asyncio.wait_for(_fetch_one(client, backend, url, opts, arrived), opts.timeout)
            ): url
            for url in urls
        }
        start = loop.time()
        cached = start if report.pages else None  # a cached or local page is in at once
        pending = set(tasks)

        def first() -> float | None:
            return min([t for t in (cached, *arrived.values()) if t is not None], default=None)

        hard, _ = stop_at(start, None, opts)
        # After the loop was held up (between its waits, or past a wait's end), the soft
        # deadline is no sooner than GRACE later: bodies that came meanwhile are read first.
        # It moves by at most the time held up plus GRACE, however often that happens.
        grace, mark, held = start, start, 0.0
        while pending:
            now = loop.time()
            if now - mark > STALL:
                grace, held = now + GRACE, held + now - mark
            end, why = stop_at(start, first(), opts)
            if why == LATE:
                end = min(max(end, grace), end + held + GRACE, hard)
            if enough is not None and enough.is_set():
                end, why = min(end, now), LATE
            if now < end:
                done, _ = await asyncio.wait(
                    pending | {woken}, timeout=end - now, return_when=asyncio.FIRST_COMPLETED
                )
                done.discard(woken)
                mark = loop.time()
                if mark - end > STALL:  # woken well after it was due: held up
                    grace, held = mark + GRACE, held + mark - end
            else:
                # Past the soft deadline, pages whose bodies are in are still read (up to the deadline).
                reading = {task for task in pending if tasks[task] in arrived}
                if why != LATE or not reading or now >= hard:
                    break
                done, _ = await asyncio.wait(reading, timeout=hard - now, return_when=asyncio.FIRST_COMPLETED)
                mark = loop.time()
            pending -= done
            for task in sorted(done, key=lambda t: urls.index(tasks[t])):
                _collect(task, tasks[task], opts, cache, report, on_page)
        for task in pending:
            task.cancel()
            if why == LATE and tasks[task] not in arrived:
                detail = f"still loading {opts.soft_deadline:g} s after the first page (soft_deadline)"
                if enough is not None and enough.is_set():
                    detail = enough.detail
                report.failures.append(Skipped(tasks[task], LATE, detail))
            else:
                report.failures.append(
                    Skipped(tasks[task], TIMEOUT, f"past the {opts.deadline:g} s deadline")
                )
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        woken.cancel()


def _collect(
    task: asyncio.Future,
    url: str,
    opts: FetchOptions,
    cache: PageCache | None,
    report: FetchReport,
    on_page: OnPage = _ignore,
) -> bool:
    """One finished download: its page (True), or why there is none (False)."""
    import httpx

    try:
        page, hops = task.result()
    except FetchFailed as exc:
        report.failures.append(Skipped(url, str(exc)))
    except (asyncio.TimeoutError, TimeoutError):
        report.failures.append(Skipped(url, TIMEOUT, f"timed out after {opts.timeout:g} s"))
    except httpx.TimeoutException as exc:  # a connect or read that took longer than the timeout
        report.failures.append(Skipped(url, TIMEOUT, f"{exc.__class__.__name__} after {opts.timeout:g} s"))
    except httpx.HTTPError as exc:
        report.failures.append(Skipped(url, f"{exc.__class__.__name__}: {exc}"))
    except httpx.InvalidURL as exc:  # the URL, or a redirect's Location, httpx cannot parse
        report.failures.append(Skipped(url, f"invalid URL ({exc})"))
    else:
        if page.text.strip():
            report.pages.append(page)
            on_page(page)
            if cache:
                cache.put(page, hops)
            return True
        report.failures.append(Skipped(url, "no readable text"))
    return False


def fetch(
    hits: list[Hit],
    opts: FetchOptions,
    cache: PageCache | None = None,
    on_page: OnPage = _ignore,
    enough: Enough | None = None,
) -> FetchReport:
    return asyncio.run(fetch_all(hits, opts, cache, on_page, enough))
