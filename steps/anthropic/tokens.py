"""A fast local estimate of a request's input tokens.

OpenRouter has no count_tokens, and Claude Code fires ~25 of them at once for `/context`
(PROTOCOL §4), so the answer is computed here, in microseconds, without a tokenizer. The same
number fills `message_start.usage.input_tokens` before the upstream reports the real one, and
helps clamp `max_tokens` to the context window.

The heuristic (deliberately simple; it is an estimate, not a bill):

- prose: 1 token per 4 characters of ASCII text; non-ASCII text 1 token per 3 UTF-8 bytes (so
  CJK counts about a token per character, where chars/4 would undercount 4x);
- JSON (tool schemas, tool_use inputs, unknown blocks): 1 token per 3 bytes of compact JSON,
  because punctuation and short keys tokenise densely;
- images: a flat 1600 tokens each (Anthropic's cost of a ~1.15 megapixel image, the size it
  downscales to); PDFs: 2000 tokens per estimated page, one page per 50 kB of decoded data
  (at least one page); text documents count as their text;
- overheads: 4 tokens per message, 346 tokens when tools are present (the tool-use system
  prompt Anthropic documents), plus the tool definitions' JSON.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import orjson

from engine.registry import step
from engine.run import RunContext

IMAGE_TOKENS = 1600
PDF_PAGE_TOKENS = 2000
PDF_BYTES_PER_PAGE = 50_000
MESSAGE_OVERHEAD = 4
TOOLS_OVERHEAD = 346
UNKNOWN_SOURCE_TOKENS = PDF_PAGE_TOKENS  # a document by URL or file id: size unknown

_dumps = orjson.dumps

# Counting is done in "quarter tokens" (units) so that integer arithmetic stays exact:
# one ASCII char = 1 unit, one JSON byte = 4/3 unit, one non-ASCII UTF-8 byte = 4/3 unit.


def _text_units(s: Any) -> int:
    if type(s) is not str:
        return 0
    if s.isascii():
        return len(s)
    return len(s.encode("utf-8", "surrogatepass")) * 4 // 3


def _json_units(value: Any) -> int:
    try:
        return len(_dumps(value)) * 4 // 3
    except (TypeError, orjson.JSONEncodeError):
        return 0


def _document_units(block: dict) -> int:
    source = block.get("source")
    units = _text_units(block.get("title")) + _text_units(block.get("context"))
    if type(source) is not dict:
        return units + UNKNOWN_SOURCE_TOKENS * 4
    kind = source.get("type")
    if kind == "text":
        return units + _text_units(source.get("data"))
    if kind == "content":
        return units + _blocks_units(source.get("content"), 1)
    if kind == "base64":
        data = source.get("data")
        size = len(data) * 3 // 4 if type(data) is str else 0
        pages = max(1, size // PDF_BYTES_PER_PAGE)
        return units + pages * PDF_PAGE_TOKENS * 4
    return units + UNKNOWN_SOURCE_TOKENS * 4


def _blocks_units(content: Any, depth: int = 0) -> int:
    if type(content) is str:
        return _text_units(content)
    if type(content) is not list or depth > 4:
        return 0
    units = 0
    for b in content:
        if type(b) is not dict:
            continue
        t = b.get("type")
        if t == "text":
            units += _text_units(b.get("text"))
        elif t == "tool_result":
            units += _blocks_units(b.get("content"), depth + 1) + 40  # id and framing
        elif t == "tool_use" or t == "server_tool_use":
            units += _text_units(b.get("name")) + _json_units(b.get("input")) + 40
        elif t == "image":
            units += IMAGE_TOKENS * 4
        elif t == "thinking":
            units += _text_units(b.get("thinking"))
        elif t == "redacted_thinking":
            units += _text_units(b.get("data"))
        elif t == "document":
            units += _document_units(b)
        elif t == "search_result":
            units += _text_units(b.get("title")) + _text_units(b.get("source")) + _blocks_units(b.get("content"), depth + 1)
        elif t == "tool_reference":
            units += _text_units(b.get("tool_name")) + 20
        elif t == "mid_conv_system":
            units += _blocks_units(b.get("content"), depth + 1)
        else:
            units += _json_units(b)
    return units


def estimate_tokens(body: dict) -> int:
    """Estimated input tokens of a Messages / count_tokens body: system + messages + tools."""
    units = _blocks_units(body.get("system"))
    tokens = 0
    messages = body.get("messages")
    if type(messages) is list:
        for m in messages:
            if type(m) is dict:
                units += _blocks_units(m.get("content"))
                tokens += MESSAGE_OVERHEAD
    tools = body.get("tools")
    if type(tools) is list and tools:
        units += _json_units(tools)
        tokens += TOOLS_OVERHEAD
    tool_choice = body.get("tool_choice")
    if tool_choice is not None:
        units += _json_units(tool_choice)
    output_config = body.get("output_config")
    if type(output_config) is dict and output_config.get("format") is not None:
        units += _json_units(output_config["format"])
    return tokens + (units + 3) // 4


class Calibration:
    """Per upstream model, an EWMA of (upstream prompt_tokens / local estimate), bounded.

    The heuristic above is tokenizer-blind; every answered request tells us how far off it was
    for that model (its tokenizer, its chat template, the tool prompt it adds). The ratio is
    clamped to [MIN_RATIO, MAX_RATIO] per sample so one odd answer (a cached-prefix quirk, a
    provider that counts differently) cannot swing it, and at most MAX_MODELS models are kept
    (least recently updated dropped). In memory only: a restart relearns in a few requests.
    """

    ALPHA = 0.3
    MIN_RATIO, MAX_RATIO = 0.25, 4.0
    MAX_MODELS = 512
    MIN_ESTIMATE = 16  # tiny requests are all overhead: no signal about the text

    def __init__(self) -> None:
        self._ratios: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def learn(self, model: str, estimate: int, actual: int) -> None:
        if not model or estimate < self.MIN_ESTIMATE or actual <= 0:
            return
        sample = min(self.MAX_RATIO, max(self.MIN_RATIO, actual / estimate))
        with self._lock:
            old = self._ratios.pop(model, None)
            if old is None:
                self._ratios[model] = (sample, 1)
            else:
                ratio, n = old
                self._ratios[model] = (ratio + self.ALPHA * (sample - ratio), n + 1)
            while len(self._ratios) > self.MAX_MODELS:
                self._ratios.popitem(last=False)

    def ratio(self, model: str) -> float:
        found = self._ratios.get(model)
        return found[0] if found is not None else 1.0

    def samples(self, model: str) -> int:
        found = self._ratios.get(model)
        return found[1] if found is not None else 0

    def correct(self, model: str, estimate: int) -> int:
        """`estimate` scaled by the model's learned ratio (unchanged when nothing is learned)."""
        found = self._ratios.get(model) if model else None
        return estimate if found is None else max(1, round(estimate * found[0]))


CALIBRATION = Calibration()  # for runs without an engine (unit tests, library use)
_BY_ENGINE: weakref.WeakKeyDictionary[Any, Calibration] = weakref.WeakKeyDictionary()


def calibration(ctx: Any) -> Calibration:
    """The Calibration of the engine running `ctx` (each engine learns on its own)."""
    engine = getattr(ctx, "engine", None)
    if engine is None:
        return CALIBRATION
    found = _BY_ENGINE.get(engine)
    if found is None:
        found = _BY_ENGINE.setdefault(engine, Calibration())
    return found


def corrected(ratios: dict[str, float] | None, model: str, estimate: int) -> int:
    """`estimate` scaled by `model`'s ratio in `ratios` (an `anthropic.calibration` output)."""
    ratio = (ratios or {}).get(model) if model else None
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio <= 0:
        return estimate
    return max(1, round(estimate * ratio))


@step("anthropic.calibration", blocking=False, sends=())
def calibration_ratios(models: list[str] | str, ctx: RunContext = None) -> dict[str, float]:  # type: ignore[assignment]
    """The token-count calibration learned so far for `models`: {model: ratio}, learned ones only.

    State that changes while serving, read at one place in the graph (mark it `record: true`,
    so `engine replay` reads the ratios the captured run read, not today's); the converters and
    `anthropic.count_tokens` take this output and scale the local estimate with it.
    """
    book = calibration(ctx)
    names = [models] if isinstance(models, str) else list(models or ())
    return {m: book.ratio(m) for m in names if m and book.samples(m)}


@step("anthropic.estimate_input_tokens", blocking=False)
def estimate_input_tokens(body: dict) -> int:
    """Estimate a request's input tokens locally (chars/4 for text, JSON/3, 1600 per image).

    Used for message_start usage before the upstream reports the real count, and for clamping
    max_tokens to the context window. Microseconds, no tokenizer.
    """
    return estimate_tokens(body)


@step("anthropic.count_tokens", blocking=False)
def count_tokens(
    body: dict, model: str = "", calibration: dict[str, float] | None = None, original: dict | None = None, applied: list | None = None
) -> dict:
    """Answer /v1/messages/count_tokens locally: `{"input_tokens": n}` from the calibrated estimate.

    OpenRouter has no equivalent, and Claude Code's /context sends ~25 at once, so a fast local
    estimate beats any upstream round trip. With `model` (the upstream id) the estimate is
    scaled by what that model's real usage taught (`calibration`: the `anthropic.calibration`
    output), so /context and auto-compaction see the upstream tokenizer's count, not chars/4.
    `body` is the request as the upstream would get it (tool changes applied, context edits
    made, deferred tools left out: the body the calibration was learned on). When the request
    asked for context editing (`applied`, anthropic.context_edits' list, is not None), the
    answer also says what `original` (the request before the edits) counted, as Anthropic's
    does: `context_management.original_input_tokens`.
    """
    out: dict[str, Any] = {"input_tokens": corrected(calibration, model, estimate_tokens(body))}
    if applied is not None and original is not None:
        out["context_management"] = {"original_input_tokens": corrected(calibration, model, estimate_tokens(original))}
    return out
