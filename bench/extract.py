"""Main-text extraction quality on the Korean fixtures: readability vs trafilatura vs korani.

Token-level F1 (whitespace tokens, multiset overlap) between each
extractor's text and the expected main text of every page in
../shared/fixtures/html that has one, including the CP949 re-encodings.
korani = readability with a trafilatura fallback when it returns too little.
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
HTML = REPO.parent / "shared" / "fixtures" / "html"


def f1(predicted: str, expected: str) -> float:
    p, e = Counter(predicted.split()), Counter(expected.split())
    overlap = sum((p & e).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(p.values()), overlap / sum(e.values())
    return 2 * precision * recall / (precision + recall)


def cases() -> list[tuple[str, bytes, str]]:
    out = []
    news = HTML / "htmldate_korean_news"
    for name, expected in (
        ("chosun_1694328145.html", "expected_maintext_chosun_1694328145.txt"),
        ("daejonilbo_1538026996.html", "expected_maintext_daejonilbo_1538026996.txt"),
        ("n.news.naver.com-607.html", "expected_maintext_n.news.naver.com-607.txt"),
    ):
        out.append((name, (news / name).read_bytes(), (news / expected).read_text(encoding="utf-8")))
    donga = json.loads((HTML / "goose3_donga" / "expected.json").read_text(encoding="utf-8"))["expected"]
    donga = ast.literal_eval(donga) if isinstance(donga, str) else donga
    out.append(
        ("donga (goose3)", (HTML / "goose3_donga" / "source.html").read_bytes(), donga["cleaned_text"])
    )
    from korani_cli.search.extract import _html_to_text

    post = (HTML / "readability_naver_post" / "expected.html").read_text(encoding="utf-8")
    out.append(
        (
            "m.post.naver (readability)",
            (HTML / "readability_naver_post" / "source.html").read_bytes(),
            _html_to_text(post),
        )
    )
    variants = HTML / "derived_cp949_variants"
    for name, expected in (
        ("chosun.utf8_declared_but_cp949_bytes.html", out[0][2]),
        ("daejonilbo.euckr_declared.cp949.html", out[1][2]),
        ("naver607.no_charset_decl.cp949.html", out[2][2]),
        ("donga.euckr_declared.cp949.html", out[3][2]),
    ):
        out.append((f"cp949: {name}", (variants / name).read_bytes(), expected))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the same run (it takes seconds; for CI)")
    ap.parse_args()
    from korani_cli.search.decode import decode_html
    from korani_cli.search.extract import extract, readability_text, trafilatura_text

    rows = []
    for name, data, expected in cases():
        html, _ = decode_html(data, "euc-kr" if "euckr" in name else None)
        scores = {}
        for label, fn in (
            ("readability", lambda h: readability_text(h)[1]),
            ("trafilatura", lambda h: trafilatura_text(h)[1]),
            ("korani", lambda h: extract(h)[1]),
        ):
            try:
                scores[label] = round(f1(fn(html), expected), 3)
            except Exception:  # an extractor crashing is a score of 0 for that page
                scores[label] = 0.0
        rows.append({"page": name, **scores})
    print(f"{'page':<52} {'readability':>11} {'trafilatura':>11} {'korani':>7}")
    for r in rows:
        print(f"{r['page'][:52]:<52} {r['readability']:>11.3f} {r['trafilatura']:>11.3f} {r['korani']:>7.3f}")
    mean = {
        k: round(sum(r[k] for r in rows) / len(rows), 3) for k in ("readability", "trafilatura", "korani")
    }
    print(f"{'mean':<52} {mean['readability']:>11.3f} {mean['trafilatura']:>11.3f} {mean['korani']:>7.3f}")
    print("RESULT " + json.dumps({"pages": rows, "mean_f1": mean}, ensure_ascii=False))


if __name__ == "__main__":
    main()
