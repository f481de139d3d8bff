"""The answer layer: one turn — trim memory, answer plain or from sources, record — made once.

`ask` (plain, --search, -c), the chat's turns (plain, /검색, /다시) and
`korani eval rag` all answer through `answer(backend, request)`: a `Request`
in, events out, and one `Result` last. A front end only decides how the
events look and what it prints; none builds a prompt, trims history or
reads the answer core's events itself.

    Trimmed(dropped, context_length)   earlier exchanges left out to fit the context window
    Text(text)                         answer text as it comes: a plain answer's raw chunks,
                                       a sourced answer's checked text (clean both before showing)
    Sentence(text, marks)              sourced: a checked sentence and the footnotes it kept
    Footnotes(citations)               sourced: the cited sources, in footnote order
    Finished(result)                   the last event: the Result (also recorded)

`retrieve(query, options)` runs the search pipeline in a worker thread and
yields its stages and notices as they happen (`Stage`, `Notice`), then
`Retrieved`: a front end can show progress while pages are read.

One memory rule for every turn (memory.py): the context window less the
answer's room, `max_new_tokens`. A sourced turn carries at most the last
exchange, and only for a follow-up question (`sourced_history` says why).

What it leaves to others: loading the model (models.py), how anything looks
(commands/, chat/repl.py), where a turn is stored — a `Recorder` the front
end hands in (the chat's session, or turn/asklog.py for `ask`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Iterator, Protocol, Sequence

from korani_cli import memory, oneshot
from korani_cli.backends import Backend, GenerationParams, Usage
from korani_cli.rag.answer import Footnotes, Sentence, SourcedAnswer, Text, Trimmed
from korani_cli.template import Message, conversation
from korani_cli.timings import Timings


@dataclass(frozen=True)
class Request:
    """What one turn is asked to do."""

    question: str  # as the model is to read it (piped text or an attached file already before it)
    params: GenerationParams
    system: str | None = None
    history: Sequence[Message] = ()  # earlier exchanges, oldest first
    sources: Sequence | None = None  # Ranked passages to answer from; None: a plain answer
    context_tokens: int | None = None  # the sources' share of the prompt; None: the model's default
    search: object | None = None  # the search.pipeline.Retrieval that found `sources`, when one did


@dataclass(frozen=True)
class Result:
    """One answered turn: what the user saw, why it stopped, what it cost, where it was recorded."""

    answer: str  # as shown: a sourced answer with its checked, renumbered [n] markers
    model: str
    backend: str
    usage: Usage
    timings: Timings
    sourced: SourcedAnswer | None = None  # citations, offered sources, checked claims; None: plain
    raw: str = ""  # what the model wrote
    passages: tuple = ()  # sourced: the Ranked passages as offered (after the context budget)
    search: object | None = None  # the Retrieval the sources came from (ask --json's "search")
    dropped: int = 0  # earlier exchanges left out of the prompt
    finished: bool = True  # False: generation stopped early (an error, Ctrl-C); the text is what came
    session: str | None = None  # the history session it was recorded in (None: not recorded)

    @property
    def finish_reason(self) -> str | None:
        return self.usage.finish_reason

    @property
    def citations(self) -> list:
        return list(self.sourced.citations) if self.sourced is not None else []

    def footnotes(self) -> str:
        return self.sourced.footnotes() if self.sourced is not None else ""

    def unsupported(self) -> bool:
        """A sourced answer in which no sentence is supported by the sources (so: no footnotes)."""
        return self.sourced is not None and not self.sourced.citations

    def to_json(self) -> dict:
        """What `ask --json` prints: the one-shot fields, with sources their citations and search."""
        payload = oneshot.Answer(
            answer=self.answer,
            model=self.model,
            backend=self.backend,
            prompt_tokens=self.usage.prompt_tokens,
            completion_tokens=self.usage.completion_tokens,
            finish_reason=self.usage.finish_reason,
            timings=self.timings,
        ).to_json()
        if self.sourced is not None:
            payload.update(
                citations=[c.to_json() for c in self.sourced.citations], sources=self.sourced.sources
            )
        if self.search is not None:
            payload["search"] = {
                "provider": self.search.provider,
                "timings": self.search.timings.stages,
                "skipped": [skipped.to_json() for skipped in self.search.failures],
            }
        payload["session"] = self.session
        return payload


@dataclass(frozen=True)
class Finished:
    result: Result


Event = Trimmed | Text | Sentence | Footnotes | Finished


class Recorder(Protocol):
    """Where a front end stores its turns (the chat's session, `ask`'s log)."""

    def question(self, text: str) -> None:
        """Called before generation, so that a question is never lost to a failed answer."""

    def answer(self, result: Result) -> str | None:
        """Called once the answer is over, also when it stopped early (`result.finished`);
        the session id it was stored in, or None."""


def sourced_history(question: str, history: Sequence[Message]) -> list[Message]:
    """The earlier exchanges a sourced turn carries: the last one when the question leans on
    it (a follow-up by search/query.py's rule: 그럼…, 그건…, or very short), else none.

    The sources hold the facts; the earlier answers of a small model are what it copies
    instead (issue 22: after two poor plain answers, /검색 repeated them and ignored its
    sources; after /초기화 the same question was answered from them). A question that
    stands alone needs nothing from them. A follow-up ("그럼 그 사람은 몇 살이야?") needs
    what it points back to, and the last exchange holds it; the chat's search query was
    rewritten from the previous one already, but `ask -c --search` has only this."""
    from korani_cli.search.query import is_follow_up

    asked = [i for i, m in enumerate(history) if m.role == "user"]
    if not asked or not is_follow_up(question, history[asked[-1]].content):
        return []
    return list(history[asked[-1] :])


def answer(
    backend: Backend, request: Request, *, recorder: Recorder | None = None, load_s: float | None = None
) -> Iterator[Event]:
    """Answer `request` on `backend`, yielding its events; Finished(result) last.

    `load_s`: how long the front end took to load the model (added to the timings).
    Closing the generator stops generation; what came until then is recorded."""
    if recorder is not None:
        recorder.question(request.question)
    if request.sources is None:
        yield from _plain(backend, request, recorder, load_s)
    else:
        yield from _sourced(backend, request, recorder, load_s)


def _totalled(timings: Timings, load_s: float | None) -> Timings:
    return timings.but(
        load_s=load_s, total_s=(load_s or 0.0) + (timings.prepare_s or 0.0) + timings.generate_s
    )


def _record(recorder: Recorder | None, result: Result) -> Result:
    if recorder is None:
        return result
    session = recorder.answer(result)
    return replace(result, session=session)


def _plain(backend: Backend, request: Request, recorder, load_s) -> Iterator[Event]:
    messages = conversation(request.question, request.system, request.history)
    dropped = 0
    if request.history and backend.info.context_length:
        # Oldest exchanges go first when the conversation outgrows the context window.
        messages, dropped = memory.fit(messages, backend, request.params.max_new_tokens)
        if dropped:
            yield Trimmed(dropped, backend.info.context_length)
    run = oneshot.Run(backend, messages, request.params)  # the one generation loop for a plain answer
    finished = False
    try:
        for chunk in run:
            yield Text(chunk)
        finished = True
    finally:
        done = run.result()  # stops generating; what came until then is the answer (Ctrl-C keeps it)
        result = _record(
            recorder,
            Result(
                answer=done.answer,
                model=done.model,
                backend=done.backend,
                usage=run.generation.usage,
                timings=_totalled(done.timings, load_s),
                raw=done.answer,
                dropped=dropped,
                finished=finished,
            ),
        )
    yield Finished(result)


def _sourced(backend: Backend, request: Request, recorder, load_s) -> Iterator[Event]:
    """Through the RAG core (rag/answer.py): each sentence is handed out once its footnotes are checked."""
    from korani_cli.rag.answer import Done, stream

    start = time.perf_counter()
    events = stream(
        backend,
        request.question,
        request.sources,
        request.params,
        system=request.system,
        history=sourced_history(request.question, request.history),
        context_tokens=request.context_tokens,
    )
    shown: list[str] = []
    done = None
    dropped = 0
    try:
        for event in events:
            if isinstance(event, Done):
                done = event
                continue
            if isinstance(event, Text):
                shown.append(event.text)
            elif isinstance(event, Trimmed):
                dropped = event.dropped
            yield event
    finally:
        events.close()
        if done is not None:
            result = Result(
                answer=done.answer.text,
                model=backend.info.name,
                backend=backend.info.backend,
                usage=done.usage,
                timings=_totalled(done.timings, load_s),
                sourced=done.answer,
                raw=done.raw,
                passages=done.passages,
                search=request.search,
                dropped=dropped,
            )
        else:  # stopped early: the checked text shown so far, nothing cited
            result = Result(
                answer="".join(shown),
                model=backend.info.name,
                backend=backend.info.backend,
                usage=Usage(),
                timings=Timings(generate_s=time.perf_counter() - start),
                search=request.search,
                dropped=dropped,
                finished=False,
            )
        result = _record(recorder, result)
    yield Finished(result)


# -- retrieval -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    name: str  # a search stage starting ("fetch", "rank"); a passing status


@dataclass(frozen=True)
class Notice:
    text: str  # a search notice (search.types.Said: English, with its Korean wording as .ko)


@dataclass(frozen=True)
class Retrieved:
    retrieval: object  # search.pipeline.Retrieval


def retrieve(query: str, options) -> Iterator[Stage | Notice | Retrieved]:
    """Run the search pipeline in a worker thread so its stages and notices come as they happen;
    Retrieved last. Its errors (NoSources, …) are raised here, in the caller's thread."""
    import queue
    import threading

    from korani_cli.search.pipeline import retrieve as search

    inbox: queue.Queue = queue.Queue()

    def work():
        try:
            found = search(
                query, options, lambda m: inbox.put(("notice", m)), on_stage=lambda s: inbox.put(("stage", s))
            )
            inbox.put(("result", found))
        except BaseException as exc:  # handed to the caller's thread, which raises it there
            inbox.put(("error", exc))

    threading.Thread(target=work, name="korani-search", daemon=True).start()
    while True:
        kind, value = inbox.get()
        if kind == "stage":
            yield Stage(value)
        elif kind == "notice":
            yield Notice(value)
        elif kind == "error":
            raise value
        else:
            yield Retrieved(value)
            return
