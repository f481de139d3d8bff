"""`korani data` against hostile inputs, run through the real CLI (issue 15).

Each table row is one thing a careless or hostile user can hand `korani data`:
an output directory that is not korani's to replace, bytes that are not
UTF-8, JSON nested 100,000 deep, a 5,000-digit integer, a lone surrogate
escape, a file that cannot be read, a stats.json or split file that is
malformed or truncated. What must hold for every row: the documented exit
code, exactly one `error: … — …` line on stderr (no traceback, no "internal
error"), and every file that was there before still there, byte for byte.
Bad *records* are rejects (counted, with their position) unless --strict,
which turns the first into a one-line exit-6 error.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import REPO
from typer.testing import CliRunner

from korani_cli.cli import app
from korani_cli.errors import EXIT_DATA, EXIT_INTERRUPTED, EXIT_USAGE
from korani_cli.outputs import MARKER

runner = CliRunner()

GOOD_KO = [
    {
        "instruction": f"질문 {i}: 한국의 {i}번째 산은 무엇인가요?",
        "output": f"답변 {i}: 그 산은 높고 아름답습니다. 번호 {i * 7919}.",
    }
    for i in range(6)
]
GOOD_SG = {
    "id": "good",
    "conversations": [
        {"from": "human", "value": "좋은 질문입니다"},
        {"from": "gpt", "value": "좋은 답변입니다"},
    ],
}
DEEP = b"[" * 100_000 + b"]" * 100_000
HUGE = b"9" * 5000


# -- helpers ---------------------------------------------------------------------


def korani(*args: str, cwd: Path | None = None):
    """Run the CLI in-process (as `korani ...` would), optionally from `cwd`."""
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, [str(a) for a in args])
    finally:
        os.chdir(old)


def one_error_line(result, fragment: str) -> str:
    """The single stderr line of a failed run (not even a blank one beside it), checked for `fragment`."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ") and "—" in line, line
    assert "internal error" not in line and "Traceback" not in result.output, line
    assert fragment.lower() in line.lower(), line
    return line


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every entry under `root` (hidden ones too): file bytes, link targets, dirs."""
    found: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            found[rel] = "link→" + os.readlink(path)
        elif path.is_dir():
            found[rel] = "dir"
        elif path.is_file():
            found[rel] = path.read_bytes()
        else:
            found[rel] = "special"
    return found


def jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def earlier_output(out: Path, src: Path, *, marker: bool = True) -> None:
    """What an earlier `korani data prepare` left in `out` (with or without the marker)."""
    result = korani("data", "prepare", "--koalpaca", src, "-o", out, "--seed", "1")
    assert result.exit_code == 0, result.output
    if not marker:
        (out / MARKER).unlink()


# -- 6: the output directory -------------------------------------------------------
#
# The layout every row starts from (under tmp_path):
#   data/k.jsonl        a valid KoAlpaca source
#   data/notes.txt      a user's unrelated file beside it
#   work/               the working directory: a user's files
#   work/sub/           a working directory one level down
#   other/a.txt         a directory of unrelated files
#   file.txt            a plain file
#   mine/               an earlier output of korani data prepare


@pytest.fixture
def layout(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "k.jsonl").write_bytes(jsonl(GOOD_KO))
    (tmp_path / "data" / "notes.txt").write_text("내 메모\n", encoding="utf-8")
    (tmp_path / "work" / "sub").mkdir(parents=True)
    (tmp_path / "work" / "paper.md").write_text("논문 초안\n", encoding="utf-8")
    (tmp_path / "work" / "sub" / "keep.txt").write_text("keep\n", encoding="utf-8")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("a\n", encoding="utf-8")
    (tmp_path / "file.txt").write_text("plain\n", encoding="utf-8")
    earlier_output(tmp_path / "mine", tmp_path / "data" / "k.jsonl")
    return tmp_path


# (row id, cwd relative to tmp_path, arguments with {t} = tmp_path, exit code, fragment of the one line)
OUTPUT_REFUSALS = [
    (
        "o-is-the-source-dir",
        ".",
        ["--koalpaca", "{t}/data", "-o", "{t}/data", "--overwrite"],
        EXIT_USAGE,
        "is the source",
    ),
    (
        "o-contains-a-source-file",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/data", "--overwrite"],
        EXIT_USAGE,
        "contains the source",
    ),
    (
        "o-inside-a-source-dir",
        ".",
        ["--koalpaca", "{t}/data", "-o", "{t}/data/out"],
        EXIT_USAGE,
        "inside the source directory",
    ),
    (
        "o-inside-a-source-dir-overwrite",
        ".",
        ["--koalpaca", "{t}/data", "-o", "{t}/data/out", "--overwrite"],
        EXIT_USAGE,
        "inside the source directory",
    ),
    (
        "o-dot",
        "work",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", ".", "--overwrite"],
        EXIT_USAGE,
        "is the working directory",
    ),
    (
        "o-dot-no-overwrite",
        "work",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "."],
        EXIT_USAGE,
        "is the working directory",
    ),
    (
        "o-dotdot",
        "work/sub",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "..", "--overwrite"],
        EXIT_USAGE,
        "parent of the working directory",
    ),
    (
        "o-root",
        "work",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "/", "--overwrite"],
        EXIT_USAGE,
        "parent of the working directory",
    ),
    (
        "o-unrelated-files-overwrite",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/other", "--overwrite"],
        EXIT_USAGE,
        "korani did not write",
    ),
    (
        "o-unrelated-files",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/other"],
        EXIT_USAGE,
        "korani did not write",
    ),
    (
        "o-an-existing-file-overwrite",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/file.txt", "--overwrite"],
        EXIT_USAGE,
        "not a directory",
    ),
    (
        "o-an-existing-file",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/file.txt"],
        EXIT_USAGE,
        "not a directory",
    ),
    (
        "o-under-a-file",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/file.txt/out"],
        EXIT_USAGE,
        "file.txt is not a directory",
    ),
    (
        "o-name-too-long",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/" + "x" * 300],
        EXIT_USAGE,
        "too long",
    ),
    (
        "o-korani-output-without-overwrite",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/mine"],
        EXIT_USAGE,
        "--overwrite",
    ),
    (
        "o-a-symlink-loop",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/loop/out", "--overwrite"],
        EXIT_USAGE,
        "symlink loop",
    ),
    (
        "o-a-link-to-korani-output",
        ".",
        ["--koalpaca", "{t}/data/k.jsonl", "-o", "{t}/link", "--overwrite"],
        EXIT_USAGE,
        "not a directory",
    ),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "cwd, args, code, fragment", [row[1:] for row in OUTPUT_REFUSALS], ids=[row[0] for row in OUTPUT_REFUSALS]
)
def test_output_directory_refusals_lose_nothing(layout, cwd, args, code, fragment):
    (layout / "link").symlink_to(layout / "mine")
    (layout / "loop").symlink_to("loop")
    before = snapshot(layout)
    result = korani("data", "prepare", *(a.format(t=layout) for a in args), cwd=layout / cwd)
    assert result.exit_code == code, result.output
    one_error_line(result, fragment)
    assert snapshot(layout) == before  # every file byte for byte, and no temporary leftovers


@pytest.mark.timeout(60)
def test_output_in_a_read_only_place_is_a_one_line_error(tmp_path):
    """/proc takes no new directories, even from root (chmod would not stop root)."""
    src = tmp_path / "k.jsonl"
    src.write_bytes(jsonl(GOOD_KO))
    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc on this system")
    result = korani("data", "prepare", "--koalpaca", src, "-o", "/proc/korani-out")
    assert result.exit_code == EXIT_USAGE, result.output
    one_error_line(result, "cannot create -o /proc/korani-out")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("marker", [True, False], ids=["marked", "legacy-unmarked"])
def test_overwrite_replaces_korani_own_earlier_output(layout, marker):
    out = layout / "mine"
    if not marker:
        (out / MARKER).unlink()
    old_train = (out / "train.jsonl").read_bytes()
    result = korani(
        "data",
        "prepare",
        "--koalpaca",
        layout / "data" / "k.jsonl",
        "-o",
        out,
        "--overwrite",
        "--seed",
        "5",
        "--valid",
        "0",
        "--test",
        "0",
    )
    assert result.exit_code == 0, result.output
    assert (
        len(read_jsonl(out / "train.jsonl")) == len(GOOD_KO)
        and (out / "train.jsonl").read_bytes() != old_train
    )
    signed = json.loads((out / MARKER).read_text(encoding="utf-8"))
    assert signed["command"] == "data prepare" and signed["seed"] == 5
    assert (
        sorted(p.name for p in layout.iterdir() if p.name.startswith(".")) == []
    )  # no .mine.tmp-/.old- left


@pytest.mark.timeout(60)
def test_an_empty_existing_directory_is_fine(layout):
    (layout / "empty").mkdir()
    result = korani("data", "prepare", "--koalpaca", layout / "data" / "k.jsonl", "-o", layout / "empty")
    assert result.exit_code == 0, result.output
    assert (layout / "empty" / "train.jsonl").is_file() and (layout / "empty" / MARKER).is_file()


# -- 9, 14, 18: records that cannot become training text -----------------------------
#
# Each row is a file holding one bad record among good ones. Without --strict
# the bad one is a reject (reason and position in rejects.jsonl and stats.json)
# and the good ones are written; with --strict the run stops with exit 6 and
# one line naming the position.


def sg_array(*elements: bytes) -> bytes:
    return b"[\n" + b",\n".join(elements) + b"\n]\n"


def sg_bytes(value: dict) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


GOOD_SG_B = sg_bytes(GOOD_SG)
BAD_UTF8_SG = (
    b'{"id": "bad", "conversations": [{"from": "human", "value": "\xed\x95\x9c\xff\xfe"}, {"from": "gpt", '
    b'"value": "\xc3("}]}'
)
SURROGATE_SG = (
    b'{"id": "sur", "conversations": [{"from": "human", "value": "\\ud800 broken"}, {"from": "gpt", "value": '
    b'"ok"}]}'
)
SURROGATE_ID_SG = (
    b'{"id": "\\udfff", "conversations": [{"from": "human", "value": "question"}, {"from": "gpt", "value": '
    b'"answer"}]}'
)
DEEP_SG = b'{"id": "deep", "conversations": ' + DEEP + b"}"
HUGE_SG = b'{"id": 1' + HUGE + b', "conversations": []}'
NULL_SG = b'{"id": "null", "conversations": null}'
GOOD_KO_LINES = jsonl(GOOD_KO[:3])
BAD_UTF8_KO = b'{"instruction": "\xff\xfe\xfd", "output": "answer"}\n'
SURROGATE_KO = b'{"instruction": "question \\udc00", "output": "answer"}\n'
DEEP_KO = b'{"instruction": "q", "output": "a", "extra": ' + DEEP + b"}\n"
HUGE_KO = b'{"instruction": "q", "output": "a", "n": ' + HUGE + b"}\n"
NULL_KO = b'{"instruction": null, "output": "a"}\n'

# (row id, source flag, file name, file bytes, reason, position of the bad record, fragment of the reject's
# detail)
BAD_RECORDS = [
    (
        "json-array-invalid-utf8",
        "--sharegpt",
        "s.json",
        sg_array(GOOD_SG_B, BAD_UTF8_SG),
        "invalid_utf8",
        "element 1",
        "not utf-8",
    ),
    (
        "json-object-invalid-utf8",
        "--sharegpt",
        "s.json",
        b'{"data": ' + sg_array(GOOD_SG_B, BAD_UTF8_SG) + b"}",
        "invalid_utf8",
        "data[1]",
        "not utf-8",
    ),
    (
        "jsonl-invalid-utf8",
        "--koalpaca",
        "k.jsonl",
        GOOD_KO_LINES + BAD_UTF8_KO,
        "invalid_utf8",
        "line 4",
        "invalid utf-8",
    ),
    (
        "json-array-lone-surrogate",
        "--sharegpt",
        "s.json",
        sg_array(GOOD_SG_B, SURROGATE_SG),
        "lone_surrogate",
        "element 1",
        "turn 0",
    ),
    (
        "json-array-lone-surrogate-in-id",
        "--sharegpt",
        "s.json",
        sg_array(GOOD_SG_B, SURROGATE_ID_SG),
        "lone_surrogate",
        "element 1",
        "the id",
    ),
    (
        "jsonl-lone-surrogate",
        "--koalpaca",
        "k.jsonl",
        GOOD_KO_LINES + SURROGATE_KO,
        "lone_surrogate",
        "line 4",
        "surrogate",
    ),
    (
        "json-array-100k-deep",
        "--sharegpt",
        "s.json",
        sg_array(GOOD_SG_B, DEEP_SG),
        "too_deep",
        "element 1",
        "nested deeper",
    ),
    (
        "json-array-100k-deep-first",
        "--sharegpt",
        "s.json",
        sg_array(DEEP_SG, GOOD_SG_B),
        "too_deep",
        "element 0",
        "nested deeper",
    ),
    (
        "jsonl-100k-deep",
        "--koalpaca",
        "k.jsonl",
        GOOD_KO_LINES + DEEP_KO,
        "too_deep",
        "line 4",
        "nested deeper",
    ),
    (
        "json-array-5000-digits",
        "--sharegpt",
        "s.json",
        sg_array(GOOD_SG_B, HUGE_SG),
        "huge_number",
        "element 1",
        "4,300 digits",
    ),
    (
        "jsonl-5000-digits",
        "--koalpaca",
        "k.jsonl",
        GOOD_KO_LINES + HUGE_KO,
        "huge_number",
        "line 4",
        "4,300 digits",
    ),
    (
        "json-array-null-conversations",
        "--sharegpt",
        "s.json",
        sg_array(GOOD_SG_B, NULL_SG),
        "null_field",
        "element 1",
        "'conversations' is null",
    ),
    (
        "jsonl-null-instruction",
        "--koalpaca",
        "k.jsonl",
        GOOD_KO_LINES + NULL_KO,
        "null_field",
        "line 4",
        "'instruction' is null",
    ),
]
_ROWS = [row[1:] for row in BAD_RECORDS]
_IDS = [row[0] for row in BAD_RECORDS]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flag, name, content, reason, position, detail", _ROWS, ids=_IDS)
def test_a_bad_record_is_a_counted_reject(tmp_path, flag, name, content, reason, position, detail):
    src = tmp_path / name
    src.write_bytes(content)
    out = tmp_path / "out"
    result = korani("data", "prepare", flag, src, "-o", out, "--valid", "0", "--test", "0", "--no-near-dup")
    assert result.exit_code == 0, result.output
    (rejected,) = [r for r in read_jsonl(out / "rejects.jsonl") if r["kind"] == "input"]
    assert (rejected["reason"], rejected["position"].split(" (")[0]) == (reason, position)
    assert detail.lower() in rejected["detail"].lower()
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["rejects"] == {reason: 1}
    train = (out / "train.jsonl").read_bytes()
    assert len(read_jsonl(out / "train.jsonl")) >= 1
    assert "\ufffd" not in train.decode("utf-8")  # nothing silently replaced
    assert b"\\ud" not in train  # no lone surrogate escaped into the training text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flag, name, content, reason, position, detail", _ROWS, ids=_IDS)
def test_strict_stops_at_a_bad_record_with_one_line(tmp_path, flag, name, content, reason, position, detail):
    src = tmp_path / name
    src.write_bytes(content)
    result = korani("data", "prepare", flag, src, "-o", tmp_path / "out", "--strict")
    assert result.exit_code == EXIT_DATA, result.output
    one_error_line(result, f"{name}, {position}")
    one_error_line(result, reason.replace("_", " "))
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no output, no temporary directory


# -- 14: options that would never finish or crash on load ---------------------------


def _garbage_tokenizer(t: Path) -> None:
    (t / "tk").mkdir()
    (t / "tk" / "tokenizer.json").write_text("[]")
    (t / "tk" / "tokenizer_config.json").write_text("{}")


# (row id, setup, extra arguments with {t}, exit code, fragment)
BAD_OPTIONS = [
    pytest.param(None, ["--mix", "koalpaca=1e300"], EXIT_USAGE, "more than 100", id="mix-weight-1e300"),
    pytest.param(None, ["--mix", "koalpaca=101"], EXIT_USAGE, "more than 100", id="mix-weight-101"),
    # Issue 20: nan is not "below 0" (it was said to be); inf is not "more than 100" either.
    pytest.param(
        None,
        ["--mix", "koalpaca=nan"],
        EXIT_USAGE,
        "koalpaca is nan, not a number from 0 to 100",
        id="mix-weight-nan",
    ),
    pytest.param(
        None,
        ["--mix", "koalpaca=inf"],
        EXIT_USAGE,
        "koalpaca is inf, not a number from 0 to 100",
        id="mix-weight-inf",
    ),
    pytest.param(None, ["--mix", "koalpaca=-1"], EXIT_USAGE, "must be ≥ 0", id="mix-weight-negative"),
    pytest.param(None, ["--valid", "nan"], EXIT_USAGE, "--valid must be a fraction", id="valid-nan"),
    pytest.param(
        None, ["--near-dup-threshold", "nan"], EXIT_USAGE, "--near-dup-threshold", id="threshold-nan"
    ),
    pytest.param(
        _garbage_tokenizer,
        ["--tokenizer", "{t}/tk"],
        EXIT_USAGE,
        "cannot load the tokenizer",
        id="garbage-tokenizer",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("setup, extra, code, fragment", BAD_OPTIONS)
def test_bad_options_are_one_line_errors(tmp_path, setup, extra, code, fragment):
    (tmp_path / "k.jsonl").write_bytes(jsonl(GOOD_KO))
    if setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path)
    result = korani(
        "data",
        "prepare",
        "--koalpaca",
        tmp_path / "k.jsonl",
        "-o",
        tmp_path / "out",
        *(a.format(t=tmp_path) for a in extra),
    )
    assert result.exit_code == code, result.output
    one_error_line(result, fragment)
    assert snapshot(tmp_path) == before


# -- 14, 18: sources that are missing or cannot be read ------------------------------


def _fifo(t: Path) -> None:
    os.mkfifo(t / "pipe.jsonl")


def _proc_mem(t: Path) -> None:
    # Root reads any file, whatever its mode; /proc/self/mem at offset 0 fails
    # with EIO for everyone: a real unreadable file.
    (t / "mem.jsonl").symlink_to("/proc/self/mem")


def _deep_only(t: Path) -> None:
    (t / "deep.json").write_bytes(DEEP)


def _deep_object(t: Path) -> None:
    # A whole-file object is read in one piece: too deep is the whole file.
    (t / "obj.json").write_bytes(b'{"data": [' + GOOD_SG_B + b", " + DEEP_SG + b"]}")


def _data_dir(t: Path) -> None:
    (t / "data").mkdir()


# (row id, setup, cwd-relative source argument, exit code, fragment, fragment that must NOT appear)
BAD_SOURCES = [
    ("missing-relative-path", None, "data/nope.json", EXIT_DATA, "the directory data does not exist", "hub"),
    ("missing-file-in-existing-dir", _data_dir, "data/nope", EXIT_DATA, "no such file", "hub"),
    ("missing-file-with-suffix", None, "nope.jsonl", EXIT_DATA, "no such file", "hub"),
    ("missing-dot-slash-org-name", None, "./beomi/KoAlpaca", EXIT_DATA, "data source not found", "hub"),
    ("missing-deep-relative", None, "a/b/c/k.parquet", EXIT_DATA, "the directory a does not exist", "hub"),
    (
        "hub-id-offline",
        None,
        "beomi/KoAlpaca-v1.1a",
        EXIT_DATA,
        "from the hugging face hub",
        "data source not found",
    ),
    ("name-too-long", None, "x" * 5000 + ".json", EXIT_DATA, "file name too long", "hub"),
    ("a-fifo", _fifo, "pipe.jsonl", EXIT_DATA, "is not a file", "internal"),
    ("unreadable-file", _proc_mem, "mem.jsonl", EXIT_DATA, "cannot read", "internal"),
    ("only-100k-deep", _deep_only, "deep.json", EXIT_DATA, "too_deep 1", "internal"),
    ("object-file-100k-deep", _deep_object, "obj.json", EXIT_DATA, "too_deep 1", "internal"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "setup, spec, code, fragment, absent",
    [row[1:] for row in BAD_SOURCES],
    ids=[row[0] for row in BAD_SOURCES],
)
def test_bad_sources_are_one_line_errors(tmp_path, setup, spec, code, fragment, absent):
    if setup is not None:
        setup(tmp_path)
    if spec == "mem.jsonl":
        try:
            with open(tmp_path / spec, "rb") as fh:
                fh.read(1)
            pytest.skip("/proc/self/mem is readable at offset 0 here")
        except OSError:
            pass
    before = snapshot(tmp_path)
    result = korani("data", "prepare", "--koalpaca", spec, "-o", "out", cwd=tmp_path)
    assert result.exit_code == code, result.output
    line = one_error_line(result, fragment)
    assert absent not in line.lower()
    assert snapshot(tmp_path) == before


# -- 14: data stats / data show on what is not korani's output -----------------------


def _stats(t: Path, content: bytes) -> None:
    (t / "d").mkdir(exist_ok=True)
    (t / "d" / "stats.json").write_bytes(content)


def _split(t: Path, content: bytes) -> None:
    (t / "d").mkdir(exist_ok=True)
    (t / "d" / "train.jsonl").write_bytes(content)


GOOD_RECORD = jsonl(
    [
        {
            "id": "x",
            "source": "sharegpt",
            "messages": [{"role": "user", "content": "질문"}, {"role": "assistant", "content": "답"}],
        }
    ]
)

# (row id, setup, command arguments with {t}, exit code, fragment)
BAD_OUTPUTS = [
    ("stats-missing-dir", None, ["stats", "{t}/nope"], EXIT_DATA, "not found"),
    (
        "stats-of-a-file",
        lambda t: (t / "f").write_text("x"),
        ["stats", "{t}/f"],
        EXIT_DATA,
        "is not a directory",
    ),
    (
        "stats-json-a-directory",
        lambda t: (t / "d" / "stats.json").mkdir(parents=True),
        ["stats", "{t}/d"],
        EXIT_DATA,
        "is a directory",
    ),
    ("stats-malformed", lambda t: _stats(t, b"{"), ["stats", "{t}/d"], EXIT_DATA, "not valid JSON"),
    ("stats-truncated", "truncated-stats", ["stats", "{t}/d"], EXIT_DATA, "not valid JSON"),
    ("stats-empty-file", lambda t: _stats(t, b""), ["stats", "{t}/d"], EXIT_DATA, "not valid JSON"),
    ("stats-a-list", lambda t: _stats(t, b"[]"), ["stats", "{t}/d"], EXIT_DATA, "not a stats file"),
    (
        "stats-missing-fields",
        lambda t: _stats(t, b"{}"),
        ["stats", "{t}/d"],
        EXIT_DATA,
        "'inputs' is missing",
    ),
    ("stats-wrong-types", "wrong-type-stats", ["stats", "{t}/d"], EXIT_DATA, "must be a count"),
    (
        "stats-invalid-utf8",
        lambda t: _stats(t, b'{"inputs": "\xff"}'),
        ["stats", "{t}/d"],
        EXIT_DATA,
        "not UTF-8",
    ),
    ("stats-100k-deep", lambda t: _stats(t, DEEP), ["stats", "{t}/d"], EXIT_DATA, "nested too deeply"),
    (
        "stats-5000-digits",
        lambda t: _stats(t, b'{"n": ' + HUGE + b"}"),
        ["stats", "{t}/d"],
        EXIT_DATA,
        "not valid JSON",
    ),
    ("show-missing-split", lambda t: (t / "d").mkdir(), ["show", "{t}/d"], EXIT_DATA, "not found"),
    (
        "show-truncated-line",
        lambda t: _split(t, GOOD_RECORD + GOOD_RECORD[:25]),
        ["show", "{t}/d", "--index", "1"],
        EXIT_DATA,
        "line 2 is not valid JSON",
    ),
    ("show-not-an-object", lambda t: _split(t, b"[1, 2]\n"), ["show", "{t}/d"], EXIT_DATA, "not an object"),
    (
        "show-invalid-utf8",
        lambda t: _split(t, b'{"id": "\xff"}\n'),
        ["show", "{t}/d"],
        EXIT_DATA,
        "not UTF-8",
    ),
    (
        "show-no-messages",
        lambda t: _split(t, b'{"id": "x", "source": "s"}\n'),
        ["show", "{t}/d"],
        EXIT_DATA,
        "'messages'",
    ),
    (
        "show-unknown-role",
        lambda t: _split(t, GOOD_RECORD.replace(b'"user"', b'"hacker"')),
        ["show", "{t}/d"],
        EXIT_DATA,
        "message 0",
    ),
    ("show-100k-deep", lambda t: _split(t, DEEP + b"\n"), ["show", "{t}/d"], EXIT_DATA, "nested too deeply"),
    (
        "show-5000-digits",
        lambda t: _split(t, b'{"id": ' + HUGE + b"}\n"),
        ["show", "{t}/d"],
        EXIT_DATA,
        "not valid JSON",
    ),
    (
        "show-random-over-bad-lines",
        lambda t: _split(t, b"{\n" * 3),
        ["show", "{t}/d", "--random", "2"],
        EXIT_DATA,
        "not valid JSON",
    ),
    (
        "show-malformed-stats",
        lambda t: (_split(t, GOOD_RECORD), _stats(t, b"{oops")),
        ["show", "{t}/d"],
        EXIT_DATA,
        "stats.json is not valid JSON",
    ),
    ("show-eos-not-a-string", "eos-not-string", ["show", "{t}/d"], EXIT_DATA, "'eos_token' must be a string"),
    (
        "show-index-out-of-range",
        lambda t: _split(t, GOOD_RECORD),
        ["show", "{t}/d", "--index", "7"],
        EXIT_DATA,
        "out of range",
    ),
    # A FIFO would block the read forever.
    (
        "stats-json-a-fifo",
        lambda t: ((t / "d").mkdir(), os.mkfifo(t / "d" / "stats.json")),
        ["stats", "{t}/d"],
        EXIT_DATA,
        "not a regular file",
    ),
    (
        "show-stats-a-fifo",
        lambda t: (_split(t, GOOD_RECORD), os.mkfifo(t / "d" / "stats.json")),
        ["show", "{t}/d"],
        EXIT_DATA,
        "not a regular file",
    ),
    (
        "show-split-a-fifo",
        lambda t: ((t / "d").mkdir(), os.mkfifo(t / "d" / "train.jsonl")),
        ["show", "{t}/d"],
        EXIT_DATA,
        "not a regular file",
    ),
]


@pytest.fixture(scope="module")
def real_stats(tmp_path_factory) -> bytes:
    """The stats.json of a real run, to truncate and to corrupt."""
    root = tmp_path_factory.mktemp("real")
    (root / "k.jsonl").write_bytes(jsonl(GOOD_KO))
    result = korani("data", "prepare", "--koalpaca", root / "k.jsonl", "-o", root / "out")
    assert result.exit_code == 0, result.output
    return (root / "out" / "stats.json").read_bytes()


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "setup, args, code, fragment", [row[1:] for row in BAD_OUTPUTS], ids=[row[0] for row in BAD_OUTPUTS]
)
def test_stats_and_show_on_what_korani_did_not_write(tmp_path, real_stats, setup, args, code, fragment):
    if setup == "truncated-stats":
        _stats(tmp_path, real_stats[: len(real_stats) // 2])
    elif setup == "wrong-type-stats":
        stats = json.loads(real_stats)
        stats["inputs"]["koalpaca"]["records_in"] = "many"
        _stats(tmp_path, json.dumps(stats).encode())
    elif setup == "eos-not-string":
        stats = json.loads(real_stats)
        stats["eos_token"] = ["<eos>"]
        _split(tmp_path, GOOD_RECORD)
        _stats(tmp_path, json.dumps(stats).encode())
    elif setup is not None:
        setup(tmp_path)
    before = snapshot(tmp_path)
    result = korani("data", *(a.format(t=tmp_path) for a in args))
    assert result.exit_code == code, result.output
    one_error_line(result, fragment)
    assert snapshot(tmp_path) == before


@pytest.mark.timeout(60)
def test_stats_and_show_print_file_text_as_data(tmp_path, real_stats):
    """Names and contents from the files reach the terminal with neither rich
    markup nor control characters obeyed."""
    stats = json.loads(real_stats)
    stats["rejects"] = {"[/bold] \x1b]0;PWNED\x07": 3}
    _stats(tmp_path, json.dumps(stats).encode())
    record = {
        "id": "x\x1b[2J",
        "source": "sharegpt",
        "messages": [
            {"role": "user", "content": "질문 \x1b]0;PWNED\x07[/]"},
            {"role": "assistant", "content": "답\x9b31m"},
        ],
    }
    _split(tmp_path, jsonl([record]))
    shown = korani("data", "stats", tmp_path / "d")
    assert shown.exit_code == 0, shown.output
    assert "[/bold]" in shown.stdout and "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    shown = korani("data", "show", tmp_path / "d")
    assert shown.exit_code == 0, shown.output
    assert "[/]" in shown.stdout and "질문 ]0;PWNED" in shown.stdout
    assert not {"\x1b", "\x07", "\x9b"} & set(shown.stdout)


# -- 8: killed and terminated runs -------------------------------------------------


def big_source(path: Path, rows: int = 20_000) -> None:
    filler = "정렬 알고리즘과 자료 구조에 대한 긴 설명입니다. " * 6
    path.write_bytes(
        jsonl(
            {"instruction": f"질문 {i}: {filler[: 40 + i % 90]}", "output": f"답 {i} {filler} {i * 7919}"}
            for i in range(rows)
        )
    )


def spawn_prepare(src: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "korani_cli",
            "data",
            "prepare",
            "--koalpaca",
            str(src),
            "-o",
            str(out),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_for_temp(proc: subprocess.Popen, out: Path, timeout: float = 60) -> Path:
    """The run's `.OUT.tmp-PID` once it exists and holds files (mid-run)."""
    tmp = out.parent / f".{out.name}.tmp-{proc.pid}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (tmp / "spool.jsonl").exists():
            return tmp
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be killed: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the run never got under way")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_killed_with_sigkill_leaves_a_temp_dir_the_next_run_removes(tmp_path):
    src, out = tmp_path / "big.jsonl", tmp_path / "out"
    big_source(src)
    proc = spawn_prepare(src, out)
    tmp = wait_for_temp(proc, out)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tmp.is_dir()  # SIGKILL cannot clean up: the next run must
    assert not out.exists()

    small = tmp_path / "small.jsonl"
    small.write_bytes(jsonl(GOOD_KO))
    result = korani("data", "prepare", "--koalpaca", small, "-o", out, "--valid", "0", "--test", "0")
    assert result.exit_code == 0, result.output
    assert not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl", "out", "small.jsonl"]
    assert len(read_jsonl(out / "train.jsonl")) == len(GOOD_KO)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.timeout(60)
def test_a_run_killed_between_the_two_renames_gets_its_old_output_back(tmp_path):
    """replace_dir moves OUT aside, then the new one in: killed between, the
    aside copy is the only one. The next run restores it instead of reaping it."""
    src, out = tmp_path / "k.jsonl", tmp_path / "out"
    src.write_bytes(jsonl(GOOD_KO))
    assert korani("data", "prepare", "--koalpaca", src, "-o", out).exit_code == 0
    before = snapshot(out)
    pid = dead_pid()
    out.rename(tmp_path / f".out.old-{pid}")
    (tmp_path / f".out.tmp-{pid}").mkdir()  # the finished new one, never renamed
    result = korani("data", "prepare", "--koalpaca", src, "-o", out)
    assert result.exit_code == EXIT_USAGE, result.output  # the old output is back: it needs --overwrite
    one_error_line(result, "--overwrite")
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.jsonl", "out"]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_sigterm_mid_run_cleans_up_and_keeps_the_old_output(tmp_path):
    src, out = tmp_path / "big.jsonl", tmp_path / "out"
    small = tmp_path / "small.jsonl"
    small.write_bytes(jsonl(GOOD_KO))
    assert korani("data", "prepare", "--koalpaca", small, "-o", out).exit_code == 0
    before = snapshot(out)
    big_source(src)
    proc = spawn_prepare(src, out, "--overwrite")
    tmp = wait_for_temp(proc, out)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, stderr
    assert stderr.splitlines() == ["error: interrupted"], stderr
    assert not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl", "out", "small.jsonl"]
    assert snapshot(out) == before


@pytest.mark.timeout(60)
def test_a_source_file_name_that_is_not_utf8(tmp_path):
    """Python keeps such a name's bytes as lone surrogates; they must not
    crash the writes of train.jsonl (the fallback id) or stats.json."""
    (tmp_path / "src").mkdir()
    name = os.fsdecode(b"\xff\xfe-koalpaca.jsonl")
    try:
        (tmp_path / "src" / name).write_bytes(jsonl(GOOD_KO))
    except (OSError, UnicodeEncodeError):
        pytest.skip("this file system refuses file names that are not UTF-8")
    out = tmp_path / "out"
    result = korani(
        "data", "prepare", "--koalpaca", tmp_path / "src", "-o", out, "--valid", "0", "--test", "0"
    )
    assert result.exit_code == 0, result.output
    ids = [c["id"] for c in read_jsonl(out / "train.jsonl")]
    assert len(ids) == len(GOOD_KO) and all(
        i.startswith("koalpaca:\ufffd\ufffd-koalpaca.jsonl:line") for i in ids
    )
    files = json.loads((out / "stats.json").read_text(encoding="utf-8"))["inputs"]["koalpaca"]["files"]
    assert os.fsencode(files[0]["path"]).endswith(b"\xff\xfe-koalpaca.jsonl")


@pytest.mark.parametrize("threshold", ["1.0", "0.99", "0.97"])
def test_a_threshold_above_what_lsh_can_band_still_removes_what_it_should(tmp_path, threshold):
    """datasketch cannot band 64 permutations above ~0.96 (`--near-dup-threshold 1.0` was an
    internal error, exit 1): the index takes candidates at 0.95 and each is confirmed at the
    user's threshold, so only copies that differ in spacing alone go at 1.0."""
    spaced = dict(GOOD_KO[0], instruction=GOOD_KO[0]["instruction"].replace("한국의 ", "한국의"))
    (tmp_path / "k.jsonl").write_bytes(jsonl(GOOD_KO + [spaced]))
    result = korani(
        "data", "prepare", "--koalpaca", tmp_path / "k.jsonl", "-o", tmp_path / "out",
        "--near-dup-threshold", threshold, "--valid", "0", "--test", "0",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rejects = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert [r["reason"] for r in rejects] == ["near_duplicate"], rejects
    assert len(read_jsonl(tmp_path / "out" / "train.jsonl")) == len(GOOD_KO)
