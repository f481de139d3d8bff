"""The command layer: one module per command group (ask, chat with the history commands, data,
eval, models, search, train), mounted by cli.py. Each turns its options into values, calls the
core, and prints; they are presentation code, so they may print and the core may not. Several
still hold more than that (prompt building, event reading — issue 23's answer layer is to take it).
"""
