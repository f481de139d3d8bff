"""HTML → (title, main text).

readability-lxml finds the article; its HTML is flattened to text with
paragraph breaks kept. When it returns too little (a page whose main text it
misses — index pages, some blog layouts), trafilatura is asked instead and
the longer sensible result wins. bench/extract.py measures both on the
Korean fixtures.

The HTML is cleaned of control characters first (`untrusted.clean`): a
`<title>` holding ESC sequences must not come out of here, and lxml refuses
some of those characters anyway.
"""

from __future__ import annotations

import re

from korani_cli.untrusted import clean

MIN_CHARS = 200  # below this, readability probably missed the article
_BLOCK = re.compile(r"\n\s*\n+")


def _html_to_text(fragment: str) -> str:
    import lxml.html

    if not fragment.strip():
        return ""
    root = lxml.html.fromstring(fragment)
    for bad in root.xpath("//script|//style|//noscript"):
        bad.drop_tree()
    for br in root.xpath("//br"):
        br.tail = "\n" + (br.tail or "")
    for block in root.xpath("//p|//div|//li|//h1|//h2|//h3|//h4|//tr|//blockquote|//section|//article"):
        block.tail = "\n\n" + (block.tail or "")
    text = root.text_content()
    lines = [re.sub(r"[ \t\u00a0\u200b]+", " ", line).strip() for line in text.splitlines()]
    return _BLOCK.sub("\n\n", "\n".join(lines)).strip()


def readability_text(html: str) -> tuple[str, str]:
    from readability import Document

    doc = Document(html)
    return (doc.short_title() or "").strip(), _html_to_text(doc.summary(html_partial=True))


def trafilatura_body(html: str, url: str | None = None) -> str:
    import trafilatura

    return (
        trafilatura.extract(html, url=url, include_comments=False, include_tables=True, favor_recall=True)
        or ""
    ).strip()


def trafilatura_text(html: str, url: str | None = None) -> tuple[str, str]:
    # Not trafilatura.extract_metadata for the title: it also hunts for the
    # page's date through dateparser, which loads 200 locales (~4 s) on first
    # use and then costs more than the extraction itself.
    return page_title(html), trafilatura_body(html, url)


def page_title(html: str) -> str:
    """og:title, else <title>, else the first <h1>."""
    import lxml.html

    try:
        root = lxml.html.fromstring(html)
    except (ValueError, lxml.etree.ParserError):
        return ""
    for query in ('//meta[@property="og:title"]/@content', "//title//text()", "//h1//text()"):
        found = " ".join(" ".join(str(v) for v in root.xpath(query)[:1]).split())
        if found:
            return found
    return ""


def _tighter(candidate: str, reference: str) -> bool:
    """Is `candidate` the same article as `reference` without some of its boilerplate?"""
    from collections import Counter

    c, r = Counter(candidate.split()), Counter(reference.split())
    if not c or not r:
        return False
    inside = sum((c & r).values()) / sum(c.values())
    return inside >= 0.9 and 0.6 * len(reference) <= len(candidate) < len(reference)


def extract(html: str, url: str | None = None) -> tuple[str, str]:
    """readability first; trafilatura when readability finds too little, or when
    trafilatura finds the same article with less boilerplate around it (news
    pages whose related-article lists readability keeps: +0.12 F1 on chosun)."""
    html = clean(html)
    try:
        title, text = readability_text(html)
    except Exception:  # readability raises on some malformed documents
        title, text = "", ""
    try:
        t_text = trafilatura_body(html, url)
    except Exception:  # trafilatura too; then readability's answer stands
        t_text = ""
    if (len(text) < MIN_CHARS and len(t_text) > len(text)) or _tighter(t_text, text):
        text = t_text
    return clean(title or page_title(html)), clean(text)
