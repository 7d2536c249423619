"""Anthropic Messages request → OpenAI/OpenRouter chat completions request (PROTOCOL.md §7.1, §7.2).

One pass over the history, no deep copies: tool schemas and base64 payloads are referenced,
not copied, so a 2 MB history or 300 tools cost a walk, not a rebuild. What has no OpenAI
counterpart (thinking, server-tool history, beta fields) is dropped here on purpose; later
steps restore what can be restored (reasoning round trip, schema cleaning, web search).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import orjson
import structlog

from engine.registry import step
from steps.convert.schema import clean_schema
from steps.convert.thinking import Replay, reasoning_param, thinking_requested
from steps.openrouter.profiles import Profile, family_of

ATTRIBUTION_PREFIX = "x-anthropic-billing-header:"
MAX_STOP = 4  # OpenAI and OpenRouter accept at most 4 stop strings
MAX_BREAKPOINTS = 4  # Anthropic (through OpenRouter) rejects a 5th cache_control
NO_VISION_NOTE = "[image omitted: this model does not accept images]"
# Sampling parameters dropped when a model's profile does not list them.
_SAMPLING = ("temperature", "top_p", "top_k")

_TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}
SERVER_TEXT_CHARS = 20_000  # at most this much of one server tool result is read as text

_log = structlog.get_logger("steps.convert")


@step("convert.request", blocking=False)
def convert_request(
    body: dict,
    model: str,
    stream_usage: bool = True,
    cache_control: bool = False,
    drop_attribution: bool = True,
    profiles: dict[str, Profile] | None = None,
    input_tokens: int = 0,
) -> dict:
    """Translate an Anthropic Messages request into an OpenAI chat completions request.

    `model` is the upstream id (from openrouter.model_map). `cache_control` keeps Anthropic
    cache breakpoints as OpenRouter part-level `cache_control` (only worth it for upstreams
    that honour them: Anthropic, Gemini, Qwen); otherwise they are stripped so strict
    routers don't reject them. `drop_attribution` removes Claude Code's
    `x-anthropic-billing-header:` system line, which a non-Anthropic model would read as
    prompt text and which changes every release (breaking prefix caches). `stream_usage`
    asks for the final usage chunk, which vLLM/Ollama/OpenAI only send when asked.
    Unsupported Anthropic fields (context_management, betas...) are dropped silently: a 400
    would send Claude Code into its degrade-and-retry loop. With a `profile` (from
    openrouter.profiles; `profiles[model]`) the model decides instead of `cache_control`: breakpoints kept only
    where honoured (at most 4), `max_tokens` clamped to the output cap and the context left
    after `input_tokens`, sampling params it lacks dropped, images replaced by a note when it
    has no vision, schemas cleaned of the keywords it rejects, `thinking` → `reasoning`, and
    earlier thinking blocks restored as reasoning when their signature is of its family.
    """
    profile = profiles.get(model) if profiles else None
    return _convert(body, model, profile, stream_usage, cache_control, drop_attribution, input_tokens, {})


@step("convert.requests", blocking=False)
def convert_requests(
    body: dict,
    models: list[str],
    profiles: dict[str, Profile] | None = None,
    input_tokens: int = 0,
    stream_usage: bool = True,
    drop_attribution: bool = True,
) -> list[dict]:
    """Translate an Anthropic request into one OpenAI chat request per fallback model, in order.

    For routing fallbacks (openrouter.route → openrouter.candidates, whose list the engine runs
    openrouter.call over): each candidate
    gets the payload its profile needs. Candidates sharing a conversion shape (cache, vision,
    reasoning family, schema rules) share the converted messages and tools, so a fallback of
    the same family costs a dict, not a second conversion.
    """
    profiles = profiles or {}
    memo: dict[Any, Any] = {}
    return [
        _convert(body, m, profiles.get(m), stream_usage, False, drop_attribution, input_tokens, memo)
        for m in models
    ]


def _convert(
    body: dict,
    model: str,
    profile: Profile | None,
    stream_usage: bool,
    cache_control: bool,
    drop_attribution: bool,
    input_tokens: int,
    memo: dict,
) -> dict:
    if profile is not None:
        cache_control = profile.cache
    family = profile.family if profile is not None else family_of(model)
    style = profile.reasoning if profile is not None else "details"
    vision = profile.vision if profile is not None else True
    thinking_on = thinking_requested(body)
    key = ("messages", cache_control, family, style, vision)
    messages = memo.get(key)
    if messages is None:
        conv = _Converter(cache_control, drop_attribution, vision, family, style, thinking_on)
        conv.add_system(body.get("system"))
        for message in body.get("messages") or ():
            role = message.get("role")
            if role == "user":
                conv.add_user(message.get("content"))
            elif role == "assistant":
                conv.add_assistant(message.get("content"))
            elif role == "system" or role == "developer":
                conv.add_system(message.get("content"))
        top_cache = cache_control and isinstance(body.get("cache_control"), dict)
        messages = memo[key] = conv.finish(MAX_BREAKPOINTS - 1 if top_cache else MAX_BREAKPOINTS)
    return _top_level(body, model, profile, messages, stream_usage, cache_control, input_tokens, memo)


def _top_level(
    body: dict,
    model: str,
    profile: Profile | None,
    messages: list[dict],
    stream_usage: bool,
    cache_control: bool,
    input_tokens: int,
    memo: dict,
) -> dict:
    out: dict[str, Any] = {"model": model, "messages": messages}
    max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        max_tokens = out["max_tokens"] = clamp_max_tokens(max_tokens, profile, input_tokens)
    for key in _SAMPLING:
        value = body.get(key)
        if value is not None and (profile is None or profile.takes(key)):
            out[key] = value
    stops = body.get("stop_sequences")
    if stops and (profile is None or profile.takes("stop")):
        out["stop"] = list(stops[:MAX_STOP])
    if profile is None or profile.takes("reasoning"):
        reasoning = reasoning_param(body, max_tokens, profile.efforts if profile is not None else ())
        if reasoning is not None:
            out["reasoning"] = reasoning
    if body.get("stream"):
        out["stream"] = True
        if stream_usage:
            out["stream_options"] = {"include_usage": True}

    family = profile.family if profile is not None else family_of(model)
    tools_key = ("tools", profile.schema_drop if profile else None, profile.schema_formats if profile else None, family)
    tools = memo.get(tools_key)
    if tools is None:
        tools = memo[tools_key] = _convert_tools(body.get("tools"), profile, family)
    if tools:
        out["tools"] = tools
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            if kind == "tool" and choice.get("name"):
                out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
            elif kind in _TOOL_CHOICE:
                out["tool_choice"] = _TOOL_CHOICE[kind]
            if choice.get("disable_parallel_tool_use"):
                out["parallel_tool_calls"] = False

    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id:
        # Claude Code's user_id is a JSON string with device and session ids: hash it so
        # the upstream gets a stable, opaque, short (≤ 64 chars, some gateways cap it) id.
        out["user"] = hashlib.sha256(str(user_id).encode()).hexdigest()[:32]

    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    if (
        isinstance(fmt, dict)
        and fmt.get("type") == "json_schema"
        and isinstance(fmt.get("schema"), dict)
        and (profile is None or profile.takes("response_format") or profile.takes("structured_outputs"))
    ):
        schema = fmt["schema"]
        if profile is not None:
            schema = clean_schema(schema, profile.schema_drop, profile.schema_formats, family)
        out["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema, "strict": True},
        }
    if cache_control and isinstance(body.get("cache_control"), dict):
        out["cache_control"] = body["cache_control"]
    return out


def clamp_max_tokens(requested: Any, profile: Profile | None, input_tokens: int) -> Any:
    """`max_tokens` within the model's output cap and the context left after the input (§7.1).

    Claude Code asks for 32k–128k; a model capped at 8k answers 400 to that. When the input
    estimate already fills the window, the request is left to fail upstream, where the
    context-length error is reworded for Claude Code's auto-compaction.
    """
    if profile is None or not isinstance(requested, int) or isinstance(requested, bool):
        return requested
    value = requested
    if profile.max_output:
        value = min(value, profile.max_output)
    if profile.context_length and input_tokens:
        room = profile.context_length - input_tokens
        if room >= 1024:
            value = min(value, room)
    return max(1, value)


def _convert_tools(tools: Any, profile: Profile | None = None, family: str = "") -> list[dict]:
    """Custom tools → OpenAI functions; server tools (typed, e.g. web_search_20250305) skipped.
    Schemas are fitted to the provider (steps/convert/schema.py): its profile's dropped keywords
    and formats, and its family's rules."""
    if not tools:
        return []
    out = []
    skipped: list[str] = []
    for tool in tools:
        kind = tool.get("type")
        if kind is not None and kind != "custom":
            skipped.append(str(kind)[:64])  # server tools the gateway does not run: nothing upstream runs them
            continue
        name = tool.get("name")
        if not name:
            continue
        fn: dict[str, Any] = {"name": name}
        description = tool.get("description")
        if description:
            fn["description"] = description
        # The schema object is shared with the request body, not copied: nothing here
        # mutates it, and a copy of 300 schemas would cost more than the whole conversion.
        schema = tool.get("input_schema") or {"type": "object", "properties": {}}
        if profile is not None:
            schema = clean_schema(schema, profile.schema_drop, profile.schema_formats, family)
        elif family:
            schema = clean_schema(schema, frozenset(), None, family)
        fn["parameters"] = schema
        out.append({"type": "function", "function": fn})
    if skipped:
        _log.debug("convert.dropped_tools", types=sorted(set(skipped))[:20])
    return out


class _Converter:
    """Accumulates the OpenAI message list; system text collected separately, placed first."""

    __slots__ = (
        "cache", "drop_attr", "system", "messages", "tool_order", "vision", "family", "style",
        "thinking_on", "cached", "dropped",
    )  # fmt: skip

    def __init__(
        self,
        cache: bool,
        drop_attr: bool,
        vision: bool = True,
        family: str = "",
        style: str = "details",
        thinking_on: bool = False,
    ) -> None:
        self.cache = cache
        self.drop_attr = drop_attr
        self.vision = vision
        self.family = family  # reasoning signatures of this family are restored
        self.style = style
        self.thinking_on = thinking_on
        self.cached: list[dict] = []  # parts carrying cache_control, in request order
        self.system: list[dict] = []  # text parts, cache_control kept only when self.cache
        self.messages: list[dict] = []
        # Ids of the last assistant turn's tool calls → position, to order tool messages.
        self.tool_order: dict[str, int] = {}
        self.dropped: set[str] = set()  # block types with nothing for this upstream, logged

    # -- system -------------------------------------------------------------------------

    def add_system(self, content: Any) -> None:
        """System prompt, `role: system` messages (Claude Code's environment) and
        `mid_conv_system` blocks all merge into the one leading system message: several
        providers reject a system message after the first turn, and dropping them would
        lose the cwd and environment (PROTOCOL.md §7.1)."""
        if not content:
            return
        if isinstance(content, str):
            self._system_text(content, None)
            return
        for block in content:
            if isinstance(block, str):
                self._system_text(block, None)
            elif block.get("type") == "text":
                self._system_text(block.get("text") or "", block.get("cache_control"))
            elif block.get("type") == "mid_conv_system":
                self.add_system(block.get("content"))

    def _system_text(self, text: str, cache: Any) -> None:
        if not text or text.isspace():
            return
        if self.drop_attr and text.startswith(ATTRIBUTION_PREFIX):
            return
        part: dict[str, Any] = {"type": "text", "text": text}
        if self.cache and cache:
            part["cache_control"] = cache
            self.cached.append(part)
        self.system.append(part)

    # -- user -----------------------------------------------------------------------------

    def add_user(self, content: Any) -> None:
        """Tool results become `tool` messages (in the order of the calls they answer, ids
        kept exactly), then everything else becomes one user message; media found inside
        tool results follows in that user message, since OpenAI tool messages are text."""
        if isinstance(content, str):
            if content and not content.isspace():
                self.messages.append({"role": "user", "content": content})
            return
        if not content:
            return
        parts: list[dict] = []
        tool_msgs: list[tuple[int, int, dict]] = []
        media: list[dict] = []
        order = self.tool_order
        for block in content:
            kind = block.get("type")
            if kind == "tool_result":
                msg = self._tool_message(block, media)
                pos = order.get(msg["tool_call_id"], len(order))
                tool_msgs.append((pos, len(tool_msgs), msg))
            elif kind == "mid_conv_system":
                self.add_system(block.get("content"))
            else:
                self._user_part(block, parts)
        if tool_msgs:
            if len(tool_msgs) > 1:
                tool_msgs.sort(key=_first_two)
            self.messages.extend(m for _, _, m in tool_msgs)
        if media:
            parts[:0] = media
        if parts:
            self.messages.append({"role": "user", "content": self._compact(parts)})

    def _user_part(self, block: dict, parts: list[dict]) -> None:
        kind = block.get("type")
        if kind == "text":
            self._text_part(block.get("text"), block.get("cache_control"), parts)
        elif kind == "image":
            part = _image_part(block) if self.vision else {"type": "text", "text": NO_VISION_NOTE}
            if part is not None:
                parts.append(part)
        elif kind == "document":
            part = _document_part(block)
            if part is not None:
                if part["type"] == "text":
                    self._text_part(part["text"], block.get("cache_control"), parts)
                else:
                    parts.append(part)
        elif kind == "search_result":
            self._text_part(_search_result_text(block), block.get("cache_control"), parts)
        elif kind == "tool_reference":
            self._text_part(_tool_reference_text(block), None, parts)
        elif kind == "server_tool_use" or (isinstance(kind, str) and kind.endswith("_tool_result")):
            self._text_part(_server_block_text(block), None, parts)
        else:
            self.dropped.add(str(kind)[:64])  # thinking in a user turn, container_upload, ...

    def _text_part(self, text: Any, cache: Any, parts: list[dict]) -> None:
        if not text or not isinstance(text, str) or text.isspace():
            return
        part: dict[str, Any] = {"type": "text", "text": text}
        if self.cache and cache:
            part["cache_control"] = cache
            self.cached.append(part)
        parts.append(part)

    def _compact(self, parts: list[dict]) -> Any:
        """A single plain text part becomes a string (what every router accepts)."""
        if len(parts) == 1:
            only = parts[0]
            if only["type"] == "text" and "cache_control" not in only:
                return only["text"]
        return parts

    def _tool_message(self, block: dict, media: list[dict]) -> dict:
        content = block.get("content")
        texts: list[str] = []
        had_media = False
        if isinstance(content, str):
            if content:
                texts.append(content)
        elif content:
            for item in content:
                kind = item.get("type")
                if kind == "text":
                    text = item.get("text")
                    if text:
                        texts.append(text)
                elif kind == "tool_reference":
                    texts.append(_tool_reference_text(item))
                elif kind == "search_result":
                    texts.append(_search_result_text(item))
                elif kind == "image":
                    if not self.vision:
                        texts.append(NO_VISION_NOTE)
                        continue
                    part = _image_part(item)
                    if part is not None:
                        if part["type"] == "text":
                            texts.append(part["text"])
                        else:
                            media.append(part)
                            had_media = True
                elif kind == "document":
                    part = _document_part(item)
                    if part is not None:
                        if part["type"] == "text":
                            texts.append(part["text"])
                        else:
                            media.append(part)
                            had_media = True
        text = "\n".join(texts)
        if not text and had_media:
            # Tell the model where the result went: OpenAI tool messages carry text only.
            text = "(the tool returned media; it follows in the next user message)"
        if block.get("is_error"):
            text = "Error: " + text if text else "Error"
        tool_content: Any = text
        cache = block.get("cache_control")
        if self.cache and cache and text:
            part = {"type": "text", "text": text, "cache_control": cache}
            self.cached.append(part)
            tool_content = [part]
        return {"role": "tool", "tool_call_id": block.get("tool_use_id") or "", "content": tool_content}

    # -- assistant ------------------------------------------------------------------------

    def add_assistant(self, content: Any) -> None:
        """Text and tool_use of one turn become one assistant message (content null when
        there is no text); a turn left with neither (thinking only, server tools only) is
        dropped, since OpenAI rejects an assistant message with nothing in it."""
        self.tool_order = {}
        if isinstance(content, str):
            if content and not content.isspace():
                self.messages.append({"role": "assistant", "content": content})
            return
        if not content:
            return
        texts: list[dict] = []
        calls: list[dict] = []
        replay = Replay(self.family, self.style)
        for block in content:
            kind = block.get("type")
            if kind == "text":
                self._text_part(block.get("text"), block.get("cache_control"), texts)
            elif kind == "tool_use":
                tool_input = block.get("input")
                calls.append(
                    {
                        "id": block.get("id") or "",
                        "type": "function",
                        "function": {
                            "name": block.get("name") or "",
                            "arguments": orjson.dumps(tool_input if tool_input is not None else {}).decode(),
                        },
                    }
                )
            elif kind == "thinking" or kind == "redacted_thinking":
                replay.add(block)  # restored below when its signature is of the target family
            elif kind == "server_tool_use" or (isinstance(kind, str) and kind.endswith("_tool_result") and kind != "tool_result"):
                # Server tools the API ran (search, code execution, advisor, ...): what was asked
                # and found is part of the conversation, so the model reads it as text.
                self._text_part(_server_block_text(block), None, texts)
            else:
                self.dropped.add(str(kind)[:64])
        if not texts and not calls:
            return
        msg: dict[str, Any] = {"role": "assistant"}
        if not texts:
            msg["content"] = None
        elif any("cache_control" in p for p in texts):
            msg["content"] = texts
        else:
            msg["content"] = texts[0]["text"] if len(texts) == 1 else "\n\n".join(p["text"] for p in texts)
        if calls:
            msg["tool_calls"] = calls
            self.tool_order = {c["id"]: i for i, c in enumerate(calls)}
        replay.apply(msg, self.thinking_on)
        self.messages.append(msg)

    # -- result ---------------------------------------------------------------------------

    def finish(self, max_breakpoints: int = MAX_BREAKPOINTS) -> list[dict]:
        """The message list, system first; only the last `max_breakpoints` cache marks kept
        (the longest cached prefixes: a hit there covers the earlier ones)."""
        if self.dropped:
            _log.debug("convert.dropped_blocks", types=sorted(self.dropped)[:20])
        if len(self.cached) > max_breakpoints:
            for part in self.cached[: len(self.cached) - max(0, max_breakpoints)]:
                del part["cache_control"]
        if not self.system:
            return self.messages
        if any("cache_control" in p for p in self.system):
            system: Any = self.system
        else:
            system = "\n\n".join(p["text"] for p in self.system)
        self.messages.insert(0, {"role": "system", "content": system})
        return self.messages


def _first_two(item: tuple[int, int, dict]) -> tuple[int, int]:
    return item[0], item[1]


def _image_part(block: dict) -> dict | None:
    source = block.get("source") or {}
    kind = source.get("type")
    if kind == "base64":
        url = f"data:{source.get('media_type') or 'image/png'};base64,{source.get('data') or ''}"
    elif kind == "url" and source.get("url"):
        url = source["url"]
    else:
        return _unreadable("image", source)
    return {"type": "image_url", "image_url": {"url": url}}


def _unreadable(what: str, source: Any) -> dict | None:
    """A note in place of media no upstream can read (an Anthropic Files API `file_id`, a newer
    source type), so the model knows something was there; None for a source with no type."""
    kind = source.get("type") if isinstance(source, dict) else None
    if not isinstance(kind, str):
        return None
    if kind == "file":
        return {"type": "text", "text": f"[{what} omitted: it is a file stored with Anthropic ({source.get('file_id')}), which this model cannot read]"}
    return {"type": "text", "text": f"[{what} omitted: its source type '{kind[:40]}' cannot be sent to this model]"}


def _document_part(block: dict) -> dict | None:
    """PDFs become OpenRouter `file` parts; text documents become a text part, title first."""
    source = block.get("source") or {}
    kind = source.get("type")
    title = block.get("title")
    if kind == "base64":
        media_type = source.get("media_type") or "application/pdf"
        if media_type == "text/plain":  # tolerated: base64 text is not in the spec, decode it
            try:
                text = base64.b64decode(source.get("data") or "").decode("utf-8", "replace")
            except ValueError:
                return None
            return _titled(title, text)
        return {
            "type": "file",
            "file": {"filename": "document.pdf", "file_data": f"data:{media_type};base64,{source.get('data') or ''}"},
        }
    if kind == "url" and source.get("url"):
        return {"type": "file", "file": {"filename": "document.pdf", "file_data": source["url"]}}
    if kind == "text":
        return _titled(title, source.get("data") or "")
    if kind == "content":
        inner = source.get("content")
        if isinstance(inner, str):
            return _titled(title, inner)
        texts = [b.get("text") or "" for b in inner or () if b.get("type") == "text"]
        return _titled(title, "\n".join(t for t in texts if t))
    if kind == "url":
        return None
    return _unreadable(f"document {title}" if title else "document", source)


def _titled(title: Any, text: str) -> dict | None:
    if title:
        text = f"{title}\n\n{text}" if text else str(title)
    if not text or text.isspace():
        return None
    return {"type": "text", "text": text}


def _search_result_text(block: dict) -> str:
    lines = []
    if block.get("title"):
        lines.append(str(block["title"]))
    if block.get("source"):
        lines.append(f"Source: {block['source']}")
    for item in block.get("content") or ():
        if item.get("type") == "text" and item.get("text"):
            lines.append(item["text"])
    return "\n".join(lines)


def _tool_reference_text(block: dict) -> str:
    return f"tool {block.get('tool_name') or block.get('name') or ''} is now available"


def _server_block_text(block: dict) -> str:
    """A server tool's call or result from the history as text: `(web_search {"query": ...})`,
    then `(web_search result)` and what it found (titles and URLs, output, fetched text, tool
    names, an advisor's advice, an error code). Encrypted and binary content is left out."""
    if block.get("type") == "server_tool_use":
        args = orjson.dumps(block.get("input") or {}).decode()
        return f"({block.get('name') or 'server tool'} {args[:SERVER_TEXT_CHARS]})"
    kind = str(block.get("type"))
    lines: list[str] = []
    _result_lines(block.get("content"), lines, 0)
    text = "\n".join(line for line in lines if line)[:SERVER_TEXT_CHARS]
    name = kind.removesuffix("_tool_result")
    return f"({name} result)\n{text}" if text else f"({name} result)"


_RESULT_FIELDS = ("title", "url", "text", "stdout", "stderr", "content", "error_code", "tool_name")


def _result_lines(node: Any, lines: list[str], depth: int) -> None:
    """Readable fields of a server tool result, depth first; base64 sources skipped."""
    if depth > 6:
        return
    if isinstance(node, str):
        lines.append(node)
    elif isinstance(node, list):
        for item in node[:100]:
            _result_lines(item, lines, depth + 1)
    elif isinstance(node, dict):
        source = node.get("source")
        if isinstance(source, dict):
            if source.get("type") in ("text", "content"):
                _result_lines(source.get("data") or source.get("content"), lines, depth + 1)
            return
        for key in _RESULT_FIELDS:
            value = node.get(key)
            if key == "error_code" and value:
                lines.append(f"error: {value}")
            elif value is not None:
                _result_lines(value, lines, depth + 1)
        refs = node.get("tool_references")
        if isinstance(refs, list):
            names = [r.get("tool_name") for r in refs if isinstance(r, dict) and isinstance(r.get("tool_name"), str)]
            lines.append("tools found: " + ", ".join(names) if names else "no tools found")
        code = node.get("return_code")
        if isinstance(code, int) and not isinstance(code, bool) and code:
            lines.append(f"exit code {code}")
