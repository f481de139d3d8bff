"""`korani train`: QLoRA + DeepSpeed instruction tuning on the KoRani format.

config.py   the typed recipe: YAML < key=value overrides; unknown keys and out-of-range values are errors
data.py     the prepared data directory, every line checked before any work
output.py   the run's output directory (korani's marker, --overwrite, --resume checkpoints)
presets.py  the shipped recipes and DeepSpeed configs (configs/), in a checkout or a wheel
dist.py     the processes of a launched job: ranks, the process group, its timeout
model.py    config → quantisation, LoRA, DeepSpeed and device plan; the base loaded with its adapter
run.py      the training run, like TRL's sft.py: checks, model, data, train, save
trainer.py  the SFTTrainer: tokenizer, the recipe → SFTConfig table, callbacks
smoke.py    --smoke: a tiny random GPT-NeoX in place of the base (also the tests' small models)
metadata.py korani_metadata.json as a typed value, written and read in one place
card.py     the output's README.md: the model card of a trained adapter
health.py   after training: do generations end with EOS, and do they repeat?
merge.py    LoRA weights folded into a full-precision base
export.py   a merged model → one GGUF file for llama.cpp
packing.py  packed rows that never attend across samples
"""
