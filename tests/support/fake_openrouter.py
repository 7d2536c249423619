"""A fake OpenRouter chat-completions server with scriptable faults, for tests.

It is a raw asyncio HTTP/1.1 server (its own thread and event loop, loopback only) rather than
an ASGI app because the faults need control below what ASGI allows: a TCP reset (SO_LINGER 0),
closing before the status line, stalling without a byte, cutting a chunked body mid-way.

    with FakeOpenRouter() as fake:
        fake.script("429;retry_after=1", "ok")      # one mode per request, FIFO
        ... POST f"{fake.base_url}/chat/completions" ...
        assert [r.outcome for r in fake.requests] == ["ok", "ok"]

Mode selection per request: the `x-fake-mode` request header if present, else the next
scripted mode, else `fake.default_mode` ("ok"). Mode syntax: `name;key=value;key=value`
(values URL-escaped). Modes:

  ok                         rule-based answer (below), JSON or SSE as the request asks
  status=<code> | <code>     OpenRouter error JSON with that status; `retry_after=S` adds a
                             Retry-After header (`retry_after_date=S` an HTTP-date one),
                             `message=...`, `error_type=...` override the body
  context_length             400 with OpenRouter's context-length wording (`limit=`, `requested=`)
  reset_before_headers       TCP RST (SO_LINGER 0) after reading the request
  close_before_headers       FIN after reading the request, no response
  stall_before_headers       never answers (bounded by `seconds=`, default `max_stall`)
  error_200                  200 + {"error":{"code":502,...}} (`code=` to change)
  html                       200 text/html
  empty                      200, empty content, no tool calls
  cut_mid_stream;after=N     N content chunks, then close without finishing the body
  reset_mid_stream;after=N   N content chunks, then RST
  error_chunk;code=C;after=N N content chunks, then an OpenRouter mid-stream error chunk
                             (C numeric or e.g. server_error), then the body ends
  malformed_chunk;bad=B;after=N  N content chunks, then a bad line (B: truncated, garbage,
                             utf8, nodata), then the rest of the stream as normal
  no_done                    finish_reason chunk, then the body ends without usage/[DONE]
  stall_mid_stream;after=N   N content chunks, then silence (bounded), then close
  slow_drip;delay_ms=D;chunks=C  C one-word chunks D ms apart (text: `drip_text(C)`)
  comments;seconds=S         only `: OPENROUTER PROCESSING` comments for S s (one per 0.5 s),
                             then the normal answer
  text=<url-escaped text>    answer with exactly this text
  raw;status=S;body=B        status S (default 400) with exactly the url-escaped JSON body B: another
                             server's error shape (llama.cpp, vLLM, Ollama, DeepSeek, OpenAI)

Any streaming mode also takes `framing=close` (no chunked encoding: the body ends when the
connection closes) instead of the default chunked transfer encoding. `after` defaults to 3.

"ok" answers, from the request body: if a `tool` message follows the last assistant message,
text "Done: <summary of the tool result>"; else if the last user text contains
`[[tool:NAME {json}]]`, a call of NAME with those arguments; else if a tool named "Write" is
declared and the text mentions hello.txt, Write {"file_path":"hello.txt","content":"Hello,
world!\\n"}; else if "Bash" is declared and the text says run or bash, Bash {"command":"echo
hi","description":"Say hi"}; else "Hello! I am the fake upstream. You said: ..." (≥ 12 words,
so a stream has ≥ 12 text deltas).

Parity extensions (all off by default, so the modes above behave as before):

  - `GET {base}/key` answers OpenRouter's key information when a bearer token is sent, and
    401 otherwise (a token listed in `fake.refused_keys` is refused with 401 too).
  - `GET {base}/models` answers `fake.models` (id, context_length, top_provider
    .max_completion_tokens, supported_parameters, architecture.input_modalities); these
    listing calls are counted in `fake.listing_requests`, not recorded in `fake.requests`.
  - A request with `reasoning` (not `exclude`) gets reasoning in the model family's shape:
    anthropic/* `reasoning_details` text fragments (format anthropic-claude-v1) with the
    signature in a last text-less detail; google/* gemini text + `reasoning.encrypted`;
    deepseek/* `reasoning_content` only; anything else `reasoning` + an openai-responses-v1
    summary and encrypted detail.
  - `fake.cost` is every answer's `usage.cost` (default 0; None leaves the field out, as servers
    other than OpenRouter do). Listing entries may carry OpenRouter's `pricing`.
  - A request with any `cache_control` reports cache writes the first time its system prompt
    is seen and cache reads after (`prompt_tokens_details`).
  - `context_length;bare=1` words the error without any figures.
  - `fake.strict = True` answers 400 (or 404) to what real providers reject (see
    `strict_problem`): `tools: []`, `tool_choice` without tools, unknown roles, unanswered
    tool calls, empty assistant messages or text parts, reasoning_details of another family
    or with a bad signature, duplicate detail ids, DeepSeek turns without reasoning_content,
    Gemini-rejected schema keywords, cache_control where not honoured or > 4 breakpoints,
    images to `fake.no_vision` models, `max_tokens` over `fake.max_output[model]`, prompts
    over `fake.context_limits[model]`. `fake.rejections` lists what was rejected.

Every request is recorded in `fake.requests` (`RequestRecord`); `outcome` is None while the
request is in flight, then "ok" (response sent as scripted), "peer_closed" (the client closed
before the response was finished), "reset" / "closed" (the fake broke the connection, as
scripted), "stall_timeout" (a stall hit its bound and the fake closed), "stopped" (the fake shut
down) or "bad_request".
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import re
import secrets
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

import orjson

__all__ = ["FakeOpenRouter", "Mode", "RequestRecord", "drip_text", "MODES"]

MODES = frozenset({
    "ok", "status", "context_length", "reset_before_headers", "close_before_headers",
    "stall_before_headers", "error_200", "html", "empty", "cut_mid_stream", "reset_mid_stream",
    "error_chunk", "malformed_chunk", "no_done", "stall_mid_stream", "slow_drip", "comments",
    "text", "raw",
})

_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request", "Invalid request: the fake upstream rejected this request"),
    401: ("authentication", "No auth credentials found"),
    402: ("payment_required", "Insufficient credits. Add more using https://openrouter.ai/credits"),
    403: ("permission_denied", "Input was flagged by moderation"),
    404: ("not_found", "No endpoints found for fake/model."),
    408: ("timeout", "Request timed out"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Request payload too large"),
    422: ("unprocessable", "Unprocessable request"),
    429: ("rate_limit_exceeded", "Rate limit exceeded: fake/model is temporarily rate-limited upstream"),
    500: ("server", "Internal Server Error"),
    502: ("provider_unavailable", "Provider returned error"),
    503: ("provider_overloaded", "No available providers: all providers are overloaded"),
    504: ("timeout", "Provider timed out"),
    529: ("provider_overloaded", "Overloaded"),
}

_TOOL_RE = re.compile(r"\[\[tool:([A-Za-z0-9_.\-]+)\s*(\{.*\})?\s*\]\]", re.S)
_RUN_RE = re.compile(r"\b(run|bash)\b", re.I)
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def drip_text(chunks: int) -> str:
    """The exact text a `slow_drip;chunks=C` stream carries."""
    return " ".join(f"drip{i}" for i in range(chunks))


def _rand(n: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(n))


@dataclass
class RequestRecord:
    """One request the fake received. `outcome` stays None until the response is over."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    body: bytes
    at: float
    connection_id: int
    mode: str = "ok"
    outcome: str | None = None
    status: int | None = None
    finished_at: float | None = None
    done: threading.Event = field(default_factory=threading.Event, repr=False)


@dataclass(frozen=True)
class Mode:
    """A parsed fault mode: `name;key=value;...`."""

    name: str
    params: dict[str, str]
    spec: str

    @classmethod
    def parse(cls, spec: str) -> Mode:
        parts = [p for p in spec.strip().split(";") if p.strip()]
        if not parts:
            return cls("ok", {}, "ok")
        head, params = parts[0].strip(), {}
        if "=" in head:
            name, _, value = head.partition("=")
            params[name] = unquote(value)
        else:
            name = head
        for p in parts[1:]:
            k, sep, v = p.strip().partition("=")
            params[k] = unquote(v) if sep else "1"
        if name.isdigit():
            params["code"], name = name, "status"
        elif name == "status":
            params["code"] = params.pop("status", params.get("code", "500"))
        if name not in MODES:
            raise ValueError(f"unknown fake mode {name!r} in {spec!r}")
        return cls(name, params, spec)

    def int(self, key: str, default: int) -> int:
        try:
            return int(self.params[key])
        except (KeyError, ValueError):
            return default

    def float(self, key: str, default: float) -> float:
        try:
            return float(self.params[key])
        except (KeyError, ValueError):
            return default


class _BadRequest(Exception):
    pass


class _Conn:
    """One client connection: a byte buffer over the reader, and the writer."""

    def __init__(self, cid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.id = cid
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.broken = False

    async def _fill(self) -> bool:
        data = await self.reader.read(65536)
        if not data:
            return False
        self.buf += data
        return True

    async def read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        while (idx := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > 256 * 1024:
                raise _BadRequest("request head too large")
            if not await self._fill():
                return None
        head = bytes(self.buf[:idx]).decode("latin-1")
        del self.buf[: idx + 4]
        lines = head.split("\r\n")
        try:
            method, target, _version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise _BadRequest("bad request line") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise _BadRequest("bad header line")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        else:
            n = int(headers.get("content-length", "0") or 0)
            while len(self.buf) < n:
                if not await self._fill():
                    return None
            body = bytes(self.buf[:n])
            del self.buf[:n]
        return method, target, headers, body

    async def _read_chunked(self) -> bytes:
        out = bytearray()
        while True:
            while (idx := self.buf.find(b"\r\n")) < 0:
                if not await self._fill():
                    raise _BadRequest("eof in chunked body")
            size = int(bytes(self.buf[:idx]).split(b";")[0].strip() or b"0", 16)
            del self.buf[: idx + 2]
            if size == 0:
                while (idx := self.buf.find(b"\r\n")) < 0:
                    if not await self._fill():
                        raise _BadRequest("eof in chunked trailer")
                trailer_line = bytes(self.buf[:idx])
                del self.buf[: idx + 2]
                if not trailer_line:
                    return bytes(out)
                continue
            while len(self.buf) < size + 2:
                if not await self._fill():
                    raise _BadRequest("eof in chunked body")
            out += self.buf[:size]
            del self.buf[: size + 2]

    async def watch_eof(self) -> None:
        """Return when the peer closes (EOF or error); any bytes read are kept for later."""
        while True:
            try:
                if not await self._fill():
                    return
            except (ConnectionError, OSError):
                return

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def reset(self) -> None:
        """Abort with RST (SO_LINGER 0)."""
        self.broken = True
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        """Close with FIN (after flushing what was written)."""
        self.broken = True
        self.writer.close()


class _Body:
    """Writes one response: head, then SSE events as chunked (or close-delimited) body parts."""

    def __init__(self, conn: _Conn, rec: RequestRecord, keep_alive: bool, chunked: bool = True) -> None:
        self.conn = conn
        self.rec = rec
        self.keep_alive = keep_alive
        self.chunked = chunked

    async def head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.rec.status = status
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append(f"date: {formatdate(usegmt=True)}")
        if not self.keep_alive:
            lines.append("connection: close")
        await self.conn.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def json(self, status: int, obj: Any, extra: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        await self.full(status, orjson.dumps(obj), "application/json", extra)

    async def full(self, status: int, body: bytes, ctype: str, extra: list[tuple[str, str]] = ()) -> None:  # type: ignore[assignment]
        await self.head(status, [("content-type", ctype), ("content-length", str(len(body))), *extra])
        await self.conn.write(body)

    async def sse_head(self) -> None:
        headers = [("content-type", "text/event-stream"), ("cache-control", "no-cache"),
                   ("x-generation-id", "gen-" + _rand(20))]
        if self.chunked:
            headers.append(("transfer-encoding", "chunked"))
        else:
            self.keep_alive = False
        await self.head(200, headers)

    async def part(self, data: bytes) -> None:
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        await self.conn.write(data)

    async def event(self, obj: Any) -> None:
        await self.part(b"data: " + orjson.dumps(obj) + b"\n\n")

    async def end(self) -> None:
        if self.chunked:
            await self.conn.write(b"0\r\n\r\n")

    async def finish(self) -> bool:
        """End a complete answer; whether the connection stays open for the next request (a
        close-delimited body ends by closing it)."""
        await self.end()
        if not self.chunked:
            self.rec.outcome = "ok"
            self.conn.close()
            return False
        return self.keep_alive


class _Answer:
    """What an "ok"-style answer says: text, or one tool call."""

    def __init__(self, text: str | None, tool: tuple[str, str] | None, model: str) -> None:
        self.text = text
        self.tool = tool  # (name, arguments JSON string)
        self.model = model
        self.reasoning: str | None = None  # set when the request asked for reasoning
        self.cache: tuple[int, int] | None = None  # (cached_tokens, cache_write_tokens) shares
        self.cost: float | None = 0  # usage.cost (None: not reported, as non-OpenRouter servers)
        self.id = "gen-" + _rand(20)
        self.created = int(time.time())
        self.call_id = "call_" + _rand(24)

    # --- chunks -------------------------------------------------------------------------------
    def chunk(self, delta: dict | None, finish: str | None = None, usage: dict | None = None) -> dict:
        c: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                             "model": self.model, "provider": "Fake"}
        if delta is None:
            c["choices"] = []
        else:
            c["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish,
                             "native_finish_reason": _native(finish), "logprobs": None}]
        if usage is not None:
            c["usage"] = usage
        return c

    def role_chunk(self) -> dict:
        return self.chunk({"role": "assistant", "content": ""})

    def reasoning_chunks(self) -> list[dict]:
        if not self.reasoning:
            return []
        fam = model_family(self.model)
        pieces = _pieces(self.reasoning)
        out = []
        for piece in pieces:
            if fam == "deepseek":
                out.append(self.chunk({"role": "assistant", "content": "", "reasoning_content": piece}))
            elif fam in ("anthropic", "google"):
                fmt = FAMILY_FORMAT[fam]
                out.append(self.chunk({"role": "assistant", "content": "", "reasoning": piece, "reasoning_details": [
                    {"type": "reasoning.text", "text": piece, "format": fmt, "index": 0}]}))
            else:
                out.append(self.chunk({"role": "assistant", "content": "", "reasoning": piece, "reasoning_details": [
                    {"type": "reasoning.summary", "summary": piece, "format": FAMILY_FORMAT["other"], "index": 0}]}))
        tail = self._reasoning_tail()
        if tail:
            out.append(self.chunk({"role": "assistant", "content": "", "reasoning_details": tail}))
        return out

    def _reasoning_tail(self) -> list[dict]:
        fam = model_family(self.model)
        if fam == "anthropic":
            return [{"type": "reasoning.text", "text": "", "signature": signature_for(self.reasoning or ""),
                     "format": FAMILY_FORMAT[fam], "index": 0}]
        if fam == "deepseek":
            return []
        return [{"type": "reasoning.encrypted", "data": "enc:" + signature_for(self.reasoning or ""), "id": "rs_" + self.id,
                 "format": FAMILY_FORMAT[fam if fam == "google" else "other"], "index": 1}]

    def reasoning_message(self) -> dict:
        if not self.reasoning:
            return {}
        fam = model_family(self.model)
        if fam == "deepseek":
            return {"reasoning_content": self.reasoning}
        if fam == "anthropic":
            details = [{"type": "reasoning.text", "text": self.reasoning, "signature": signature_for(self.reasoning),
                        "format": FAMILY_FORMAT[fam], "index": 0}]
        elif fam == "google":
            details = [{"type": "reasoning.text", "text": self.reasoning, "format": FAMILY_FORMAT[fam], "index": 0},
                       *self._reasoning_tail()]
        else:
            details = [{"type": "reasoning.summary", "summary": self.reasoning, "format": FAMILY_FORMAT["other"], "index": 0},
                       *self._reasoning_tail()]
        return {"reasoning": self.reasoning, "reasoning_details": details}

    def content_chunks(self) -> list[dict]:
        out = self.reasoning_chunks()
        out += [self.chunk({"role": "assistant", "content": piece}) for piece in _pieces(self.text or "")]
        if self.tool is not None:
            name, args = self.tool
            out.append(self.chunk({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": self.call_id, "type": "function",
                 "function": {"name": name, "arguments": ""}}]}))
            for i in range(0, len(args), 8):
                out.append(self.chunk({"role": "assistant", "content": None, "tool_calls": [
                    {"index": 0, "function": {"arguments": args[i: i + 8]}}]}))
        return out

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool is not None else "stop"

    def finish_chunk(self) -> dict:
        return self.chunk({"role": "assistant", "content": ""}, self.finish_reason)

    def usage(self, request_bytes: int) -> dict:
        completion = len(_pieces(self.text or "")) + (len(self.tool[1]) // 4 + 1 if self.tool else 0)
        prompt = max(1, request_bytes // 4)
        cached = written = 0
        if self.cache is not None:
            cached, written = prompt * self.cache[0] // 2, prompt * self.cache[1] // 2
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
                "completion_tokens_details": {"reasoning_tokens": 0},
                **({"cost": self.cost, "is_byok": False} if self.cost is not None else {})}

    def completion(self, request_bytes: int) -> dict:
        message: dict[str, Any] = {"role": "assistant", "content": self.text if self.tool is None else (self.text or None),
                                   "refusal": None, "reasoning": None, **self.reasoning_message()}
        if self.tool is not None:
            name, args = self.tool
            message["tool_calls"] = [{"id": self.call_id, "type": "function",
                                      "function": {"name": name, "arguments": args}}]
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "provider": "Fake",
                "choices": [{"index": 0, "finish_reason": self.finish_reason,
                             "native_finish_reason": _native(self.finish_reason), "logprobs": None,
                             "message": message}],
                "usage": self.usage(request_bytes)}


def _native(finish: str | None) -> str | None:
    return {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}.get(finish or "", finish)


def _pieces(text: str) -> list[str]:
    """`text` in one-word pieces (leading whitespace attached) whose concatenation is `text`."""
    pieces = re.findall(r"\s*\S+", text)
    tail = text[len("".join(pieces)):]
    if tail:
        if pieces:
            pieces[-1] += tail
        else:
            pieces = [tail]
    return pieces


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


FAMILY_FORMAT = {"anthropic": "anthropic-claude-v1", "google": "google-gemini-v1", "other": "openai-responses-v1"}
CACHE_FAMILIES = ("anthropic", "google", "qwen")
GEMINI_REJECTS = ("$schema", "additionalProperties", "propertyNames", "exclusiveMinimum", "const", "$comment")


def model_family(model: str) -> str:
    author = model.split("/", 1)[0].lower() if "/" in model else ""
    return author if author in ("anthropic", "google", "deepseek", "qwen") else "other"


def signature_for(text: str) -> str:
    """The fake's 'signature' of a reasoning text (strict mode checks it on the way back)."""
    import hashlib

    return "sig-" + hashlib.sha256(text.encode()).hexdigest()[:24]


def _count_cache_marks(value: Any) -> int:
    if isinstance(value, dict):
        return ("cache_control" in value) + sum(_count_cache_marks(v) for k, v in value.items() if k != "cache_control")
    if isinstance(value, list):
        return sum(_count_cache_marks(v) for v in value)
    return 0


def _schema_problem(schema: Any) -> str | None:
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k in GEMINI_REJECTS:
                return f'Invalid JSON payload received. Unknown name "{k}"'
            if k == "format" and v not in ("enum", "date-time"):
                return "format: only 'enum' and 'date-time' are supported for STRING type"
            if k == "properties" and isinstance(v, dict):
                for sub in v.values():
                    if (p := _schema_problem(sub)) is not None:
                        return p
            elif (p := _schema_problem(v)) is not None:
                return p
    elif isinstance(schema, list):
        for v in schema:
            if (p := _schema_problem(v)) is not None:
                return p
    return None


def strict_problem(body: Any, fake: FakeOpenRouter) -> tuple[int, str] | None:
    """What a real provider would reject in this chat request, as (status, message), or None."""
    if not isinstance(body, dict):
        return 400, "body is not a JSON object"
    model = body.get("model") if isinstance(body.get("model"), str) else ""
    fam = model_family(model)
    if "tools" in body and not body["tools"]:
        return 400, "tools: must contain at least 1 item"
    if "tool_choice" in body and not body.get("tools"):
        return 400, "tool_choice is only allowed when tools are specified"
    if fam == "google":
        for t in body.get("tools") or ():
            if (p := _schema_problem((t.get("function") or {}).get("parameters"))) is not None:
                return 400, p
        rf = body.get("response_format")
        if isinstance(rf, dict) and (p := _schema_problem((rf.get("json_schema") or {}).get("schema"))) is not None:
            return 400, p
    marks = _count_cache_marks(body)
    if marks and fam not in CACHE_FAMILIES:
        return 400, "cache_control is not supported by this provider"
    if marks > 4:
        return 400, f"A maximum of 4 blocks with cache_control may be provided. Found {marks}."
    max_out = fake.max_output.get(model)
    if max_out is not None and isinstance(body.get("max_tokens"), int) and body["max_tokens"] > max_out:
        return 400, f"max_tokens: {body['max_tokens']} > {max_out}, which is the maximum allowed number of output tokens for {model}"
    thinking = isinstance(body.get("reasoning"), dict)
    pending: set[str] = set()
    seen_ids: set[str] = set()
    for i, m in enumerate(body.get("messages") or ()):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("system", "user", "assistant", "tool"):
            return 400, f"messages.{i}.role: invalid role {role!r}"
        if role == "system" and i != 0:
            return 400, f"messages.{i}: system messages are only allowed first"
        if role == "tool":
            if m.get("tool_call_id") not in pending:
                return 400, f"messages.{i}: tool message answers no pending tool call"
            pending.discard(m["tool_call_id"])
            continue
        if pending:
            return 400, f"messages.{i}: tool_calls without tool messages: {sorted(pending)}"
        content = m.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content}] if isinstance(content, str) else []
        for part in parts:
            if part.get("type") == "text" and not (part.get("text") or "").strip():
                return 400, f"messages.{i}: text content blocks must be non-empty"
            if part.get("type") == "image_url" and model in fake.no_vision:
                return 404, "No endpoints found that support image input"
        if role == "assistant":
            calls = m.get("tool_calls") or []
            if not parts and not calls:
                return 400, f"messages.{i}: assistant message with neither content nor tool_calls"
            pending = {c.get("id") for c in calls}
            if fam == "deepseek" and thinking and "reasoning_content" not in m:
                return 400, "The `reasoning_content` in the thinking mode must be passed back to the API."
            for d in m.get("reasoning_details") or ():
                fmt = d.get("format")
                want = FAMILY_FORMAT.get(fam if fam in FAMILY_FORMAT else "other")
                if fmt != want:
                    return 400, f"messages.{i}: Invalid signature in thinking block (format {fmt} sent to {model})"
                if d.get("id"):
                    if d["id"] in seen_ids:
                        return 400, f"Duplicate item found with id {d['id']}"
                    seen_ids.add(d["id"])
                if fam == "anthropic" and d.get("type") == "reasoning.text" and d.get("signature") != signature_for(d.get("text") or ""):
                    return 400, f"messages.{i}: Invalid signature in thinking block"
                if fam == "google" and d.get("type") == "reasoning.text":
                    return 400, f"messages.{i}: Gemini takes back only encrypted reasoning"
    if pending:
        return 400, f"tool_calls without tool messages: {sorted(pending)}"
    limit = fake.context_limits.get(model)
    if limit is not None:
        prompt = len(orjson.dumps(body.get("messages"))) // 4
        if prompt + (body.get("max_tokens") or 0) > limit:
            return 400, (f"This endpoint's maximum context length is {limit} tokens. However, you requested about "
                         f"{prompt + (body.get('max_tokens') or 0)} tokens ({prompt} of text input, "
                         f"{body.get('max_tokens') or 0} in the output). Please reduce the length.")
    return None


def answer_for(body: Any, mode: Mode) -> _Answer:
    """The rule-based answer to a request body (see the module docstring)."""
    body = body if isinstance(body, dict) else {}
    model = body.get("model") if isinstance(body.get("model"), str) else "fake/model"
    if mode.name == "text":
        return _Answer(mode.params.get("text", ""), None, model)
    if mode.name == "empty":
        return _Answer("", None, model)
    if mode.name == "slow_drip":
        return _Answer(drip_text(mode.int("chunks", 10)), None, model)
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    tools = {
        t.get("function", {}).get("name")
        for t in body.get("tools") or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    }
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    tool_results = [m for m in messages[last_assistant + 1:] if m.get("role") == "tool"]
    if tool_results:
        summary = " ".join(_text_of(tool_results[-1].get("content")).split())[:80] or "the tool ran"
        return _Answer(f"Done: {summary}", None, model)
    user_text = next((_text_of(m.get("content")) for m in reversed(messages) if m.get("role") == "user"), "")
    if m := _TOOL_RE.search(user_text):
        raw = m.group(2) or "{}"
        try:
            args = orjson.dumps(orjson.loads(raw)).decode()
        except orjson.JSONDecodeError:
            args = raw
        return _Answer(None, (m.group(1), args), model)
    if "Write" in tools and "hello.txt" in user_text.lower():
        return _Answer(None, ("Write", orjson.dumps({"file_path": "hello.txt", "content": "Hello, world!\n"}).decode()), model)
    if "Bash" in tools and _RUN_RE.search(user_text):
        return _Answer(None, ("Bash", orjson.dumps({"command": "echo hi", "description": "Say hi"}).decode()), model)
    words = re.findall(r"\S+", user_text)[:16]
    said = " ".join(words) if words else "nothing"
    return _Answer(
        f"Hello! I am the fake upstream. You said: {said}. "
        "That is all I have to say about it, thank you for asking.",
        None,
        model,
    )


class FakeOpenRouter:
    """The fake server; a context manager. See the module docstring for modes and records."""

    def __init__(self, *, default_mode: str = "ok", max_stall: float = 120.0, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError("the fake upstream binds to loopback only")
        Mode.parse(default_mode)
        self.default_mode = default_mode
        self.max_stall = min(max_stall, 120.0)
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._script: deque[str] = deque()
        self._active = 0
        self._open = 0
        self._conn_ids = itertools.count(1)
        self._conns: dict[int, _Conn] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self.models: list[dict] = [
            {"id": "fake/model", "name": "Fake model", "context_length": 200000},
        ]
        self.listing_requests = 0
        self.cost: float | None = 0  # what every answer reports as usage.cost; None: no cost field
        self.refused_keys: set[str] = set()
        self.strict = False
        self.no_vision: set[str] = set()
        self.max_output: dict[str, int] = {}
        self.context_limits: dict[str, int] = {}
        self.rejections: list[tuple[str, int, str]] = []  # (model, status, message)
        self._cache_seen: set[bytes] = set()

    # --- public API -----------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/api/v1"

    @property
    def requests(self) -> list[RequestRecord]:
        """A snapshot of the records so far (records themselves update as requests finish)."""
        with self._lock:
            return list(self._records)

    @property
    def active_requests(self) -> int:
        return self._active

    @property
    def open_connections(self) -> int:
        return self._open

    def script(self, *modes: str) -> None:
        """Queue modes, consumed one per request (FIFO) unless a request names its own."""
        for m in modes:
            Mode.parse(m)
        with self._lock:
            self._script.extend(modes)

    def clear(self) -> None:
        """Forget recorded requests and the queued script."""
        with self._lock:
            self._records.clear()
            self._script.clear()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.005) -> bool:
        """Poll `predicate` until it is true (True) or `timeout` seconds pass (False)."""
        end = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(interval)

    def __enter__(self) -> FakeOpenRouter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-openrouter", daemon=True)
        self._thread.start()
        if not ready.wait(90):  # generous: a loaded machine is slow, and readiness is an event
            raise RuntimeError("fake upstream did not start within 90 s")
        if failure:
            raise failure[0]

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    # --- server internals -----------------------------------------------------------------------
    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                conn.writer.transport.abort()
        tasks = [t for t in self._tasks if not t.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def _next_mode(self, headers: dict[str, str]) -> Mode:
        spec = headers.get("x-fake-mode")
        if spec is None:
            with self._lock:
                spec = self._script.popleft() if self._script else self.default_mode
        return Mode.parse(spec)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = _Conn(next(self._conn_ids), reader, writer)
        self._conns[conn.id] = conn
        self._open += 1
        try:
            while not conn.broken:
                try:
                    req = await conn.read_request()
                except _BadRequest:
                    with contextlib.suppress(Exception):
                        await conn.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    break
                if req is None:
                    break
                if not await self._serve(conn, *req):
                    break
        except (ConnectionError, OSError, asyncio.CancelledError):
            pass
        finally:
            self._open -= 1
            self._conns.pop(conn.id, None)
            self._tasks.discard(task)
            if not conn.broken:
                with contextlib.suppress(Exception):
                    writer.close()

    async def _serve(self, conn: _Conn, method: str, target: str, headers: dict[str, str], body: bytes) -> bool:
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if method == "GET" and target.split("?", 1)[0].rstrip("/").endswith("/key"):
            out = _Body(conn, RequestRecord(method, target, headers, None, b"", time.monotonic(), conn.id), True)
            token = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if token and token not in self.refused_keys:
                await out.json(200, {"data": {"label": "fake key", "limit": None, "usage": 0, "is_free_tier": False}})
            else:
                await out.json(401, {"error": {"code": 401, "message": "No auth credentials found"}})
            return True
        if method == "GET" and target.split("?", 1)[0].rstrip("/").endswith("/models") and "x-fake-mode" not in headers:
            self.listing_requests += 1
            out = _Body(conn, RequestRecord(method, target, headers, None, b"", time.monotonic(), conn.id), True)
            await out.json(200, {"data": self.models})
            return True
        rec = RequestRecord(method=method, path=target.split("?", 1)[0], headers=headers, json=parsed,
                            body=body, at=time.monotonic(), connection_id=conn.id)
        try:
            mode = self._next_mode(headers)
        except ValueError as exc:
            mode = Mode("status", {"code": "400", "message": str(exc)}, "status=400")
        rec.mode = mode.spec
        with self._lock:
            self._records.append(rec)
        self._active += 1
        keep_alive = "close" not in headers.get("connection", "").lower()
        respond = asyncio.ensure_future(self._respond(conn, rec, mode, keep_alive))
        watch = asyncio.ensure_future(conn.watch_eof())
        try:
            done, _ = await asyncio.wait({respond, watch}, return_when=asyncio.FIRST_COMPLETED)
            if respond in done:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
                try:
                    keep = respond.result()
                except (ConnectionError, OSError):
                    rec.outcome = rec.outcome or "peer_closed"
                    return False
                rec.outcome = rec.outcome or "ok"
                return keep and not conn.broken
            respond.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                await respond
            rec.outcome = rec.outcome or "peer_closed"
            return False
        except asyncio.CancelledError:
            for t in (respond, watch):
                t.cancel()
            rec.outcome = rec.outcome or "stopped"
            raise
        finally:
            self._active -= 1
            rec.finished_at = time.monotonic()
            rec.done.set()

    async def _respond(self, conn: _Conn, rec: RequestRecord, mode: Mode, keep_alive: bool) -> bool:
        """Write the response for `mode`; True when the connection may serve another request."""
        out = _Body(conn, rec, keep_alive, chunked=mode.params.get("framing", "chunked") != "close")
        name = mode.name
        path = rec.path.rstrip("/")
        if name == "reset_before_headers":
            rec.outcome = "reset"
            conn.reset()
            return False
        if name == "close_before_headers":
            rec.outcome = "closed"
            conn.close()
            return False
        if name == "stall_before_headers":
            await asyncio.sleep(min(mode.float("seconds", self.max_stall), self.max_stall))
            rec.outcome = "stall_timeout"
            conn.close()
            return False
        if rec.method == "GET" and path.endswith("/models"):
            await out.json(200, {"data": self.models})
            return out.keep_alive
        if rec.method != "POST" or not path.endswith("/chat/completions"):
            await out.json(404, {"error": {"code": 404, "message": f"Not found: {rec.method} {rec.path}"}})
            return out.keep_alive
        if name == "raw":
            raw = mode.params.get("body", "{}").encode()
            await out.full(mode.int("status", 400), raw, "application/json")
            return out.keep_alive
        if name in ("status", "context_length"):
            await self._error_status(out, mode)
            return out.keep_alive
        if name == "error_200":
            code: Any = mode.params.get("code", "502")
            code = int(code) if code.isdigit() else code
            await out.json(200, {"error": {"code": code, "message": mode.params.get("message", "Provider returned error"),
                                           "metadata": {"error_type": "provider_unavailable"}}})
            return out.keep_alive
        if name == "html":
            page = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
            await out.full(200, page, "text/html; charset=utf-8")
            return out.keep_alive
        if self.strict and name == "ok":
            problem = strict_problem(rec.json, self)
            if problem is not None:
                self.rejections.append((str((rec.json or {}).get("model")), *problem))
                await out.json(problem[0], {"error": {"code": problem[0], "message": problem[1],
                                                      "metadata": {"error_type": "invalid_request", "provider_name": "Fake"}}})
                return out.keep_alive
        answer = answer_for(rec.json, mode)
        answer.cost = self.cost
        if isinstance(rec.json, dict):
            reasoning = rec.json.get("reasoning")
            if isinstance(reasoning, dict) and not reasoning.get("exclude") and name == "ok":
                answer.reasoning = "Let me think about this step by step. The user wants a careful answer."
            if _count_cache_marks(rec.json):
                msgs = rec.json.get("messages") or [{}]
                key = orjson.dumps(msgs[0])
                answer.cache = (1, 0) if key in self._cache_seen else (0, 1)
                self._cache_seen.add(key)
        if isinstance(rec.json, dict) and rec.json.get("stream"):
            return await self._stream(conn, out, rec, mode, answer)
        return await self._complete(conn, out, rec, mode, answer)

    async def _error_status(self, out: _Body, mode: Mode) -> None:
        if mode.name == "context_length" and "bare" in mode.params:
            code, error_type = 400, "context_length_exceeded"
            message = "Prompt is too long for this model."
        elif mode.name == "context_length":
            code = 400
            limit = mode.int("limit", 200000)
            requested = mode.int("requested", 263390)
            error_type = "context_length_exceeded"
            message = (
                f"This endpoint's maximum context length is {limit} tokens. However, you requested about "
                f"{requested} tokens (658 of text input, 732 of tool input, {requested - 1390} in the output). "
                "Please reduce the length of either one, or use the \"middle-out\" transform to compress "
                "your prompt automatically."
            )
        else:
            code = mode.int("code", 500)
            error_type, message = _ERRORS.get(code, ("unmapped", f"Upstream error {code}"))
            message = mode.params.get("message", message)
            error_type = mode.params.get("error_type", error_type)
        extra: list[tuple[str, str]] = []
        if "retry_after" in mode.params:
            extra.append(("retry-after", mode.params["retry_after"]))
        elif "retry_after_date" in mode.params:
            extra.append(("retry-after", formatdate(time.time() + mode.float("retry_after_date", 1), usegmt=True)))
        meta: dict[str, Any] = {"error_type": error_type, "provider_name": "Fake"}
        if code == 403:
            meta["reasons"] = ["fake moderation"]
        await out.json(code, {"error": {"code": code, "message": message, "metadata": meta}}, extra)

    async def _complete(self, conn: _Conn, out: _Body, rec: RequestRecord, mode: Mode, answer: _Answer) -> bool:
        name = mode.name
        if name == "comments":
            await asyncio.sleep(min(mode.float("seconds", 2.0), self.max_stall))
        elif name == "slow_drip":
            total = mode.int("chunks", 10) * mode.float("delay_ms", 100.0) / 1000
            await asyncio.sleep(min(total, self.max_stall))
        body = orjson.dumps(answer.completion(len(rec.body)))
        if name == "error_chunk":
            code_s = mode.params.get("code", "502")
            code: Any = int(code_s) if code_s.isdigit() else code_s
            await out.json(200, {"error": {"code": code, "message": "Provider error mid-generation"}})
            return out.keep_alive
        if name == "malformed_chunk":
            await out.full(200, body[: len(body) // 2], "application/json")
            return out.keep_alive
        if name in ("cut_mid_stream", "reset_mid_stream", "stall_mid_stream"):
            await out.head(200, [("content-type", "application/json"), ("content-length", str(len(body)))])
            await conn.write(body[: len(body) // 2])
            return await self._break(conn, rec, name, mode)
        await out.full(200, body, "application/json")
        return out.keep_alive

    async def _break(self, conn: _Conn, rec: RequestRecord, name: str, mode: Mode) -> bool:
        if name == "cut_mid_stream":
            rec.outcome = "closed"
            conn.close()
        elif name == "reset_mid_stream":
            await asyncio.sleep(0.1)  # let the client read what was sent before the RST
            rec.outcome = "reset"
            conn.reset()
        else:
            await asyncio.sleep(min(mode.float("seconds", self.max_stall), self.max_stall))
            rec.outcome = "stall_timeout"
            conn.close()
        return False

    async def _stream(self, conn: _Conn, out: _Body, rec: RequestRecord, mode: Mode, answer: _Answer) -> bool:
        name = mode.name
        after = mode.int("after", 3)
        faulty = name in ("cut_mid_stream", "reset_mid_stream", "stall_mid_stream", "error_chunk", "malformed_chunk")
        await out.sse_head()
        await out.part(b": OPENROUTER PROCESSING\n\n")
        if name == "comments":
            end = time.monotonic() + min(mode.float("seconds", 2.0), self.max_stall)
            while time.monotonic() < end:
                await asyncio.sleep(min(0.5, max(0.0, end - time.monotonic())))
                await out.part(b": OPENROUTER PROCESSING\n\n")
        await out.event(answer.role_chunk())
        chunks = answer.content_chunks()
        delay = mode.float("delay_ms", 100.0) / 1000 if name == "slow_drip" else 0.0
        started = time.monotonic()
        for i in range(len(chunks) + 1):
            if faulty and i == min(after, len(chunks)):
                faulty = False
                if name == "error_chunk":
                    code_s = mode.params.get("code", "502")
                    code: Any = int(code_s) if code_s.lstrip("-").isdigit() else code_s
                    err_type = _ERRORS.get(code if isinstance(code, int) else 502, ("server", ""))[0]
                    chunk = answer.chunk({"content": ""}, "error")
                    chunk["error"] = {"code": code, "message": mode.params.get("message", "Provider error mid-generation"),
                                      "metadata": {"error_type": err_type, "provider_name": "Fake"}}
                    await out.event(chunk)
                    await out.end()
                    return out.keep_alive
                if name == "malformed_chunk":
                    await out.part(_bad_line(mode.params.get("bad", "garbage"), answer))
                else:
                    await conn.writer.drain()
                    return await self._break(conn, rec, name, mode)
            if i == len(chunks):
                break
            if delay:
                if time.monotonic() - started > self.max_stall:
                    break
                await asyncio.sleep(delay)
            await out.event(chunks[i])
        await out.event(answer.finish_chunk())
        if name != "no_done":
            await out.event(answer.chunk(None, usage=answer.usage(len(rec.body))))
            await out.part(b"data: [DONE]\n\n")
        return await out.finish()


def _bad_line(kind: str, answer: _Answer) -> bytes:
    good = orjson.dumps(answer.chunk({"content": " truncated"}))
    if kind == "truncated":
        return b"data: " + good[: len(good) // 2] + b"\n\n"
    if kind == "utf8":
        return b'data: {"choices":[{"index":0,"delta":{"content":"bad \xff\xfe bytes"}}]}\n\n'
    if kind == "nodata":
        return b"this line has no field name\n" + good + b"\n\n"
    return b"data: <html>this is not json</html>\n\n"


# ---------------------------------------------------------------------------------------------
# Server-side tool modes (issue 6, tools engineer). Added here, apart from the rest, so that
# the modes above are untouched:
#
#   tool;name=N;args=<url-escaped JSON>   answer with one call of N, whatever the history says
#   tool;calls=<url-escaped JSON list of [name, args] pairs>   several calls in one turn
#   tool;...;text=<url-escaped text>      some text before the call(s)
#
# `tool_mode(...)` builds the spec: `fake.script(tool_mode("Read", {"file_path": "a"}), "ok")`.
# With `fake.default_mode = tool_mode(...)` the fake calls a tool on every request (a loop).
# ---------------------------------------------------------------------------------------------

from urllib.parse import quote as _quote  # noqa: E402

MODES = MODES | {"tool"}


def tool_mode(name: str | None = None, args: dict | None = None, *, calls: list | None = None, text: str | None = None) -> str:
    """A `tool` mode spec calling `name` with `args`, or every `(name, args)` of `calls`."""
    spec = "tool"
    if calls is not None:
        spec += ";calls=" + _quote(orjson.dumps([[n, a] for n, a in calls]).decode(), safe="")
    else:
        spec += f";name={_quote(name or '', safe='')};args=" + _quote(orjson.dumps(args or {}).decode(), safe="")
    if text:
        spec += ";text=" + _quote(text, safe="")
    return spec


class _CallsAnswer(_Answer):
    """An answer with several tool calls (OpenAI parallel tool calls)."""

    def __init__(self, text: str | None, calls: list[tuple[str, str]], model: str) -> None:
        super().__init__(text, calls[0] if calls else None, model)
        self.calls = [(n, a, "call_" + _rand(24)) for n, a in calls]

    def content_chunks(self) -> list[dict]:
        out = [self.chunk({"role": "assistant", "content": piece}) for piece in _pieces(self.text or "")]
        for i, (name, args, call_id) in enumerate(self.calls):
            out.append(self.chunk({"role": "assistant", "content": None, "tool_calls": [
                {"index": i, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}))
            for j in range(0, len(args), 8):
                out.append(self.chunk({"role": "assistant", "content": None, "tool_calls": [
                    {"index": i, "function": {"arguments": args[j: j + 8]}}]}))
        return out

    def completion(self, request_bytes: int) -> dict:
        out = super().completion(request_bytes)
        out["choices"][0]["message"]["tool_calls"] = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
            for name, args, call_id in self.calls
        ]
        return out


_answer_for_without_tool_modes = answer_for


def answer_for(body: Any, mode: Mode) -> _Answer:  # noqa: F811 - extends the rules above
    if mode.name != "tool":
        return _answer_for_without_tool_modes(body, mode)
    model = body.get("model") if isinstance(body, dict) and isinstance(body.get("model"), str) else "fake/model"
    if "calls" in mode.params:
        pairs = orjson.loads(mode.params["calls"])
    else:
        pairs = [[mode.params.get("name", "noop"), orjson.loads(mode.params.get("args") or "{}")]]
    calls = [(str(n), orjson.dumps(a).decode()) for n, a in pairs]
    return _CallsAnswer(mode.params.get("text"), calls, model)


__all__ += ["tool_mode"]


# ---------------------------------------------------------------------------------------------
# Fault modes for RELIABILITY §1/§2 (issue 7, reliability engineer). Added here, apart from the
# rest, so that the modes above are untouched:
#
#   clean_eof;after=N      N content chunks, then the body ends cleanly (chunked terminator or
#                          FIN with framing=close): no finish_reason, no usage, no [DONE]
#   fake.model_modes = {"test/big": "503"}
#                          per-model default modes: a request for a listed model that names
#                          no mode in `x-fake-mode` gets this one instead of the script
#                          (assign a new dict; the script still serves the other models)
# ---------------------------------------------------------------------------------------------

MODES = MODES | {"clean_eof"}

_serve_without_model_modes = FakeOpenRouter._serve
_respond_without_clean_eof = FakeOpenRouter._respond


async def _serve_with_model_modes(self: FakeOpenRouter, conn: _Conn, method: str, target: str, headers: dict[str, str], body: bytes) -> bool:
    modes = getattr(self, "model_modes", None)
    if modes and method == "POST" and "x-fake-mode" not in headers:
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        model = parsed.get("model") if isinstance(parsed, dict) else None
        if isinstance(model, str) and model in modes:
            headers = {**headers, "x-fake-mode": modes[model]}
    return await _serve_without_model_modes(self, conn, method, target, headers, body)


async def _respond_with_clean_eof(self: FakeOpenRouter, conn: _Conn, rec: RequestRecord, mode: Mode, keep_alive: bool) -> bool:
    if mode.name != "clean_eof":
        return await _respond_without_clean_eof(self, conn, rec, mode, keep_alive)
    out = _Body(conn, rec, keep_alive, chunked=mode.params.get("framing", "chunked") != "close")
    answer = answer_for(rec.json, Mode("ok", {}, "ok"))
    await out.sse_head()
    await out.part(b": OPENROUTER PROCESSING\n\n")
    await out.event(answer.role_chunk())
    for chunk in answer.content_chunks()[: mode.int("after", 3)]:
        await out.event(chunk)
    return await out.finish()


FakeOpenRouter._serve = _serve_with_model_modes  # type: ignore[method-assign]
FakeOpenRouter._respond = _respond_with_clean_eof  # type: ignore[method-assign]
