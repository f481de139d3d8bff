"""Answering from sources: the passages `search` found → a prompt → an answer whose footnotes are checked.

budget.py     ranked passages cut to their relevant sentences so the sources fit a token budget
answer.py     ranked passages → prompt (through the template) → answer → verified footnotes
segment.py    the streamed answer cut into sentences to check and text to keep as written
support.py    does a passage support a sentence? the lexical check behind every footnote
"""
