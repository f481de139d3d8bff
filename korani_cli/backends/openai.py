"""openai backend: any OpenAI-compatible server (vLLM, llama.cpp, Ollama, TGI).

This is how korani reaches past one machine: serve a merged KoRani model with
vLLM and point `--model openai:NAME@http://host:8000/v1` at it.

With the KoRani template (the default) we render the prompt ourselves and use
`/completions`, so the server sees exactly the format the model was trained
on; `--template model` sends the messages to `/chat/completions` and lets the
server apply the model's own template. Streaming is Server-Sent Events over
httpx; when nobody watches the text arrive (`params.stream=False`) one plain
request returns the answer with exact usage.

Every request has an overall deadline (korani_cli/net.py), so a server that
never answers or trickles bytes cannot hold korani: listing the models at
load ends within `request_timeout` (KORANI_REQUEST_TIMEOUT, 20 s by default;
exit 3), a generation within GENERATION_FACTOR × request_timeout (exit 4).
Answers are read with a byte cap.

The API key goes in the Authorization header and nowhere else: a server (or a
gateway before it) that quotes the header back in an error message has the key
cut out of what korani shows (`_hide_key`).

What korani does not take on trust:
- **The length limit.** A server that ignores `max_tokens` is cut off at
  korani's own `max_new_tokens` (see MAX_CHARS_PER_TOKEN); `usage.limit_ignored`
  tells the front end to say so.
- **The connection.** A request is resent once, at once, only when it never
  reached the server: it went out on a kept-alive connection that the server
  had closed, so sending it failed or the server's side reset it before any
  answer. A request that may have been read (the server closed the connection
  after taking it) is never resent: the failure is the user's to see.
- **The usage.** Streams ask for `stream_options.include_usage` (the prompt's
  token count); a server that rejects the field gets the request again without
  it, and one that ignores it leaves prompt_tokens unknown (None), never guessed.
- **The shape.** An answer without a choice is an error, not an empty answer.
"""

from __future__ import annotations

import json
from contextlib import closing
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from korani_cli.backends import Generation, GenerationParams, ModelInfo, ModelSpec, Notify, Usage, apply_stops
from korani_cli.config import Settings
from korani_cli.errors import GenerationError, KoraniError, ModelLoadError
from korani_cli.template import CHARS_PER_TOKEN, DEFAULT_EOS, HEADER_STOP, Message, flatten_sources, render

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 300.0  # between two streamed events, not for the whole answer
# A generation may take this many request_timeouts (10 minutes at the default
# 20 s): long prompts on a busy CPU server are slow, but not endless.
GENERATION_FACTOR = 30
LIST_CAP = 5_000_000  # bytes of a /models answer
ANSWER_CAP = 16_000_000  # bytes of a whole (non-streamed) answer, or of one event
# What the server should stop at besides EOS: the next turn's header.
SERVER_STOPS = [HEADER_STOP]
# Counting a server's tokens: every streamed event that carries text holds at least one token
# on the servers korani meets (llama.cpp, vLLM, TGI and Ollama send one per event), so more
# text events than max_new_tokens + OVERSHOOT means the server ignored the limit. Where events cannot be
# counted as tokens (an answer handed over whole without usage, an event packed with text)
# the bound is this many characters a token: longer than the tokens of the vocabularies
# korani meets, whitespace runs included, so a server that keeps the limit is never cut.
MAX_CHARS_PER_TOKEN = 32
# A server that keeps the limit may still go a few tokens past it: llama-cpp-python finishes a
# UTF-8 character split across byte tokens (up to three more for a four-byte one), so Korean
# answers of max_tokens=24 report 25. Only more than this is ignoring the limit; the text of
# these few events is held back until the answer ends, so an answer that is cut is cut at the limit.
OVERSHOOT = 3


def _hide_key(exc: KoraniError, key: str | None) -> KoraniError:
    """`exc` with every copy of the API key in its message replaced: servers quote what they were sent."""
    if key:
        exc.what = exc.what.replace(key, "[API key]")
        exc.fix = exc.fix.replace(key, "[API key]") if exc.fix else exc.fix
        exc.args = (exc.what,)
    return exc


def normalise_base_url(url: str) -> str:
    url = url.rstrip("/")
    # A bare host:port means the usual /v1 prefix; a URL with a path is kept
    # as given (some gateways serve the API under another prefix).
    if not urlsplit(url).path:
        url += "/v1"
    return url


class OpenAIBackend:
    def __init__(
        self,
        client,
        model: str,
        info: ModelInfo,
        eos_text: str,
        deadline=None,
        generation_deadline: float = 600.0,
        api_key: str | None = None,
    ):
        self.client = client
        self._api_key = api_key  # only to cut it out of server messages (_hide_key)
        self.model = model
        self.info = info
        self.eos_text = eos_text
        self.deadline = deadline  # net.DeadlineBackend of the client
        self.generation_deadline = generation_deadline
        self.stream_usage = True  # ask streams for their usage until the server refuses the field

    @classmethod
    def load(cls, spec: ModelSpec, settings: Settings, notify: Notify) -> "OpenAIBackend":
        import httpx

        from korani_cli import net

        request_timeout = net.check_timeout(settings.request_timeout)
        base_url = normalise_base_url(spec.base_url or "")
        headers = {"Authorization": f"Bearer {spec.api_key}"} if spec.api_key else {}
        client, deadline = net.deadline_client(
            httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
            base_url=base_url,
            headers=headers,
        )
        try:
            served = _served_models(client, deadline, base_url, request_timeout)
        except KoraniError as exc:
            raise _hide_key(exc, spec.api_key) from None
        try:
            model = _pick_model(spec.source, served, base_url)
        except ModelLoadError as exc:
            client.close()
            raise _hide_key(exc, spec.api_key) from None
        info = ModelInfo(
            name=spec.name,
            backend="openai",
            context_length=None,
            template=settings.template,
            details={"base_url": base_url, "model": model},
        )
        # We cannot know the served tokenizer's EOS text; earlier Bot turns are
        # closed with the one KoRani models use (polyglot-ko's).
        return cls(
            client,
            model,
            info,
            eos_text=DEFAULT_EOS,
            deadline=deadline,
            generation_deadline=GENERATION_FACTOR * request_timeout,
            api_key=spec.api_key,
        )

    def count_tokens(self, text: str) -> int:
        # The server's tokenizer is remote: polyglot-ko's usual ratio stands in.
        return max(1, round(len(text) / CHARS_PER_TOKEN))

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Generation:
        body: dict = {
            "model": self.model,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        if self.info.template == "model":
            path = "/chat/completions"
            body["messages"] = [flatten_sources(m).to_dict() for m in messages]
        else:
            path = "/completions"
            body["prompt"] = render(messages, self.eos_text)
            body["stop"] = SERVER_STOPS
        run = self._events if params.stream else self._whole
        return Generation(lambda usage: apply_stops(self._keyless(run(path, body, usage)), usage))

    def _keyless(self, chunks: Iterator[str]) -> Iterator[str]:
        try:
            yield from chunks
        except KoraniError as exc:
            raise _hide_key(exc, self._api_key) from None

    @staticmethod
    def _text(choice: dict) -> str:
        if "delta" in choice:
            return (choice["delta"] or {}).get("content") or ""
        if "message" in choice:
            return (choice["message"] or {}).get("content") or ""
        return choice.get("text") or ""

    @staticmethod
    def _finish(choice: dict, usage: Usage) -> None:
        reason = choice.get("finish_reason")
        if reason == "length":
            usage.finish_reason = "length"
        elif reason:
            # vLLM names the stop string it hit; otherwise "stop" means EOS.
            usage.finish_reason = "stop" if isinstance(choice.get("stop_reason"), str) else "eos"

    @staticmethod
    def _usage(data: dict, usage: Usage) -> None:
        counts = data.get("usage")
        if not isinstance(counts, dict):
            return
        for name in ("prompt_tokens", "completion_tokens"):
            value = counts.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(usage, name, value)

    def _fail(self, status: int, body: bytes) -> GenerationError:
        try:
            detail = json.loads(body).get("error", {})
            detail = detail.get("message", detail) if isinstance(detail, dict) else detail
        except (ValueError, AttributeError, RecursionError):
            detail = body[:200].decode("utf-8", "replace")
        return GenerationError(
            f"the server answered HTTP {status}: {detail}",
            "check the server's log; lower --max-new-tokens if the prompt is too long",
        )

    def _malformed(self, what: str, sample) -> GenerationError:
        return GenerationError(f"the server sent {what}: {sample!r}", "check the server")

    def _no_choices(self, sample) -> GenerationError:
        return GenerationError(
            f"{self.client.base_url} answered without a choice: {sample!r}",
            "check that it is an OpenAI-compatible server, and its log",
        )

    def _within_deadline(self):
        from contextlib import nullcontext

        return self.deadline.within(self.generation_deadline) if self.deadline else nullcontext()

    def _late(self) -> GenerationError:
        return GenerationError(
            f"no complete answer from {self.client.base_url} within {self.generation_deadline:g} s",
            "check the server; raise request_timeout (KORANI_REQUEST_TIMEOUT) or lower --max-new-tokens",
        )

    @staticmethod
    def _ignored(usage: Usage, limit: int) -> None:
        """The server went past max_tokens: the answer ends at korani's limit; front ends say why."""
        usage.finish_reason = "length"
        usage.completion_tokens = limit
        usage.limit_ignored = True

    def _send(self, path: str, body: dict):
        """POST `body`, the response streamed (the caller closes it). Resent once, at once, when
        the request never reached the server (see `_Trace`); never when it may have been read."""
        import httpx

        for attempt in (1, 2):
            trace = _Trace()
            request = self.client.build_request("POST", path, json=body, extensions={"trace": trace})
            try:
                return self.client.send(request, stream=True)
            except httpx.TransportError as exc:
                if attempt == 2 or isinstance(exc, httpx.TimeoutException) or not trace.unsent(exc):
                    raise
        raise AssertionError("unreachable")

    def _whole(self, path: str, body: dict, usage: Usage) -> Iterator[str]:
        import httpx

        from korani_cli import net

        try:
            with self._within_deadline(), closing(self._send(path, body)) as response:
                raw = net.read_capped(response, ANSWER_CAP)
        except httpx.TimeoutException:
            raise self._late() from None
        except httpx.HTTPError as exc:
            raise GenerationError(
                f"the request to {self.client.base_url} failed ({exc})", "check that the server is up"
            ) from None
        except (net.TooLarge, net.UndecodableBody) as exc:
            raise GenerationError(f"the server sent an unusable answer ({exc})", "check the server") from None
        if not response.is_success:
            raise self._fail(response.status_code, raw)
        usage.whole = True  # when the server made its first token is not known
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            raise self._malformed("a malformed answer", raw[:80]) from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise self._malformed("a malformed answer", raw[:80])
        if not choices:
            raise self._no_choices(raw[:80])
        try:
            text = self._text(choices[0])
        except AttributeError:
            raise self._malformed("a malformed answer", raw[:80]) from None
        if not isinstance(text, str):
            raise self._malformed("a malformed answer", raw[:80])
        self._usage(data, usage)
        self._finish(choices[0], usage)
        limit = body["max_tokens"]
        made = usage.completion_tokens
        if made is not None and made > limit + OVERSHOOT:
            # The server's own count says how long its tokens were in this very answer.
            self._ignored(usage, limit)
            text = text[: round(len(text) * limit / made)]
        elif made is None and len(text) > limit * MAX_CHARS_PER_TOKEN:
            self._ignored(usage, limit)
            usage.completion_tokens = None  # not counted: cut by characters
            text = text[: limit * MAX_CHARS_PER_TOKEN]
        yield text

    def _open_stream(self, path: str, body: dict):
        """The streamed response to `body`; a server that refuses `stream_options` gets it again
        without (and is not asked again)."""
        from korani_cli import net

        while True:
            asked = self.stream_usage
            sent = {**body, "stream": True}
            if asked:
                sent["stream_options"] = {"include_usage": True}
            response = self._send(path, sent)
            if response.is_success:
                return response
            with closing(response):
                detail = net.read_capped(response, ANSWER_CAP, truncate=True)
            if asked and response.status_code in (400, 422) and b"stream_options" in detail:
                self.stream_usage = False  # the prompt's token count stays unknown for this server
                continue
            raise self._fail(response.status_code, detail)

    def _events(self, path: str, body: dict, usage: Usage) -> Iterator[str]:
        import httpx

        from korani_cli import net

        limit = body["max_tokens"]
        room = limit * MAX_CHARS_PER_TOKEN
        events = chars = 0
        choices_seen = False
        held: list[str] = []
        try:
            with self._within_deadline(), closing(self._open_stream(path, body)) as response:
                for line in net.iter_lines_capped(response, ANSWER_CAP):
                    if not line.startswith("data:"):
                        continue  # comments, event names, keep-alives
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    try:
                        data = json.loads(payload)
                    except (ValueError, RecursionError):
                        raise self._malformed("a malformed event", payload[:80]) from None
                    if not isinstance(data, dict):
                        raise self._malformed("a malformed event", payload[:80])
                    if "error" in data:
                        raise GenerationError(
                            f"the server reported an error: {data['error']}", "check the server's log"
                        )
                    choices = data.get("choices") or []
                    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
                        raise self._malformed("a malformed event", payload[:80])
                    self._usage(data, usage)
                    for choice in choices:
                        choices_seen = True
                        try:
                            text = self._text(choice)
                        except AttributeError:
                            raise self._malformed("a malformed event", payload[:80]) from None
                        if text and isinstance(text, str):
                            events += 1
                            if events > limit + OVERSHOOT or len(text) > room - chars:
                                # Past korani's limit: the server ignored max_tokens. Stop reading
                                # (closing the response tells the server to stop, too); what was
                                # held past the limit is dropped.
                                if events <= limit:
                                    yield text[: room - chars]
                                self._ignored(usage, limit)
                                return
                            chars += len(text)
                            if events > limit:
                                held.append(text)  # shown if the server ends within OVERSHOOT
                            else:
                                yield text
                        self._finish(choice, usage)
        except httpx.TimeoutException:
            raise self._late() from None
        except httpx.HTTPError as exc:
            raise GenerationError(
                f"the stream from {self.client.base_url} broke off ({exc})", "check that the server is up"
            ) from None
        except (net.TooLarge, net.UndecodableBody) as exc:
            raise GenerationError(f"the server sent an unusable stream ({exc})", "check the server") from None
        if not choices_seen:
            raise self._no_choices("a stream with no choice")
        if held:
            yield "".join(held)
        if usage.completion_tokens is None:
            # Servers that ignore include_usage send one token per event.
            usage.completion_tokens = events


class _Trace:
    """What httpcore says about one request (httpx's `trace` extension): was a connection dialled
    for it, did sending it fail, did an answer begin. A request that went out on a kept-alive
    connection and failed before any answer never reached the server when sending it failed,
    or when the server's side reset the connection — a closed socket's answer to bytes nobody
    read. A clean close after the request was sent may come from a server that read it: not so."""

    def __init__(self):
        self.dialled = self.send_failed = self.answered = False

    def __call__(self, name: str, info: dict) -> None:
        if name.startswith("connection.connect_"):
            self.dialled = True
        elif name.startswith("http11.send_request_") and name.endswith(".failed"):
            self.send_failed = True
        elif name == "http11.receive_response_headers.complete":
            self.answered = True

    def unsent(self, exc: BaseException) -> bool:
        if self.dialled or self.answered:
            return False
        return self.send_failed or _was_reset(exc)


def _was_reset(exc: BaseException | None) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _served_models(client, deadline, base_url: str, request_timeout: float) -> list[str]:
    """GET /models within the deadline: the names the server lists ([] when its list is unreadable).
    A server that cannot be reached, is too slow or refuses the key is a ModelLoadError, the client
    closed."""
    import httpx

    from korani_cli import net

    unreachable = "start the server, or fix the URL in --model openai:MODEL@URL / KORANI_OPENAI_BASE_URL"
    try:
        with deadline.within(request_timeout), client.stream("GET", "/models") as response:
            listing = net.read_capped(response, LIST_CAP)
    except httpx.TimeoutException:
        client.close()
        raise ModelLoadError(
            f"the OpenAI-compatible server at {base_url} did not list its models within "
            f"{request_timeout:g} s",
            unreachable + "; or raise request_timeout (KORANI_REQUEST_TIMEOUT) for a slow server",
        ) from None
    except httpx.HTTPError as exc:
        client.close()
        raise ModelLoadError(
            f"cannot reach the OpenAI-compatible server at {base_url} ({exc.__class__.__name__}: {exc})",
            unreachable,
        ) from None
    except (net.TooLarge, net.UndecodableBody) as exc:
        client.close()
        raise ModelLoadError(f"{base_url} sent an unusable model list ({exc})", "check the server") from None
    if response.status_code in (401, 403):
        client.close()
        raise ModelLoadError(
            f"{base_url} refused the API key (HTTP {response.status_code})",
            "set KORANI_OPENAI_API_KEY (or OPENAI_API_KEY) to a valid key",
        )
    if not response.is_success:
        return []
    try:
        return [str(m["id"]) for m in json.loads(listing).get("data", [])]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return []


def _pick_model(asked: str, served: list[str], base_url: str) -> str:
    """The model asked for, checked against what the server lists; none asked → the first listed."""
    if not asked:
        if not served:
            raise ModelLoadError(
                f"{base_url} lists no models, so none can be picked",
                "name one: --model openai:MODEL@URL",
            )
        return served[0]
    if served and asked not in served:
        raise ModelLoadError(
            f"{base_url} does not serve '{asked}' (it serves: {', '.join(served)})",
            "pick one of those names in --model openai:MODEL@URL",
        )
    return asked
