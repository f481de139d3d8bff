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
"""

from __future__ import annotations

import json
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
            return choice["delta"].get("content") or ""
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
        counts = data.get("usage") or {}
        if counts.get("prompt_tokens") is not None:
            usage.prompt_tokens = counts["prompt_tokens"]
        if counts.get("completion_tokens") is not None:
            usage.completion_tokens = counts["completion_tokens"]

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

    def _within_deadline(self):
        from contextlib import nullcontext

        return self.deadline.within(self.generation_deadline) if self.deadline else nullcontext()

    def _late(self) -> GenerationError:
        return GenerationError(
            f"no complete answer from {self.client.base_url} within {self.generation_deadline:g} s",
            "check the server; raise request_timeout (KORANI_REQUEST_TIMEOUT) or lower --max-new-tokens",
        )

    def _whole(self, path: str, body: dict, usage: Usage) -> Iterator[str]:
        import httpx

        from korani_cli import net

        try:
            with self._within_deadline(), self.client.stream("POST", path, json=body) as response:
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
            choice = (data.get("choices") or [{}])[0]
            self._usage(data, usage)
            self._finish(choice, usage)
            text = self._text(choice)
        except (ValueError, AttributeError, TypeError, IndexError, RecursionError):
            raise GenerationError(
                f"the server sent a malformed answer: {raw[:80]!r}", "check the server"
            ) from None
        yield text

    def _events(self, path: str, body: dict, usage: Usage) -> Iterator[str]:
        import httpx

        from korani_cli import net

        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        chunks = 0
        try:
            with self._within_deadline(), self.client.stream("POST", path, json=body) as response:
                if not response.is_success:
                    raise self._fail(
                        response.status_code, net.read_capped(response, ANSWER_CAP, truncate=True)
                    )
                for line in net.iter_lines_capped(response, ANSWER_CAP):
                    if not line.startswith("data:"):
                        continue  # comments, event names, keep-alives
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        break
                    try:
                        data = json.loads(payload)
                    except (ValueError, RecursionError):
                        raise GenerationError(
                            f"the server sent a malformed event: {payload[:80]!r}", "check the server"
                        ) from None
                    if not isinstance(data, dict):
                        raise GenerationError(
                            f"the server sent a malformed event: {payload[:80]!r}", "check the server"
                        )
                    if "error" in data:
                        raise GenerationError(
                            f"the server reported an error: {data['error']}", "check the server's log"
                        )
                    self._usage(data, usage)
                    for choice in data.get("choices") or []:
                        text = self._text(choice)
                        if text:
                            chunks += 1
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
        if usage.completion_tokens is None:
            # Servers that ignore include_usage send one token per event.
            usage.completion_tokens = chunks


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
