"""Reading from servers korani does not control: a byte cap and a deadline.

Two things every request to a search provider, a web page or an
OpenAI-compatible server needs, whoever wrote the server:

- **A cap on decoded bytes.** Bodies are read raw and decoded here, chunk by
  chunk, with zlib's `max_length`, so a 1 MB gzip bomb never becomes more
  than `cap` bytes in memory (httpx's own decoder inflates a whole network
  chunk at once, ~64 MB for a bomb). Only gzip and deflate are asked for.
- **An overall deadline.** httpx's timeouts bound each read, so a server
  that sends one byte every few seconds keeps a request alive forever.
  `DeadlineBackend` is an httpcore network backend whose connects and reads
  never wait past the deadline of the request in progress.

It knows nothing about what the bodies mean (providers, fetch and the
openai backend decide that) nor about the SSRF guard (search/safety.py).
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from contextlib import contextmanager
from typing import AsyncIterator, Iterable, Iterator

# What korani can decode with a bound; a server that sends anything else is refused.
ACCEPT_ENCODING = "gzip, deflate"


class TooLarge(Exception):
    """The decoded body went past the cap."""


class UndecodableBody(Exception):
    """A content encoding korani did not ask for, or a corrupt compressed body."""


class _Inflater:
    """Bounded gzip/deflate decoding: never more than `room` bytes per call."""

    def __init__(self, encoding: str):
        self.encoding = encoding
        # wbits 47 = gzip or zlib header; "deflate" is zlib-wrapped, sometimes raw.
        self._obj = zlib.decompressobj(47 if encoding == "gzip" else 15)
        self._tail = b""
        self._started = False

    def feed(self, raw: bytes, room: int) -> bytes:
        data = self._tail + raw
        out = bytearray()
        while data and len(out) < room:
            try:
                piece = self._obj.decompress(data, room - len(out))
            except zlib.error as exc:
                if self.encoding == "deflate" and not self._started:
                    self._obj = zlib.decompressobj(-15)  # a raw deflate stream
                    self._started = True
                    continue
                raise UndecodableBody(f"corrupt {self.encoding} body ({exc})") from None
            self._started = True
            out += piece
            if self._obj.eof and self._obj.unused_data:  # a second gzip member
                data = self._obj.unused_data
                self._obj = zlib.decompressobj(47)
                continue
            data = self._obj.unconsumed_tail
        self._tail = data
        return bytes(out)


class BodyDecoder:
    """Raw body bytes → decoded bytes, at most `cap` of them (then TooLarge, or cut when `truncate`)."""

    def __init__(self, content_encoding: str | None, cap: int, truncate: bool = False):
        codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
        codings = [c for c in codings if c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ("gzip", "x-gzip", "deflate")):
            raise UndecodableBody(f"unsupported content encoding '{content_encoding}'")
        self._inflater = _Inflater("deflate" if codings == ["deflate"] else "gzip") if codings else None
        self.cap = cap
        self.truncate = truncate
        self.body = bytearray()
        self.full = False  # stop reading: the cap was reached

    def feed(self, raw: bytes) -> None:
        room = self.cap - len(self.body) + 1  # one byte more tells "over the cap"
        piece = self._inflater.feed(raw, room) if self._inflater else raw[:room]
        self.body += piece
        if len(self.body) > self.cap:
            if not self.truncate:
                raise TooLarge(f"the answer is larger than {self.cap / 1e6:g} MB")
            del self.body[self.cap :]
            self.full = True


def read_capped(response, cap: int, truncate: bool = False) -> bytes:
    """A streamed httpx response's body, decoded, at most `cap` bytes."""
    decoder = BodyDecoder(response.headers.get("content-encoding"), cap, truncate)
    for raw in response.iter_raw():
        decoder.feed(raw)
        if decoder.full:
            break
    return bytes(decoder.body)


async def aread_capped(response, cap: int, truncate: bool = False) -> bytes:
    decoder = BodyDecoder(response.headers.get("content-encoding"), cap, truncate)
    chunks: AsyncIterator[bytes] = response.aiter_raw()
    async for raw in chunks:
        decoder.feed(raw)
        if decoder.full:
            break
    return bytes(decoder.body)


def iter_lines_capped(response, cap: int) -> Iterator[str]:
    """Lines of a streamed text body (server-sent events), with the cap on each line."""
    decoder = BodyDecoder(response.headers.get("content-encoding"), cap)
    pending = b""
    for raw in response.iter_raw():
        decoder.feed(raw)
        pending += bytes(decoder.body)
        decoder.body.clear()
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", "replace")
        if len(pending) > cap:
            raise TooLarge(f"a line of the answer is longer than {cap / 1e6:g} MB")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", "replace")


def check_timeout(seconds: float, name: str = "request_timeout") -> float:
    """A deadline a user set must be a positive, finite number of seconds."""
    from korani_cli.errors import ConfigError

    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ConfigError(
            f"{name} must be a positive number of seconds, got {seconds!r}",
            f"set {name} (KORANI_REQUEST_TIMEOUT) to e.g. 20",
        )
    return float(seconds)


def request_timeout() -> float:
    """The user's deadline for one network request (settings' request_timeout, KORANI_REQUEST_TIMEOUT)."""
    from korani_cli.config import load_settings

    return check_timeout(load_settings().request_timeout)


# -- the deadline backend ---------------------------------------------------------


class DeadlineBackend:
    """An httpcore sync network backend whose waits end at the current deadline.

    `with backend.within(seconds):` sets the deadline for what the calling
    thread does with the client; every connect, TLS handshake, read and write
    waits at most until then, whatever the server trickles."""

    def __init__(self, inner=None, clock=time.monotonic):
        import httpcore

        self._inner = inner or httpcore.SyncBackend()
        self._local = threading.local()
        self._clock = clock  # a test's fake clock proves the mechanism without waiting on a busy machine

    @contextmanager
    def within(self, seconds: float):
        previous = getattr(self._local, "until", None)
        self._local.until = self._clock() + seconds
        try:
            yield
        finally:
            self._local.until = previous

    def clamp(self, timeout: float | None, what: str) -> float | None:
        import httpcore

        until = getattr(self._local, "until", None)
        if until is None:
            return timeout
        left = until - self._clock()
        if left <= 0:
            error = httpcore.ConnectTimeout if what == "connect" else httpcore.ReadTimeout
            raise error("past the request's overall deadline")
        return left if timeout is None else min(timeout, left)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable | None = None,
    ):
        stream = self._inner.connect_tcp(
            host,
            port,
            timeout=self.clamp(timeout, "connect"),
            local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream, self)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable | None = None
    ):
        return _DeadlineStream(
            self._inner.connect_unix_socket(
                path, timeout=self.clamp(timeout, "connect"), socket_options=socket_options
            ),
            self,
        )

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class _DeadlineStream:
    def __init__(self, stream, backend: DeadlineBackend):
        self._stream = stream
        self._backend = backend

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._backend.clamp(timeout, "read"))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._backend.clamp(timeout, "write"))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None, timeout: float | None = None):
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, self._backend.clamp(timeout, "connect")),
            self._backend,
        )

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


def use_backend(transport, backend, *, limits=None) -> None:
    """Give an httpx transport a connection pool that dials through `backend`.

    httpx 0.28 has no `network_backend` argument for its default transports
    (encode/httpx#3749 is still open), so the pool httpx built is replaced by
    the same kind of pool with our backend; `transport._pool` is the one
    private name relied on (pinned by tests/test_hostile_net.py)."""
    import httpcore
    import httpx

    limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=5.0)
    kind = (
        httpcore.AsyncConnectionPool
        if isinstance(transport, httpx.AsyncHTTPTransport)
        else httpcore.ConnectionPool
    )
    if not isinstance(transport._pool, kind):
        raise RuntimeError("httpx's transport changed shape; korani cannot pin its connections")
    transport._pool = kind(
        ssl_context=httpx.create_ssl_context(),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )


def deadline_client(timeout: float, **kwargs):
    """An httpx.Client whose requests can be given an overall deadline: (client, backend)."""
    import urllib.request

    import httpx

    backend = DeadlineBackend()
    headers = {"Accept-Encoding": ACCEPT_ENCODING, **kwargs.pop("headers", {})}
    if any(k in urllib.request.getproxies() for k in ("http", "https", "all")):
        # Behind HTTP(S)_PROXY the proxy does the dialling; httpx builds its proxy
        # pools itself, so only the per-read timeouts bound a request there.
        return httpx.Client(timeout=timeout, headers=headers, **kwargs), backend
    transport = httpx.HTTPTransport()
    use_backend(transport, backend)
    return httpx.Client(transport=transport, timeout=timeout, headers=headers, **kwargs), backend
