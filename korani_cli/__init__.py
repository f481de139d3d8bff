"""korani: a command-line tool for Korean instruction-tuned chat models.

Importing this package must stay cheap: nothing here (or in `korani_cli.cli`)
may import torch, transformers, peft, llama_cpp or sentence_transformers.
"""

__version__ = "0.1.0"
