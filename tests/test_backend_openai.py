"""openai backend against real OpenAI-compatible servers on 127.0.0.1."""

import pytest

from korani_cli.backends import GenerationParams
from korani_cli.backends.openai import normalise_base_url
from korani_cli.config import Settings
from korani_cli.errors import GenerationError, ModelLoadError, UsageError
from korani_cli.models import load_backend, resolve
from korani_cli.template import user

pytestmark = pytest.mark.slow


def connect(url: str, model: str = "", template: str = "korani"):
    settings = Settings(template=template)
    return load_backend(resolve(f"openai:{model}@{url}", settings), settings)


def test_base_url_normalisation():
    assert normalise_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalise_base_url("http://h:8000/v1/") == "http://h:8000/v1"
    assert normalise_base_url("https://gw.example/api/v1") == "https://gw.example/api/v1"


def test_spec_without_url_needs_one():
    with pytest.raises(UsageError, match="no server URL"):
        resolve("openai:m", Settings())
    assert resolve("openai:m", Settings(openai_base_url="http://x:1/v1")).base_url == "http://x:1/v1"


def test_streaming_and_whole_answers_agree(openai_server):
    backend = connect(openai_server)  # no model name: the first served one is picked
    assert backend.model and backend.info.backend == "openai"
    messages = [user("What is the capital of France?")]
    params = GenerationParams(max_new_tokens=30, temperature=0.0, seed=1)
    streamed = backend.stream(messages, params)
    chunks = list(streamed)
    whole = backend.stream(
        messages, GenerationParams(max_new_tokens=30, temperature=0.0, seed=1, stream=False)
    )
    whole_text = whole.text()
    assert len(chunks) > 1, "the SSE stream should arrive in pieces"
    assert "".join(chunks) == whole_text and "France" in whole_text
    assert whole.usage.prompt_tokens and whole.usage.completion_tokens
    assert whole.usage.finish_reason in ("eos", "length")
    assert streamed.usage.completion_tokens


def test_chat_completions_with_the_models_template(openai_server):
    backend = connect(openai_server, template="model")
    gen = backend.stream([user("Say hello.")], GenerationParams(max_new_tokens=20, temperature=0.0))
    assert gen.text().strip()


def test_unknown_served_model_is_named(openai_server):
    with pytest.raises(ModelLoadError, match="does not serve 'nope'"):
        connect(openai_server, model="nope")


def test_unreachable_server_is_a_model_load_error():
    from support import free_port

    with pytest.raises(ModelLoadError, match="cannot reach"):
        connect(f"http://127.0.0.1:{free_port()}/v1")


@pytest.mark.parametrize("stream", [True, False])
def test_server_error_is_a_generation_error(failing_server, stream):
    backend = connect(failing_server, model="broken")
    with pytest.raises(GenerationError, match="HTTP 500: CUDA out of memory"):
        backend.stream([user("hi")], GenerationParams(stream=stream)).text()
