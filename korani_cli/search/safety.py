"""The SSRF guard: page URLs taken from search results may only reach the public internet.

A search result can point anywhere — at 127.0.0.1, at a router on 192.168.x,
at the cloud metadata service on 169.254.169.254. The rule is "globally
routable or nothing": an address passes only if Python's `ipaddress` calls it
global and it is not multicast, reserved or site-local, after unwrapping the
IPv4 address inside IPv4-mapped (::ffff:), NAT64 (64:ff9b::/96),
IPv4-compatible (::a.b.c.d), 6to4 (2002::/16) and Teredo (2001::/32) forms.
Host spellings that C resolvers read as IPv4 (2130706433, 0x7f.1,
017700000001, a trailing dot) are parsed here the same way, and a URL so
spelled is fetched at the dotted quad the guard judged (`canonical_url`).

The check happens where the connection is made (`GuardedBackend`, an
httpcore network backend): the name is resolved once, every address is
checked, and the checked address is the one dialled — so a DNS answer that
changes between check and connect (rebinding) gains nothing. TLS SNI and the
Host header still carry the name. `allow_private` lifts the address check
for trusted networks (and for tests on loopback). The configured provider
endpoints themselves are not subject to it. Each connection's addresses are
recorded so the page cache can re-check where a cached page came from.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


class UnsafeURL(Exception):
    """A URL the guard refuses; the message says why."""


@dataclass(frozen=True)
class Hop:
    """One request of a fetch (the first URL or a redirect) and the addresses its host resolved to."""

    url: str
    addresses: tuple[str, ...]


def _embedded(ip: IPAddress) -> tuple[IPAddress, list[IPAddress]]:
    """(the address that decides, [IPv4 addresses it carries that must pass too])."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip, []
    if ip.ipv4_mapped:
        return ip.ipv4_mapped, []  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), []  # the NAT64 gateway dials that IPv4
    inner: list[IPAddress] = []
    if int(ip) >> 32 == 0 and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated)
        inner.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour:
        inner.append(ip.sixtofour)
    if ip.teredo:
        inner.extend(ip.teredo)
    return ip, inner


def _why(ip: IPAddress) -> str | None:
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    if not ip.is_global:
        return "non-global"
    return None


def _verdict(ip: IPAddress) -> tuple[str, IPAddress] | None:
    """(why, the address that failed: ip itself or an IPv4 address it carries), or None."""
    outer, inner = _embedded(ip)
    for candidate in (*inner, outer):
        why = _why(candidate)
        if why:
            return why, candidate
    return None


def blocked(ip: IPAddress) -> str | None:
    """Why this address may not be fetched without --allow-private, or None when it is globally routable."""
    verdict = _verdict(ip)
    if verdict is None:
        return None
    why, candidate = verdict
    return why if candidate == ip else f"{why} (it carries {candidate})"


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address inet_aton (and the WHATWG URL standard) reads in 1-4
    decimal, octal (0…) or hex (0x…) parts; None when the host is a name."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        try:
            if part[:2].lower() == "0x":
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part, 10) if part.isdigit() else int("x"))
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (5 - len(values)):
        return None
    number = last
    for i, v in enumerate(head):
        number += v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def literal_address(host: str) -> IPAddress | None:
    """The address a host spelling denotes without DNS, or None for a name."""
    host = host.strip("[]")
    if host.endswith(".") and not host.endswith(".."):
        host = host[:-1]
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    return _legacy_ipv4(host)


def canonical_url(url: str) -> str:
    """`url` with a host that spells an IPv4 address the legacy way (0177.0.0.1,
    2130706433, 0x7f.1, 127.1, a trailing dot) written as that address's dotted
    quad, as the WHATWG URL standard (and so a browser) reads it. httpx calls those
    spellings invalid URLs, so without this `--allow-private` refused an address
    the guard itself had read as 127.0.0.1."""
    parts = urlsplit(url)
    host = parts.hostname
    ip = literal_address(host) if host else None
    if not isinstance(ip, ipaddress.IPv4Address) or host == str(ip):
        return url
    userinfo, at, _ = parts.netloc.rpartition("@")
    port = f":{parts.port}" if parts.port is not None else ""
    return parts._replace(netloc=f"{userinfo}{at}{ip}{port}").geturl()


async def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the system resolver gives for host (one lookup)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeURL(f"cannot resolve {host} ({getattr(exc, 'strerror', None) or exc})") from None
    seen: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if ip not in seen:
            seen.append(ip)
    return seen


def refuse(host: str, addresses: Iterable[IPAddress]) -> None:
    for ip in addresses:
        verdict = _verdict(ip)
        if verdict:
            why, carried = verdict
            if literal_address(host) != ip:
                where = f"{host} resolves to {ip},"
            else:
                where = f"{host} is" if host.strip("[]") == str(ip) else f"{host} ({ip}) is"
            inside = f" (it carries {carried})" if carried != ip else ""
            raise UnsafeURL(f"{where} a {why} address{inside}; pass --allow-private for trusted networks")


async def addresses_for(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """Resolve once and check every answer: the addresses that may be dialled."""
    literal = literal_address(host)
    addresses = [literal] if literal is not None else await resolve(host, port)
    if not addresses:
        raise UnsafeURL(f"{host} resolves to no address")
    if not allow_private:
        refuse(host, addresses)
    return addresses


def check_scheme(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeURL(f"malformed URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"scheme '{parts.scheme or '(none)'}' is not http(s)")
    if not parts.hostname:
        raise UnsafeURL("no host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, allow_private: bool = False) -> list[IPAddress]:
    """The whole guard for one URL, without connecting (the fetch itself checks where it connects)."""
    host, port = check_scheme(url)
    return await addresses_for(host, port, allow_private)


def check_chain(hops: Iterable[Hop], allow_private: bool) -> None:
    """Today's guard over a page's recorded redirect chain (no DNS: the addresses it was served from)."""
    hops = list(hops)
    if not hops:
        raise UnsafeURL("no record of where this page came from")
    for hop in hops:
        host, _ = check_scheme(hop.url)
        if allow_private:
            continue
        if not hop.addresses:
            raise UnsafeURL(f"no record of the address {host} was fetched from")
        try:
            addresses = [ipaddress.ip_address(a) for a in hop.addresses]
        except ValueError:
            raise UnsafeURL(f"a damaged record of the address {host} was fetched from") from None
        try:
            refuse(host, addresses)
        except UnsafeURL as exc:
            raise UnsafeURL(f"cached from {hop.url}: {exc}") from None


class GuardedBackend:
    """An httpcore async network backend that connects only to checked addresses.

    One resolution per connection; every answer checked (unless
    allow_private); the checked IP dialled by the default backend, with TLS
    SNI left to httpcore (the URL's host). Unix sockets are refused."""

    def __init__(self, allow_private: bool, dial=None):
        import httpcore

        self.allow_private = allow_private
        self.dial = dial or httpcore.AnyIOBackend()
        # (host, port) as httpcore names the origin → every address used for it.
        self.seen: dict[tuple[str, int], list[str]] = {}

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options=None,
    ):
        import httpcore

        addresses = await addresses_for(host, port, self.allow_private)
        record = self.seen.setdefault((host, port), [])
        record.extend(str(a) for a in addresses if str(a) not in record)
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self.dial.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise UnsafeURL("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def addresses(self, url) -> tuple[str, ...]:
        """What this backend dialled for an httpx URL's origin."""
        port = url.port or (443 if url.scheme == "https" else 80)
        return tuple(self.seen.get((url.raw_host.decode("ascii"), port), ()))
