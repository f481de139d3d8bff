"""What every command's --help looks like, fixed once for the whole CLI.

Typer (0.29) draws rich help with a type column filled by
`TyperOption.display_type_rich`, which returns `<bool>` for a flag — even for
`--help` — though a flag takes no value; Typer's plain-text help
(`get_help_record`) already leaves flags out, the rich one does not. Options
are built inside Typer with no hook for a subclass, so the method itself is
wrapped, once, when `korani_cli.cli` is imported.

Its type column also speaks Python (`<str>`, `<list[str]>`, `<int range>`):
korani shows plain metavars instead, as click does (TEXT, INTEGER, PATH, a
choice as `a|b`); an option that names its own metavar (`N`, `URL`, `DIR`,
commands/options.py) keeps it.

In rich markup mode an option's help is rich markup, so the `[default: 256]`
written into the help of options whose default is looked up at run time
(config file, environment) was read as a tag and vanished. Option help in
korani is plain text: its `[` is escaped so it shows as written. Everything
else about the help screen stays Typer's.
"""

from __future__ import annotations

import re

_TAG_OPENER = re.compile(r"(?<!\\)\[(?=[A-Za-z#/@])")  # what rich would take for the start of a tag


_PLAIN = {
    "str": "TEXT",
    "int": "INTEGER",
    "float": "FLOAT",
    "path": "PATH",
    "file": "FILE",
    "directory": "DIR",
}


def plain_metavar(shown: str | None) -> str | None:
    """Typer's `<list[str]>` as TEXT, `<int range>` as INTEGER, `<korani|model>` as korani|model;
    anything not in angle brackets (a metavar an option chose) as it is."""
    if not shown or not (shown.startswith("<") and shown.endswith(">")):
        return shown
    inner = shown[1:-1]
    if inner.startswith("list[") and inner.endswith("]"):
        inner = inner[5:-1]  # a repeatable option: its help says so
    inner = inner.removesuffix(" range")  # the bounds are the help's (and the rule's) to state
    return _PLAIN.get(inner, inner)


def install(option_class=None) -> None:
    """Wrap Typer's option class (`option_class` is for tests; by default Typer's
    argument class gets plain metavars too); a part whose hook this Typer lacks is
    left out, never an error: the help loses a nicety, the CLI still starts
    (typer>=0.15 is allowed, and its internals move)."""
    if option_class is None:
        from typer import core

        option_class = core.TyperOption
        argument = getattr(core, "TyperArgument", None)
        original_argument = getattr(argument, "display_type_rich", None)
        if original_argument is not None and not getattr(original_argument, "korani_plain", False):

            def argument_type(self, ctx):
                return plain_metavar(original_argument(self, ctx))

            argument_type.korani_plain = True
            argument.display_type_rich = argument_type

    original = getattr(option_class, "display_type_rich", None)
    if original is not None and not getattr(original, "korani_flags_untyped", False):

        def display_type_rich(self, ctx):
            if self.is_flag or self.count:
                return None  # a flag (or a counter) takes no value, so it has no type to show
            return plain_metavar(original(self, ctx))

        display_type_rich.korani_flags_untyped = True
        option_class.display_type_rich = display_type_rich

    original_init = option_class.__init__
    if getattr(original_init, "korani_help_escaped", False):
        return

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if getattr(self, "help", None):
            self.help = _TAG_OPENER.sub(r"\\[", self.help)

    __init__.korani_help_escaped = True
    option_class.__init__ = __init__
