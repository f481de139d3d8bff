"""Page CPU work (decode + extract) on every core, in a small process pool.

readability and trafilatura are pure Python over lxml, so threads take turns
on the GIL: eight pages arriving together were parsed one after the other.
Worker processes parse them side by side. The pool is started by `warm()`
when a search begins, so the interpreters start and import the extractors
while the provider and the page servers are still answering; later searches
in the same process (a chat session) reuse it.

Worker processes import the program's main module again (multiprocessing's
rule), which is harmless only behind an `if __name__ == "__main__"` guard. So
the pool is opt-in: korani's entry points call `enable()`; a script that uses
korani as a library extracts in one thread unless it calls `enable()` itself.

Workers ignore SIGINT: Ctrl-C in a chat stops the answer, and the pool
survives for the next /검색. Whenever a pool cannot be had (one core, no
process support, a worker died), the work runs in one thread of this
process (`serial`) — slower, never wrong.

`shutdown()` stops the pool before the interpreter is torn down. The CLI calls
it on every way out (`cli.main`); left to the garbage collector at exit, a
pool that had just started printed "Exception ignored … weakref_cb" and a
traceback after a fast error, and once hung.

`KORANI_EXTRACT_WORKERS` sets the pool's size: 0 or 1 for no worker processes,
at most MAX_WORKERS; anything else is a configuration error (exit 5).
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_pool = None
_broken = False
_enabled = False


def enable(on: bool = True) -> None:
    global _enabled
    _enabled = on


def _init() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import readability  # noqa: F401
    import trafilatura  # noqa: F401

    import korani_cli.search.extract  # noqa: F401 - the point: pay the imports now


def _ready() -> bool:
    return True


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


MAX_WORKERS = 64


def _size() -> int:
    raw = os.environ.get("KORANI_EXTRACT_WORKERS", "").strip()
    if not raw:
        return min(cores(), 4)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_WORKERS:
        from korani_cli.errors import ConfigError
        from korani_cli.untrusted import clean_line

        raise ConfigError(
            f"KORANI_EXTRACT_WORKERS={clean_line(raw)[:40]!r} is not a whole number from 0 to {MAX_WORKERS}",
            "unset it (default: up to 4, one per core) or set 0 for no worker processes",
        )
    return value


def pool():
    """The process pool, or None where one would not help or cannot run."""
    global _pool, _broken
    if not _enabled or _broken:
        return None
    workers = _size()
    if workers < 2:  # one core, or KORANI_EXTRACT_WORKERS=0 or 1
        return None
    with _lock:
        if _pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            try:
                _pool = ProcessPoolExecutor(
                    workers, mp_context=multiprocessing.get_context(method), initializer=_init
                )
            except (OSError, ValueError, NotImplementedError):  # no /dev/shm, no semaphores, …
                _broken = True
                return None
        return _pool


_serial = None


def serial():
    """Where pages are parsed without a pool: one thread. Threads would take
    turns on the GIL anyway, and one at a time keeps readability, trafilatura
    and lxml clear of any doubt about running side by side."""
    global _serial
    with _lock:
        if _serial is None:
            from concurrent.futures import ThreadPoolExecutor

            _serial = ThreadPoolExecutor(1, thread_name_prefix="korani-extract")
        return _serial


def warm() -> None:
    """Start the workers now (non-blocking) so that they are ready when pages arrive."""
    executor = pool()
    if executor is None:
        return
    try:
        for _ in range(_size()):
            executor.submit(_ready)
    except (
        Exception
    ):  # a broken pool is noticed by the fetch that uses it (fetch._page_text), which discards it
        pass


def discard() -> None:
    """A worker died: drop the pool; the next search builds a fresh one."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None


def shutdown() -> None:
    """Stop the pool and the serial thread now, while the interpreter is whole.

    Queued work is cancelled and busy workers are ended: a page whose
    extraction is still running (deeply nested HTML can take half a minute)
    was already given up by the fetch deadline, and exit must not wait on it."""
    global _pool, _serial
    with _lock:
        pool_, serial_ = _pool, _serial
        _pool = _serial = None
    if pool_ is not None:
        # The executor keeps its processes and manager thread in private
        # attributes; there is no public way to stop a busy worker.
        processes = list((getattr(pool_, "_processes", None) or {}).values())
        manager = getattr(pool_, "_executor_manager_thread", None)
        try:
            pool_.shutdown(wait=False, cancel_futures=True)
        except Exception:  # a broken pool has nothing left to stop
            pass
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(timeout=5)
        if manager is not None:
            manager.join(timeout=5)
    if serial_ is not None:
        serial_.shutdown(wait=False, cancel_futures=True)


def page_text(data: bytes, charset: str | None, plain: bool, url: str) -> tuple[str, str, str | None]:
    """bytes → (title, text, encoding): what one worker does for one page."""
    from korani_cli.search.decode import decode_html
    from korani_cli.search.extract import extract
    from korani_cli.untrusted import clean

    html, encoding = decode_html(data, charset)
    if plain:
        return url, clean(html).strip(), encoding
    title, text = extract(html, url)
    return title, text, encoding
