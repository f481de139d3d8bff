"""`korani search "query"`: ranked passages from the web (or a local directory)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from korani_cli.commands.options import (
    AllowPrivateOpt,
    EmbedderOpt,
    FollowLinksOpt,
    LocalDirOpt,
    OfflineOpt,
    ProviderOpt,
    RerankerOpt,
    SearchFlags,
    SearxngOpt,
    SoftDeadlineOpt,
    TopKOpt,
)
from korani_cli.console import err_console, korani_command, notice, out_console


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

    opts = SearchFlags.from_params(locals()).options()
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
