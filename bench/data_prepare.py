"""`korani data prepare` at scale: time and peak memory on 100,000 synthetic records.

Synthesises records shaped like the real samples — KoAlpaca rows (with
"덧붙이는 답변" follow-ups) as JSONL, DeepL ShareGPT conversations (CRLF, stray
DeepL prefixes, empty turns, leading bot turns, bing turns, exact and near
duplicates) as one JSON array — from real Korean sentences (KorQuAD contexts
in ../shared when present), then runs the CLI end to end in a child process.

Baseline, same run: the naive way to read the big ShareGPT array,
`json.load` of the whole file, against korani's streaming reader — peak RSS.

Goals on the 2-core box: prepare ≤ 60 s and ≤ 1 GB peak.
Run: .venv/bin/python bench/data_prepare.py [--records 100000] [--big-mb 400]
Ends with one line: RESULT {json}.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def sentence_pool() -> list[str]:
    korquad = SHARED / "eval" / "korquad" / "KorQuAD_v1.0_dev.json"
    if korquad.exists():
        data = json.loads(korquad.read_text(encoding="utf-8"))["data"]
        text = " ".join(p["context"] for a in data for p in a["paragraphs"])
        pool = [s.strip() for s in re.split(r"(?<=[.?!다])\s+", text) if 10 < len(s.strip()) < 300]
        if len(pool) > 1000:
            return pool
    rng = random.Random(0)
    return [
        "".join(chr(rng.randrange(0xAC00, 0xD7A3)) + (" " if rng.random() < 0.3 else "") for _ in range(60))
        for _ in range(5000)
    ]


def synthesize(out: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    rng = random.Random(seed)
    pool = sentence_pool()

    def para(k):
        return " ".join(rng.choice(pool) for _ in range(k))

    n_ko = n // 2
    ko_path = out / "koalpaca.jsonl"
    with ko_path.open("w", encoding="utf-8") as fh:
        for i in range(n_ko):
            output = para(rng.randint(2, 6))
            if rng.random() < 0.3:
                output += f"\n\n 덧붙이는 답변: {rng.choice(pool)} \n\n{para(2)}"
            fh.write(
                json.dumps(
                    {"instruction": para(1), "output": output, "url": f"https://kin.naver.com/qna/{i}"},
                    ensure_ascii=False,
                )
                + "\n"
            )
            if rng.random() < 0.05:  # exact duplicates across the file
                fh.write(
                    json.dumps(
                        {
                            "instruction": "중복 질문입니다",
                            "output": "중복 답변입니다. 같은 글이 여러 번 나옵니다.",
                            "url": "",
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )

    sg_path = out / "sharegpt.json"
    previous = None
    with sg_path.open("w", encoding="utf-8") as fh:
        fh.write("[")
        for i in range(n - n_ko):
            turns = []
            if rng.random() < 0.05:
                turns.append({"from": "gpt", "value": para(1)})
            for _ in range(rng.randint(1, 4)):
                q = para(rng.randint(1, 2))
                if rng.random() < 0.1:
                    q = "n " + q
                turns.append({"from": rng.choice(["human", "user"]), "value": q})
                a = para(rng.randint(2, 8))
                if rng.random() < 0.5:
                    a = a.replace(". ", ".\r\n")
                turns.append({"from": rng.choice(["gpt", "gpt", "chatgpt", "bard"]), "value": a})
                if rng.random() < 0.05:
                    turns.append({"from": "gpt", "value": ""})
            if rng.random() < 0.01:
                turns.append({"from": "bing", "value": para(1)})
            record = {"id": f"sg{i}_0", "conversations": turns}
            if previous is not None and rng.random() < 0.03:  # a near-duplicate of the previous record
                record = json.loads(json.dumps(previous))
                record["id"] = f"sg{i}_near"
                record["conversations"][-1]["value"] += " 감사합니다."
            previous = record
            fh.write(("," if i else "") + "\n" + json.dumps(record, ensure_ascii=False))
        fh.write("\n]\n")
    return ko_path, sg_path


def big_array(path: Path, megabytes: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    pool = sentence_pool()
    with path.open("w", encoding="utf-8") as fh:
        fh.write("[")
        i = 0
        while fh.tell() < megabytes * 1_000_000:
            turns = []
            for _ in range(rng.randint(1, 5)):
                turns.append({"from": "human", "value": " ".join(rng.choice(pool) for _ in range(2))})
                turns.append(
                    {
                        "from": "gpt",
                        "value": " ".join(rng.choice(pool) for _ in range(10)).replace(". ", ".\r\n"),
                    }
                )
            fh.write(
                ("," if i else "") + json.dumps({"id": f"big{i}", "conversations": turns}, ensure_ascii=False)
            )
            i += 1
        fh.write("]")


def in_child(code: str, *args: str) -> tuple[float, float, str]:
    """Run code in a fresh interpreter; return (seconds, peak RSS in MB, its stdout)."""
    wrapper = (
        code + "\nimport resource\nprint('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, *args], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    peak = float(out.stdout.rsplit("PEAK", 1)[1])
    return seconds, peak, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--big-mb", type=int, default=400)
    ap.add_argument("--quick", action="store_true", help="2,000 records, a 5 MB array (CI)")
    args = ap.parse_args()
    if args.quick:  # tiny sizes for CI, the same code measured; a size given on the command line wins
        ap.set_defaults(records=2000, big_mb=5)
        args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="korani-data-bench-"))

    t = time.perf_counter()
    ko, sg = synthesize(work, args.records)
    synth_s = time.perf_counter() - t
    inputs_mb = (ko.stat().st_size + sg.stat().st_size) / 1e6

    prepare_code = (
        "import sys\nfrom korani_cli.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
    )
    out_dir = work / "out"
    prep_s, prep_mb, _ = in_child(
        prepare_code, "data", "prepare", "--koalpaca", str(ko), "--sharegpt", str(sg), "-o", str(out_dir)
    )
    stats = json.loads((out_dir / "stats.json").read_text(encoding="utf-8"))
    kept = sum(s["conversations"] for s in stats["splits"].values())

    big = work / "big_sharegpt.json"
    big_array(big, args.big_mb)
    big_mb = big.stat().st_size / 1e6
    stream_code = (
        "import sys\nfrom pathlib import Path\nfrom korani_cli.data.readers import read_file\n"
        "n = sum(1 for _ in read_file('sharegpt', Path(sys.argv[1]), lambda b: None, "
        "('conversations',)))\nprint('N', n)\n"
    )
    stream_s, stream_mb, _ = in_child(stream_code, str(big))
    naive_code = "import json, sys\nn = len(json.load(open(sys.argv[1], encoding='utf-8')))\nprint('N', n)\n"
    naive_s, naive_mb, _ = in_child(naive_code, str(big))
    empty_s, empty_mb, _ = in_child("import korani_cli.data.readers\n")

    rows = [
        (
            "prepare (CLI, end to end)",
            f"{args.records:,} records, {inputs_mb:.0f} MB",
            f"{prep_s:.1f} s",
            f"{prep_mb:.0f} MB",
        ),
        (f"stream {big_mb:.0f} MB array (korani)", "", f"{stream_s:.1f} s", f"{stream_mb:.0f} MB"),
        (f"json.load {big_mb:.0f} MB array (naive)", "", f"{naive_s:.1f} s", f"{naive_mb:.0f} MB"),
        ("interpreter + reader import", "", f"{empty_s:.1f} s", f"{empty_mb:.0f} MB"),
    ]
    print(f"{'run':<32} {'input':<28} {'time':>8} {'peak RSS':>9}")
    for r in rows:
        print(f"{r[0]:<32} {r[1]:<28} {r[2]:>8} {r[3]:>9}")
    print(f"kept {kept:,} conversations; rejects {stats['rejects']}")
    result = {
        "records": args.records,
        "inputs_mb": round(inputs_mb, 1),
        "synthesize_s": round(synth_s, 1),
        "prepare_s": round(prep_s, 1),
        "prepare_peak_mb": round(prep_mb),
        "kept": kept,
        "rejects": stats["rejects"],
        "big_array_mb": round(big_mb),
        "stream_s": round(stream_s, 1),
        "stream_peak_mb": round(stream_mb),
        "naive_json_load_s": round(naive_s, 1),
        "naive_json_load_peak_mb": round(naive_mb),
        "goals": {"prepare_s_max": 60, "peak_mb_max": 1024},
    }
    print("RESULT " + json.dumps(result, ensure_ascii=False))


if __name__ == "__main__":
    main()
