"""`korani data`: real samples, every input format and quirk, dedup, splits, safety."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import SHARED, run_korani
from typer.testing import CliRunner

from korani_cli.cli import app
from korani_cli.data.clean import Cleaner, to_conversation
from korani_cli.data.prepare import PrepareConfig, prepare
from korani_cli.data.records import RawRecord
from korani_cli.errors import EXIT_DATA, EXIT_USAGE

runner = CliRunner()
INSTRUCT = SHARED / "fixtures" / "instruct"


def needs_shared():
    if not INSTRUCT.is_dir():
        pytest.skip(f"shared fixtures not found at {INSTRUCT}")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def all_conversations(out: Path) -> list[dict]:
    return [c for s in ("train", "valid", "test") for c in read_jsonl(out / f"{s}.jsonl")]


def korean_text(seed, n=300):
    """Distinct, Korean-looking text: random syllables and spaces."""
    import random

    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0xAC00, 0xD7A3)) + (" " if rng.random() < 0.3 else "") for _ in range(n))


def sg(cid, *turns):
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


# -- cleaning rules on single records ------------------------------------------


def conv_of(source, payload, **kw):
    return to_conversation(RawRecord(source, "f.json", "element 0", payload), Cleaner(**kw))


def test_koalpaca_followups_become_turns_on_the_real_row():
    needs_shared()
    row = json.loads((INSTRUCT / "koalpaca_v1.1a_rows0-1.jsonl").read_text(encoding="utf-8").splitlines()[0])
    conv = conv_of("koalpaca", row)
    assert [t.role for t in conv.turns] == ["user", "assistant", "user", "assistant"]
    assert conv.turns[2].content == "고구마 줄기도 볶아먹을 수 있나요?"
    assert conv.turns[3].content.startswith("고구마 줄기도 식용으로")
    assert "덧붙이는 답변" not in conv.turns[1].content
    off = conv_of("koalpaca", row, disabled=frozenset({"koalpaca_followups"}))
    assert len(off.turns) == 2 and "덧붙이는 답변" in off.turns[1].content


def test_sharegpt_quirks_are_repaired():
    conv = conv_of(
        "sharegpt",
        sg(
            "q1",
            ("gpt", "먼저 말하는 봇"),  # starts with the assistant
            ("human", "rm자, 보세요!\r\n질문입니다."),  # DeepL prefix + CRLF
            ("user", "덧붙인 질문"),  # consecutive same role
            ("gpt", ""),  # empty turn
            ("chatgpt", "답변입니다.\r\n끝."),
            ("human", "두 번째 질문이에요. 여기에 다음 답이 붙어 버렸습니다 — 충분히 긴 답변 문장입니다."),
            ("bard", "여기에 다음 답이 붙어 버렸습니다 — 충분히 긴 답변 문장입니다."),
            ("human", "답 없는 마지막 질문"),
        ),
    )
    roles = [t.role for t in conv.turns]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert conv.turns[0].content == "자, 보세요!\n질문입니다.\n\n덧붙인 질문"
    assert conv.turns[1].content == "답변입니다.\n끝."
    assert conv.turns[2].content == "두 번째 질문이에요."


@pytest.mark.parametrize(
    "text, expected",
    [
        ("n Java에서 문자열을", "Java에서 문자열을"),
        ("rm자, 보세요!", "자, 보세요!"),
        ("C언어 포인터", "C언어 포인터"),
        ("iPhone 15를 샀어요", "iPhone 15를 샀어요"),
        ("pH가 낮은 용액", "pH가 낮은 용액"),
        ("x 값은 3입니다", "x 값은 3입니다"),
        ("ok 좋아요", "ok 좋아요"),
    ],
)
def test_deepl_prefix_rule(text, expected):
    assert Cleaner().text(text) == expected


def test_nfc_normalisation():
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "한국어")
    assert decomposed != "한국어" and Cleaner().text(decomposed) == "한국어"


@pytest.mark.parametrize(
    "payload, reason",
    [
        (sg("b", ("human", "안녕"), ("bing", "검색 결과")), "unknown_role"),
        ({"id": "x", "conversations": "not a list"}, "wrong_field_type"),
        ({"id": "x"}, "missing_field"),
        (sg("c", ("human", "질문만")), "no_exchange"),
        ([1, 2], "wrong_field_type"),
    ],
)
def test_bad_sharegpt_records_are_rejected_with_reasons(payload, reason):
    assert conv_of("sharegpt", payload).reason == reason


# -- the whole pipeline ------------------------------------------------------


def write_quirky_inputs(root: Path) -> dict:
    """Every input format with every quirk; returns the source arguments."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    ko_rows = [
        {
            "instruction": f"질문 {i}: 한국의 {i}번째 도시는 어디인가요?",
            "output": f"답변 {i}: 그 도시는 아름다운 곳입니다. 고유 번호 {i * 7919}.",
            "url": f"https://kin.naver.com/{i}",
        }
        for i in range(30)
    ]
    pq.write_table(pa.Table.from_pylist(ko_rows[:10]), root / "koalpaca.parquet")
    lines = [json.dumps(r, ensure_ascii=False) for r in ko_rows[10:20]]
    lines.insert(3, '{"instruction": "깨진 줄", "output": ')  # malformed JSON line
    lines.insert(5, json.dumps({"instruction": 42, "output": "숫자"}))  # wrong field type
    lines.append(json.dumps(ko_rows[0], ensure_ascii=False))  # exact duplicate of a parquet row
    (root / "koalpaca.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

    records = [
        sg(
            f"s{i}",
            ("human", f"ShareGPT 질문 {i}번: 파이썬으로 정렬 알고리즘을 구현하는 방법은? 변형 {i * 31}"),
            ("gpt", f"정렬 알고리즘 설명 {i}: 퀵 정렬은 분할 정복을 사용합니다.\r\n{korean_text(i, 150)}"),
        )
        for i in range(20)
    ]
    records.append(sg("bing1", ("human", "검색해줘"), ("bing", "결과")))
    records.append({"id": "nolist", "conversations": {"from": "human"}})
    # A near-duplicate of s3: one character differs in a long text.
    near = json.loads(json.dumps(records[3]))
    near["id"] = "s3-copy"
    near["conversations"][1]["value"] = near["conversations"][1]["value"][:-2] + "요."
    records.append(near)
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    # A malformed element in the middle of the array: the reader must resync after it.
    broken = body.replace(
        json.dumps(records[10], ensure_ascii=False),
        '{"id": "broken", "conversations": [{"from": "human", "value": "끝나지 않은 문자열}]}',
    )
    (root / "sharegpt.json").write_text("[\n" + broken + "\n]\n", encoding="utf-8")
    return {
        "koalpaca": [str(root / "koalpaca.parquet"), str(root / "koalpaca.jsonl")],
        "sharegpt": [str(root / "sharegpt.json")],
    }


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    root = tmp_path_factory.mktemp("quirky")
    return write_quirky_inputs(root / "in")


def test_prepare_every_format_and_quirk(quirky, tmp_path):
    out = tmp_path / "out"
    stats = prepare(
        PrepareConfig(
            out, koalpaca=tuple(quirky["koalpaca"]), sharegpt=tuple(quirky["sharegpt"]), valid=0.1, test=0.1
        )
    )
    rejects = read_jsonl(out / "rejects.jsonl")
    reasons = {(r["reason"], r["position"].split(" (")[0]) for r in rejects}
    assert ("malformed_json", "line 4") in reasons  # the broken JSONL line, by line number
    assert ("wrong_field_type", "line 6") in reasons
    assert ("malformed_json", "element 10") in reasons  # the broken array element, by index
    assert {"unknown_role", "exact_duplicate", "near_duplicate"} <= {r["reason"] for r in rejects}
    near = next(r for r in rejects if r["reason"] == "near_duplicate")
    assert "s3" in near["detail"]
    convs = all_conversations(out)
    ids = {c["id"] for c in convs}
    assert {"s0", "s19", "s3"} <= ids and "s3-copy" not in ids and "broken" not in ids
    assert "s11" in ids, "the reader resynchronised after the broken element"
    for c in convs:
        assert set(c) == {"id", "source", "messages"}
        assert [m["role"] for m in c["messages"]][:2] == ["user", "assistant"]
        assert all("\r" not in m["content"] for m in c["messages"])
    assert (
        stats["inputs"]["koalpaca"]["records_in"] == 23
    )  # 20 rows, a broken line, a bad field, a duplicate and stats["inputs"]["koalpaca"]["records_out"] == 20
    assert sum(s["conversations"] for s in stats["splits"].values()) == len(convs) == 20 + 19
    assert stats["splits"]["valid"]["conversations"] == stats["splits"]["test"]["conversations"] == 4
    assert stats["cleaning"]["crlf"] > 0 and stats["length_measure"] == "chars/1.5"


def test_near_duplicates_never_straddle_splits(tmp_path):
    rows = []
    for i in range(40):  # 10 distinct texts, each in 4 slightly different copies
        group = i % 10
        rows.append(
            {
                "instruction": f"서울 이야기 {group}",
                "output": korean_text(group) + ("." if i < 10 else "!" * (i // 10)),
            }
        )
    (tmp_path / "k.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8"
    )
    prepare(PrepareConfig(tmp_path / "out", koalpaca=(str(tmp_path / "k.jsonl"),), valid=0.3, test=0.3))
    kept = {s: read_jsonl(tmp_path / "out" / f"{s}.jsonl") for s in ("train", "valid", "test")}
    topics = {s: {c["messages"][0]["content"] for c in cs} for s, cs in kept.items()}
    assert sum(len(cs) for cs in kept.values()) == 10  # one per near-duplicate group
    assert not (topics["train"] & (topics["valid"] | topics["test"]))


def test_deterministic_byte_identical_outputs(quirky, tmp_path):
    cfg = dict(
        koalpaca=tuple(quirky["koalpaca"]), sharegpt=tuple(quirky["sharegpt"]), seed=7, mix={"sharegpt": 0.7}
    )
    prepare(PrepareConfig(tmp_path / "a", **cfg))
    prepare(PrepareConfig(tmp_path / "b", **cfg))
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "rejects.jsonl", "stats.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other = prepare(PrepareConfig(tmp_path / "c", **{**cfg, "seed": 8}))
    assert (tmp_path / "a" / "train.jsonl").read_bytes() != (tmp_path / "c" / "train.jsonl").read_bytes()
    assert other["inputs"]["sharegpt"]["mix_dropped"] > 0


def test_mix_upweights_in_train_only(quirky, tmp_path):
    stats = prepare(
        PrepareConfig(
            tmp_path / "o", koalpaca=tuple(quirky["koalpaca"]), mix={"koalpaca": 2.0}, valid=0.2, test=0.2
        )
    )
    train = read_jsonl(tmp_path / "o" / "train.jsonl")
    ids = [c["id"] for c in train if c["source"] == "koalpaca"]
    assert len(ids) == 2 * len(set(ids))
    held = {c["id"] for s in ("valid", "test") for c in read_jsonl(tmp_path / "o" / f"{s}.jsonl")}
    assert not held & set(ids)
    assert stats["splits"]["train"]["by_source"]["koalpaca"] == len(ids)


def test_tokenizer_lengths_and_truncation(tiny_tokenizer_dir, tmp_path):
    long_turns = [
        ("human", "첫 질문입니다."),
        ("gpt", "짧은 답."),
        ("human", "두 번째 질문."),
        ("gpt", "아주 긴 답변 " * 200),
    ]
    (tmp_path / "s.json").write_text(
        json.dumps(
            [sg("long", *long_turns), sg("huge", ("human", "질문"), ("gpt", "거대한 답 " * 400))],
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )
    stats = prepare(
        PrepareConfig(
            tmp_path / "o",
            sharegpt=(str(tmp_path / "s.json"),),
            tokenizer=str(tiny_tokenizer_dir),
            max_tokens=200,
            valid=0,
            test=0,
        )
    )
    assert stats["length_measure"] == f"tokenizer:{tiny_tokenizer_dir}"
    (conv,) = read_jsonl(tmp_path / "o" / "train.jsonl")
    assert conv["id"] == "long" and len(conv["messages"]) == 2  # the long last exchange was cut
    assert stats["inputs"]["sharegpt"]["truncated"] == 1 and stats["rejects"] == {"too_long": 1}
    assert stats["splits"]["train"]["tokens"]["max"] <= 200


def test_real_shared_samples_end_to_end(tmp_path):
    needs_shared()
    result = runner.invoke(
        app,
        [
            "data",
            "prepare",
            "--koalpaca",
            str(INSTRUCT / "koalpaca_v1.1a_rows0-1.jsonl"),
            "--sharegpt",
            str(INSTRUCT / "sharegpt_deepl_ko_sample_records.json"),
            "-o",
            str(tmp_path / "out"),
            "--valid",
            "0",
            "--test",
            "0",
        ],
    )
    assert result.exit_code == 0, result.output
    convs = {c["id"]: c for c in read_jsonl(tmp_path / "out" / "train.jsonl")}
    assert {"QWJhYvA_0", "i6IyJda_0"} <= set(convs)
    assert "\r" not in json.dumps(convs["i6IyJda_0"], ensure_ascii=False)
    (rej,) = read_jsonl(tmp_path / "out" / "rejects.jsonl")
    assert rej["reason"] == "no_exchange" and "A5AbcES_0" in rej["record"]
    shown = runner.invoke(app, ["data", "stats", str(tmp_path / "out")])
    assert shown.exit_code == 0 and "koalpaca" in shown.stdout and "no_exchange" in shown.stdout


def test_show_highlights_exactly_the_learned_text(tmp_path):
    from korani_cli.data.show import LOSS_STYLE, render_example

    record = {
        "id": "x",
        "source": "sharegpt",
        "messages": [
            {"role": "user", "content": "질문 [bold]입니다"},
            {"role": "assistant", "content": "답 하나"},
            {"role": "user", "content": "또?"},
            {"role": "assistant", "content": "답 둘"},
        ],
    }
    group = render_example(record, "<|endoftext|>", 0, "train")
    body = group.renderables[1]
    learned = [body.plain[s.start : s.end] for s in body.spans if s.style == LOSS_STYLE]
    assert learned == ["답 하나<|endoftext|>", "답 둘<|endoftext|>"]
    assert "[bold]" in body.plain  # data text is never read as markup

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.jsonl").write_text(
        json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    import io

    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system="standard", width=80).print(group)
    assert "\x1b[1;32m답 하나<|endoftext|>" in buf.getvalue()
    out = runner.invoke(app, ["data", "show", str(tmp_path / "d"), "--random", "1"])
    assert out.exit_code == 0 and "### Bot" in out.stdout and "carry loss" in out.stdout


# -- bad input, safety, the CLI ------------------------------------------------


def test_strict_stops_at_the_first_bad_position(quirky, tmp_path):
    proc = run_korani(
        "data", "prepare", "--koalpaca", quirky["koalpaca"][1], "-o", str(tmp_path / "o"), "--strict"
    )
    assert proc.returncode == EXIT_DATA
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1
        and "koalpaca.jsonl, line 4: malformed json" in lines[0]
        and "Traceback" not in proc.stderr
    )
    assert not (tmp_path / "o").exists()


def test_missing_source_and_empty_result_are_one_line_errors(tmp_path):
    proc = run_korani(
        "data", "prepare", "--koalpaca", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o")
    )
    assert (
        proc.returncode == EXIT_DATA
        and "data source not found" in proc.stderr
        and "Traceback" not in proc.stderr
    )
    (tmp_path / "empty.jsonl").write_text('{"instruction": "질문만"}\n', encoding="utf-8")
    proc = run_korani(
        "data", "prepare", "--koalpaca", str(tmp_path / "empty.jsonl"), "-o", str(tmp_path / "o")
    )
    assert (
        proc.returncode == EXIT_DATA
        and "no conversation survived" in proc.stderr
        and "missing_field" in proc.stderr
    )
    assert not (tmp_path / "o").exists()


def test_hub_id_offline_is_a_one_line_error(tmp_path):
    proc = run_korani(
        "data",
        "prepare",
        "--koalpaca",
        "beomi/KoAlpaca-v1.1a",
        "-o",
        str(tmp_path / "o"),
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert (
        proc.returncode == EXIT_DATA and "beomi/KoAlpaca-v1.1a" in proc.stderr and "local path" in proc.stderr
    )


def test_existing_output_needs_overwrite_and_survives_a_failed_run(quirky, tmp_path):
    out = tmp_path / "o"
    prepare(PrepareConfig(out, koalpaca=tuple(quirky["koalpaca"])))
    before = (out / "train.jsonl").read_bytes()
    proc = run_korani("data", "prepare", "--koalpaca", quirky["koalpaca"][0], "-o", str(out))
    assert proc.returncode == EXIT_USAGE and "--overwrite" in proc.stderr

    class Interrupt:
        def start(self, stage, total):
            pass

        def advance(self, stage, amount=1):
            if stage == "write":
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(PrepareConfig(out, koalpaca=tuple(quirky["koalpaca"]), overwrite=True, seed=3), Interrupt())
    assert (out / "train.jsonl").read_bytes() == before  # the earlier output is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temporary leftovers
    proc = run_korani(
        "data", "prepare", "--koalpaca", quirky["koalpaca"][0], "-o", str(out), "--overwrite", "--seed", "3"
    )
    assert proc.returncode == 0, proc.stderr


def test_directory_source_reads_every_file(quirky, tmp_path):
    src_dir = Path(quirky["koalpaca"][0]).parent
    stats = prepare(PrepareConfig(tmp_path / "o", koalpaca=(str(src_dir),), valid=0, test=0))
    assert len(stats["inputs"]["koalpaca"]["files"]) == 3  # .parquet, .jsonl and the .json array


@pytest.mark.slow
def test_streaming_a_large_array_keeps_memory_flat(tmp_path):
    """Peak memory for a ~60 MB array stays near that of a tiny file: the array is never loaded whole."""
    big = tmp_path / "big.json"
    filler = "정렬 알고리즘과 자료 구조에 대한 긴 설명입니다. " * 40
    with big.open("w", encoding="utf-8") as fh:
        fh.write("[")
        for i in range(20000):
            rec = sg(
                f"b{i}",
                ("human", f"질문 {i} {filler[: 50 + i % 50]}"),
                ("gpt", f"답 {i} " + filler + str(i * 7)),
            )
            fh.write(("," if i else "") + json.dumps(rec, ensure_ascii=False))
        fh.write("]")
    small = tmp_path / "small.json"
    small.write_text(
        json.dumps([sg("s", ("human", "질문"), ("gpt", "답"))], ensure_ascii=False), encoding="utf-8"
    )
    assert big.stat().st_size > 50e6

    def peak_mb(path):
        code = (
            "import resource, sys\nfrom pathlib import Path\n"
            "from korani_cli.data.prepare import PrepareConfig, prepare\n"
            "from korani_cli.data.readers import read_file\n"
            "n = sum(1 for _ in read_file('sharegpt', Path(sys.argv[1]), lambda b: None, "
            "('conversations',)))\n"
            "print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
        )
        n, mb = out.stdout.split()
        return int(n), float(mb)

    n_big, big_mb = peak_mb(big)
    n_small, small_mb = peak_mb(small)
    assert (n_big, n_small) == (20000, 1)
    print(
        f"peak RSS: {big_mb:.0f} MB for {big.stat().st_size / 1e6:.0f} MB, {small_mb:.0f} MB for a tiny file"
    )
    assert big_mb - small_mb < 60, (big_mb, small_mb)  # json.load of the file alone takes > 150 MB more


# -- every counted rule can be switched off; empty splits say why ------------------

MIDWAY = sg(
    "m1",
    ("system", "너는 친절한 도우미야."),
    ("human", "첫 질문입니다"),
    ("gpt", "첫 답입니다"),
    ("system", "이제부터 반말로 답해."),
    ("human", "둘째 질문"),
    ("gpt", "둘째 답"),
)


@pytest.mark.parametrize(
    "disabled, roles, counted",
    [
        (frozenset(), ["system", "user", "assistant", "user", "assistant"], 1),
        (
            frozenset({"drop_midway_system"}),
            ["system", "user", "assistant", "system", "user", "assistant"],
            0,
        ),
    ],
)
def test_drop_midway_system_is_a_rule_that_can_be_switched_off(disabled, roles, counted):
    cleaner = Cleaner(disabled)
    conv = to_conversation(RawRecord("sharegpt", "f.json", "element 0", MIDWAY), cleaner)
    assert [t.role for t in conv.turns] == roles
    assert cleaner.counts["drop_midway_system"] == counted


def test_every_counted_cleaning_rule_is_accepted_by_no_clean(tmp_path):
    """A rule that stats.json counts must be one --no-clean accepts, and --help names it."""
    (tmp_path / "s.json").write_text(json.dumps([MIDWAY], ensure_ascii=False), encoding="utf-8")
    counted = runner.invoke(
        app, ["data", "prepare", "--sharegpt", str(tmp_path / "s.json"), "-o", str(tmp_path / "a")]
    )
    assert counted.exit_code == 0, counted.output
    rules = json.loads((tmp_path / "a" / "stats.json").read_text(encoding="utf-8"))["cleaning"]
    assert rules["drop_midway_system"] == 1
    helped = runner.invoke(app, ["data", "prepare", "--help"], env={"COLUMNS": "2000"}).stdout
    for rule in rules:
        assert rule in helped, rule
        off = runner.invoke(
            app,
            [
                "data",
                "prepare",
                "--sharegpt",
                str(tmp_path / "s.json"),
                "-o",
                str(tmp_path / rule),
                "--no-clean",
                rule,
            ],
        )
        assert off.exit_code == 0, (rule, off.output)
        assert (
            rule not in json.loads((tmp_path / rule / "stats.json").read_text(encoding="utf-8"))["cleaning"]
        )
    kept = read_jsonl(tmp_path / "drop_midway_system" / "train.jsonl")[0]["messages"]
    assert [m["role"] for m in kept].count("system") == 2


@pytest.mark.parametrize(
    "args, notes",
    [
        (
            [],
            [
                "the valid split is empty: 4 conversations × 0.1 rounds to 0 — pass --valid 0.25 (one "
                "conversation) or more, or give more data",
                "the test split is empty: 4 conversations × 0.1 rounds to 0 — pass --test 0.25 (one "
                "conversation) or more, or give more data",
            ],
        ),
        (["--valid", "0.25", "--test", "0.25"], []),
        (["--valid", "0", "--test", "0"], []),  # asked for none: nothing to warn about
        (
            ["--valid", "0.4", "--test", "0.4"],
            [
                "the train split is empty: --valid and --test took all 4 conversations — "
                "pass smaller --valid/--test fractions, or give more data"
            ],
        ),
    ],
)
def test_an_empty_split_gets_a_note_saying_why(tmp_path, args, notes):
    rows = [
        {
            "instruction": f"{i}번 질문: {korean_text(i, 40)}",
            "output": f"{i}번 답: {korean_text(100 + i, 60)}",
        }
        for i in range(4)
    ]
    (tmp_path / "k.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    result = runner.invoke(
        app,
        ["data", "prepare", "--koalpaca", str(tmp_path / "k.jsonl"), "-o", str(tmp_path / "o"), *args],
        env={"COLUMNS": "2000"},
    )
    assert result.exit_code == 0, result.output
    assert [
        line.removeprefix("note: ") for line in result.stderr.splitlines() if line.startswith("note:")
    ] == notes


@pytest.mark.slow
def test_a_near_duplicate_of_two_kept_records_names_the_first_whatever_the_hash_seed(tmp_path):
    """C is within the threshold of both A and B (which are not of each other): rejects.jsonl names A on every
    run. LSH hands candidates back as a set, so before they were sorted it named A or B by PYTHONHASHSEED."""

    shared = "대한민국의 수도는 서울이며 한강이 도시를 가로질러 흐른다 서울은 조선 시대부터 수도였다 " * 2
    p = "부산은 남쪽의 항구 도시로 해운대 해수욕장이 유명하고 영화제가 열린다 "
    q = "제주도는 화산섬으로 한라산이 있으며 감귤과 돌하르방으로 알려져 있다 "
    source = tmp_path / "k.jsonl"
    source.write_text(
        "".join(
            json.dumps({"instruction": "한국의 도시를 설명해 주세요.", "output": out}, ensure_ascii=False)
            + "\n"
            for out in (shared + p, shared + q, shared + p[: len(p) // 2] + q[: len(q) // 2])
        ),
        encoding="utf-8",
    )
    details = set()
    for seed in range(6):
        out = tmp_path / f"out{seed}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "korani_cli",
                "data",
                "prepare",
                "--koalpaca",
                str(source),
                "--near-dup-threshold",
                "0.5",
                "-o",
                str(out),
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": str(seed)},
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        details |= {
            json.loads(line)["detail"]
            for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()
        }
    assert details == {"near-duplicate of koalpaca:k.jsonl:line1"}
