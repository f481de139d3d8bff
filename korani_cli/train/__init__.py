"""`korani train`: QLoRA + DeepSpeed instruction tuning on the KoRani format.

  config.py   the typed recipe: YAML < key=value overrides; unknown keys are errors
  model.py    config → quantisation, LoRA and Trainer arguments (small pure functions)
  run.py      the training run: data, SFTTrainer, callbacks, resume, save, metadata
  health.py   after training: do generations end with EOS, and do they repeat?
  merge.py    LoRA weights folded into a full-precision base
"""
