"""The SSRF guard: page URLs taken from search results may only reach the public internet.

A search result can point anywhere — at 127.0.0.1, at a router on 192.168.x,
at the cloud metadata service on 169.254.169.254. Before every request (and
every redirect hop) the host is resolved and each address checked; loopback,
private (RFC 1918, fc00::/7), link-local, unspecified, multicast and reserved
addresses are refused, as are schemes other than http(s). `allow_private`
lifts the address check for trusted networks (and for tests that serve pages
on loopback). The configured provider endpoint itself is not subject to it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit


class UnsafeURL(Exception):
    """A URL the guard refuses; the message says why."""


def _blocked(ip: ipaddress._BaseAddress) -> str | None:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for attr, why in (
        # Most specific first: 0.0.0.0 and 169.254/16 are also "private" to Python.
        ("is_unspecified", "unspecified"), ("is_loopback", "loopback"), ("is_link_local", "link-local"),
        ("is_multicast", "multicast"), ("is_private", "private"), ("is_reserved", "reserved"),
    ):
        if getattr(ip, attr):
            return why
    return None


def check_scheme(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL(f"scheme '{parts.scheme or '(none)'}' is not http(s)")
    if not parts.hostname:
        raise UnsafeURL("no host")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, allow_private: bool = False) -> None:
    host, port = check_scheme(url)
    if allow_private:
        return
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
        addresses = [ip]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise UnsafeURL(f"cannot resolve {host} ({exc.strerror})") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for ip in addresses:
        why = _blocked(ip)
        if why:
            raise UnsafeURL(f"{host} resolves to a {why} address ({ip}); pass --allow-private for trusted networks")
