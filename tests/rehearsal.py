"""The reference model's repositories as the Hub holds them, rehearsed small: what
`korani models pull korani-5.8b --from DIR` reads, built in a temporary directory.

`DIR/EleutherAI/polyglot-ko-5.8b` has polyglot-ko-5.8b's `config.json` exactly as public
records show it (`HUB_CONFIG_5_8B`: keys as transformers 4.2x wrote them — `rotary_pct`, not
`rope_parameters` —, `vocab_size` 30080 against the tokenizer's 30,003 ids, and
`bos_token_id`/`eos_token_id` 0, which is not the tokenizer's `<|endoftext|>`), with only
width and depth cut down; the polyglot team's tokenizer (../shared/fixtures/tokenizers/
polyglot-ko) in one of two special-token layouts; and float16 weights in sharded
`pytorch_model-*.bin` files with the buffers transformers 4.2x saved beside them
(`attention.bias`, `attention.masked_bias`, `rotary_emb.inv_freq`).
`DIR/ChaeMs/KoRani-5.8b` is a LoRA adapter as PEFT saved one in 2023: `adapter_model.bin` with
that era's key names and `adapter_config.json` with that era's keys, r=8 on `query_key_value`.

The weights are random except for a few embedding and output rows (`rig_answer`): after the
KoRani prompt's last token ("\\n" of `### Bot\\n`) the model's greedy continuation is
안녕 → id 0 (the config's bos/eos) → an id of the padded embedding (30050) → 하 → 세요 →
the tokenizer's `<|endoftext|>`, so a backend that stops on the config's id or on a padded id
answers "안녕", one that misses the tokenizer's EOS runs to its token limit, and one that is
right answers "안녕하세요" in five tokens and says `eos`.

Used by tests/test_polyglot.py and bench/quantize.py (`--shape`); nothing here is committed model data.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POLYGLOT_TOKENIZER = REPO.parent / "shared" / "fixtures" / "tokenizers" / "polyglot-ko"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ADAPTER_ID, BASE_ID = "ChaeMs/KoRani-5.8b", "EleutherAI/polyglot-ko-5.8b"

# polyglot-ko-5.8b's config.json on the Hub, as public records show it (key order: sorted, as
# transformers 4.2x wrote it).
HUB_CONFIG_5_8B = {
    "architectures": ["GPTNeoXForCausalLM"],
    "bos_token_id": 0,
    "eos_token_id": 0,
    "hidden_act": "gelu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 16384,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 2048,
    "model_type": "gpt_neox",
    "num_attention_heads": 16,
    "num_hidden_layers": 28,
    "rotary_emb_base": 10000,
    "rotary_pct": 0.25,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
    "transformers_version": "4.21.0.dev0",
    "use_cache": True,
    "use_parallel_residual": True,
    "vocab_size": 30080,
}
# Cut down so that a pull runs in a test: polyglot-ko-5.8b's head width (256, so its 64 rotary
# dimensions) and rows that k-quants take whole (multiples of 256), two layers.
SMALL = {"hidden_size": 512, "num_attention_heads": 2, "intermediate_size": 2048, "num_hidden_layers": 2}

# Where `<|endoftext|>` sits: the polyglot team's repository copy (the fixture) has it at 1; a public
# training log records the Hub tokenizer with it at 2 (SOURCE.md). The Hub layout swaps 1 and 2.
LAYOUTS = {"fixture": {}, "hub": {"<|endoftext|>": 2, "<|unk|>": 1}}

# The rigged greedy answer: token texts after the prompt, by id or by text.
ANSWER = "안녕하세요"
PADDED_ID = 30050  # an embedding row beyond the tokenizer's 30,003 ids
# The 2023 PEFT adapter_config.json (peft 0.2/0.3 as alpaca-lora style scripts saved it).
ADAPTER_CONFIG_2023 = {
    "base_model_name_or_path": BASE_ID,
    "bias": "none",
    "enable_lora": None,
    "fan_in_fan_out": False,
    "inference_mode": True,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "merge_weights": False,
    "modules_to_save": None,
    "peft_type": "LORA",
    "r": 8,
    "target_modules": ["query_key_value"],
    "task_type": "CAUSAL_LM",
}


def write_tokenizer(out: Path, layout: str = "fixture") -> Path:
    """The polyglot-ko tokenizer files, with `<|endoftext|>` where `layout` puts it."""
    out.mkdir(parents=True, exist_ok=True)
    moves = LAYOUTS[layout]
    for name in TOKENIZER_FILES:
        shutil.copyfile(POLYGLOT_TOKENIZER / name, out / name)
    if moves:
        path = out / "tokenizer.json"
        spec = json.loads(path.read_text(encoding="utf-8"))
        for token in spec["added_tokens"]:
            token["id"] = moves.get(token["content"], token["id"])
        vocab = spec["model"]["vocab"]
        for content, new_id in moves.items():
            vocab[content] = new_id
        path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return out


def rig_answer(model, tokenizer) -> list[int]:
    """Make greedy decoding after "### Bot\\n" follow `chain` whatever came before: each chain
    token's input embedding gets a large direction of its own, and the output row of the token
    that follows it points the same way (the random layers only nudge a vector that large).
    Returns the chain: the prompt's last token, then the answer's ids, then EOS."""
    import torch

    from korani_cli.template import conversation, render

    prompt = tokenizer(render(conversation("질문"), tokenizer.eos_token), add_special_tokens=False)
    ids = tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    chain = [prompt["input_ids"][-1], ids[0], 0, PADDED_ID, *ids[1:], tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain), chain
    embed_in = model.get_input_embeddings().weight
    embed_out = model.get_output_embeddings().weight
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for here, after in zip(chain, chain[1:]):
            direction = torch.randn(embed_in.shape[1], generator=generator)
            direction = direction - direction.mean()
            direction = direction / direction.norm()
            embed_in[here] = (50.0 * direction).to(embed_in.dtype)
            embed_out[after] += direction.to(embed_out.dtype)
    return chain


def build_base(
    out: Path, *, layout: str = "fixture", shape: dict | None = None, seed: int = 0, rig: bool = True
) -> Path:
    """DIR/EleutherAI/polyglot-ko-5.8b: the Hub's config (with `shape` instead of the real width and
    depth), the tokenizer, float16 weights in two `pytorch_model-*.bin` shards and their index."""
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    write_tokenizer(out, layout)
    config = {**HUB_CONFIG_5_8B, **(SMALL if shape is None else shape)}
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    # A large shape is made in float16 (the real one would need 24 GB in float32); a small one in
    # float32, where CPUs initialise random weights several times faster.
    large = config["hidden_size"] * config["num_hidden_layers"] > 16384
    dtype = torch.float16 if large else torch.float32
    model = GPTNeoXForCausalLM._from_config(GPTNeoXConfig.from_dict(config), dtype=dtype)
    if rig:
        rig_answer(model, AutoTokenizer.from_pretrained(out))
    state = {name: tensor.to(torch.float16).contiguous() for name, tensor in model.state_dict().items()}
    del model
    # The buffers transformers 4.2x kept in GPT-NeoX checkpoints (and today's loader must skip).
    positions = config["max_position_embeddings"]
    head = config["hidden_size"] // config["num_attention_heads"]
    rotary = int(head * config["rotary_pct"])
    inv_freq = 1.0 / (config["rotary_emb_base"] ** (torch.arange(0, rotary, 2).float() / rotary))
    for layer in range(config["num_hidden_layers"]):
        prefix = f"gpt_neox.layers.{layer}.attention."
        state[prefix + "bias"] = torch.tril(torch.ones(positions, positions, dtype=torch.bool)).view(
            1, 1, positions, positions
        )
        state[prefix + "masked_bias"] = torch.tensor(-1e9)
        state[prefix + "rotary_emb.inv_freq"] = inv_freq.clone()
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2 :]]
    weight_map, total = {}, 0
    for number, shard in enumerate(shards, 1):
        file = f"pytorch_model-{number:05d}-of-{len(shards):05d}.bin"
        torch.save({name: state[name] for name in shard}, out / file)
        for name in shard:
            weight_map[name] = file
            total += state[name].numel() * state[name].element_size()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return out


def build_adapter(out: Path, base: Path, *, seed: int = 1) -> Path:
    """DIR/ChaeMs/KoRani-5.8b: r=8 LoRA on query_key_value with non-zero weights, saved as 2023's
    PEFT did — `adapter_model.bin` whose keys have no adapter name, and that era's config keys."""
    import torch

    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    r = ADAPTER_CONFIG_2023["r"]
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for layer in range(layers):
        prefix = f"base_model.model.gpt_neox.layers.{layer}.attention.query_key_value."
        state[prefix + "lora_A.weight"] = torch.randn(r, hidden, generator=generator) / hidden**0.5
        state[prefix + "lora_B.weight"] = torch.randn(3 * hidden, r, generator=generator) * 0.01
    out.mkdir(parents=True, exist_ok=True)
    torch.save(state, out / "adapter_model.bin")
    (out / "adapter_config.json").write_text(
        json.dumps(ADAPTER_CONFIG_2023, indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    return out


def build_rehearsal(root: Path, *, layout: str = "fixture", shape: dict | None = None) -> Path:
    """ROOT/EleutherAI/polyglot-ko-5.8b and ROOT/ChaeMs/KoRani-5.8b; returns ROOT (the --from DIR)."""
    base = build_base(root / BASE_ID, layout=layout, shape=shape)
    build_adapter(root / ADAPTER_ID, base)
    return root


def hub_cache(root: Path, hf_home: Path) -> Path:
    """ROOT's repositories as huggingface_hub's cache holds downloaded ones (HF_HOME/hub), so that
    hub ids resolve offline (`--backend hf`, `train merge`); returns HF_HOME."""
    import hashlib

    for repo_id in (ADAPTER_ID, BASE_ID):
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        cache = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
        snapshot = cache / "snapshots" / commit
        snapshot.mkdir(parents=True, exist_ok=True)
        for file in sorted((root / repo_id).iterdir()):
            (snapshot / file.name).symlink_to(file.resolve())
        (cache / "refs").mkdir(exist_ok=True)
        (cache / "refs" / "main").write_text(commit, encoding="ascii")
    return hf_home
