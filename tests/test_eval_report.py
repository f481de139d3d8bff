"""What `eval show` and `eval compare` tell a reader (issue 22 §6): whose work each measure scores
(korani's footnote check vs the model's own markers), a warning when most answers were cut by the
length limit, and runs named by `last` or the first characters of their name.

The runs are real: the scripted backend of test_eval answers KorQuAD-format questions through the
`ask --search` code path, and the commands read the run directories it leaves.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import support
from test_eval import ScriptedBackend, cli, rag_run, write_set

from korani_cli.backends import Generation, apply_stops
from korani_cli.errors import EXIT_USAGE


class CutBackend(ScriptedBackend):
    """The scripted answers, reported as cut by the token limit for all but `whole` of them."""

    def __init__(self, whole: int = 0):
        super().__init__()
        self.whole = whole

    def stream(self, messages, params):
        generation = super().stream(messages, params)  # its usage is filled as it is built
        if len(self.history) > self.whole:
            generation.usage.finish_reason = "length"
        return generation


def one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_the_table_and_json_say_which_measures_score_korani_check_and_which_the_model(tmp_path):
    _, run = rag_run(tmp_path, ScriptedBackend())
    shown = cli("eval", "show", str(run.path))
    assert shown.exit_code == 0, shown.output
    rows = {line.split()[0]: line for line in shown.stdout.splitlines() if line.strip()}
    assert "korani's check" in rows["citation_precision"] and "korani's check" in rows["citation_recall"]
    assert "the model" in rows["raw_citation_precision"] and "the model" in rows["raw_citation_recall"]
    assert "the model" in rows["answer_correct"] and "retrieval" in rows["retrieval_hit"]
    assert "retrieval" in rows["answer_in_context"]
    flat = " ".join(shown.stdout.split())
    assert "raw_citation_*: the model's own [n] markers" in flat  # the caption explains both
    assert "note:" not in shown.stderr  # every answer ended at EOS: no cut warning

    as_json = json.loads(cli("eval", "show", str(run.path), "--json").stdout)["metrics"]
    assert as_json["citation_precision"]["by"] == "checker"
    assert as_json["raw_citation_precision"]["by"] == as_json["f1"]["by"] == "model"
    assert as_json["retrieval_hit"]["by"] == "retrieval"
    saved = json.loads((run.path / "summary.json").read_text(encoding="utf-8"))["metrics"]
    assert saved["raw_citation_recall"]["by"] == "model" and saved["citation_recall"]["by"] == "checker"


def test_most_answers_cut_by_the_length_limit_is_one_warning_line(tmp_path):
    _, run = rag_run(tmp_path, CutBackend(whole=2), max_new_tokens=64)
    shown = cli("eval", "show", str(run.path))
    assert shown.exit_code == 0, shown.output
    warned = [line for line in shown.stderr.splitlines() if "length limit" in line]
    assert warned == [
        "note: 5 of 7 answers (71%) were cut by the length limit of 64 tokens, so the measures score cut "
        "answers — rerun with a higher --max-new-tokens, or give the model a stop"
    ], shown.stderr
    as_json = cli("eval", "show", str(run.path), "--json")
    assert json.loads(as_json.stdout)["usage"]["finish_reason"] == {"eos": 2, "length": 5}
    assert "5 of 7 answers (71%)" in as_json.stderr  # stdout stays the JSON alone


def test_a_minority_of_cut_answers_is_not_warned_about(tmp_path):
    _, run = rag_run(tmp_path, CutBackend(whole=4))  # 3 of 7 cut
    shown = cli("eval", "show", str(run.path))
    assert shown.exit_code == 0 and "length limit" not in shown.stderr, shown.stderr


def _runs_under_home(tmp_path, home, names):
    """Copies of one real run under korani's eval directory, the later names written later."""
    _, run = rag_run(tmp_path, ScriptedBackend())
    root = home / "data" / "eval"
    root.mkdir(parents=True)
    for i, name in enumerate(names):
        shutil.copytree(run.path, root / name)
        os.utime(root / name / "summary.json", (1_800_000_000 + i, 1_800_000_000 + i))
    return root


def test_show_takes_last_and_a_unique_prefix_and_lists_an_ambiguous_one(tmp_path, home):
    root = _runs_under_home(
        tmp_path, home, ["rag-demo-20261206-050000", "rag-demo-20261206-051500", "chat-demo-20261206-040000"]
    )
    last = cli("eval", "show", "last", "--json")
    assert last.exit_code == 0, last.output
    assert json.loads(last.stdout)["run_dir"]  # a summary, read from the run written last
    latest = cli("eval", "show", "last")
    assert latest.exit_code == 0
    # `last` goes by when the summary was written, not by the name: the chat- one was copied last.
    os.utime(root / "rag-demo-20261206-051500" / "summary.json", (1_900_000_000, 1_900_000_000))
    os.utime(root / "chat-demo-20261206-040000" / "summary.json", (1_800_000_000, 1_800_000_000))
    (root / "rag-demo-20261206-051500" / "summary.json").write_text(
        (root / "rag-demo-20261206-051500" / "summary.json")
        .read_text(encoding="utf-8")
        .replace('"name": "scripted"', '"name": "the-latest"'),
        encoding="utf-8",
    )
    os.utime(root / "rag-demo-20261206-051500" / "summary.json", (1_900_000_000, 1_900_000_000))
    assert "the-latest" in cli("eval", "show", "last").stdout

    unique = cli("eval", "show", "rag-demo-20261206-0515")
    assert unique.exit_code == 0 and "the-latest" in unique.stdout, unique.output

    ambiguous = cli("eval", "show", "rag-demo")
    assert ambiguous.exit_code == EXIT_USAGE
    assert one_error_line(ambiguous) == (
        "error: run name rag-demo is ambiguous: rag-demo-20261206-050000, rag-demo-20261206-051500 — "
        "give more of its characters"
    )
    missing = cli("eval", "show", "zzz")
    assert missing.exit_code == EXIT_USAGE
    assert "zzz is neither a directory nor the start of a run's name under" in one_error_line(missing)

    both = cli("eval", "compare", "rag-demo-20261206-05", "last")  # ambiguous in compare too
    assert both.exit_code == EXIT_USAGE and "is ambiguous" in one_error_line(both)
    both = cli("eval", "compare", "rag-demo-20261206-050", "last", "--json")
    assert both.exit_code == 0, both.output
    assert [Path(r["run_dir"]).name for r in json.loads(both.stdout)] == [
        "rag-demo-20261206-050000",
        "rag-demo-20261206-051500",
    ]


def test_last_with_no_run_yet_says_how_to_make_one(home):
    result = cli("eval", "show", "last")
    assert result.exit_code == EXIT_USAGE
    assert "there is no eval run under" in one_error_line(result)
    assert "run `korani eval rag` or `korani eval chat`" in result.stderr


def test_an_existing_directory_named_like_a_keyword_is_still_a_path(tmp_path, home):
    _, run = rag_run(tmp_path, ScriptedBackend())
    shutil.copytree(run.path, tmp_path / "last")  # home's working directory is tmp_path
    result = cli("eval", "show", "last", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["items"] == 7


def test_compare_of_runs_on_different_item_counts_says_so_before_the_table(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    _, seven = rag_run(tmp_path / "a", ScriptedBackend())
    _, three = rag_run(tmp_path / "b", ScriptedBackend(), limit=3)
    result = cli("eval", "compare", str(seven.path), str(three.path))
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [
        "note: compared on the 3 items all runs share (a/run: 7, b/run: 3); each run's measures are "
        "recomputed over those"
    ]
    assert "korani's check" in result.stdout
    # Both runs are called `run`: the columns say which is which.
    assert "a/run" in result.stdout and "b/run" in result.stdout


class Cutting(support.ScriptedBackend):
    """The scripted answer, a word a token, stopped at --max-new-tokens as a real backend stops."""

    def stream(self, messages, params):
        self.prompts.append(list(messages))
        words = re.findall(r"\s*\S+", self.answers[0])

        def run(usage):
            usage.completion_tokens = 0
            for word in words[: params.max_new_tokens]:
                usage.completion_tokens += 1
                yield word
            usage.finish_reason = "length" if len(words) > params.max_new_tokens else "eos"

        return Generation(lambda usage: apply_stops(run(usage), usage))


def test_eval_rag_itself_warns_when_most_answers_hit_the_limit(tmp_path, home):
    """The run's own output (here --json) is followed by the warning, not only `eval show`'s."""
    from korani_cli.backends import registry

    registry.register("cutting", Cutting(["한라산의 높이는 1947미터이며 남한에서 가장 높은 산입니다."]))
    try:
        args = ["eval", "rag", "--model", "cutting:x", "--set", str(write_set(tmp_path / "set.json"))]
        result = cli(
            *args, "--embedder", "none", "--max-new-tokens", "3", "-o", str(tmp_path / "run"), "--json"
        )
    finally:
        registry.unregister("cutting")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["usage"]["finish_reason"] == {"length": 7}
    warned = [line for line in result.stderr.splitlines() if "length limit" in line]
    assert warned == [
        "note: 7 of 7 answers (100%) were cut by the length limit of 3 tokens, so the measures score cut "
        "answers — rerun with a higher --max-new-tokens, or give the model a stop"
    ], result.stderr
