"""Thin command functions: parse options → build values → call core code → print."""
