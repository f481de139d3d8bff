""".md and .txt files → (title, text), as extract.py does for HTML.

A local document's title is its first heading, not its file name: front
matter's `title:`, else the first `# heading` (ATX, any level up to the first
paragraph, else the first level-1 one anywhere; or a setext heading), else —
for a file with no Markdown at all — a short first line standing alone, as
plain-text notes are written ("제주도" and a blank line). The title heading
leaves the text (the prompt shows the title in the source's header already,
and a passage that starts "# 한라산 한라산은…" is copied into answers); the
other headings stay as lines of their own without their `#` marks, as
extract.py leaves an HTML page's <h2>. Markdown's link, image and emphasis
marks go too (`[text](url)` → `text`): a model must not take `[text]` for a
footnote marker, nor copy `**`.

Code blocks are left as they are. The caller has decoded the bytes and cleans
the text afterwards (untrusted.clean); nothing here touches the file system.
"""

from __future__ import annotations

import re

_FRONT = re.compile(r"\A---[ \t]*\n(?P<body>.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.S)
_FRONT_TITLE = re.compile(r"^title[ \t]*:[ \t]*(?P<title>.+?)[ \t]*$", re.M)
_ATX = re.compile(r"^[ ]{0,3}(?P<marks>#{1,6})(?:[ \t]+(?P<text>.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^[ ]{0,3}(?:=+|-+)[ \t]*$")
_FENCE = re.compile(r"^[ ]{0,3}(```|~~~)")
_IMAGE = re.compile(r"!\[([^\]\n]*)\]\([^)\n]*\)")
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\([^)\n]*\)")
_EMPHASIS = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_COMMENT = re.compile(r"<!--.*?-->", re.S)
TITLE_CHARS = 120  # a first line longer than this is a paragraph, not a title
_SENTENCE_END = re.compile(r"[.!?。…]$|다\.$")


def title_and_text(text: str, markdown: bool) -> tuple[str, str]:
    """(title or "", the text without its title heading and Markdown marks); `markdown` for .md."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    title = ""
    front = _FRONT.match(text) if markdown else None
    if front:
        found = _FRONT_TITLE.search(front.group("body"))
        title = found.group("title").strip("\"' ") if found else ""
        text = text[front.end() :]
    items = _items(_COMMENT.sub("", text).split("\n"))
    headings = [i for i, item in enumerate(items) if item[0] == "heading"]
    if not title and headings:
        first = next((i for i, item in enumerate(items) if item[2].strip()), None)
        level_one = [i for i in headings if items[i][1] == 1]
        chosen = first if first in headings else (level_one[0] if level_one else None)
        if chosen is not None:
            title = items.pop(chosen)[2]
    elif not title and not markdown:
        items, title = _plain_title(items)
    out: list[str] = []
    for kind, _level, line in items:
        if kind == "heading":
            # A heading is a paragraph of its own (passages.py splits paragraphs on blank lines).
            out += ["", _inline(line), ""]
        else:
            out.append(line if kind == "code" else _inline(line))
    return _inline(title).strip(), re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def _items(lines: list[str]) -> list[tuple[str, int, str]]:
    """The lines as (kind, heading level, text): kind is heading, code (inside a fence, kept as
    written) or line; a setext heading's underline is folded into its heading."""
    items: list[tuple[str, int, str]] = []
    in_code = False
    skip = False
    for i, line in enumerate(lines):
        if skip:
            skip = False
            continue
        if _FENCE.match(line):
            in_code = not in_code
            items.append(("code", 0, line))
            continue
        if in_code:
            items.append(("code", 0, line))
            continue
        atx = _ATX.match(line)
        if atx and (atx.group("text") or "").strip():
            items.append(("heading", len(atx.group("marks")), atx.group("text").strip()))
            continue
        underline = lines[i + 1] if i + 1 < len(lines) else ""
        if (
            line.strip()
            and _SETEXT.match(underline)
            and (i == 0 or not lines[i - 1].strip())
            and not line.lstrip().startswith(("-", "*", "+", ">", "|"))
        ):
            items.append(("heading", 1 if "=" in underline else 2, line.strip()))
            skip = True
            continue
        items.append(("line", 0, line))
    return items


def _plain_title(items: list[tuple[str, int, str]]) -> tuple[list[tuple[str, int, str]], str]:
    """A plain-text note's title: its first line, when short, not a sentence, and followed by a
    blank line and more text; else none."""
    start = next((i for i, item in enumerate(items) if item[2].strip()), None)
    if start is None or start + 2 >= len(items) or items[start][0] != "line":
        return items, ""
    first = items[start][2].strip()
    follows_blank = not items[start + 1][2].strip()
    rest = any(item[2].strip() for item in items[start + 1 :])
    if not follows_blank or not rest or len(first) > TITLE_CHARS or _SENTENCE_END.search(first):
        return items, ""
    return items[start + 1 :], first


def _inline(line: str) -> str:
    line = _IMAGE.sub(r"\1", line)
    line = _LINK.sub(r"\1", line)
    return _EMPHASIS.sub(r"\2", line)
