"""`korani chat`: the interactive terminal chat.

history.py  every exchange in SQLite, written as it happens
session.py  one chat: turns, slash commands, /검색 — returns events, prints nothing
repl.py     input (line editor or piped stdin) and rendering (rich Live Markdown or plain)
"""
