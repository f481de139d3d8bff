"""How a streamed answer looks on a terminal: Markdown, drawn once, stopped cleanly.

rich's `Live` redraws its whole renderable on every refresh by moving the cursor
up over what it drew before. Given the whole answer, that breaks as soon as the
answer is taller than the screen: the cursor cannot move up into the
scrollback, so the lines that scrolled off are printed again, and anything
written to the terminal meanwhile (a Ctrl-C marker on stderr) is drawn over.

So `AnswerView` gives `Live` only the block being written (the text after the
last blank line outside a code fence), cut to the screen's height, and prints
every finished block once, for good, above it. A finished block's rendering
does not change when text is added after it, so what was printed stays true.
`Live` is refreshed from this thread only (no refresh thread): every write to
the terminal happens here, so `InterruptGuard` can hold a Ctrl-C until a write
is complete and the screen is never left half-drawn.

A terminal discards the output it has not yet drawn when Ctrl-C is pressed
(unless its NOFLSH flag is set), which would cut a redraw in half, and echoes
`^C` where the cursor is, which can wrap it to a new line: either leaves rich's
cursor arithmetic pointing at the wrong lines. `InterruptGuard` sets NOFLSH and
turns echo off while an answer is shown (typed-ahead text is still read by the
next prompt), so the screen holds exactly the bytes written.

`LeftMarkdown` is rich's Markdown with every heading left-aligned (rich centres
`#` headings), as a terminal Markdown viewer draws them.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from typing import Iterator

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.markdown import Heading, Markdown
from rich.segment import Segment
from rich.text import Text

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


class LeftHeading(Heading):
    LEVEL_ALIGN = {tag: "left" for tag in Heading.LEVEL_ALIGN}


class LeftMarkdown(Markdown):
    elements = {**Markdown.elements, "heading_open": LeftHeading}

    def __init__(self, markup: str) -> None:
        super().__init__(markup, justify="left")


def split_blocks(text: str) -> tuple[list[str], str]:
    """(finished blocks, the block still being written). A block ends at a blank line
    outside a code fence; the text after the last such line may still grow."""
    blocks: list[str] = []
    current: list[str] = []
    fence: str | None = None
    lines = text.split("\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        match = _FENCE.match(line)
        if match and not last:
            mark = match.group(1)
            if fence is None:
                fence = mark[0] * 3
            elif mark.startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
        if fence is None and not last and not line.strip():
            if any(part.strip() for part in current):
                blocks.append("\n".join(current))
            current = []
            continue
        current.append(line)
    return blocks, "\n".join(current)


def _blank(line: list[Segment]) -> bool:
    """A line with nothing on it (a code block's padding row, which has a background, is not blank)."""
    return all(not seg.text.strip() and not (seg.style and seg.style.bgcolor) for seg in line)


class _Lines:
    """Rendered lines, drawn as they are; `height` keeps only the last ones (the newest text
    of a block taller than the screen)."""

    def __init__(self, lines: list[list[Segment]], height: int | None = None):
        self.lines = lines[-height:] if height else lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in self.lines:
            yield from line
            yield Segment.line()


class InterruptGuard:
    """While a write to the terminal is in progress a Ctrl-C waits for it to finish.

    Outside `writing()` Ctrl-C raises KeyboardInterrupt at once, as usual (it must
    still stop a generation that is waiting on the network)."""

    def __init__(self, terminal=None) -> None:
        self.depth = 0
        self.pending = False
        self._previous = None
        self._terminal = terminal  # a file on the terminal: NOFLSH on, echo off meanwhile
        self._modes = None

    def _handler(self, signum, frame) -> None:
        if self.depth:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        self._keep_output(True)
        return self

    def __exit__(self, *exc) -> None:
        self._keep_output(False)
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _keep_output(self, on: bool) -> None:
        try:
            import termios

            fd = self._terminal.fileno()
            if on:
                self._modes = termios.tcgetattr(fd)
                modes = list(self._modes)
                modes[3] = (modes[3] | termios.NOFLSH) & ~(termios.ECHO | getattr(termios, "ECHOCTL", 0))
                termios.tcsetattr(fd, termios.TCSANOW, modes)
            elif self._modes is not None:
                termios.tcsetattr(fd, termios.TCSANOW, self._modes)
                self._modes = None
        except (ImportError, AttributeError, ValueError, OSError):
            pass  # not a terminal (or no termios): nothing is flushed anyway

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending:
            self.pending = False
            raise KeyboardInterrupt


class AnswerView:
    """One answer as it streams: finished blocks printed once, the last one live."""

    def __init__(self, console: Console, guard: InterruptGuard):
        self.console, self.guard = console, guard
        self.text = ""
        self.printed = 0  # finished blocks already printed for good
        self.live = None

    def _lines(self, block: str) -> list[list[Segment]]:
        """`block` as rich draws it inside the whole answer: without the blank rows it would
        put around an element that starts or ends a document (blocks are one blank row apart)."""
        lines = self.console.render_lines(LeftMarkdown(block), pad=False)
        while lines and _blank(lines[0]):
            lines.pop(0)
        while lines and _blank(lines[-1]):
            lines.pop()
        return lines

    def _renderable(self, block: str):
        height = max(self.console.size.height - 1, 1) - (1 if self.printed else 0)
        body = _Lines(self._lines(block), max(height, 1))
        return Group(Text(""), body) if self.printed else body

    def _print_block(self, block: str) -> None:
        if self.printed:
            self.console.print()
        self.console.print(_Lines(self._lines(block)), end="")
        self.printed += 1

    def feed(self, chunk: str) -> None:
        from rich.live import Live

        self.text += chunk
        blocks, tail = split_blocks(self.text)
        with self.guard.writing():
            for block in blocks[self.printed :]:
                self._print_block(block)  # printed above the live block
            if not tail.strip():
                return
            if self.live is None:
                self.live = Live(
                    console=self.console,
                    auto_refresh=False,
                    transient=True,
                    vertical_overflow="visible",
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
                self.live.start()
            self.live.update(self._renderable(tail), refresh=True)

    def pause(self) -> None:
        """Take the live block off the screen (before something else is printed); it comes back with
        the next chunk."""
        if self.live is not None:
            with self.guard.writing():
                self.live.stop()
                self.live = None

    def finish(self) -> None:
        """Print what is still live for good: at the end, or when the answer is stopped."""
        with self.guard.writing():
            if self.live is not None:
                self.live.stop()  # transient: erased, then printed whole below
                self.live = None
            blocks, tail = split_blocks(self.text)
            for block in blocks[self.printed :] + ([tail] if tail.strip() else []):
                self._print_block(block)
