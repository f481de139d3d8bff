"""`korani data`: two public Korean instruction sets → one clean, split training set.

Pipeline (one module per stage, typed values between them):
  records.py  the values between the stages: RawRecord, Conversation, Reject
  sources.py  where the files are (local path, directory, or hub id)
  readers.py  files → RawRecord (streamed; a bad line/element → Reject)
  clean.py    RawRecord → Conversation (field mapping per source), then the
              text and turn rules, each counted and switchable
  dedup.py    exact + MinHash-LSH near-duplicate removal
  grounded.py a SQuAD/KorQuAD file → RAG conversations as served (--grounded)
  prepare.py  length filter, mix, split (by article for grounded), atomic writes, stats
  report.py   stats.json read back (checked) and shown as tables
  show.py     what training will learn, rendered through the chat template
"""
