"""`--json` timings and token counts against backends whose timing and counts are known.

A paced backend makes its first token after a known prompt delay and the rest
at a known rate, streamed or handed over whole (as hf and openai do when
nobody watches the text arrive); the figures `oneshot.answer` reports must
match what it did. The hf rows run the tiny GPT-NeoX both ways, and the
context-window row checks what `ask` says when the answer was cut by the
window rather than by --max-new-tokens.
"""

from __future__ import annotations

import time

import pytest

from korani_cli.backends import Generation, GenerationParams, ModelInfo, apply_stops
from korani_cli.template import user

PROMPT_S, TOKEN_S, TOKENS = 0.4, 0.03, 20


class Paced:
    """First token after PROMPT_S, then one every TOKEN_S; `whole` hands the answer over at the end."""

    def __init__(self, whole: bool):
        self.whole = whole
        self.info = ModelInfo("paced", "test", 4096, "korani")

    def count_tokens(self, text: str) -> int:
        return len(text)

    def stream(self, messages, params):
        def raw(usage):
            usage.prompt_tokens = 7
            time.sleep(PROMPT_S)
            words = []
            for i in range(TOKENS):
                if i == 0 and self.whole:
                    usage.first_token_at = time.perf_counter()
                if i:
                    time.sleep(TOKEN_S)
                words.append("가 ")
                if not self.whole:
                    yield words[-1]
            usage.completion_tokens, usage.finish_reason = TOKENS, "length"
            if self.whole:
                usage.whole = True
                yield "".join(words)

        return Generation(lambda usage: apply_stops(raw(usage), usage))


@pytest.mark.parametrize("whole", [False, True], ids=["streamed", "whole"])
def test_timings_match_what_the_backend_did(whole):
    from korani_cli import oneshot

    result = oneshot.answer(Paced(whole), [user("질문")], GenerationParams(max_new_tokens=TOKENS))
    data = result.to_json()
    t = data["timings"]
    decode_s = (TOKENS - 1) * TOKEN_S
    assert PROMPT_S - 0.01 <= t["first_token_s"] <= PROMPT_S + 0.15
    assert PROMPT_S + decode_s - 0.01 <= t["generate_s"] <= PROMPT_S + decode_s + 0.3
    expected_rate = (TOKENS - 1) / decode_s
    assert expected_rate * 0.6 <= t["decode_tok_s"] <= expected_rate * 1.05
    assert (
        data["completion_tokens"] == TOKENS
        and data["prompt_tokens"] == 7
        and data["finish_reason"] == "length"
    )


def test_an_answer_handed_over_whole_without_a_first_token_time_reports_none():
    from korani_cli import oneshot

    class Whole(Paced):
        def stream(self, messages, params):
            def raw(usage):
                time.sleep(0.1)
                usage.whole, usage.completion_tokens = True, 5
                yield "가 나 다 라 마"

            return Generation(lambda usage: apply_stops(raw(usage), usage))

    t = oneshot.answer(Whole(True), [user("질문")], GenerationParams()).to_json()["timings"]
    assert t["first_token_s"] is None and t["decode_tok_s"] is None and t["generate_s"] >= 0.1


@pytest.mark.slow
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_hf_timings_and_counts_are_consistent(tiny_neox_dir, stream):
    from korani_cli import oneshot
    from korani_cli.config import Settings
    from korani_cli.models import load_backend, resolve

    settings = Settings(model=str(tiny_neox_dir))
    backend = load_backend(resolve(str(tiny_neox_dir), settings), settings, lambda m: None)
    params = GenerationParams(max_new_tokens=24, temperature=1.0, seed=1, stream=stream)
    data = oneshot.answer(backend, [user("대한민국의 수도는?")], params).to_json()
    t = data["timings"]
    assert t["first_token_s"] is not None and 0 < t["first_token_s"] < t["generate_s"]
    n = data["completion_tokens"]
    assert 1 <= n <= 24 and (data["finish_reason"] != "length" or n == 24)
    if n > 1:
        # A tiny model decodes at most a few thousand tokens a second on this CPU, never millions.
        assert 0 < t["decode_tok_s"] < 5000


@pytest.mark.slow
def test_ask_says_when_the_context_window_cut_the_answer(tiny_neox_dir):
    from support import run_korani

    # The tiny model's window is 512 tokens: a long question leaves the answer little room.
    question = "서울 " * 230
    proc = run_korani(
        "ask", "--model", str(tiny_neox_dir), "-n", "400", "-t", "1.0", "--seed", "2", "--json", question
    )
    assert proc.returncode == 0, proc.stderr
    import json

    data = json.loads(proc.stdout)
    assert data["finish_reason"] == "length" and data["completion_tokens"] < 400
    assert data["prompt_tokens"] + data["completion_tokens"] == 512
    assert "context window" in proc.stderr and "raise --max-new-tokens" not in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, n, cause, not_cause",
    [
        ("", 12, "raise --max-new-tokens", "context window"),
        ("n_ctx = 256\n", 400, "256-token context window", "raise --max-new-tokens"),
    ],
    ids=["max-new-tokens", "context-window"],
)
def test_the_models_own_template_is_counted_and_its_cut_named(tmp_path, config, n, cause, not_cause):
    """demo-chat speaks through its own chat template: its prompt is counted like any other, its
    answer's tokens are tokens (not streamed pieces), and the cut note names the limit that cut it."""
    import json

    from support import run_korani

    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(config, encoding="utf-8")
    proc = run_korani(
        "ask", "--model", "demo-chat", "--template", "model", "-n", str(n), "-t", "0", "--json",
        "Write a long story about a cat named Nabi.",
        env={"KORANI_HOME": str(home)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert isinstance(data["prompt_tokens"], int) and data["prompt_tokens"] > 10
    assert data["finish_reason"] == "length"
    if n == 12:
        assert data["completion_tokens"] == 12
    else:
        assert data["prompt_tokens"] + data["completion_tokens"] == 256
    assert cause in proc.stderr and not_cause not in proc.stderr and "None" not in proc.stderr
