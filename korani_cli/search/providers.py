"""Search providers and the fallback chain that tries them in order.

Each provider turns a query into Hits or raises ProviderError saying why it
could not (blocked, unavailable, misconfigured). The chain prints a notice
for each failure and moves on; it never hangs (every request has a timeout)
and never crashes on a provider's account.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from korani_cli.search.types import Hit

TIMEOUT = 8.0
LYNX_UA = "Lynx/2.9.0dev.10 libwww-FM/2.14 SSL-MM/1.4.1 OpenSSL/1.1.1w"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


class ProviderError(Exception):
    def __init__(self, provider: str, why: str):
        super().__init__(f"{provider}: {why}")
        self.provider = provider
        self.why = why


class Provider(Protocol):
    name: str

    def search(self, query: str, n: int) -> list[Hit]: ...


def _client(**kw):
    import httpx

    return httpx.Client(timeout=httpx.Timeout(TIMEOUT), follow_redirects=True, **kw)


def _get(provider: str, url: str, **kw):
    import httpx

    try:
        with _client(headers=kw.pop("headers", {})) as client:
            return client.get(url, **kw)
    except httpx.TimeoutException:
        raise ProviderError(provider, f"timed out after {TIMEOUT:g} s") from None
    except httpx.HTTPError as exc:
        raise ProviderError(provider, f"unreachable ({exc.__class__.__name__})") from None


def _text(node) -> str:
    return " ".join(node.text_content().split()) if node is not None else ""


# -- google ------------------------------------------------------------------

def parse_google(page: str) -> list[Hit]:
    import lxml.html

    root = lxml.html.fromstring(page)
    hits: list[Hit] = []
    seen = set()
    # Organic results: div.Gx5Zad.fP1Qef in the no-JS layout (other Gx5Zad blocks are image
    # strips and related searches), div.ezO2md in the one googlesearch-python parses.
    organic = '//div[contains(@class,"Gx5Zad") and contains(@class,"fP1Qef")] | //div[contains(@class,"ezO2md")]'
    for block in root.xpath(organic):
        # Organic results link through /url?q=TARGET; image strips and widgets link directly.
        link = next(iter(block.xpath('.//a[starts-with(@href,"/url?") or starts-with(@href,"https://www.google.com/url?")]')), None)
        if link is None:
            continue
        href = parse_qs(urlsplit(link.get("href", "")).query).get("q", [""])[0]
        if not href.startswith("http") or urlsplit(href).netloc.endswith("google.com") and "/search" in href:
            continue
        title = _text(next(iter(block.xpath('.//h3//div[contains(@class,"BNeawe")] | .//span[contains(@class,"CVA68e")] | .//h3')), None))
        # The innermost snippet div: outer ones also hold the sitelinks row.
        snippet = _text(next(iter(block.xpath('.//div[contains(@class,"s3v9rd") and not(.//div[contains(@class,"s3v9rd")]) and not(.//a)]'
                                              ' | .//span[contains(@class,"FrIlee")]')), None))
        if title and href not in seen:
            seen.add(href)
            hits.append(Hit(href, title, snippet, "google"))
    return hits


@dataclass
class GoogleProvider:
    endpoint: str = "https://www.google.com"
    lang: str = "ko"
    name: str = "google"

    def search(self, query: str, n: int) -> list[Hit]:
        response = _get(self.name, f"{self.endpoint}/search", params={"q": query, "num": n + 2, "hl": self.lang},
                        headers={"User-Agent": LYNX_UA, "Accept": "*/*"})
        if response.status_code == 429:
            raise ProviderError(self.name, "HTTP 429: Google is rate-limiting this address")
        body = response.text
        if "/sorry/" in str(response.url) or "unusual traffic" in body:
            raise ProviderError(self.name, "Google answered with a CAPTCHA (/sorry/) page")
        if "browser isn't supported" in body or "browser is no longer supported" in body or "Update your browser" in body:
            raise ProviderError(self.name, "Google refused the client (\"browser isn't supported\")")
        if response.status_code >= 400:
            raise ProviderError(self.name, f"HTTP {response.status_code}")
        return parse_google(body)[:n]


# -- duckduckgo --------------------------------------------------------------

def parse_duckduckgo(page: str) -> list[Hit]:
    import lxml.html

    root = lxml.html.fromstring(page)
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

    def search(self, query: str, n: int) -> list[Hit]:
        response = _get(self.name, self.endpoint, params={"q": query, "kl": "kr-kr"}, headers={"User-Agent": BROWSER_UA})
        if response.status_code in (202, 403, 429):
            raise ProviderError(self.name, f"HTTP {response.status_code}: DuckDuckGo is rate-limiting this address")
        if response.status_code >= 400:
            raise ProviderError(self.name, f"HTTP {response.status_code}")
        return parse_duckduckgo(response.text)[:n]


# -- searxng -----------------------------------------------------------------

def parse_searxng(data: dict) -> list[Hit]:
    hits = []
    for item in data.get("results") or []:
        url = item.get("url")
        if isinstance(url, str) and url.startswith("http"):
            hits.append(Hit(url, (item.get("title") or url).strip(), (item.get("content") or "").strip(), "searxng"))
    return hits


@dataclass
class SearxngProvider:
    base_url: str | None = None
    name: str = "searxng"

    def search(self, query: str, n: int) -> list[Hit]:
        base = self.base_url or os.environ.get("KORANI_SEARXNG_URL")
        if not base:
            raise ProviderError(self.name, "no instance configured (--searxng-url or KORANI_SEARXNG_URL)")
        response = _get(self.name, base.rstrip("/") + "/search", params={"q": query, "format": "json", "language": "ko"})
        if response.status_code == 403:
            raise ProviderError(self.name, "HTTP 403: enable the json format in the instance's settings.yml (search.formats)")
        if response.status_code >= 400:
            raise ProviderError(self.name, f"HTTP {response.status_code}")
        try:
            return parse_searxng(response.json())[:n]
        except ValueError:
            raise ProviderError(self.name, "the answer was not JSON") from None


# -- naver -------------------------------------------------------------------

_TAGS = re.compile(r"<[^>]+>")


def strip_markup(text: str) -> str:
    return htmllib.unescape(_TAGS.sub("", text or "")).strip()


@dataclass
class NaverProvider:
    endpoint: str = "https://openapi.naver.com/v1/search"
    kinds: tuple = ("webkr", "news", "blog")
    name: str = "naver"

    def search(self, query: str, n: int) -> list[Hit]:
        cid, secret = os.environ.get("NAVER_CLIENT_ID"), os.environ.get("NAVER_CLIENT_SECRET")
        if not cid or not secret:
            raise ProviderError(self.name, "set NAVER_CLIENT_ID and NAVER_CLIENT_SECRET (developers.naver.com)")
        hits: list[Hit] = []
        headers = {"X-Naver-Client-Id": cid, "X-Naver-Client-Secret": secret}
        for kind in self.kinds:
            response = _get(self.name, f"{self.endpoint}/{kind}.json", params={"query": query, "display": n}, headers=headers)
            if response.status_code in (401, 403):
                raise ProviderError(self.name, f"HTTP {response.status_code}: the client id/secret were refused")
            if response.status_code >= 400:
                continue
            for item in response.json().get("items", []):
                url = item.get("originallink") or item.get("link")
                if url and url.startswith("http"):
                    hits.append(Hit(url, strip_markup(item.get("title", "")), strip_markup(item.get("description", "")), "naver"))
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


def build(name: str, *, searxng_url: str | None = None, local_dir: Path | None = None, endpoints: dict | None = None) -> Provider:
    endpoints = endpoints or {}
    if name == "google":
        return GoogleProvider(endpoint=endpoints.get("google", "https://www.google.com"))
    if name == "duckduckgo":
        return DuckDuckGoProvider(endpoint=endpoints.get("duckduckgo", "https://html.duckduckgo.com/html/"))
    if name == "searxng":
        return SearxngProvider(base_url=searxng_url)
    if name == "naver":
        return NaverProvider(endpoint=endpoints.get("naver", "https://openapi.naver.com/v1/search"))
    if name == "local":
        if local_dir is None:
            raise NoProvider("the local provider needs --local-dir DIR")
        return LocalProvider(local_dir)
    raise NoProvider(f"unknown provider '{name}' (choose from {', '.join(PROVIDERS)})")


def search_chain(providers: list[Provider], query: str, n: int, notify: Callable[[str], None]) -> tuple[list[Hit], str | None]:
    """The first provider that returns hits wins; each failure is one notice."""
    for provider in providers:
        try:
            hits = provider.search(query, n)
        except ProviderError as exc:
            notify(f"{exc.provider}: {exc.why}; trying the next provider")
            continue
        if hits:
            return hits, provider.name
        notify(f"{provider.name}: no results; trying the next provider")
    return [], None
