"""A model's Markdown answer, as it streams, cut into sentences to check and text to keep as written.

The footnote check (rag/answer.py) works sentence by sentence, and a
terminal shows a sentence only once it is checked. So the answer is read
incrementally: `Segmenter.feed(chunk)` returns the pieces whose end is
known, `finish()` the rest. Concatenated, the pieces are the answer exactly
as the model wrote it, minus echoed prompt lines — nothing is re-joined, so
line breaks, list items, headings, tables and code blocks survive.

A `Piece` is either prose (a sentence, with the [n] markers the model wrote
in it) or verbatim text: the white space between sentences, a line's
Markdown prefix (`- `, `1. `, `## `, `> `, indentation) and every line of a
fenced code block, which is never checked or marked.

A sentence ends at sentence-final punctuation followed by white space (any
markers written right after the punctuation stay with it), or at the end of
its line. Whether a sentence has ended is only decided once the text after
it rules out a marker still to come ("…이다. [1]" cites the sentence before
it), so a streamed answer cuts exactly where the whole answer would.

Echo: a small model sometimes repeats the prompt — the RAG instruction,
`질문: …`, a source's `[n] title (url)` header. A line that starts like one
of those (`echo` prefixes) is held until it ends and dropped when it is one;
the answer's last line, cut off while it could still become one, is dropped too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

_FENCE = re.compile(r"[ ]{0,3}(`{3,}|~{3,})")
_FENCE_START = re.compile(r"[ ]{0,3}(`{1,2}|~{1,2})")  # a line so far that may become a fence
# A line's Markdown prefix: indentation, list markers, heading marks, quote marks.
_PREFIX = re.compile(r"[ \t]*(?:(?:[-*+]|\d{1,3}[.)])[ \t]+|#{1,6}[ \t]+|>[ \t]?)*")
# What could still grow into more prefix once more text arrives.
_PREFIX_START = re.compile(r"\d{1,3}[.)]?|[-*+]|#{1,6}|>")
# A sentence end: final punctuation, the markers written right after it, then white space.
_END = re.compile(r"(?<=[.!?。…])((?:[ \t]*\[\d{1,2}\])*)([ \t]+|$)")
# Text after a candidate end that may still turn out to be markers of the sentence before.
_MAYBE_MARKERS = re.compile(r"(?:\[\d{0,2}\]?[ \t]*)*")
HEADING_CHARS = 60  # a longer "#" line is prose


@dataclass(frozen=True)
class Piece:
    text: str
    kind: str = "verbatim"  # verbatim | sentence | heading | row

    @property
    def prose(self) -> bool:
        return self.kind != "verbatim"


class Segmenter:
    """Feeds of streamed text in, decided pieces out; `finish()` flushes what is left."""

    def __init__(self, echo: Iterable[str] = ()):
        self.echo = tuple(e for e in echo if e)
        self.line = ""  # the current line, not yet ended by "\n"
        self.done = 0  # characters of `line` already handed out
        self.prefix_done = False
        self.heading = self.row = False
        self.in_code = False
        self.started = False  # anything but white space handed out yet
        self.held: list[Piece] = []  # white space, handed out only when more text follows it

    def feed(self, text: str) -> list[Piece]:
        out: list[Piece] = []
        for part in re.split(r"(?<=\n)", text):
            if not part:
                continue
            self.line += part
            if self.line.endswith("\n"):
                out += self._line_end()
            else:
                out += self._partial()
        return out

    def finish(self) -> list[Piece]:
        if self.line and self.done == 0 and not self.in_code and self._may_be_echo(self.line):
            # Cut off (by the length limit) while still the start of a prompt line: a base model
            # echoing a source header "[1] 제목 (" stopped halfway is an echo too, never a sentence.
            self._reset()
            self.held = []
            return []
        out = self._line_end() if self.line else []
        self.held = []  # white space at the end of the answer is not shown
        return out

    # -- one line --------------------------------------------------------------------

    def _reset(self) -> None:
        self.line, self.done, self.prefix_done = "", 0, False
        self.heading = self.row = False

    def _is_echo(self, line: str) -> bool:
        body = line.strip()
        return bool(body) and any(body.startswith(e) for e in self.echo)

    def _may_be_echo(self, line: str) -> bool:
        body = line.lstrip()
        return any(e.startswith(body) or body.startswith(e) for e in self.echo)

    def _line_end(self) -> list[Piece]:
        line = self.line
        pieces: list[Piece] = []
        if self.in_code or _FENCE.match(line):
            if _FENCE.match(line):
                self.in_code = not self.in_code
            pieces.append(Piece(line[self.done :]))
        elif self.done == 0 and self._is_echo(line):
            pass  # the prompt repeated back: never shown
        else:
            body = line[:-1] if line.endswith("\n") else line
            pieces += self._prose(body, complete=True)
            if line.endswith("\n"):
                pieces.append(Piece("\n"))
        self._reset()
        return self._leading(pieces)

    def _partial(self) -> list[Piece]:
        line = self.line
        if self.in_code or _FENCE.match(line) or _FENCE_START.fullmatch(line):
            return []  # code goes out a whole line at a time; a fence may be starting
        if self.done == 0 and self._may_be_echo(line):
            return []
        return self._leading(self._prose(line, complete=False))

    def _prose(self, line: str, complete: bool) -> list[Piece]:
        pieces: list[Piece] = []
        if not self.prefix_done:
            end = _PREFIX.match(line).end()
            rest = line[end:]
            if not complete and (not rest or _PREFIX_START.fullmatch(rest)):
                return []  # "1" may become "1. ", "#" may become "## "
            self.prefix_done = True
            if end:
                pieces.append(Piece(line[:end]))
            self.done = end
            self.heading = "#" in line[:end]
            self.row = rest.startswith("|")
        if self.heading and (
            len(line) - self.done > HEADING_CHARS
            or any(m.group(2) and m.end() < len(line) for m in _END.finditer(line, self.done))
        ):
            # A long "#" line, or one holding two sentences, is a paragraph behind a stray mark (a
            # base model copying a Markdown source writes "# 한라산 한라산은 …"): checked as prose.
            self.heading = False
        if self.heading or self.row:
            # A heading or table row is one unit: its end is the end of its line.
            if complete:
                pieces += self._sentence(line[self.done :])
                self.done = len(line)
            return pieces
        for m in _END.finditer(line, self.done):
            after = line[m.end() :]
            if not complete and _MAYBE_MARKERS.fullmatch(after):
                break  # "…이다. " may still get its "[1]"
            pieces += self._sentence(line[self.done : m.start(2)])
            if m.group(2):
                pieces.append(Piece(m.group(2)))
            self.done = m.end()
        if complete and self.done < len(line):
            tail = line[self.done :]
            stripped = tail.rstrip()
            pieces += self._sentence(stripped)
            if len(stripped) < len(tail):
                pieces.append(Piece(tail[len(stripped) :]))
            self.done = len(line)
        return pieces

    def _sentence(self, text: str) -> list[Piece]:
        if not text:
            return []
        if not text.strip():
            return [Piece(text)]
        return [Piece(text, "heading" if self.heading else "row" if self.row else "sentence")]

    def _leading(self, pieces: list[Piece]) -> list[Piece]:
        # White space before the first words of the answer is not shown, nor white
        # space at its end: blank pieces wait until something follows them.
        out = []
        for p in pieces:
            if not p.prose and not p.text.strip() and not (self.in_code and p.text):
                if self.started:
                    self.held.append(p)
                continue
            self.started = True
            out += self.held
            self.held = []
            out.append(p)
        return out


def split(text: str, echo: Iterable[str] = ()) -> list[Piece]:
    """A whole answer's pieces (the same as feeding it in any chunks)."""
    seg = Segmenter(echo)
    return seg.feed(text) + seg.finish()
