"""One chat: turns, memory, slash commands and /검색 — as a stream of events.

`ChatSession.handle(line)` yields `Event`s — typed values, one class per kind
(Stage, AnswerText, Answered, Notice, ErrorLine, Output, Exit); the REPL
decides how they look. Nothing here prints. Every
exchange goes to the History as it happens.

A turn (plain, /검색, /다시) is made by the answer layer (turn/layer.py), as
`ask`'s is: this module keeps the conversation (its memory, last question and
sources) and turns the layer's events into the chat's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from korani_cli.backends import Backend, GenerationParams, Usage, limit_ignored_note
from korani_cli.chat.history import History, HistoryError, to_markdown
from korani_cli.errors import KoraniError
from korani_cli.search.query import is_follow_up, rewrite_query, standalone
from korani_cli.search.types import Citation
from korani_cli.template import Message
from korani_cli.timings import Timings
from korani_cli.untrusted import clean, clean_line

COMMANDS = {
    "/검색": "search",
    "/search": "search",
    "/출처": "sources",
    "/sources": "sources",
    "/초기화": "reset",
    "/reset": "reset",
    "/저장": "save",
    "/save": "save",
    "/저장!": "save_over",
    "/save!": "save_over",
    "/기록": "history",
    "/history": "history",
    "/모델": "model",
    "/model": "model",
    "/다시": "retry",
    "/retry": "retry",
    "/파일": "file",
    "/file": "file",
    "/시스템": "system",
    "/system": "system",
    "/도움말": "help",
    "/help": "help",
    "/종료": "exit",
    "/exit": "exit",
    "/quit": "exit",
}
HELP = """명령어
  /검색 <질문>  (/search)   웹을 검색해 출처와 함께 답합니다
  /출처         (/sources)  마지막 답변의 근거 문단, 점수, URL
  /초기화       (/reset)    대화 기억을 지우고 새 대화를 시작합니다
  /저장 [파일]  (/save)     대화를 Markdown으로 저장합니다 (있는 파일은 덮어쓰지 않습니다)
  /저장! 파일   (/save!)    있는 파일을 덮어써서 저장합니다
  /기록         (/history)  저장된 대화 목록
  /모델 [이름]  (/model)    모델 정보; 이름을 주면 그 모델로 바꿉니다 (예: /모델 demo-chat)
  /다시         (/retry)    마지막 답변을 다시 만듭니다 (/검색 답변은 같은 출처로)
  /파일 경로    (/file)     파일의 내용을 다음 질문 앞에 붙입니다 (여러 번 쓰면 여러 파일)
  /시스템 [글]  (/system)   시스템 글을 보여 주거나 바꿉니다 (/시스템 - 는 지웁니다)
  /도움말       (/help)     이 도움말
  /종료         (/exit)     끝내기 (Ctrl-D)
여러 줄 입력: \"\"\" 로 시작하고 \"\"\" 로 끝내거나, 줄 끝에 \\ 를 붙이세요. Tab 은 명령어를 완성합니다."""


@dataclass(frozen=True)
class ModelChoice:
    """What `/모델 NAME` switches to: the model's name, its template, how to load it, and
    how to sample it (None: as before)."""

    name: str
    template: str | None
    load: Callable[[], Backend]
    params: GenerationParams | None = None


@dataclass(frozen=True)
class Asked:
    """The last question, for /다시: a plain one, or a /검색 one with the sources it was answered from."""

    question: str
    ranked: list | None = None  # None: a plain question


# -- events: what handle() yields; the REPL decides how each looks --------------------------


@dataclass(frozen=True)
class Stage:
    text: str  # what is being done now ("검색 중"): a passing status, not part of the transcript


@dataclass(frozen=True)
class AnswerText:
    text: str  # the answer as it streams (model text: clean it before it is shown)


@dataclass(frozen=True)
class Answered:
    """An answer is over (finished or stopped): all of it, as stored and remembered."""

    text: str
    timings: Timings
    usage: Usage
    citations: tuple[Citation, ...] = ()  # /검색: the cited sources, in footnote order
    footnotes: str = ""  # /검색: the footnote lines to show under the answer


@dataclass(frozen=True)
class Notice:
    text: str  # worth knowing, not an error (one line)


@dataclass(frozen=True)
class ErrorLine:
    text: str  # `error: what — fix`, one line; the chat goes on


@dataclass(frozen=True)
class Output:
    text: str  # a slash command's answer (may span lines)


@dataclass(frozen=True)
class Exit:
    """/종료: the chat should end."""


Event = Stage | AnswerText | Answered | Notice | ErrorLine | Output | Exit


SOURCE_CHARS = 200  # how much of a passage /출처 shows


def cut_at_word(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters at a word boundary, with `…` when cut."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space > limit // 2:  # a word boundary not too far back; else cut the long word itself
        cut = cut[:space]
    return cut.rstrip(" ,.;:·—-") + "…"


STAGE_NAMES = {"fetch": "페이지 읽는 중", "rank": "관련 문단 고르는 중"}


def _chat_fixes() -> dict[str, str]:
    """Fixes that name command-line flags, as said inside the chat, where a flag cannot be given."""
    from korani_cli.backends import OFFLINE_FIX
    from korani_cli.search.pipeline import NETWORK_FIX, NO_RESULTS_FIX

    started = "the search providers are chosen when the chat starts: korani chat --provider …"
    return {
        OFFLINE_FIX: "switch with /모델 demo for the offline demo, or /모델 PATH for a local model "
        "(directory or .gguf)",
        NO_RESULTS_FIX: f"ask with other words (/검색 다른 질문), or check the network; {started}",
        NETWORK_FIX: "check the connection; without one, restart with korani chat --local-dir DIR "
        "(your files) or --offline (pages searched before)",
    }


def chat_line(exc: KoraniError) -> str:
    """`exc` as one error line in the chat: a fix that names a command-line flag the chat cannot
    take is said with the chat's own commands (/모델, /검색) instead."""
    fix = _chat_fixes().get(exc.fix or "")
    if fix is None:
        return exc.one_line()
    return KoraniError(exc.what, fix).one_line()


# What a chat stores of an answer's timings with its message (the history's timings column).
STORED_TIMINGS = ("first_token_s", "total_s")
STORED_SOURCED_TIMINGS = ("first_token_s", "first_sentence_s", "total_s")
UNSUPPORTED = "출처가 뒷받침하는 문장이 없어 각주를 달지 않았습니다 — 답변을 출처와 대조해 보세요"


class _Recorder:
    """The answer layer's Recorder for a chat turn: the question is stored before generation
    (never lost), the answer once it is over — also when stopped — and both are remembered."""

    def __init__(self, session: "ChatSession", store_question: bool):
        self.session, self.store_question = session, store_question  # /다시: the question is stored
        self.asked = ""

    def question(self, text: str) -> None:
        self.asked = text
        if self.store_question:
            self.session._store("user", text)

    def answer(self, result) -> str | None:
        chat = self.session
        if not result.answer:
            return None
        names = STORED_SOURCED_TIMINGS if result.sourced is not None else STORED_TIMINGS
        citations = [c.to_json() for c in result.citations] or None
        chat._store("assistant", result.answer, chat.model_name, result.timings.to_json(names), citations)
        chat.turns += [Message("user", self.asked), Message("assistant", result.answer)]
        return chat.session_id


class ChatSession:
    def __init__(
        self,
        load_backend: Callable[[], Backend],
        history: History,
        session_id: str | None = None,
        *,
        model_name: str,
        system: str | None = None,
        template: str | None = None,
        params: GenerationParams | None = None,
        search_options=None,
        restored: list[Message] | None = None,
        context_tokens: int | None = None,
        choose_model: Callable[[str], ModelChoice] | None = None,
        search_settings: dict | None = None,
        restored_sources: list | None = None,
    ):
        """`session_id` None: a new chat, whose session row is written with its first message
        (a chat that fails to start, or says nothing, leaves no empty session behind)."""
        self._load = load_backend
        self.backend: Backend | None = None
        self.history = history
        self.session_id = session_id
        self.model_name = model_name
        self.system = system
        self.template = template
        self.params = params or GenerationParams()
        self.search_options = search_options
        self.context_tokens = (
            context_tokens  # the sources' share of a /검색 prompt; None: the model's default
        )
        self.turns: list[Message] = list(restored or [])
        self.search_settings = search_settings  # stored with the session, so --continue searches alike
        self.last_sources: list = list(restored_sources or [])  # a resumed chat's last footnotes
        self.last_skipped: list = []  # the result pages the last /검색 left out (search.types.Skipped)
        self.last_query: str | None = None
        self.trim_reported = False
        self.choose_model = choose_model  # None: /모델 NAME cannot switch (a test, or an embedding)
        self.last_asked: Asked | None = None
        self.attached: list = []  # /파일: attach.Attached files waiting for the next question
        self._pending: list[Event] = []  # said after the current input's events (e.g. history trouble)

    # -- plumbing -------------------------------------------------------------

    def _store(self, role: str, content: str, *extra) -> None:
        """Save a message; if the history database fails mid-chat, say so once and
        keep the rest of the chat in memory, so the chat itself goes on."""
        try:
            if self.session_id is None:
                self.session_id = self.history.new_session(
                    self.model_name, self.system, self.template, search=self.search_settings
                )
            self.history.add(self.session_id, role, content, *extra)
        except HistoryError as exc:
            self._pending += [
                ErrorLine(chat_line(exc)),
                Notice(
                    "이 대화는 이제부터 저장되지 않고 메모리에만 남습니다 "
                    "(/저장 으로 파일에 저장할 수 있습니다)"
                ),
            ]
            self.history = History.in_memory()
            self.session_id = self.history.new_session(
                self.model_name, self.system, self.template, search=self.search_settings
            )
            for turn in self.turns:
                self.history.add(self.session_id, turn.role, turn.content)
            self.history.add(self.session_id, role, content, *extra)

    def load(self) -> None:
        """Load the model now (`korani chat` does so before the first prompt, so a model
        that cannot load fails the command with exit 3 instead of every message failing)."""
        if self.backend is None:
            self.backend = self._load()

    def _ensure_backend(self) -> Iterator[Event]:
        if self.backend is None:
            yield Stage("모델 불러오는 중")
            self.backend = self._load()

    def _turn(self, question: str, ranked=None, store_question: bool = True, search=None) -> Iterator[Event]:
        """One answer through the answer layer (turn/layer.py), plain or from `ranked`: shown as
        it streams (a sourced one sentence by sentence, once its footnotes are checked),
        remembered and stored as shown — also when stopped early (Ctrl-C keeps what came)."""
        from korani_cli.turn.layer import Finished, Request, Text, Trimmed, answer

        request = Request(
            question,
            self.params,
            self.system,
            history=tuple(self.turns),
            sources=ranked,
            context_tokens=self.context_tokens,
            search=search,
        )
        yield Stage("답변 생성 중")
        events = answer(self.backend, request, recorder=_Recorder(self, store_question))
        result = None
        try:
            for event in events:
                if isinstance(event, Trimmed):
                    if not self.trim_reported:
                        self.trim_reported = True
                        yield Notice(
                            f"대화가 길어져 오래된 대화 {event.dropped}개를 기억에서 뺐습니다 "
                            f"(컨텍스트 {event.context_length} 토큰)"
                        )
                        yield Stage("답변 생성 중")  # the notice stopped the status; the model is at work
                elif isinstance(event, Text):
                    yield AnswerText(event.text)
                elif isinstance(event, Finished):
                    result = event.result
        finally:
            events.close()  # the layer stops generating and records what came
        if ranked is not None:
            self.last_sources = list(result.passages)  # /출처 shows what the model was given
        yield Answered(
            result.answer, result.timings, result.usage, tuple(result.citations), result.footnotes()
        )
        if result.unsupported():
            # As `ask` says it: an answer from sources that none of its sentences is backed by.
            yield Notice(UNSUPPORTED)
        yield from self._limit_note(result.usage)

    # -- entry point ------------------------------------------------------------

    def handle(self, line: str) -> Iterator[Event]:
        if any("\udc80" <= ch <= "\udcff" for ch in line):  # stdin bytes that were not UTF-8
            yield ErrorLine("입력이 UTF-8 텍스트가 아닙니다 — UTF-8로 입력하세요")
            return
        # A pasted line can carry terminal control sequences; they mean nothing to the model.
        line = clean(line).strip()
        if not line:
            return
        try:
            yield from self._dispatch(line)
        except KoraniError as exc:
            yield ErrorLine(chat_line(exc))
        pending, self._pending = self._pending, []
        yield from pending

    def _dispatch(self, line: str) -> Iterator[Event]:
        if line.startswith("/"):
            name, _, arg = line.partition(" ")
            command = COMMANDS.get(name)
            if command is None:
                yield ErrorLine(f"알 수 없는 명령어 {name} — /도움말 로 명령어를 확인하세요")
                return
            yield from getattr(self, f"cmd_{command}")(arg.strip())
            return
        yield from self._ensure_backend()
        if self.attached:
            # /파일: the files' text, then the question, as `cat FILE | korani ask "질문"` sends it;
            # stored and remembered whole, so --continue and /다시 see what the model saw.
            line = "\n\n".join([*(a.text.strip() for a in self.attached), line])
            self.attached = []
        self.last_asked = Asked(line)
        yield from self._turn(line)

    # -- commands ---------------------------------------------------------------

    def cmd_search(self, question: str) -> Iterator[Event]:
        from korani_cli.turn.layer import Notice as SearchNotice
        from korani_cli.turn.layer import Stage as SearchStage
        from korani_cli.turn.layer import retrieve

        if not question:
            yield ErrorLine("검색할 질문을 적어 주세요 — 예: /검색 한라산의 높이는?")
            return
        query = question
        if is_follow_up(question, self.last_query):
            try:
                yield from self._ensure_backend()
                query = standalone(question, self.last_query, self.backend)
            except KoraniError:  # no model to rewrite with (or no Kiwi): the deterministic rewrite serves
                query = rewrite_query(question, self.last_query)
            yield Notice(f"검색어: {query}")
        try:
            yield Stage("검색 중")
            result = None
            for event in retrieve(query, self.search_options):
                if isinstance(event, SearchStage):
                    yield Stage(STAGE_NAMES.get(event.name, event.name))
                elif isinstance(event, SearchNotice):
                    yield Notice(getattr(event.text, "ko", event.text))  # the chat speaks Korean (types.Said)
                else:
                    result = event.retrieval
            yield from self._ensure_backend()
        except KoraniError as exc:
            yield ErrorLine(chat_line(exc))
            return
        self.last_query = query
        self.last_sources = result.ranked
        self.last_skipped = list(result.failures)
        self.last_asked = Asked(question, list(result.ranked))
        try:
            yield from self._turn(question, result.ranked, search=result)
        except KoraniError as exc:
            yield ErrorLine(chat_line(exc))

    def _limit_note(self, usage: Usage) -> Iterator[Event]:
        """After an answer the backend cut because its server ignored the limit: say so."""
        if usage.limit_ignored:
            yield Notice(limit_ignored_note(self.params.max_new_tokens, korean=True))

    def cmd_sources(self, _arg: str) -> Iterator[Event]:
        if not self.last_sources:
            yield Output("아직 출처가 없습니다 — /검색 으로 질문해 보세요")
            return
        lines = []
        for i, r in enumerate(self.last_sources, 1):
            # Indented lines keep their indent when the REPL wraps them.
            lines += [
                f"[{i}] {r.score:.4f}  {clean_line(r.passage.title)}",
                f"    {clean_line(r.passage.url)}",
                f"    {cut_at_word(clean_line(r.passage.text), SOURCE_CHARS)}",
            ]
        if self.last_skipped:
            # Pages the answer could not use: late or never answering, refused, unreadable.
            lines.append(f"건너뛴 페이지 {len(self.last_skipped)}개:")
            lines += [f"    {clean_line(s.url)} — {clean_line(s.said())}" for s in self.last_skipped]
        yield Output("\n".join(lines))

    def cmd_reset(self, _arg: str) -> Iterator[Event]:
        self.turns = []
        self.last_sources = []
        self.last_skipped = []
        self.last_query = None
        self.last_asked = None
        self.attached = []
        self.trim_reported = False
        # What follows is a new conversation, so it is a new session (written with its first
        # message): the one before stays whole in the history, and `--continue` later resumes
        # exactly the conversation the model remembered, with every message of it.
        self.session_id = None
        yield Output("대화 기억을 지웠습니다 (지난 대화는 기록에 남아 있습니다)")

    def cmd_save(self, arg: str) -> Iterator[Event]:
        """/저장 [FILE]: the transcript as Markdown, in a new file only."""
        yield from self._save(arg, overwrite=False)

    def cmd_save_over(self, arg: str) -> Iterator[Event]:
        """/저장! [FILE]: the same, and an existing file is replaced (never one of korani's own)."""
        yield from self._save(arg, overwrite=True)

    def _save(self, arg: str, *, overwrite: bool) -> Iterator[Event]:
        """Write the transcript atomically (outputs.save_user_file): an existing file only with
        /저장!, korani's own files never; a symlink is written through, a device or FIFO refused."""
        from korani_cli.outputs import save_user_file

        stored = self.history.messages(self.session_id, since_reset=False) if self.session_id else []
        if not stored:
            # Nothing said yet (or just after /초기화): an empty transcript is worth no file,
            # and certainly not the file the user named.
            yield Output("저장할 대화가 아직 없습니다 — 먼저 질문한 뒤 /저장 하세요")
            return
        path = Path(arg).expanduser() if arg else Path(f"korani-chat-{self.session_id}.md")
        text = to_markdown(stored, f"korani chat {self.session_id}")
        own = [(self.history.path, "korani's history database")] if self.history.persistent else []
        written = save_user_file(  # a KoraniError becomes one error line in handle()
            path,
            text,
            overwrite=overwrite,
            replace_fix=f"/저장! {path} replaces it; or give another file name",
            also=own,
        )
        yield Output(f"저장했습니다: {path}" + (f" (→ {written})" if written != path else ""))

    def cmd_history(self, _arg: str) -> Iterator[Event]:
        if not self.history.persistent:
            yield Output(
                "이 대화는 기록 없이 메모리에서만 진행 중입니다 — 저장된 대화 목록은 korani history list"
            )
            return
        rows = self.history.sessions(20)
        lines = [
            f"{r.id}  {time.strftime('%Y-%m-%d %H:%M', time.localtime(r.created or 0))}  "
            f"{r.model}  메시지 {r.messages}개  "
            f"{(r.first or '')[:40]}"
            for r in rows
        ]
        yield Output("\n".join(lines) or "저장된 대화가 없습니다")

    def cmd_model(self, arg: str) -> Iterator[Event]:
        if arg:
            yield from self._switch_model(arg)
            return
        if self.backend is None:
            yield Output(f"{self.model_name} (아직 불러오지 않음)")
            return
        yield Output(self._describe())

    def _describe(self) -> str:
        info = self.backend.info
        context = f"{info.context_length} 토큰" if info.context_length else "알 수 없음"
        return f"{info.name} · 백엔드 {info.backend} · 컨텍스트 {context} · 템플릿 {info.template}"

    def _switch_model(self, name: str) -> Iterator[Event]:
        """Load `name`; only once it has loaded does it replace the current model (a
        failure is one error line and the chat goes on with the model it had)."""
        if self.choose_model is None:
            yield ErrorLine(
                "이 대화에서는 모델을 바꿀 수 없습니다 — korani chat --model 이름 으로 시작하세요"
            )
            return
        yield Stage("모델 불러오는 중")
        try:
            choice = self.choose_model(name)
            backend = choice.load()
        except KoraniError as exc:
            yield ErrorLine(chat_line(exc))
            yield Notice(f"모델은 그대로 {self.model_name} 입니다")
            return
        self.backend, self.model_name, self.template = backend, choice.name, choice.template
        self.params = choice.params or self.params
        self.trim_reported = False
        if self.session_id is not None:
            try:  # later messages, and a later --continue, use the new model
                self.history.set_model(self.session_id, choice.name, choice.template)
            except HistoryError as exc:
                yield ErrorLine(chat_line(exc))
        yield Output(f"모델을 바꿨습니다: {self._describe()}")

    def cmd_retry(self, _arg: str) -> Iterator[Event]:
        """Answer the last question again. The answer it replaces stays in the history
        database, marked as replaced (role 'replaced'): it no longer counts as part of the
        conversation (--continue, history show/export), but nothing stored is lost."""
        asked = self.last_asked
        if asked is None:
            yield Output("다시 답할 질문이 없습니다 — 먼저 질문하거나 /검색 하세요")
            return
        if (
            len(self.turns) >= 2
            and self.turns[-1].role == "assistant"
            and self.turns[-2].content == asked.question
        ):
            self.turns = self.turns[:-2]
            if self.session_id is not None:
                try:
                    self.history.replace_last_answer(self.session_id)
                except HistoryError as exc:
                    yield ErrorLine(chat_line(exc))
        yield from self._ensure_backend()
        if asked.ranked is None:
            yield from self._turn(asked.question, store_question=False)
            return
        self.last_sources = list(asked.ranked)
        try:
            yield from self._turn(asked.question, asked.ranked, store_question=False)
        except KoraniError as exc:
            yield ErrorLine(chat_line(exc))

    def cmd_file(self, arg: str) -> Iterator[Event]:
        """/파일 PATH: the file's text goes before the next plain question (/검색 leaves it waiting)."""
        from korani_cli.chat.attach import AttachError, read_attachment

        try:
            attached = read_attachment(arg)
        except AttachError as exc:
            yield ErrorLine(f"{exc.what} — {exc.fix}")
            return
        self.attached.append(attached)
        read_as = " CP949(EUC-KR)로 읽음;" if attached.encoding != "utf-8" else ""
        yield Output(
            f"파일을 붙였습니다: {attached.name} ({len(attached.text):,}자;{read_as} "
            f"다음 질문에 함께 보냅니다)"
        )

    def cmd_system(self, arg: str) -> Iterator[Event]:
        """/시스템 [TEXT]: show the system text, or set it for the rest of the chat (`-` clears it)."""
        if not arg:
            yield Output(
                f"시스템 글: {self.system}"
                if self.system
                else "시스템 글이 없습니다 — /시스템 글 로 정하세요"
            )
            return
        self.system = None if arg == "-" else arg
        if self.session_id is not None:
            try:  # a later --continue resumes with it
                self.history.set_system(self.session_id, self.system)
            except HistoryError as exc:
                yield ErrorLine(exc.one_line())
        yield Output(
            "시스템 글을 지웠습니다" if self.system is None else f"시스템 글을 바꿨습니다: {self.system}"
        )

    def cmd_help(self, _arg: str) -> Iterator[Event]:
        yield Output(HELP)

    def cmd_exit(self, _arg: str) -> Iterator[Event]:
        yield Exit()
