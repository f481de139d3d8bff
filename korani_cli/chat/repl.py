"""The read–eval–print loop: input in, events rendered out.

On a terminal: readline line editing and history, Tab completion of slash
commands, bytes that are not UTF-8 shown as � and refused with one line
(chat/utf8input.py), multi-line input, the answer drawn as Markdown while it streams
(chat/view.py: finished blocks printed once; model and web text never read as
rich markup), a transient status line for the stage, Ctrl-C stops an answer,
Ctrl-C at an empty prompt or Ctrl-D exits. With piped stdin: no line editor,
plain text, one input per line (or per block), so scripts and tests can drive it.
"""

from __future__ import annotations

import sys
from typing import Iterator, TextIO

from rich.console import Console
from rich.markup import escape

from korani_cli.chat.session import (
    Answered,
    AnswerText,
    ChatSession,
    ErrorLine,
    Event,
    Exit,
    Notice,
    Output,
    Stage,
)
from korani_cli.untrusted import clean, clean_line


def read_inputs(lines: Iterator[str]) -> Iterator[str]:
    """Whole inputs from raw lines: a \"\"\" block, or lines joined by a trailing backslash."""
    block: list[str] | None = None
    pending: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if block is not None:
            if line.strip() == '"""':
                yield "\n".join(block)
                block = None
            else:
                block.append(line)
            continue
        if line.strip() == '"""':
            block = []
            continue
        if line.endswith("\\"):
            pending.append(line[:-1])
            continue
        if pending:
            pending.append(line)
            line, pending = "\n".join(pending), []
        yield line
    if block:
        yield "\n".join(block)
    elif pending:
        yield "\n".join(pending)


def complete_command(text: str, state: int, begidx: int = 0) -> str | None:
    """readline's completer: the `state`-th slash command starting with `text`, at the start of the line."""
    from korani_cli.chat.session import COMMANDS

    if begidx != 0 or not text.startswith("/"):
        return None
    matches = [name + " " for name in COMMANDS if name.startswith(text)]
    return matches[state] if state < len(matches) else None


def _terminal_lines(prompt: str) -> Iterator[str]:
    """Lines from a terminal with readline; a triple-quote line or a trailing backslash continues."""
    import atexit

    from korani_cli import paths

    try:
        import readline  # line editing for input(); its history survives between chats
    except ImportError:
        readline = None
    if readline is not None:
        history_file = paths.data_dir() / "chat_input_history"
        try:
            history_file.parent.mkdir(parents=True, exist_ok=True)
            if history_file.exists():
                readline.read_history_file(history_file)
            readline.set_history_length(1000)
            atexit.register(readline.write_history_file, history_file)
        except OSError:
            pass  # a read-only home still gets a working chat
        readline.set_completer_delims(" \t\n")  # "/검" is one word to complete
        readline.set_completer(lambda text, state: complete_command(text, state, readline.get_begidx()))
        if "libedit" in (readline.__doc__ or ""):  # macOS's readline speaks another dialect
            readline.parse_and_bind("bind ^I rl_complete")
        else:
            readline.parse_and_bind("tab: complete")
    from korani_cli.chat import utf8input

    not_utf8 = utf8input.install(readline, sys.stdin.fileno()) if readline is not None else None
    in_block = pending = False
    while True:
        try:
            line = input("... " if in_block or pending else prompt)
            if not_utf8 is not None and not_utf8.take() and "\ufffd" in line:
                # Bytes that were not UTF-8, shown as � while editing and still there at Enter: the
                # session refuses the line as it refuses such bytes piped in (as lone surrogates),
                # instead of answering what was left of it.
                line = line.replace("\ufffd", "\udcff")
        except EOFError:
            print()  # Ctrl-D: the shell's prompt starts on a line of its own
            return
        except KeyboardInterrupt:
            print()
            if in_block or pending:
                in_block = pending = False
                continue
            return  # Ctrl-C at an empty prompt: leave cleanly
        if line.strip() == '"""':
            in_block = not in_block
        elif not in_block:
            pending = line.endswith("\\")
        yield line


def run(
    session: ChatSession, stdin: TextIO | None = None, out: Console | None = None, err: Console | None = None
) -> None:
    stdin = stdin or sys.stdin
    if stdin is None:
        from korani_cli.errors import UsageError

        raise UsageError(
            "stdin is closed, so there is nothing to chat with",
            "run korani chat in a terminal, or pipe the messages to it",
        )
    if hasattr(stdin, "reconfigure"):
        # Bytes that are not UTF-8 arrive as lone surrogates, which the session
        # refuses with one line, instead of a UnicodeDecodeError ending the chat.
        stdin.reconfigure(errors="surrogateescape")
    interactive = stdin.isatty() and sys.stdout.isatty()
    from korani_cli.console import err_console, out_console

    out = out or out_console()
    err = err or err_console()
    lines = _terminal_lines("나> ") if interactive else iter(stdin.readline, "")
    if interactive:
        err.print(
            f"[bold]korani chat[/bold] · {escape(clean_line(session.model_name))} · "
            "/도움말 로 명령어 보기, Ctrl-D 로 끝내기"
        )
    for text in read_inputs(lines):
        if not text.strip():
            continue
        if _render(session.handle(text), interactive, out, err):
            break


def _render(events: Iterator[Event], interactive: bool, out: Console, err: Console) -> bool:
    """Show one input's events; True when the chat should end.

    Every text shown is passed through `untrusted.clean` first: answers, notices
    and outputs can carry model or web text, and rich's escaping does not stop
    terminal control sequences. On a terminal the answer is drawn by
    `view.AnswerView`; Ctrl-C stops it and leaves on the screen exactly what
    was shown, then `(답변을 멈췄습니다)` on a line of its own."""
    if not interactive:
        return _render_plain(events, out, err)
    from korani_cli.chat.view import InterruptGuard

    with InterruptGuard(out.file) as guard:
        screen = _Screen(out, err, guard)
        try:
            for event in events:
                if isinstance(event, Exit):
                    return True
                screen.show(event)
        except KeyboardInterrupt:
            screen.finish_answer()  # what was shown stays, once
            events.close()  # stops generation; the partial answer is kept
            with guard.writing():
                err.print("[dim](답변을 멈췄습니다)[/dim]")
        finally:
            screen.close()
    return False


class _Screen:
    """One input's events on a terminal: a transient status line for the stage, the
    answer drawn by `view.AnswerView`, anything else printed between them. Every
    write goes through the InterruptGuard, so Ctrl-C never cuts a write in half."""

    def __init__(self, out: Console, err: Console, guard) -> None:
        from korani_cli.chat.view import AnswerView

        self.out, self.err, self.guard = out, err, guard
        self.view = AnswerView(out, guard)
        self.status = None

    def show(self, event: Event) -> None:
        if isinstance(event, Stage):
            self._stage(event.text)
        elif isinstance(event, AnswerText):
            self.stop_status()
            self.view.feed(clean(event.text))
        elif isinstance(event, Answered):
            self._answered(event)
        else:
            self.stop_status()
            self.view.pause()
            with self.guard.writing():
                _show(event, self.out, self.err)

    def _stage(self, text: str) -> None:
        with self.guard.writing():
            if self.status is None:
                self.status = self.err.status(f"{text}…")
                self.status.start()
            else:
                self.status.update(f"{text}…")

    def _answered(self, event: Answered) -> None:
        from korani_cli.chat.view import AnswerView

        self.stop_status()
        if not self.view.text:  # an answer that arrives whole
            self.view.feed(clean(event.text))
        self.view.finish()
        with self.guard.writing():
            if event.footnotes:
                self.out.print(escape(clean(event.footnotes)))
        self.view = AnswerView(self.out, self.guard)

    def stop_status(self) -> None:
        if self.status is not None:
            with self.guard.writing():
                self.status.stop()
            self.status = None

    def finish_answer(self) -> None:
        self.stop_status()
        self.view.finish()

    def close(self) -> None:
        self.stop_status()
        self.view.pause()


def _show(event: Event, out: Console, err: Console) -> None:
    """A notice, an error line or a command's output."""
    # One line each when read by a program; on a terminal wrapped at words, not cut mid-word.
    one_line = not err.is_terminal
    if isinstance(event, Notice):
        err.print(f"[dim]알림:[/dim] {escape(clean_line(event.text))}", soft_wrap=one_line)
    elif isinstance(event, ErrorLine):
        err.print(f"[bold red]{escape(clean_line(event.text))}[/bold red]", soft_wrap=one_line)
    elif isinstance(event, Output):
        out.print(_indented(clean(event.text)))


def _indented(text: str):
    """Command output whose wrapped lines keep the indent their line starts with (/출처's passages)."""
    from rich.console import Group
    from rich.padding import Padding
    from rich.text import Text

    rows = []
    for line in text.split("\n"):
        body = line.lstrip(" ")
        indent = len(line) - len(body)
        rows.append(Padding(Text(body), (0, 0, 0, indent), expand=False) if indent else Text(line))
    return Group(*rows)


def _render_plain(events: Iterator[Event], out: Console, err: Console) -> bool:
    """Piped: the answer's text as it comes, nothing drawn over."""
    answer: list[str] = []
    try:
        for event in events:
            if isinstance(event, AnswerText):
                answer.append(clean(event.text))
                out.file.write(answer[-1])
                out.file.flush()
            elif isinstance(event, Answered):
                if not answer:  # an answer that arrives whole
                    out.file.write(clean(event.text))
                out.file.write("\n")
                if event.footnotes:
                    out.print(escape(clean(event.footnotes)))
                out.file.flush()
                answer = []
            elif isinstance(event, Exit):
                return True
            elif not isinstance(event, Stage):
                _show(event, out, err)
    except KeyboardInterrupt:
        events.close()
        if answer:
            out.file.write("\n")
        err.print("(답변을 멈췄습니다)")
    return False
