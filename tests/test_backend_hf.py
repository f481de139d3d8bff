"""hf backend on a tiny random GPT-NeoX with a Korean tokenizer trained in the session."""

import json

import pytest

from korani_cli.backends import GenerationParams
from korani_cli.config import Settings
from korani_cli.errors import ModelLoadError
from korani_cli.models import load_backend, resolve
from korani_cli.template import render, user

pytestmark = pytest.mark.slow
GREEDY = GenerationParams(max_new_tokens=12, temperature=0.0)


def load(spec: str, notes=None):
    settings = Settings(model=spec)
    return load_backend(
        resolve(spec, settings), settings, (notes.append if notes is not None else lambda m: None)
    )


def test_greedy_stream_matches_plain_generate(tiny_neox_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    notes = []
    backend = load(str(tiny_neox_dir), notes)
    assert backend.info.backend == "hf" and backend.info.context_length == 512
    assert any("float32" in n for n in notes)  # the one-line CPU notice

    messages = [user("대한민국의 수도는?")]
    gen = backend.stream(messages, GREEDY)
    chunks = list(gen)
    streamed = "".join(chunks)

    tok = AutoTokenizer.from_pretrained(tiny_neox_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_neox_dir)
    prompt = render(messages, tok.eos_token)
    enc = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    expected = tok.decode(new, skip_special_tokens=True).split("\n###")[0].strip()
    assert streamed == expected
    assert gen.usage.prompt_tokens == enc["input_ids"].shape[1]
    if gen.usage.finish_reason == "length":
        assert gen.usage.completion_tokens == 12
    else:
        assert gen.usage.finish_reason in ("eos", "stop")


def test_forced_eos_gives_finish_reason_eos(tiny_neox_dir, tmp_path):
    """A model whose every logit ties picks token 0 — our EOS — first: it must stop at once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_neox_dir)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_neox_dir).save_pretrained(tmp_path)
    gen = load(str(tmp_path)).stream([user("안녕?")], GREEDY)
    assert gen.text() == ""
    assert (gen.usage.finish_reason, gen.usage.completion_tokens) == ("eos", 0)


def test_adapter_round_trip_changes_outputs(tiny_neox_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_neox_dir)
    peft_model = get_peft_model(
        base, LoraConfig(r=8, lora_alpha=32, target_modules=["query_key_value"], init_lora_weights=False)
    )
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(tiny_neox_dir).save_pretrained(adapter_dir)
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_neox_dir
    )

    spec = resolve(str(adapter_dir), Settings())
    assert spec.base == str(tiny_neox_dir)
    with_adapter = load(str(adapter_dir))
    assert with_adapter.info.details["adapter"] == str(adapter_dir.resolve())
    plain = load(str(tiny_neox_dir))
    messages = [user("서울에서 부산까지 얼마나 걸려?")]
    params = GenerationParams(max_new_tokens=16, temperature=0.0)

    import torch

    # Compare what the two models predict, not just the (possibly empty) text.
    text_a = with_adapter.stream(messages, params).text()
    text_b = plain.stream(messages, params).text()
    ids = plain.tokenizer(render(messages, plain.eos_text), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        diff = (with_adapter.model(ids).logits - plain.model(ids).logits).abs().max().item()
    assert diff > 1e-3
    assert text_a != text_b


def test_model_template_option_uses_the_tokenizers_template(tiny_neox_dir):
    settings = Settings(model=str(tiny_neox_dir), template="model")
    backend = load_backend(resolve(settings.model, settings), settings)
    messages = [user("안녕?")]
    # The tiny tokenizer carries the KoRani template, so both routes agree.
    assert backend.prompt_text(messages) == render(messages, backend.eos_text)


def test_missing_hub_model_offline_is_a_model_load_error():
    with pytest.raises(ModelLoadError) as err:
        load("no-such-org/no-such-model")
    assert "--model demo" in err.value.one_line()


def test_directory_that_is_no_model_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError):
        load(str(tmp_path))


def test_whole_answer_mode_gives_the_streamed_text(tiny_neox_dir):
    backend = load(str(tiny_neox_dir))
    messages = [user("서울은 어떤 도시인가요?")]
    streamed = backend.stream(messages, GREEDY)
    whole = backend.stream(messages, GenerationParams(max_new_tokens=12, temperature=0.0, stream=False))
    assert whole.text() == streamed.text()
    assert whole.usage.completion_tokens == streamed.usage.completion_tokens
    assert whole.usage.finish_reason == streamed.usage.finish_reason
