"""Hostile network cases (issue 15: items 0-3, 11, 12, and search's part of 14).

Only loopback servers are ever dialled. Names and "public" addresses are
played by stubs at the operating system's edge: `socket.getaddrinfo`
(answers per name, counted) and httpcore's two dialers, async and sync (each
records every address it is asked to connect to; a loopback address is really
connected, an address listed in `public` is played by the loopback server on the
same port, and anything else is refused without a packet being sent). Under
them `socket.socket.connect` refuses every address that is not loopback and
fails the test that reached it.
"""

from __future__ import annotations

import errno
import gzip
import ipaddress
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zlib

import pytest
from support import REPO, Site, free_port, run_korani

from korani_cli.search.cache import PageCache
from korani_cli.search.fetch import FetchOptions, fetch
from korani_cli.search.providers import (
    DuckDuckGoProvider,
    GoogleProvider,
    NaverProvider,
    SearxngProvider,
    search_chain,
)
from korani_cli.search.types import Hit

PUBLIC = "93.184.216.34"  # plays "a public web server"; never really dialled
OTHER = "93.184.216.35"  # another public address, unreachable in the stub network
IDN = "로컬호스트.example"


# -- stubs at the OS edge ---------------------------------------------------------------


class Net:
    """The stub network. Both of httpcore's dialers go through it: the async one
    (AnyIOBackend: page fetches) and the sync one (SyncBackend: providers, through
    net.DeadlineBackend, and any plain httpx.Client), so a name resolved by the stub
    is dialled where the stub says. Under them, `socket.socket.connect` refuses any
    address that is not loopback and records it in `escapes`: a dial that reaches
    a socket by any other path sends no packet, and the `net` fixture fails the test."""

    def __init__(self, monkeypatch):
        import httpcore

        self.answers: dict[str, list[list[str]]] = {}  # name → successive answers (the last repeats)
        self.lookups: list[str] = []
        self.dials: list[tuple[str, int]] = []
        self.public: set[str] = set()  # addresses the loopback server plays
        self.escapes: list = []  # non-loopback addresses a socket was asked to connect to
        real_gai = socket.getaddrinfo
        real_connect = httpcore.AnyIOBackend.connect_tcp
        real_sync_connect = httpcore.SyncBackend.connect_tcp
        real_socket_connect = socket.socket.connect
        real_socket_connect_ex = socket.socket.connect_ex
        net = self

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            name = host.decode() if isinstance(host, bytes) else str(host)
            try:
                ipaddress.ip_address(name.split("%")[0])
            except ValueError:
                pass
            else:
                return real_gai(host, port, family, type, proto, flags)
            key = name.rstrip(".").lower()
            net.lookups.append(key)
            if key not in net.answers:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            seq = net.answers[key]
            ips = seq[min(net.lookups.count(key), len(seq)) - 1]
            port = int(port or 0)
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
                if ":" in ip
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in ips
            ]

        def target(host, port) -> str:
            """Where a dial of (host, port) really goes: recorded, then loopback or refused."""
            try:
                ip = str(ipaddress.ip_address(host))
            except ValueError:  # dialling by name: resolve as a real dialler would, through the stub
                ip = getaddrinfo(host, port)[0][4][0]
            net.dials.append((ip, port))
            if ipaddress.ip_address(ip).is_loopback:
                return ip
            if ip in net.public:
                return "127.0.0.1"
            raise httpcore.ConnectError(f"test network: {ip} is not reachable (no packet sent)")

        async def connect_tcp(self_, host, port, timeout=None, local_address=None, socket_options=None):
            return await real_connect(
                self_,
                target(host, port),
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            )

        def sync_connect_tcp(self_, host, port, timeout=None, local_address=None, socket_options=None):
            return real_sync_connect(
                self_,
                target(host, port),
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            )

        def outside(sock, address) -> bool:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return False  # a Unix socket path, a socketpair
            try:
                return not ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback
            except ValueError:  # a name handed to connect() itself: not loopback as far as we know
                return True

        def socket_connect(sock, address):
            if outside(sock, address):
                net.escapes.append(address)
                raise ConnectionRefusedError(f"test network: connect to {address} refused (no packet sent)")
            return real_socket_connect(sock, address)

        def socket_connect_ex(sock, address):
            if outside(sock, address):
                net.escapes.append(address)
                return errno.ECONNREFUSED
            return real_socket_connect_ex(sock, address)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect_tcp)
        monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", sync_connect_tcp)
        monkeypatch.setattr(socket.socket, "connect", socket_connect)
        monkeypatch.setattr(socket.socket, "connect_ex", socket_connect_ex)

    def name(self, name: str, *answers: list[str]) -> None:
        self.answers[name] = list(answers)


@pytest.fixture
def net(monkeypatch):
    stub = Net(monkeypatch)
    yield stub
    # A connect that got past both dialers was refused, but whatever made it may have
    # swallowed the error: the test fails here instead of passing by accident.
    assert not stub.escapes, f"a socket was asked to connect outside the stub network: {stub.escapes}"


def test_the_sync_dialer_is_stubbed_too(net, site):
    """Providers dial with httpx's sync client (net.DeadlineBackend over httpcore's
    SyncBackend): a name the stub resolves to a public address is dialled there,
    played by the loopback server, and no socket is ever pointed at that address."""
    net.name("public.example", [PUBLIC])
    net.public.add(PUBLIC)
    site.routes["/search"] = (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"results": [{"url": "https://e.example/", "title": "부산", "content": "항구"}]}).encode(),
    )
    hits = SearxngProvider(base_url=f"http://public.example:{site.port}").search("부산", 3)
    assert [h.title for h in hits] == ["부산"]
    assert net.lookups == ["public.example"] and net.dials == [(PUBLIC, site.port)]
    assert site.seen == [("/search", f"public.example:{site.port}")] and net.escapes == []


def test_a_connect_past_both_dialers_is_refused_and_fails_the_test(net):
    """The last line: a socket asked for a public address by any other path (here
    socket.create_connection, as urllib would) is refused before a packet is sent."""
    net.name("elsewhere.example", [OTHER])
    with pytest.raises(ConnectionRefusedError, match="no packet sent"):
        socket.create_connection(("elsewhere.example", 80), timeout=1)
    with socket.socket() as raw:
        assert raw.connect_ex((PUBLIC, 443)) == errno.ECONNREFUSED
    assert net.escapes == [(OTHER, 80), (PUBLIC, 443)]
    net.escapes.clear()  # seen and refused; the fixture would fail any test that left one behind


HTML = {"Content-Type": "text/html; charset=utf-8"}
OK_PAGE = (
    "<html><head><title>공개 페이지</title></head><body><article><p>부산은 대한민국 제2의 도시이자 최대의 "
    "항구 도시이다. 해운대 해수욕장이 유명하다.</p></article></body></html>"
).encode()
SECRET = (
    "<html><head><title>내부</title></head><body><article><p>이것은 내부망에만 있는 비밀 문서이며 밖으로 "
    "나가면 안 된다. 관리자 암호 목록이다.</p></article></body></html>"
).encode()


@pytest.fixture
def site():
    s = Site({"/ok.html": (200, HTML, OK_PAGE), "/secret": (200, HTML, SECRET)})
    yield s
    s.close()


def one(url: str, **opts):
    return fetch([Hit(url, "t", "", "test")], FetchOptions(timeout=5, deadline=8, **opts))


# -- item 3: the guard's table, never dialled ------------------------------------------------

NAMES = {
    "localhost": [["127.0.0.1"]],
    "evil.example": [["10.1.1.1"]],
    "both.example": [[PUBLIC, "127.0.0.1"]],
    "six.example": [["::1"]],
    "mapped.example": [["::ffff:169.254.169.254"]],
    "meta.example": [["169.254.169.254"]],
    "cgnat.example": [["100.100.100.100"]],
    "nat64.example": [["64:ff9b::a9fe:a9fe"]],
    IDN.encode("idna").decode(): [["127.0.0.1"]],
    "6to4.example": [["2002:a00:1::1"]],
}

GUARD_TABLE = [
    # (url, fragment of the refusal)
    ("http://2130706433/", "loopback"),
    ("http://0x7f.1/", "loopback"),
    ("http://0x7f000001/", "loopback"),
    ("http://017700000001/", "loopback"),
    ("http://0177.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://127.0.0.1./", "loopback"),
    ("http://[::1]/", "loopback"),
    ("http://[::ffff:127.0.0.1]/", "loopback"),
    ("http://[::ffff:7f00:1]/", "loopback"),
    ("http://[::7f00:1]/", "loopback"),
    ("http://[2002:7f00:1::]/", "loopback"),
    ("http://[2002:c0a8:101::1]/", "private"),
    ("http://[64:ff9b::7f00:1]/", "loopback"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "private"),
    ("http://[fec0::1]/", "site-local"),
    ("http://[fc00::1]/", "private"),
    ("http://[fd12:3456::1]/", "private"),
    ("http://[fe80::1]/", "link-local"),
    ("http://100.64.1.1/", "carrier-grade NAT"),
    ("http://100.127.255.254/", "carrier-grade NAT"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://0/", "unspecified"),
    ("http://[::]/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://239.255.255.250/", "multicast"),
    ("http://[ff02::1]/", "multicast"),
    ("http://[ff0e::1]/", "multicast"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://240.0.0.1/", "reserved"),
    ("http://255.255.255.255/", "reserved"),
    ("http://10.0.0.1/", "private"),
    ("http://172.16.0.1/", "private"),
    ("http://192.168.0.1/", "private"),
    ("http://198.18.0.1/", "private"),
    ("http://192.0.0.1/", "private"),
    ("http://localhost/", "loopback"),
    ("http://localhost./", "loopback"),
    ("http://LOCALHOST:8080/", "loopback"),
    ("http://evil.example@127.0.0.1/", "loopback"),
    ("http://user:pw@127.0.0.1:80/", "loopback"),
    ("http://127.0.0.1:80@evil.example/", "private"),
    ("http://127.0.0.1#@evil.example/", "loopback"),
    ("http://127.0.0.1?@evil.example/", "loopback"),
    ("http://both.example/", "loopback"),
    ("http://six.example/", "loopback"),
    ("http://mapped.example/", "link-local"),
    ("http://meta.example/", "link-local"),
    ("http://cgnat.example/", "carrier-grade NAT"),
    ("http://nat64.example/", "link-local"),
    ("http://6to4.example/", "private"),
    (f"http://{IDN}/", "loopback"),
    (f"http://{IDN.upper()}./", "loopback"),
    ("http://nowhere.example/", "cannot resolve"),
    ("ftp://127.0.0.1/", "scheme 'ftp'"),
    ("gopher://127.0.0.1:70/", "scheme 'gopher'"),
    ("javascript:alert(1)", "scheme 'javascript'"),
    ("http:///path", "no host"),
    ("http://[::1/", "malformed"),
]


@pytest.mark.parametrize("url, why", GUARD_TABLE, ids=[u for u, _ in GUARD_TABLE])
def test_the_guard_refuses_every_form_without_dialling(net, url, why):
    for name, answers in NAMES.items():
        net.name(name, *answers)
    report = one(url)
    assert not report.pages
    assert len(report.failures) == 1 and why in report.failures[0].reason, report.failures
    assert net.dials == []  # refused before any connection was attempted


def test_a_public_name_is_dialled_at_its_checked_address_with_its_host_header(net, site):
    """The control for the table: the stubs do carry a fetch, and the dial goes to the checked IP."""
    net.name("public.example", [PUBLIC])
    net.public.add(PUBLIC)
    report = one(f"http://public.example:{site.port}/ok.html")
    assert [p.title for p in report.pages] == ["공개 페이지"], report.failures
    assert net.dials == [(PUBLIC, site.port)] and net.lookups == ["public.example"]
    assert site.seen == [("/ok.html", f"public.example:{site.port}")]  # the name, not the IP, in Host


# -- item 1: DNS rebinding -------------------------------------------------------------


def test_dns_rebinding_cannot_reach_loopback(net, site):
    """Public on the first answer, loopback on the second: the one checked is the one dialled."""
    net.name("rebind.example", [PUBLIC], ["127.0.0.1"])
    report = one(f"http://rebind.example:{site.port}/secret")
    assert not report.pages and not site.seen  # the loopback page was never requested
    assert net.lookups == ["rebind.example"]  # resolved once
    assert net.dials == [(PUBLIC, site.port)]  # ... and that answer is what was dialled


def test_rebinding_on_a_redirect_hop_is_refused(net, site):
    net.name("public.example", [PUBLIC])
    net.public.add(PUBLIC)
    net.name("hop.example", [OTHER], ["127.0.0.1"])
    site.routes["/go"] = (302, {"Location": f"http://hop.example:{site.port}/secret"}, b"")
    report = one(f"http://public.example:{site.port}/go")
    assert not report.pages and all(path != "/secret" for path, _ in site.seen)
    assert net.lookups == ["public.example", "hop.example"]  # once per name
    assert net.dials == [(PUBLIC, site.port), (OTHER, site.port)]  # the checked answers, never loopback


def test_a_redirect_to_the_metadata_service_is_refused_at_the_hop(net, site):
    """(Was tests/test_search.py's, which dialled 169.254.169.254 for real.)"""
    net.name("public.example", [PUBLIC])
    net.name("meta.example", ["169.254.169.254"])
    net.public.add(PUBLIC)
    for target, why in (
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://meta.example/latest/", "link-local"),
        (f"http://127.0.0.1:{site.port}/secret", "loopback"),
        (f"http://[::ffff:127.0.0.1]:{site.port}/secret", "loopback"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("http://2130706433/", "loopback"),
    ):
        net.dials.clear()
        site.routes["/go"] = (302, {"Location": target}, b"")
        report = one(f"http://public.example:{site.port}/go")
        assert not report.pages and why in report.failures[0].reason, report.failures
        assert net.dials == [(PUBLIC, site.port)]
    assert ("/secret", f"127.0.0.1:{site.port}") not in site.seen


def test_page_fetches_ignore_proxy_environment(net, site, monkeypatch):
    """A proxy would resolve and dial names itself, past the guard."""
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    net.name("public.example", [PUBLIC])
    net.public.add(PUBLIC)
    report = one(f"http://public.example:{site.port}/ok.html")
    assert report.pages and net.dials == [(PUBLIC, site.port)]


@pytest.mark.slow
def test_allow_private_still_reads_loopback_end_to_end(site):
    serp = Site({})
    serp.routes["/search"] = (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"results": [{"url": site.base + "/ok.html", "title": "ok", "content": ""}]}).encode(),
    )
    try:
        proc = run_korani(
            "search",
            "부산",
            "-p",
            "searxng",
            "--searxng-url",
            serp.base,
            "--allow-private",
            "--embedder",
            "none",
            "--json",
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["passages"][0]["url"] == site.base + "/ok.html"
        refused = run_korani(
            "search", "부산", "-p", "searxng", "--searxng-url", serp.base, "--embedder", "none", timeout=120
        )
        assert refused.returncode == 7 and "loopback" in refused.stderr
    finally:
        serp.close()


# -- issue 20: with --allow-private, the URL check and the guard read a host alike ---------------

# Dotted quads with a leading zero: httpx alone calls these invalid (2130706433, 0x7f.1 and 127.1 it took).
LEGACY_LOOPBACK = ["0177.0.0.1", "127.0.0.01", "0177.0000.0000.0001"]


@pytest.mark.parametrize("host", LEGACY_LOOPBACK)
def test_allow_private_fetches_a_legacy_spelling_at_the_address_the_guard_read(net, site, host):
    """Before: the guard read 0177.0.0.1 as 127.0.0.1, and httpx then refused the URL ("invalid URL")."""
    report = one(f"http://{host}:{site.port}/ok.html", allow_private=True)
    assert [p.title for p in report.pages] == ["공개 페이지"], report.failures
    assert net.dials == [("127.0.0.1", site.port)] and net.lookups == []  # the judged address, no DNS
    assert report.pages[0].url == f"http://{host}:{site.port}/ok.html"  # the hit keeps its own URL


@pytest.mark.slow
def test_allow_private_reads_a_legacy_loopback_spelling_end_to_end(site):
    serp = Site({})
    url = f"http://0177.0.0.1:{site.port}/ok.html"
    serp.routes["/search"] = (
        200,
        {"Content-Type": "application/json"},
        json.dumps({"results": [{"url": url, "title": "ok", "content": ""}]}).encode(),
    )
    try:
        args = ("search", "부산", "-p", "searxng", "--searxng-url", serp.base, "--embedder", "none")
        proc = run_korani(*args, "--allow-private", "--json", timeout=120)
        assert proc.returncode == 0, proc.stderr
        # The page is cited where it was read, as a browser writes that URL.
        assert json.loads(proc.stdout)["passages"][0]["url"] == f"http://127.0.0.1:{site.port}/ok.html"
        refused = run_korani(*args, timeout=120)
        assert refused.returncode == 7 and "loopback address" in refused.stderr  # the guard still stands
    finally:
        serp.close()


def test_the_pool_replacement_httpx_relies_on_is_pinned():
    """net.use_backend swaps httpx's private `_pool`: fail loudly if httpx changes shape."""
    import httpcore
    import httpx

    from korani_cli import net as knet
    from korani_cli.search.safety import GuardedBackend

    transport = httpx.AsyncHTTPTransport()
    backend = GuardedBackend(False)
    knet.use_backend(transport, backend)
    assert (
        isinstance(transport._pool, httpcore.AsyncConnectionPool)
        and transport._pool._network_backend is backend
    )


# -- item 2: the cache re-checks the chain ---------------------------------------------------


def test_a_page_cached_under_allow_private_is_not_served_without_it(net, site, tmp_path):
    net.name("public.example", [PUBLIC])
    net.public.add(PUBLIC)
    for loop in (f"http://127.0.0.1:{site.port}/secret", f"http://[::1]:{site.port}/secret"):
        if "::1" in loop and not socket.has_ipv6:
            continue
        site.routes["/launder"] = (302, {"Location": loop}, b"")
        url = f"http://public.example:{site.port}/launder"
        cache = PageCache(tmp_path / "search.sqlite")
        try:
            first = fetch([Hit(url, "t", "", "t")], FetchOptions(allow_private=True), cache)
            if not first.pages and "::1" in loop:
                continue  # no IPv6 loopback here
            assert first.pages and "비밀 문서" in first.pages[0].text
            for offline in (False, True):
                again = fetch([Hit(url, "t", "", "t")], FetchOptions(offline=offline), cache)
                assert not again.pages, (loop, offline)
                assert "loopback" in again.failures[0].reason
            # A run that allows private addresses may still read it.
            assert fetch(
                [Hit(url, "t", "", "t")], FetchOptions(allow_private=True, offline=True), cache
            ).pages
        finally:
            cache.close()


def test_a_public_chain_is_served_from_the_cache_without_dns(net, site, tmp_path):
    net.name("public.example", [PUBLIC])
    net.public.add(PUBLIC)
    site.routes["/go"] = (302, {"Location": "/ok.html"}, b"")
    url = f"http://public.example:{site.port}/go"
    cache = PageCache(tmp_path / "search.sqlite")
    try:
        assert fetch([Hit(url, "t", "", "t")], FetchOptions(), cache).pages
        lookups, seen = len(net.lookups), len(site.seen)
        for offline in (False, True):
            again = fetch([Hit(url, "t", "", "t")], FetchOptions(offline=offline), cache)
            assert again.pages and again.pages[0].from_cache
        assert len(net.lookups) == lookups and len(site.seen) == seen
    finally:
        cache.close()


def test_an_old_cache_file_loses_its_pages_of_unknown_origin(tmp_path):
    path = tmp_path / "search.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE pages (url TEXT PRIMARY KEY, final_url TEXT, title TEXT, text TEXT, content_type TEXT, "
        "encoding TEXT, fetched_at REAL)"
    )
    db.execute("CREATE TABLE searches (query TEXT PRIMARY KEY, hits TEXT, fetched_at REAL)")
    db.execute(
        "INSERT INTO pages VALUES ('http://public.example/', 'http://[::1]/', 't', '비밀', 'text/html', "
        "'utf-8', ?)",
        (time.time(),),
    )
    db.execute(
        "INSERT INTO searches VALUES ('q', ?, ?)",
        (json.dumps([["http://a.example/", "a", "", "x"]]), time.time()),
    )
    db.commit()
    db.close()
    cache = PageCache(path)
    try:
        assert cache.get("http://public.example/", any_age=True) is None
        assert [h.url for h in cache.get_hits("q")] == ["http://a.example/"]
    finally:
        cache.close()


# -- item 14: a damaged search.sqlite -----------------------------------------------------------


def _damage(kind: str, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        cache = PageCache(path)
        for i in range(200):
            cache.put_hits(f"q{i}", [Hit(f"http://h{i}.example/", "t" * 200, "s" * 200, "x")])
        cache.close()
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind == "directory":
        path.mkdir()
    elif kind == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes to read-only files; cannot make a read-only cache here")
        PageCache(path).close()
        path.chmod(0o444)
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["garbage", "truncated", "directory", "read-only", "empty"])
def test_a_damaged_cache_is_rebuilt_or_bypassed_and_search_works(kind, site, tmp_path):
    home = tmp_path / "home"
    _damage(kind, home / "cache" / "search.sqlite")
    serp = Site(
        {
            "/search": (
                200,
                {"Content-Type": "application/json"},
                json.dumps(
                    {"results": [{"url": site.base + "/ok.html", "title": "ok", "content": ""}]}
                ).encode(),
            )
        }
    )
    try:
        proc = run_korani(
            "search",
            "부산",
            "-p",
            "searxng",
            "--searxng-url",
            serp.base,
            "--allow-private",
            "--embedder",
            "none",
            "--json",
            env={"KORANI_HOME": str(home)},
            timeout=120,
        )
    finally:
        serp.close()
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["passages"][0]["url"] == site.base + "/ok.html"
    assert "Traceback" not in proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "search cache" in line]
    assert len(notes) <= 1, proc.stderr
    if kind in ("garbage", "directory"):
        assert len(notes) == 1, proc.stderr


# -- item 14: SearXNG (and Naver) answers of the wrong shape fall through --------------------------

BAD_ANSWERS = [
    ("a list", b"[1, 2, 3]"),
    ("null", b"null"),
    ("results is a string", b'{"results": "abc"}'),
    ("results is null", b'{"results": null}'),
    ("a result is null", b'{"results": [null, 5, "x"]}'),
    ("url is a number", b'{"results": [{"url": 5, "title": "t"}]}'),
    ("title is a number", b'{"results": [{"url": "http://a.example/", "title": 5}]}'),
    ("content is a list", b'{"results": [{"url": "http://a.example/", "title": "t", "content": [1]}]}'),
    ("not JSON", b"<html>hello</html>"),
    ("invalid UTF-8", b'{"results": [{"url": "http://a.example/\xff"}]}'),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000),
    ("empty", b""),
]


@pytest.fixture
def serps():
    good = Site(
        {
            "/search": (
                200,
                {"Content-Type": "application/json"},
                json.dumps(
                    {"results": [{"url": "https://ok.example/", "title": "ok", "content": "c"}]}
                ).encode(),
            )
        }
    )
    bad = Site({})
    yield good, bad
    good.close()
    bad.close()


@pytest.mark.parametrize("case, body", BAD_ANSWERS, ids=[c for c, _ in BAD_ANSWERS])
def test_a_malformed_searxng_answer_falls_through(serps, case, body):
    good, bad = serps
    bad.routes["/search"] = (200, {"Content-Type": "application/json"}, body)
    notes: list[str] = []
    chain = [SearxngProvider(base_url=bad.base, deadline=5), SearxngProvider(base_url=good.base, deadline=5)]
    hits, used = search_chain(chain, "q", 5, notes.append)
    assert [h.url for h in hits] == ["https://ok.example/"]
    assert len(notes) == 1 and notes[0].startswith("searxng: "), notes


@pytest.mark.parametrize("case, body", BAD_ANSWERS, ids=[c for c, _ in BAD_ANSWERS])
def test_a_malformed_naver_answer_falls_through(serps, case, body, monkeypatch):
    good, bad = serps
    monkeypatch.setenv("NAVER_CLIENT_ID", "id")
    monkeypatch.setenv("NAVER_CLIENT_SECRET", "secret")
    for kind in ("webkr", "news", "blog"):
        bad.routes[f"/v1/search/{kind}.json"] = (
            200,
            {"Content-Type": "application/json"},
            body.replace(b'"results"', b'"items"'),
        )
    notes: list[str] = []
    chain = [
        NaverProvider(endpoint=bad.base + "/v1/search", deadline=5),
        SearxngProvider(base_url=good.base, deadline=5),
    ]
    hits, used = search_chain(chain, "q", 5, notes.append)
    assert used == "searxng" and len(notes) == 1 and notes[0].startswith("naver: "), notes


PAGES_THAT_ARE_NOT_RESULT_PAGES = [
    ("empty", b""),
    ("blank", b"   \n "),
    ("NUL bytes", b"\0" * 100),
    ("an XML declaration", b'<?xml version="1.0" encoding="utf-8"?><html><body>hi</body></html>'),
    ("invalid UTF-8", b"<html>\xff\xfe\xfd</html>"),
    ("deep nesting", b"<div>" * 50_000),
]


@pytest.mark.parametrize("name", ["google", "duckduckgo"])
@pytest.mark.parametrize(
    "case, body", PAGES_THAT_ARE_NOT_RESULT_PAGES, ids=[c for c, _ in PAGES_THAT_ARE_NOT_RESULT_PAGES]
)
def test_a_result_page_of_the_wrong_kind_falls_through(serps, name, case, body):
    good, bad = serps
    bad.routes["/search"] = bad.routes["/html/"] = (200, {"Content-Type": "text/html"}, body)
    notes: list[str] = []
    chain = [PROVIDERS[name](bad.base, 5), SearxngProvider(base_url=good.base, deadline=5)]
    hits, used = search_chain(chain, "q", 5, notes.append)
    assert used == "searxng" and len(notes) == 1 and notes[0].startswith(f"{name}: "), notes


BAD_URLS = [
    # (how it is given, value, exit code)
    ("flag", "localhost:8888", 2),
    ("flag", "127.0.0.1:8888", 2),
    ("flag", "http://", 2),
    ("flag", "http://exa mple.com", 2),
    ("flag", "ftp://127.0.0.1/", 2),
    ("flag", "http://127.0.0.1:99999", 2),
    ("flag", "http://127.0.0.1:port", 2),
    ("env", "localhost:8888", 5),
    ("env", "http://", 5),
    ("env", " http://a b", 5),
    ("env", "http://127.0.0.1:99999", 5),
]


@pytest.mark.slow  # one CLI start per row
@pytest.mark.parametrize("where, value, code", BAD_URLS)
def test_a_malformed_searxng_url_is_one_line(where, value, code):
    # --offline: the error comes before the extraction workers start, so this table does not
    # also measure the pool's shutdown at exit (issue 15 item 17, fixed elsewhere).
    args = ["search", "q", "-p", "searxng", "--embedder", "none", "--offline"]
    env = {"KORANI_SEARXNG_URL": value} if where == "env" else {}
    if where == "flag":
        args += ["--searxng-url", value]
    proc = run_korani(*args, env=env, timeout=60)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and ("KORANI_SEARXNG_URL" if where == "env" else "--searxng-url") in lines[0]
    )


# -- item 11: deadlines against servers that trickle or say nothing ---------------------------------


class RawServer:
    """A loopback TCP server that hands each connection to `handle(conn)`."""

    def __init__(self, handle):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.handle = handle
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            self.handle(conn, self.stop)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.stop.set()
        self.sock.close()


def _read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def trickle_body(conn, stop):
    """Headers at once, then one byte per half second: no single read ever times out."""
    _read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
    while not stop.wait(0.5):
        conn.sendall(b" ")


def trickle_headers(conn, stop):
    _read_request(conn)
    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
        if stop.wait(0.5):
            return
        conn.sendall(bytes([byte]))


def silent(conn, stop):
    _read_request(conn)
    stop.wait(120)


@pytest.fixture(
    params=[trickle_body, trickle_headers, silent], ids=["trickle-body", "trickle-headers", "silent"]
)
def slow_server(request):
    server = RawServer(request.param)
    yield server
    server.close()


PROVIDERS = {
    "google": lambda base, d: GoogleProvider(endpoint=base, deadline=d),
    "duckduckgo": lambda base, d: DuckDuckGoProvider(endpoint=base + "/html/", deadline=d),
    "searxng": lambda base, d: SearxngProvider(base_url=base, deadline=d),
    "naver": lambda base, d: NaverProvider(endpoint=base + "/v1/search", deadline=d),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", PROVIDERS)
def test_every_provider_ends_by_its_deadline(name, slow_server, serps, monkeypatch):
    monkeypatch.setenv("NAVER_CLIENT_ID", "id")
    monkeypatch.setenv("NAVER_CLIENT_SECRET", "secret")
    good, _ = serps
    notes: list[str] = []
    chain = [PROVIDERS[name](slow_server.base, 1.5), SearxngProvider(base_url=good.base, deadline=5)]
    start = time.monotonic()
    hits, used = search_chain(chain, "q", 5, notes.append)
    elapsed = time.monotonic() - start
    assert used == "searxng" and hits
    assert len(notes) == 1 and f"{name}: timed out" in notes[0], notes
    # Whether the deadline cuts the slow server off at all, on a machine of any load: without it the
    # trickle (2 bytes a second of a 100 kB body) or the trickled headers would run for minutes,
    # past this test's timeout. How exactly it cuts — never a wait past the deadline — is proved
    # on a fake clock below; a wall-clock bound this tight (1.5 s + 1.5 s) failed here once under load.
    assert elapsed < 1.5 + 15, elapsed


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TricklingNetwork:
    """httpcore's network backend interface, with no network: a connect takes `connect_s`, and each
    read returns one byte after `every` seconds of the fake clock — or, when the read's timeout is
    shorter, waits out the timeout and raises ReadTimeout, as a socket would. `every=None` never sends."""

    def __init__(self, clock: FakeClock, every: float | None, connect_s: float = 0.1):
        self.clock, self.every, self.connect_s = clock, every, connect_s
        self.timeouts: list[tuple[str, float | None]] = []
        self.dialled: list[tuple[str, int]] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        import httpcore

        self.timeouts.append(("connect", timeout))
        self.dialled.append((host, port))
        if timeout is not None and timeout < self.connect_s:
            self.clock.now += timeout
            raise httpcore.ConnectTimeout("fake connect timed out")
        self.clock.now += self.connect_s
        return self

    def read(self, max_bytes, timeout=None):
        import httpcore

        self.timeouts.append(("read", timeout))
        if self.every is None or (timeout is not None and timeout < self.every):
            self.clock.now += timeout
            raise httpcore.ReadTimeout("fake read timed out")
        self.clock.now += self.every
        return b" "

    def write(self, buffer, timeout=None):
        self.timeouts.append(("write", timeout))

    def close(self):
        pass


@pytest.mark.parametrize("every", [0.5, 0.05, None], ids=["trickle", "fast-trickle", "silent"])
def test_no_read_waits_past_the_request_deadline_on_a_fake_clock(every):
    """The mechanism behind every provider's deadline, on a fake clock so a busy machine cannot
    fail it: each connect and read is handed only the time left until the request's deadline
    (never the per-read timeout of 20 s), and the first one with no time left raises."""
    import httpcore

    from korani_cli.net import DeadlineBackend

    clock = FakeClock()
    network = TricklingNetwork(clock, every)
    backend = DeadlineBackend(inner=network, clock=clock)
    with backend.within(1.5):
        stream = backend.connect_tcp("127.0.0.1", 9, timeout=20)
        stream.write(b"GET / HTTP/1.1\r\n\r\n", timeout=20)
        received = b""
        with pytest.raises((httpcore.ReadTimeout, httpcore.ConnectTimeout)):
            while True:
                received += stream.read(1, timeout=20)
    assert clock.now == pytest.approx(1.5)  # ended at the deadline: not before, not after
    assert network.dialled == [("127.0.0.1", 9)]
    waits = [t for _, t in network.timeouts]
    assert waits[0] == pytest.approx(1.5) and all(t is not None and t <= 1.5 for t in waits)
    assert all(later <= earlier for earlier, later in zip(waits, waits[1:]))  # only ever less time left
    if every:
        # what arrived before the deadline was read (±1 for the fake clock's float sums)
        assert abs(len(received) - round((1.5 - 0.1) / every)) <= 1
    # Outside `within`, korani's per-read timeout passes through unchanged.
    assert backend.clamp(20, "read") == 20


# -- issue 20: an embedder or reranker that cannot be had is refused at once ------------------------------
#
# Before, `--embedder /nonexistent` waited for the providers and the pages, then spent ~20 s importing
# torch and sentence-transformers to find out, which printed lines of their own. What is asserted is
# the mechanism, not a time: neither library was imported and no provider was asked.

_REPORT_IMPORTS = (
    "import sys\nfrom korani_cli.cli import app\n"
    "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    code = e.code\n"
    "heavy = [m for m in ('torch', 'sentence_transformers') if m in sys.modules]\n"
    "sys.stderr.write('IMPORTED:' + ','.join(heavy))\n"
    "sys.exit(code)\n"
)

UNLOADABLE_ROWS = [
    # (flag, value ({t} = a scratch directory holding a.md), fragment of the one line)
    ("--embedder", "/nonexistent", "cannot load --embedder '/nonexistent': no such directory"),
    ("--embedder", "{t}/a.md", "it is not a directory"),
    ("--embedder", "org/not-cached", "the Hugging Face Hub is unreachable and it is not in the local cache"),
    ("--reranker", "org/not-cached", "the Hugging Face Hub is unreachable and it is not in the local cache"),
    ("--reranker", "{t}/missing", "cannot load --reranker"),
    ("--reranker", "not a name!", "it is neither a local directory nor a Hub id"),
    ("--embedder", "e" * 5000, "more than any path or Hub id can be"),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "flag, value, fragment", UNLOADABLE_ROWS, ids=[f"{r[0]} {r[1][:20]}" for r in UNLOADABLE_ROWS]
)
def test_an_embedder_or_reranker_that_cannot_load_is_refused_before_anything_loads(
    tmp_path, flag, value, fragment
):
    (tmp_path / "a.md").write_text("서울은 대한민국의 수도이다.", encoding="utf-8")
    serp = Site({"/search": (200, {"Content-Type": "application/json"}, b'{"results": []}')})
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                _REPORT_IMPORTS,
                "search",
                "서울",
                "-p",
                "searxng",
                "--searxng-url",
                serp.base,
            ]
            + [flag, value.format(t=tmp_path)],
            capture_output=True,
            text=True,
            env={**os.environ, "KORANI_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"},
            cwd=REPO,
            timeout=100,
        )
    finally:
        serp.close()
    err, imported = proc.stderr.rsplit("IMPORTED:", 1)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 3 and len(lines) == 1, proc.stderr[-2000:]
    assert fragment in lines[0] and f"or leave {flag} out" in lines[0] and len(lines[0]) < 400, lines[0]
    assert imported.strip() == ""  # decided before sentence-transformers (or torch) was imported
    assert serp.seen == []  # ... and before any provider was asked


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_korani_search_against_a_trickling_searxng_ends_with_exit_7(tmp_path):
    server = RawServer(trickle_body)
    (tmp_path / "a.md").write_text("부산은 항구 도시이다.", encoding="utf-8")
    try:
        env = {"KORANI_REQUEST_TIMEOUT": "2"}
        start = time.monotonic()
        alone = run_korani(
            "search",
            "q",
            "-p",
            "searxng",
            "--searxng-url",
            server.base,
            "--embedder",
            "none",
            env=env,
            timeout=90,
        )
        alone_s = time.monotonic() - start
        chained = run_korani(
            "search",
            "부산",
            "-p",
            "searxng",
            "-p",
            "local",
            "--local-dir",
            str(tmp_path),
            "--searxng-url",
            server.base,
            "--embedder",
            "none",
            "--json",
            env=env,
            timeout=90,
        )
    finally:
        server.close()
    assert alone.returncode == 7 and "searxng: timed out" in alone.stderr and "Traceback" not in alone.stderr
    assert alone_s < 2 + 20  # the deadline plus the CLI's own start-up on a loaded machine
    assert chained.returncode == 0 and "searxng: timed out" in chained.stderr
    assert json.loads(chained.stdout)["provider"] == "local"


@pytest.mark.slow  # one CLI start per row
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "abc"])
def test_a_bad_request_timeout_is_a_config_error(value):
    proc = run_korani(
        "search",
        "q",
        "-p",
        "duckduckgo",
        "--embedder",
        "none",
        "--offline",  # --offline: see above
        env={"KORANI_REQUEST_TIMEOUT": value},
        timeout=60,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 5 and len(lines) == 1 and "KORANI_REQUEST_TIMEOUT" in lines[0], proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "handler", [silent, trickle_body, trickle_headers], ids=["silent", "trickle-body", "trickle-headers"]
)
def test_an_openai_server_that_never_answers_fails_the_load_by_the_deadline(handler):
    server = RawServer(handler)
    try:
        start = time.monotonic()
        proc = run_korani(
            "ask",
            "--model",
            f"openai:m@{server.base}/v1",
            "안녕?",
            env={"KORANI_REQUEST_TIMEOUT": "2"},
            timeout=90,
        )
        elapsed = time.monotonic() - start
    finally:
        server.close()
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3 and len(lines) == 1 and "within 2 s" in lines[0], proc.stderr
    assert elapsed < 2 + 20


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stream", [True, False])
def test_an_openai_generation_that_trickles_ends_by_its_deadline(stream):
    from korani_cli.backends import GenerationParams
    from korani_cli.backends.openai import GENERATION_FACTOR
    from korani_cli.config import Settings
    from korani_cli.errors import GenerationError
    from korani_cli.models import load_backend, resolve
    from korani_cli.template import user

    def handle(conn, stop):
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(65536)
        if request.startswith(b"GET"):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            # The handler closes this connection when it returns: say so, or httpx may
            # send the next request down the closed keep-alive connection.
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        while not stop.wait(0.3):
            conn.sendall(b": keep-alive\n")  # an SSE comment: bytes, never an answer

    server = RawServer(handle)
    try:
        settings = Settings(request_timeout=0.1)
        backend = load_backend(resolve(f"openai:m@{server.base}/v1", settings), settings)
        start = time.monotonic()
        with pytest.raises(GenerationError, match="no complete answer"):
            backend.stream([user("hi")], GenerationParams(stream=stream)).text()
        assert time.monotonic() - start < GENERATION_FACTOR * 0.1 + 1.5
    finally:
        server.close()


# -- item 12: byte caps on decoded answers ------------------------------------------------------


def _bomb(size: int) -> bytes:
    out = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip
    chunk = b"a " * (1 << 19)
    parts = [out.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + out.flush()


@pytest.fixture(scope="module")
def heavy_site():
    bomb = _bomb(512 << 20)  # ~0.5 MB of gzip → 512 MB
    huge = b"a " * (100 << 20)  # 200 MB, sent as is
    site = Site(
        {
            "/bomb/search": (200, {"Content-Type": "application/json", "Content-Encoding": "gzip"}, bomb),
            "/huge/search": (200, {"Content-Type": "application/json"}, huge),
            "/bomb.txt": (200, {"Content-Type": "text/plain", "Content-Encoding": "gzip"}, bomb),
            "/huge.txt": (200, {"Content-Type": "text/plain"}, huge),
        }
    )
    yield site
    site.close()


CHILD = r"""
import resource, sys, json
from korani_cli.search.providers import (
    DuckDuckGoProvider, GoogleProvider, NaverProvider, ProviderError, SearxngProvider, search_chain,
)
from korani_cli.search.fetch import FetchOptions, fetch
from korani_cli.search.types import Hit
kind, url = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if kind == "provider":
    try:
        SearxngProvider(base_url=url, deadline=30).search("q", 5)
        outcome = "no error"
    except ProviderError as exc:
        outcome = exc.why
else:
    report = fetch(
        [Hit(url, "t", "", "t")],
        FetchOptions(allow_private=True, timeout=30, deadline=40, max_bytes=1_000_000),
    )
    outcome = f"{len(report.pages[0].text)} chars" if report.pages else report.failures[0].reason
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "grew_mb": (after - before) / 1024}))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "kind, path, expect",
    [
        ("provider", "/bomb", "larger than 5 MB"),
        ("provider", "/huge", "larger than 5 MB"),
        ("page", "/bomb.txt", "chars"),
        ("page", "/huge.txt", "chars"),
    ],
)
def test_answers_are_capped_while_decoding(heavy_site, kind, path, expect):
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, kind, heavy_site.base + path],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert expect in result["outcome"], result
    if kind == "page":
        assert int(result["outcome"].split()[0]) <= 1_000_000
    assert result["grew_mb"] < 40, result  # a few MB of cap, not hundreds of MB


def test_a_gzip_bomb_decodes_in_bounded_steps():
    from korani_cli.net import BodyDecoder, TooLarge

    bomb = gzip.compress(b"\0" * (64 << 20))
    decoder = BodyDecoder("gzip", cap=1_000_000, truncate=True)
    decoder.feed(bomb)
    assert len(decoder.body) == 1_000_000 and decoder.full
    with pytest.raises(TooLarge):
        BodyDecoder("gzip", cap=1_000_000).feed(bomb)
    multi = gzip.compress(b"one ") + gzip.compress(b"two")
    whole = BodyDecoder("x-gzip", cap=100)
    whole.feed(multi)
    assert bytes(whole.body) == b"one two"
    raw_deflate = zlib.compressobj(wbits=-15)
    plain = BodyDecoder("deflate", cap=100)
    plain.feed(raw_deflate.compress(b"raw deflate") + raw_deflate.flush())
    assert bytes(plain.body) == b"raw deflate"


# -- issue 20: an openai: model on another machine is announced before it is dialled ----------------------


class SyncDialer:
    """httpcore's sync dialer (what the openai backend's httpx client uses), stubbed: each dial is
    recorded with what stderr held at that moment; 10.0.0.1 and gpu-box.test are played by the
    loopback server on the same port, loopback is dialled for real, anything else is refused
    without a packet being sent."""

    PLAYED = {"10.0.0.1", "gpu-box.test"}

    def __init__(self, monkeypatch):
        import httpcore

        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        self.dials: list[tuple[str, int, str]] = []  # (host, port, stderr so far)
        real = httpcore.SyncBackend.connect_tcp
        dialer = self

        def connect_tcp(self_, host, port, timeout=None, local_address=None, socket_options=None):
            sys.stderr.flush()
            buffer = getattr(sys.stderr, "buffer", None)
            said = buffer.getvalue().decode("utf-8", "replace") if hasattr(buffer, "getvalue") else ""
            dialer.dials.append((host, port, said))
            if host in dialer.PLAYED:
                host = "127.0.0.1"
            elif host not in ("127.0.0.1", "localhost"):
                raise httpcore.ConnectError(f"test network: {host} is not reachable (no packet sent)")
            return real(
                self_, host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
            )

        monkeypatch.setattr(httpcore.SyncBackend, "connect_tcp", connect_tcp)


@pytest.fixture
def dialer(monkeypatch, tmp_path):
    monkeypatch.setenv("KORANI_HOME", str(tmp_path / "home"))
    for name in ("KORANI_OPENAI_BASE_URL", "OPENAI_BASE_URL", "KORANI_OPENAI_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    return SyncDialer(monkeypatch)


@pytest.fixture
def served():
    from support import ScriptServer

    server = ScriptServer("서울입니다.")
    yield server.server_address[1]
    server.shutdown()


REMOTE_ROWS = [
    # (host as typed, the notice names it as)
    ("10.0.0.1", "http://10.0.0.1"),
    ("gpu-box.test", "http://gpu-box.test"),
]


@pytest.mark.parametrize("how", ["ask --model", "chat --model", "/모델"])
@pytest.mark.parametrize("host, shown", REMOTE_ROWS, ids=[r[0] for r in REMOTE_ROWS])
def test_a_model_on_another_machine_is_announced_before_the_dial(dialer, served, scripted, how, host, shown):
    """Before: `/모델 openai:x@http://10.0.0.1/v1` connected to the private address the user typed
    without a word. Now one line names where it connects, printed before the first dial."""
    from typer.testing import CliRunner

    from korani_cli.cli import app

    runner = CliRunner()
    model = f"openai:scripted@http://{host}:{served}/v1"
    if how == "ask --model":
        result = runner.invoke(app, ["ask", "--model", model, "-t", "0", "수도는?"])
    elif how == "chat --model":
        result = runner.invoke(app, ["chat", "--model", model, "-t", "0"], input="수도는?\n")
    else:
        result = runner.invoke(
            app, ["chat", "--model", "scripted:s", "-t", "0"], input=f"/모델 {model}\n수도는?\n"
        )
        assert "모델을 바꿨습니다" in result.stdout, result.output
    assert result.exit_code == 0, result.output
    assert "서울입니다." in result.stdout  # the loopback server, playing that host, answered
    notices = [line for line in result.stderr.splitlines() if "not this machine" in line]
    assert notices == [
        f"note: connecting to {shown}:{served} (not this machine): your messages go to that server"
    ]
    assert dialer.dials and all(dial[0] == host for dial in dialer.dials)
    assert notices[0] in dialer.dials[0][2]  # said before the first connection was made


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_model_on_this_machine_needs_no_notice(dialer, served, host):
    from typer.testing import CliRunner

    from korani_cli.cli import app

    result = CliRunner().invoke(
        app, ["ask", "--model", f"openai:scripted@http://{host}:{served}/v1", "수도는?"]
    )
    assert result.exit_code == 0, result.output
    assert "서울입니다." in result.stdout and result.stderr == ""
    assert dialer.dials and dialer.dials[0][0] == host


def test_the_notice_never_shows_a_password_in_the_url():
    from korani_cli.models import remote_notice

    line = remote_notice("https://me:hunter2@10.0.0.1:8443/v1")
    assert line == "connecting to https://10.0.0.1:8443 (not this machine): your messages go to that server"
    assert remote_notice("http://[::ffff:127.0.0.1]:8000/v1") is None
    assert remote_notice("http://[::1]:8000") is None and remote_notice("http://api.localhost/v1") is None
    assert "http://[fd00::1]" in remote_notice("http://[fd00::1]/v1")
