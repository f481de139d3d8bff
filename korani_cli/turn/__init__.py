"""One turn of a conversation, made the same way for every front end.

layer.py   a Request in, events out, one Result last: trims memory, answers plain or from
           sources, records — for `ask`, the chat's turns and `korani eval rag`
asklog.py  where `korani ask` records its exchanges (the chat history, kind ask)
"""
