"""The citation check (rag/support.py through rag/answer.verify) on hand-made Korean cases.

Each row: the passages offered, the model's answer, and what verify must print
(text with renumbered markers) and list (footnote URLs). The cases go every
way the check can be wrong: a wrong-subject citation sharing common words
(moved or dropped), a number the passage does not state, a verbatim copy, a
short entity answer, a differently written number, an out-of-range marker,
an answer that cites nothing.
"""

from __future__ import annotations

import pytest

from korani_cli.search.types import Passage, Ranked

SEJONG = (
    "https://sejong.example",
    "세종",
    "세종의 본명은 이도이다. 세종은 한양에서 태어났으며 1443년에 훈민정음을 창제하고 1446년에 반포하였다.",
)
YI = (
    "https://yi.example",
    "이순신",
    "이순신은 한양 건천동에서 태어났다. 그의 본명은 널리 알려져 있으며 1545년에 태어난 조선의 장군이다.",
)
HYUN = ("https://hyun.example", "현정은", "현정은 현대그룹의 회장이다. 현정은은 2003년 회장에 취임했다.")
PARTHIA = (
    "https://parthia.example",
    "파르티아",
    "파르티아는 고대 이란의 왕국이다. 파르티아인은 기마 궁수로 유명했으며 로마와 자주 싸웠다.",
)
TOWN = ("https://town.example", "마을", "이 마을의 인구는 1,947명이며 대부분 농업에 종사한다.")


def _ranked(*pages):
    return [Ranked(Passage(url, title, text, 0), 1.0 - i / 10) for i, (url, title, text) in enumerate(pages)]


CASES = [
    # id, pages, answer, expected text, expected footnote URLs
    (
        "wrong subject moves to the page that says it",
        (SEJONG, YI),
        "세종의 본명은 이도이며 한양에서 태어났다[2].",
        "세종의 본명은 이도이며 한양에서 태어났다[1].",
        ["https://sejong.example"],
    ),
    (
        "wrong subject with no page that says it is dropped",
        (YI, PARTHIA),
        "세종의 본명은 이도이며 한양에서 태어났다[1].",
        "세종의 본명은 이도이며 한양에서 태어났다.",
        [],
    ),
    (
        "number the cited page does not state is dropped",
        (SEJONG,),
        "훈민정음은 1450년에 반포되었다[1].",
        "훈민정음은 1450년에 반포되었다.",
        [],
    ),
    (
        "a date written as one must be there as one",
        (SEJONG, YI),
        "이순신은 1443년 1446년에 태어났다[2].",
        "이순신은 1443년 1446년에 태어났다.",
        [],
    ),
    (
        "verbatim copy of the source is kept",
        (YI, SEJONG),
        "세종은 한양에서 태어났으며 1443년에 훈민정음을 창제하고 1446년에 반포하였다[2].",
        "세종은 한양에서 태어났으며 1443년에 훈민정음을 창제하고 1446년에 반포하였다[1].",
        ["https://sejong.example"],
    ),
    (
        "short entity answer is kept although Kiwi cuts the name differently",
        (HYUN, PARTHIA),
        "현정은입니다[1].",
        "현정은입니다[1].",
        ["https://hyun.example"],
    ),
    (
        "short entity answer cited to the wrong page moves",
        (HYUN, PARTHIA),
        "파르티아입니다[1].",
        "파르티아입니다[1].",
        ["https://parthia.example"],
    ),
    (
        "1,947 in the page supports 1947 in the answer",
        (TOWN,),
        "마을 인구는 1947명이다[1].",
        "마을 인구는 1947명이다[1].",
        ["https://town.example"],
    ),
    (
        "1443년 in the answer is held by a bare 1443",
        (("https://h.example", "훈민정음", "훈민정음 창제 1443 (세종 25)"),),
        "훈민정음은 1443년에 창제되었다[1].",
        "훈민정음은 1443년에 창제되었다[1].",
        ["https://h.example"],
    ),
    (
        "out-of-range marker is dropped",
        (SEJONG, YI),
        "세종은 1443년에 훈민정음을 창제하였다 [7].",
        "세종은 1443년에 훈민정음을 창제하였다.",
        [],
    ),
    (
        "uncited answer gets its best-supporting source",
        (YI, SEJONG),
        "세종은 1446년에 훈민정음을 반포하였다. 오늘 날씨가 좋다.",
        "세종은 1446년에 훈민정음을 반포하였다.[1] 오늘 날씨가 좋다.",
        ["https://sejong.example"],
    ),
]


@pytest.mark.parametrize("pages,answer,text,urls", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_verify(pages, answer, text, urls):
    from korani_cli.rag.answer import verify

    out = verify(answer, _ranked(*pages))
    assert out.text == text
    assert [c.url for c in out.citations] == urls
    # korani eval reads the claims: each printed sentence with the footnotes it kept.
    assert [n for _, marks in out.claims for n in marks] == list(range(1, len(urls) + 1))


def test_moved_citation_keeps_the_other_footnotes_in_order():
    from korani_cli.rag.answer import verify

    out = verify("파르티아는 고대 이란의 왕국이다[2]. 현정은 현대그룹의 회장이다[2].", _ranked(PARTHIA, HYUN))
    assert out.text == "파르티아는 고대 이란의 왕국이다[1]. 현정은 현대그룹의 회장이다[2]."
    assert [c.url for c in out.citations] == ["https://parthia.example", "https://hyun.example"]
    assert out.claims == [("파르티아는 고대 이란의 왕국이다.", [1]), ("현정은 현대그룹의 회장이다.", [2])]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("1,947명", {("1947", "명")}),
        ("1443년 2월", {("1443", "년"), ("2", "월")}),
        ("2.50배와 007", {("2.5", None), ("7", None)}),
        ("시사360에서", {("360", None)}),  # a particle is not a counter
        ("0.0과 10.", {("0", None), ("10", None)}),
        ("7" * 5000 + "년", {("7" * 5000, "년")}),  # longer than int() takes: no ValueError
    ],
)
def test_numbers_are_normalised(text, expected):
    from korani_cli.rag.support import numbers

    assert numbers(text) == expected


def test_a_page_with_an_endless_number_is_checked_not_crashed():
    from korani_cli.rag.answer import verify

    page = (
        "https://n.example",
        "수",
        "이 수는 " + "9" * 6000 + "이다. 세종은 1443년에 훈민정음을 창제하였다.",
    )
    out = verify(
        "세종은 1443년에 훈민정음을 창제하였다[1]. 그 수는 " + "9" * 6000 + "이다[1].", _ranked(page)
    )
    assert out.text.count("[1]") == 2 and [c.url for c in out.citations] == ["https://n.example"]


def test_common_words_weigh_less_than_names():
    from korani_cli.rag import support

    passages = support.evidence([p.passage for p in _ranked(SEJONG, YI)])
    [claim] = support.claims(["세종은 한양에서 태어났다."])
    on_sejong, on_yi = support.scores(claim, passages)
    assert on_sejong == 1.0 and on_yi < support.THRESHOLD
