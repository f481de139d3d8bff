"""The training run's typed boundaries (issue 14): korani_metadata.json as a
`TrainMetadata` written and read in one place, the recipe → SFTConfig table,
and the one EOS threshold.

The metadata rows are hostile files a person could hand `TrainMetadata.read`
(a truncated write, another tool's JSON, a hand edit): each must be one
MetadataError line (exit 3) that names the field, never a KeyError. The full
write → read path on a real run is in tests/test_train.py (the smoke run).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import fields, replace
from pathlib import Path

import pytest
from support import REPO

from korani_cli.errors import EXIT_MODEL_LOAD
from korani_cli.train import card, health
from korani_cli.train.config import TrainConfig, load_config
from korani_cli.train.health import Health
from korani_cli.train.metadata import FILENAME, DataInfo, DeviceInfo, EvalLoss, MetadataError, TrainMetadata

RECIPE = REPO / "configs" / "korani-5.8b.yaml"

# The keys korani_metadata.json has always had, in this order: the dataclass must not change the file.
FILE_KEYS = [
    "korani_version",
    "base_model",
    "smoke",
    "data",
    "steps",
    "max_steps",
    "train_loss_first",
    "train_loss_last",
    "train_loss_mean",
    "eval_losses",
    "eval_skipped",
    "health",
    "health_skipped",
    "device",
    "deepspeed",
    "quantization",
    "resumed_from",
    "train_seconds",
    "pad_token",
    "eos_token",
]


def sample(**changes) -> TrainMetadata:
    value = TrainMetadata(
        korani_version="0.1.0",
        base_model="EleutherAI/polyglot-ko-5.8b",
        smoke=False,
        data=DataInfo("/data/ko", "ab" * 32, {"train": 900, "valid": 50, "test": 50}),
        steps=300,
        max_steps=300,
        train_loss_first=2.5,
        train_loss_last=1.25,
        train_loss_mean=1.5,
        eval_losses=[EvalLoss(200, 1.6), EvalLoss(300, 1.5)],
        eval_skipped=None,
        health=Health(
            50,
            0.96,
            0.012,
            41.5,
            [{"prompt": "서울은?", "answer": "수도입니다.", "ended_with_eos": True}],
            0,
            "test",
        ),
        health_skipped=None,
        device=DeviceInfo(True, True, "paged_adamw_8bit", ["a notice"]),
        deepspeed="zero2",
        quantization="nf4",
        resumed_from=None,
        train_seconds=1234.5,
        pad_token="<|pad|>",
        eos_token="<|endoftext|>",
    )
    return replace(value, **changes)


def test_metadata_round_trips_through_the_file_with_the_same_keys(tmp_path):
    meta = sample()
    path = meta.write(tmp_path)
    assert path == tmp_path / FILENAME
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert list(raw) == FILE_KEYS
    assert raw["health"]["eos_share"] == 0.96 and raw["eval_losses"][-1] == {"step": 300, "eval_loss": 1.5}
    assert raw["data"] == {
        "dir": "/data/ko",
        "fingerprint": "ab" * 32,
        "conversations": {"train": 900, "valid": 50, "test": 50},
    }
    assert TrainMetadata.read(tmp_path) == meta  # the directory, or the file itself
    assert TrainMetadata.read(path) == meta
    skipped = sample(
        health=None, health_skipped="health_prompts is 0 in the recipe", eval_losses=[], train_loss_first=None
    )
    skipped.write(tmp_path)
    assert TrainMetadata.read(tmp_path) == skipped


def test_an_older_file_without_the_later_fields_still_reads(tmp_path):
    """The fields the card test's metadata of an earlier version lacked have defaults."""
    raw = sample().to_json()
    for key in ("train_loss_mean", "deepspeed", "quantization", "pad_token", "eos_token"):
        del raw[key]
    del raw["device"]["notices"]
    (tmp_path / FILENAME).write_text(json.dumps(raw), encoding="utf-8")
    meta = TrainMetadata.read(tmp_path)
    assert meta.deepspeed is None and meta.device.notices == [] and meta.steps == 300


def _edited(edit) -> bytes:
    raw = sample().to_json()
    edit(raw)
    return json.dumps(raw, ensure_ascii=False).encode("utf-8")


METADATA_CASES = [
    # (id, file bytes or None for no file, fragment of the one-line error)
    ("no-file", None, "does not exist"),
    ("empty", b"", "is not JSON"),
    ("truncated", _edited(lambda r: None)[:40], "is not JSON"),
    ("not-utf8", b'{"korani_version": "\xff\xfe"}', "cannot read"),
    ("a-list", b"[1, 2]", "it holds list, not an object (TrainMetadata)"),
    ("a-number", b"42", "it holds 42, not an object"),
    (
        "foreign-json",
        b'{"model_type": "gpt_neox"}',
        "'korani_version' is missing; korani did not write this file",
    ),
    ("steps-a-string", _edited(lambda r: r.update(steps="300")), "'steps' should be an integer, not \"300\""),
    ("steps-a-bool", _edited(lambda r: r.update(steps=True)), "'steps' should be an integer, not true"),
    ("base-null", _edited(lambda r: r.update(base_model=None)), "'base_model' should be a string, not null"),
    (
        "health-share-text",
        _edited(lambda r: r["health"].update(eos_share="96%")),
        "'health.eos_share' should be a number",
    ),
    ("health-a-list", _edited(lambda r: r.update(health=[0.9])), "'health' should be an object (Health)"),
    (
        "eval-step-missing",
        _edited(lambda r: r["eval_losses"][0].pop("step")),
        "'eval_losses[0].step' is missing",
    ),
    (
        "eval-losses-a-dict",
        _edited(lambda r: r.update(eval_losses={"step": 1})),
        "'eval_losses' should be a list",
    ),
    (
        "counts-text",
        _edited(lambda r: r["data"]["conversations"].update(train="many")),
        "'data.conversations.train' should be an integer",
    ),
    ("device-missing-cuda", _edited(lambda r: r["device"].pop("cuda")), "'device.cuda' is missing"),
]


@pytest.mark.parametrize(
    "content, fragment", [r[1:] for r in METADATA_CASES], ids=[r[0] for r in METADATA_CASES]
)
def test_a_broken_or_foreign_metadata_file_is_one_line(tmp_path, content, fragment):
    if content is not None:
        (tmp_path / FILENAME).write_bytes(content)
    with pytest.raises(MetadataError) as caught:
        TrainMetadata.read(tmp_path)
    line = caught.value.one_line()
    assert fragment in line, line
    assert "\n" not in line and line.startswith("error: ") and "pass the --output directory" in line
    assert caught.value.exit_code == EXIT_MODEL_LOAD


def test_the_eos_threshold_has_one_source(monkeypatch):
    """The card and `korani train` judge the EOS share by health.EOS_WARN_BELOW, not by a second 0.9."""
    config = load_config(RECIPE)

    def rendered() -> str:
        return card.render(
            card.Run(
                name="ko",
                output="runs/ko",
                config=config,
                recipe_base_model=config.base_model,
                metadata=sample(),
            )
        )

    assert "may not have learned to stop" not in rendered()  # 96 % ≥ 90 %
    monkeypatch.setattr(health, "EOS_WARN_BELOW", 0.99)
    assert "may not have learned to stop" in rendered()
    for path in ("korani_cli/train/card.py", "korani_cli/commands/train.py"):
        assert "0.9" not in (REPO / path).read_text(encoding="utf-8"), path


# -- the recipe → SFTConfig table ----------------------------------------------------------


def test_the_recipe_to_sft_table_names_real_fields():
    from korani_cli.train.trainer import RECIPE_TO_SFT, SFT_FIXED

    recipe_keys = {f.name for f in fields(TrainConfig)}
    assert {key for key, _ in RECIPE_TO_SFT} <= recipe_keys
    targets = [field for _, field in RECIPE_TO_SFT] + list(SFT_FIXED)
    assert len(targets) == len(set(targets)), "an SFTConfig field is set twice"


@pytest.mark.slow  # importing TRL takes seconds
@pytest.mark.filterwarnings("error:`pad_token`:FutureWarning")
def test_sft_config_gets_every_recipe_value_and_no_deprecated_argument(tmp_path):
    from trl import SFTConfig

    from korani_cli.train.model import plan_device
    from korani_cli.train.trainer import RECIPE_TO_SFT, SFT_FIXED, sft_kwargs

    # Values unlike the defaults on both sides, so that a value that did not arrive shows.
    config = replace(
        load_config(RECIPE),
        max_steps=17,
        num_train_epochs=2.5,
        per_device_train_batch_size=3,
        per_device_eval_batch_size=5,
        gradient_accumulation_steps=7,
        learning_rate=3.5e-4,
        lr_scheduler_type="cosine",
        warmup_ratio=0.25,
        adam_beta1=0.85,
        adam_beta2=0.95,
        weight_decay=0.01,
        gradient_checkpointing=False,
        eval_steps=11,
        save_steps=13,
        save_total_limit=2,
        logging_steps=3,
        seed=1234,
        dist_timeout=77,
        max_length=96,
        packing=False,
        load_in_4bit=False,
        bf16=False,
        bnb_4bit_compute_dtype="float32",
        optim="adamw_torch",
    )
    plan = plan_device(config, cuda=False)
    kwargs = sft_kwargs(config, plan, tmp_path, deepspeed=None, evaluate=True, eos_token="<|endoftext|>")
    assert "pad_token" not in kwargs and "dataset_kwargs" not in kwargs
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="`pad_token`", category=FutureWarning)
        args = SFTConfig(**kwargs)
    for key, field in RECIPE_TO_SFT:
        assert getattr(args, field) == getattr(config, key), (key, field)
    for field, value in SFT_FIXED.items():
        assert getattr(args, field) == value, field
    assert (
        args.output_dir == str(tmp_path) and args.use_cpu and not args.bf16 and args.eval_strategy == "steps"
    )
    assert args.train_sampling_strategy == "group_by_length" and args.eos_token == "<|endoftext|>"
    assert args.pad_token is None  # the tokenizer given as processing_class carries it
    packed = SFTConfig(
        **sft_kwargs(
            replace(config, packing=True),
            plan,
            Path(tmp_path),
            deepspeed=None,
            evaluate=False,
            eos_token="<|endoftext|>",
        )
    )
    assert packed.packing and packed.padding_free and packed.train_sampling_strategy == "random"
    assert packed.eval_strategy == "no"
