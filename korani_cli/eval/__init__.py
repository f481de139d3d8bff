"""`korani eval`: measure answer quality for any model, on the code paths users get.

  sets.py     KorQuAD-1.0-format QA files and instruction JSONL files → typed items
  metrics.py  KorQuAD's normalisation and F1, footnote precision/recall, abstention, chat behaviour
  run.py      a run directory (items.jsonl as it comes, summary.json), resume, concurrency
  rag.py      one question: pool ranking → the RAG prompt → the model → footnote verification → metrics
  chat.py     one instruction: the model → behaviour metrics
  report.py   a run's summary as a table; several runs side by side

Retrieval, prompt and footnote checks are the search package's own
(`search.pool`, `rag.answer`); nothing here ranks or verifies by itself.
"""

from korani_cli.errors import EXIT_DATA, GenerationError, KoraniError


class EvalDataError(KoraniError):
    """An evaluation set or run directory that cannot be read (exit 6)."""

    exit_code = EXIT_DATA


class ItemsFailed(GenerationError):
    """Items whose every try failed (exit 4); the message already says what was kept and how to go on."""
