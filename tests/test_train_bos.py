"""Training encodes each conversation as serving encodes its prompt: a tokenizer that puts BOS before
what it encodes (gemma, llama) gets a BOS in the training template too; one that doesn't (polyglot-ko)
gets none. TRL encodes the rendered template without special tokens, so without this a gemma base
trained on prompts with no BOS and was served prompts with one."""

from __future__ import annotations

import pytest

from korani_cli.template import render, user


def _with_bos(src, out):
    """The tiny tokenizer, changed to put a BOS before every text it encodes (gemma's habit)."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    tok.add_special_tokens({"bos_token": "<s>"})
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)]
    )
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("adds_bos", [True, False], ids=["bos", "no-bos"])
def test_training_ids_begin_with_the_served_prompts_ids(tiny_tokenizer_dir, tmp_path, adds_bos):
    from korani_cli.train.trainer import prepare_tokenizer

    base = _with_bos(tiny_tokenizer_dir, tmp_path / "tok") if adds_bos else tiny_tokenizer_dir
    tok = prepare_tokenizer(str(base))
    question = [user("서울은 어떤 도시인가요?")]
    conversation = [m.to_dict() for m in question] + [
        {"role": "assistant", "content": "대한민국의 수도입니다."}
    ]
    # What TRL trains on: the chat template, tokenized without special tokens added.
    trained = tok.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    # What the hf backend serves: korani's render of the prompt, encoded with the special tokens.
    served = tok(render(question, tok.eos_token), add_special_tokens=True)["input_ids"]
    assert trained[: len(served)] == served
    assert (trained[0] == tok.bos_token_id) is adds_bos
