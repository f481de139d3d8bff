"""Search providers and the fallback chain that tries them in order.

Each provider turns a query into Hits or raises ProviderError saying why it
could not (blocked, unavailable, misconfigured, an answer of the wrong
shape). The chain prints a notice for each failure and moves on; it never
hangs (every request ends by its deadline, `request_timeout` /
KORANI_REQUEST_TIMEOUT, whatever the server trickles), never holds more than
MAX_BYTES of an answer (decoded, so a gzip bomb stops at the cap), and never
crashes on a provider's account.

- google: Google's no-JS results page, as googlesearch-python fetches it
  (Lynx user agent). Live Google refuses scrapers with HTTP 429, a /sorry/
  CAPTCHA page, or (since about 2025-09) a "browser isn't supported" page;
  each is detected and reported. Both result layouts are parsed: the no-JS
  one (div.Gx5Zad) and googlesearch-python's (div.ezO2md).
- duckduckgo: html.duckduckgo.com's result page (the fake "EOF" result on
  its no-results page is dropped).
- searxng: a SearXNG instance's /search?format=json.
- naver: the Naver Search Open API (web, blog, news), <b> markup stripped.
- local: .html, .md, .txt and .pdf files in a directory, for offline use;
  ranking does the searching.

Endpoints are parameters so that tests can point them at loopback servers.
"""

from __future__ import annotations

import html as htmllib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import parse_qs, urlsplit

from korani_cli.search.types import Hit

TIMEOUT = 8.0  # per connect / read; the whole request also has a deadline
MAX_BYTES = 5_000_000  # a result page or JSON answer is ~100 KB
MAX_REDIRECTS = 5
LYNX_UA = "Lynx/2.9.0dev.10 libwww-FM/2.14 SSL-MM/1.4.1 OpenSSL/1.1.1w"
BROWSER_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
)


class ProviderError(Exception):
    def __init__(self, provider: str, why: str, unreachable: bool = False):
        super().__init__(f"{provider}: {why}")
        self.provider = provider
        self.why = why
        self.unreachable = unreachable  # the server could not be reached at all (no network, no DNS)


class Provider(Protocol):
    name: str

    def search(self, query: str, n: int) -> list[Hit]: ...


@dataclass(frozen=True)
class Reply:
    """A provider's answer, read whole (up to MAX_BYTES) before the deadline."""

    status_code: int
    url: str  # after redirects
    body: bytes
    charset: str | None

    @property
    def text(self) -> str:
        try:
            return self.body.decode(self.charset or "utf-8", "replace")
        except LookupError:
            return self.body.decode("utf-8", "replace")

    def json(self, provider: str):
        import json

        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            raise ProviderError(provider, "the answer was not JSON") from None


def _get(
    provider: str, url: str, deadline: float, params: dict | None = None, headers: dict | None = None
) -> Reply:
    """GET with redirects followed by hand (a redirect's body is never read), all within
    `deadline` seconds."""
    import httpx

    from korani_cli import net

    client, backend = net.deadline_client(httpx.Timeout(min(TIMEOUT, deadline)), headers=headers or {})
    start = time.monotonic()
    try:
        with client, backend.within(deadline):
            target, query = url, params
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream("GET", target, params=query) as response:
                    if response.is_redirect and response.headers.get("location"):
                        target, query = response.url.join(response.headers["location"]), None
                        continue
                    body = net.read_capped(response, MAX_BYTES)
                    return Reply(response.status_code, str(response.url), body, response.charset_encoding)
            raise ProviderError(provider, f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException as exc:
        raise ProviderError(
            provider,
            f"timed out after {time.monotonic() - start:.1f} s (deadline {deadline:g} s: request_timeout)",
            unreachable=isinstance(exc, httpx.ConnectTimeout),
        ) from None
    except httpx.HTTPError as exc:
        raise ProviderError(
            provider,
            f"unreachable ({exc.__class__.__name__})",
            # No connection at all (a name that does not resolve, a network that is down), as opposed
            # to a server that answered badly: when every provider fails so, the network is the problem.
            unreachable=isinstance(exc, (httpx.ConnectError, httpx.NetworkError)),
        ) from None
    except httpx.InvalidURL as exc:  # a redirect to a Location httpx cannot parse
        raise ProviderError(provider, f"invalid URL ({exc})") from None
    except (net.TooLarge, net.UndecodableBody) as exc:
        raise ProviderError(provider, str(exc)) from None


_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")


def _root(page: str):
    """The page's lxml tree, or None when there is nothing to parse (an empty
    answer, or one lxml refuses): no results, not a crash."""
    import lxml.etree
    import lxml.html

    page = _XML_DECLARATION.sub("", page)  # lxml refuses a str that declares its encoding
    if not page.strip():
        return None
    try:
        return lxml.html.fromstring(page)
    except (lxml.etree.ParserError, ValueError):
        return None


def _text(node) -> str:
    return " ".join(node.text_content().split()) if node is not None else ""


# -- google ------------------------------------------------------------------


def parse_google(page: str) -> list[Hit]:
    root = _root(page)
    if root is None:
        return []
    hits: list[Hit] = []
    seen = set()
    # Organic results: div.Gx5Zad.fP1Qef in the no-JS layout (other Gx5Zad blocks are image
    # strips and related searches), div.ezO2md in the one googlesearch-python parses.
    organic = (
        '//div[contains(@class,"Gx5Zad") and contains(@class,"fP1Qef")] | //div[contains(@class,"ezO2md")]'
    )
    for block in root.xpath(organic):
        # Organic results link through /url?q=TARGET; image strips and widgets link directly.
        link = next(
            iter(
                block.xpath(
                    './/a[starts-with(@href,"/url?") or starts-with(@href,"https://www.google.com/url?")]'
                )
            ),
            None,
        )
        if link is None:
            continue
        href = parse_qs(urlsplit(link.get("href", "")).query).get("q", [""])[0]
        if not href.startswith("http") or urlsplit(href).netloc.endswith("google.com") and "/search" in href:
            continue
        title = _text(
            next(
                iter(
                    block.xpath(
                        './/h3//div[contains(@class,"BNeawe")] | .//span[contains(@class,"CVA68e")] | .//h3'
                    )
                ),
                None,
            )
        )
        # The innermost snippet div: outer ones also hold the sitelinks row.
        snippet = _text(
            next(
                iter(
                    block.xpath(
                        './/div[contains(@class,"s3v9rd") and not(.//div[contains(@class,"s3v9rd")]) and '
                        "not(.//a)]"
                        ' | .//span[contains(@class,"FrIlee")]'
                    )
                ),
                None,
            )
        )
        if title and href not in seen:
            seen.add(href)
            hits.append(Hit(href, title, snippet, "google"))
    return hits


@dataclass
class GoogleProvider:
    endpoint: str = "https://www.google.com"
    lang: str = "ko"
    name: str = "google"
    deadline: float = 20.0  # seconds for the whole request

    def search(self, query: str, n: int) -> list[Hit]:
        response = _get(
            self.name,
            f"{self.endpoint}/search",
            self.deadline,
            params={"q": query, "num": n + 2, "hl": self.lang},
            headers={"User-Agent": LYNX_UA, "Accept": "*/*"},
        )
        if response.status_code == 429:
            raise ProviderError(self.name, "HTTP 429: Google is rate-limiting this address")
        body = response.text
        if "/sorry/" in response.url or "unusual traffic" in body:
            raise ProviderError(self.name, "Google answered with a CAPTCHA (/sorry/) page")
        if (
            "browser isn't supported" in body
            or "browser is no longer supported" in body
            or "Update your browser" in body
        ):
            raise ProviderError(self.name, 'Google refused the client ("browser isn\'t supported")')
        if response.status_code >= 400:
            raise ProviderError(self.name, f"HTTP {response.status_code}")
        return parse_google(body)[:n]


# -- duckduckgo --------------------------------------------------------------


def parse_duckduckgo(page: str) -> list[Hit]:
    root = _root(page)
    if root is None:
        return []
    hits = []
    for block in root.xpath('//div[contains(@class,"result") and contains(@class,"web-result")]'):
        if "result--ad" in block.get("class", ""):
            continue
        link = next(iter(block.xpath('.//a[contains(@class,"result__a")]')), None)
        if link is None:
            continue
        href = link.get("href", "")
        if "duckduckgo.com/l/" in href:  # redirect links carry the target in uddg
            href = parse_qs(urlsplit(href).query).get("uddg", [""])[0]
        if href.startswith("//"):
            href = "https:" + href
        parts = urlsplit(href)
        # The no-results page still holds one fake result pointing back at a search page.
        if not href.startswith("http") or parts.path.startswith("/search") and "q=" in parts.query:
            continue
        snippet = _text(next(iter(block.xpath('.//*[contains(@class,"result__snippet")]')), None))
        hits.append(Hit(href, _text(link), snippet, "duckduckgo"))
    return hits


@dataclass
class DuckDuckGoProvider:
    endpoint: str = "https://html.duckduckgo.com/html/"
    name: str = "duckduckgo"
    deadline: float = 20.0

    def search(self, query: str, n: int) -> list[Hit]:
        response = _get(
            self.name,
            self.endpoint,
            self.deadline,
            params={"q": query, "kl": "kr-kr"},
            headers={"User-Agent": BROWSER_UA},
        )
        if response.status_code in (202, 403, 429):
            raise ProviderError(
                self.name, f"HTTP {response.status_code}: DuckDuckGo is rate-limiting this address"
            )
        if response.status_code >= 400:
            raise ProviderError(self.name, f"HTTP {response.status_code}")
        return parse_duckduckgo(response.text)[:n]


# -- searxng -----------------------------------------------------------------


def _string(value) -> str | None:
    return value if isinstance(value, str) else None


def parse_searxng(data) -> list[Hit]:
    """SearXNG's JSON answer → Hits. An answer of another shape is a ProviderError;
    single results not shaped as documented (no string url, a non-string title) are dropped."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise ProviderError("searxng", "the answer was not SearXNG's JSON (no list of results)")
    hits = []
    for item in results:
        if not isinstance(item, dict):
            continue
        url, title, content = item.get("url"), item.get("title"), item.get("content")
        if (
            not isinstance(url, str)
            or not url.startswith("http")
            or not all(v is None or isinstance(v, str) for v in (title, content))
        ):
            continue
        hits.append(Hit(url, (title or url).strip(), (content or "").strip(), "searxng"))
    return hits


def check_base_url(url: str) -> str | None:
    """Why a SearXNG base URL is unusable, or None."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # reading it raises ValueError on a bad port
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "it must start with http:// or https://"
    if not parts.hostname:
        return "it names no host"
    if any(c.isspace() for c in url) or any(ord(c) < 32 for c in url):
        return "it contains spaces or control characters"
    return None


@dataclass
class SearxngProvider:
    base_url: str | None = None
    name: str = "searxng"
    deadline: float = 20.0

    def search(self, query: str, n: int) -> list[Hit]:
        base = self.base_url or os.environ.get("KORANI_SEARXNG_URL")
        if not base:
            raise ProviderError(self.name, "no instance configured (--searxng-url or KORANI_SEARXNG_URL)")
        response = _get(
            self.name,
            base.rstrip("/") + "/search",
            self.deadline,
            params={"q": query, "format": "json", "language": "ko"},
        )
        if response.status_code == 403:
            raise ProviderError(
                self.name, "HTTP 403: enable the json format in the instance's settings.yml (search.formats)"
            )
        if response.status_code >= 400:
            raise ProviderError(self.name, f"HTTP {response.status_code}")
        return parse_searxng(response.json(self.name))[:n]


# -- naver -------------------------------------------------------------------

_TAGS = re.compile(r"<[^>]+>")


def strip_markup(text: str) -> str:
    return htmllib.unescape(_TAGS.sub("", text or "")).strip()


def parse_naver(data) -> list[Hit]:
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise ProviderError("naver", "the answer was not the Naver API's JSON (no list of items)")
    hits = []
    for item in items:
        if not isinstance(item, dict):
            continue
        url = _string(item.get("originallink")) or _string(item.get("link"))
        if url and url.startswith("http"):
            hits.append(
                Hit(
                    url,
                    strip_markup(_string(item.get("title")) or ""),
                    strip_markup(_string(item.get("description")) or ""),
                    "naver",
                )
            )
    return hits


@dataclass
class NaverProvider:
    endpoint: str = "https://openapi.naver.com/v1/search"
    kinds: tuple = ("webkr", "news", "blog")
    name: str = "naver"
    deadline: float = 20.0  # for each of the kinds' requests

    def search(self, query: str, n: int) -> list[Hit]:
        cid, secret = os.environ.get("NAVER_CLIENT_ID"), os.environ.get("NAVER_CLIENT_SECRET")
        if not cid or not secret:
            raise ProviderError(
                self.name, "set NAVER_CLIENT_ID and NAVER_CLIENT_SECRET (developers.naver.com)"
            )
        hits: list[Hit] = []
        headers = {"X-Naver-Client-Id": cid, "X-Naver-Client-Secret": secret}
        for kind in self.kinds:
            response = _get(
                self.name,
                f"{self.endpoint}/{kind}.json",
                self.deadline,
                params={"query": query, "display": n},
                headers=headers,
            )
            if response.status_code in (401, 403):
                raise ProviderError(
                    self.name, f"HTTP {response.status_code}: the client id/secret were refused"
                )
            if response.status_code >= 400:
                continue
            hits.extend(parse_naver(response.json(self.name)))
        seen, unique = set(), []
        for hit in hits:
            if hit.url not in seen:
                seen.add(hit.url)
                unique.append(hit)
        return unique[: n * 2]


# -- local -------------------------------------------------------------------

LOCAL_SUFFIXES = (".html", ".htm", ".md", ".txt", ".pdf")


@dataclass
class LocalProvider:
    """Every readable file under `directory`, as file:// hits.

    Symbolic links that lead out of the directory (a `passwd.txt` pointing at
    a file elsewhere, a link to `~`) are skipped, as are links to
    directories: the user chose this directory, not what its links reach.
    `follow_links` (--follow-links) follows both, each directory once (a link
    loop ends there). Only regular files are read: a FIFO named `x.txt` would
    block the read forever."""

    directory: Path
    name: str = "local"
    follow_links: bool = False

    def search(self, query: str, n: int) -> list[Hit]:
        if not self.directory.is_dir():
            what = "does not exist" if not self.directory.exists() else "is not a directory"
            raise ProviderError(self.name, f"--local-dir {self.directory} {what}")
        # Every file is a candidate: the ranking stage decides, as for web pages.
        return [Hit(p.as_uri(), p.stem, "", "local") for p in self.files()]

    def files(self) -> list[Path]:
        import stat

        root = self.directory.resolve()
        found: list[Path] = []
        seen_dirs: set[tuple[int, int]] = set()
        for top, dirs, names in os.walk(root, followlinks=self.follow_links):
            here = Path(top)
            try:
                st = here.stat()
            except OSError:
                dirs[:] = []
                continue
            if (st.st_dev, st.st_ino) in seen_dirs:  # a link loop, or two links to one directory
                dirs[:] = []
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            dirs.sort()
            for name in sorted(names):
                path = here / name
                if path.suffix.lower() not in LOCAL_SUFFIXES:
                    continue
                try:
                    real = path.resolve(strict=True)
                    regular = stat.S_ISREG(real.stat().st_mode)
                except (OSError, RuntimeError):  # a dangling link, a link loop
                    continue
                if regular and (self.follow_links or real.is_relative_to(root)):
                    found.append(real)
        return list(dict.fromkeys(found))


# -- the chain ---------------------------------------------------------------

PROVIDERS = ("google", "duckduckgo", "searxng", "naver", "local")
DEFAULT_CHAIN = ("duckduckgo", "google")


class NoProvider(Exception):
    pass


def build(
    name: str,
    *,
    searxng_url: str | None = None,
    local_dir: Path | None = None,
    endpoints: dict | None = None,
    deadline: float | None = None,
    follow_links: bool = False,
) -> Provider:
    """A provider by name. `deadline`: seconds for each request (default: the
    request_timeout setting). A malformed SearXNG URL is a UsageError from the
    flag and a ConfigError from KORANI_SEARXNG_URL."""
    endpoints = endpoints or {}
    if name not in PROVIDERS:
        raise NoProvider(f"unknown provider '{name}' (choose from {', '.join(PROVIDERS)})")
    if name == "local":
        if local_dir is None:
            raise NoProvider("the local provider needs --local-dir DIR")
        return LocalProvider(local_dir, follow_links=follow_links)
    if name == "searxng":
        searxng_url = _searxng_base(searxng_url)
    if deadline is None:
        from korani_cli import net

        deadline = net.request_timeout()
    if name == "google":
        return GoogleProvider(endpoint=endpoints.get("google", "https://www.google.com"), deadline=deadline)
    if name == "duckduckgo":
        return DuckDuckGoProvider(
            endpoint=endpoints.get("duckduckgo", "https://html.duckduckgo.com/html/"), deadline=deadline
        )
    if name == "searxng":
        return SearxngProvider(base_url=searxng_url, deadline=deadline)
    return NaverProvider(
        endpoint=endpoints.get("naver", "https://openapi.naver.com/v1/search"), deadline=deadline
    )


def _searxng_base(flag: str | None) -> str | None:
    from korani_cli.errors import ConfigError, UsageError

    from_env = os.environ.get("KORANI_SEARXNG_URL")
    url = flag if flag is not None else from_env
    if not url:
        return None
    why = check_base_url(url)
    if why is None:
        return url
    shown = " ".join(url.split())[:80]
    if flag is not None:
        raise UsageError(
            f"--searxng-url {shown!r} is not a usable URL: {why}",
            "write it as http://HOST:PORT (your SearXNG instance)",
        )
    raise ConfigError(
        f"KORANI_SEARXNG_URL {shown!r} is not a usable URL: {why}",
        "set it to http://HOST:PORT (your SearXNG instance), or unset it",
    )


def search_chain(
    providers: list[Provider],
    query: str,
    n: int,
    notify: Callable[[str], None],
    failures: list[ProviderError] | None = None,
) -> tuple[list[Hit], str | None]:
    """The first provider that returns hits wins; each failure is one notice (and, when
    `failures` is given, appended to it)."""
    from korani_cli.search.types import Said

    for provider in providers:
        try:
            hits = provider.search(query, n)
        except ProviderError as exc:
            if failures is not None:
                failures.append(exc)
            ko = (
                f"{exc.provider}에 연결할 수 없습니다 ({exc.why.removeprefix('unreachable ').strip('()')})"
                if exc.unreachable
                else f"{exc.provider} 검색 실패 ({exc.why})"
            )
            notify(Said(f"{exc.provider}: {exc.why}; trying the next provider", f"{ko} — 다음 검색 엔진으로"))
            continue
        if hits:
            return hits, provider.name
        notify(
            Said(
                f"{provider.name}: no results; trying the next provider",
                f"{provider.name}: 검색 결과 없음 — 다음 검색 엔진으로",
            )
        )
    return [], None
