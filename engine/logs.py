"""Logging: structlog, with the run's context on every line and secrets scrubbed out.

The executor sets one context variable per step attempt holding (request id, pipeline, step,
attempt); `add_run_context` copies it into every event, so a step's own `log.info(...)` carries
them with no plumbing, in sync steps running in worker threads too (anyio copies the context
into the thread). One immutable value per scope keeps setting it to a single `ContextVar.set`,
which matters at 10 steps a request. `redact` runs last before rendering, so nothing that
looks like a key reaches a log line whichever processor added it.
"""

from __future__ import annotations

import datetime
import functools
import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

_scope: ContextVar[tuple[tuple[str, Any], ...] | None] = ContextVar("engine_log_scope", default=None)

# Names whose values are secrets, whatever the domain. Exact names, not substrings:
# `max_tokens` is not a token. A domain adds its own (`register_secret_names`).
_SECRET_NAMES = [
    r"(proxy-)?authorization", r"(set-)?cookie", r"([\w-]*[-_])?api[-_]?key", r"apikey",
    r"(access|auth|refresh|id|bearer)[-_]?token", r"token", r"(client[-_])?secret", r"passw(or)?d", r"credentials?",
]
# Values that are secrets wherever they appear: bearer credentials and JSON Web Tokens. A domain
# adds the shapes of its keys (`register_secret_values`). Each shape comes with a literal that
# any match contains: most strings (ids, names, timestamps) hold none of them and skip the
# regex, which every field of every log line would otherwise pay.
_SECRET_SHAPES = [r"(?<=Bearer )[A-Za-z0-9._\-~+/]{6,}=*", r"eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-]*"]
_SECRET_MARKERS = ["Bearer ", "eyJ"]
_secret_env: list[str] = ["ENGINE_API_KEYS"]


def _names_pattern() -> re.Pattern[str]:
    return re.compile("|".join(f"^(?:{p})$" for p in _SECRET_NAMES), re.I)


def _values_pattern() -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{p})" for p in _SECRET_SHAPES))


SECRET_KEYS = _names_pattern()
SECRET_VALUES = _values_pattern()
_extra_secrets: set[str] = set()


def register_secret_names(*patterns: str) -> None:
    """Treat fields and headers whose whole name matches one of these regexes as secrets."""
    global SECRET_KEYS
    re.compile("|".join(patterns))  # a bad pattern fails here, at its registration
    _SECRET_NAMES.extend(p for p in patterns if p not in _SECRET_NAMES)
    SECRET_KEYS = _names_pattern()
    _secret_key.cache_clear()
    _any_secret_name.cache_clear()


def register_secret_values(pattern: str, marker: str) -> None:
    """Scrub every text matching `pattern` (the shape of a key, say) from logs.

    `marker` is a literal every match contains (`"key-"` for `key-[A-Za-z0-9]{6,}`): a text
    without any marker is passed over without running the regex."""
    global SECRET_VALUES
    if not marker:
        raise ValueError(f"secret pattern {pattern!r} needs a marker: a literal every match contains")
    re.compile(pattern)  # a bad pattern fails here, at its registration
    if pattern not in _SECRET_SHAPES:
        _SECRET_SHAPES.append(pattern)
    if marker not in _SECRET_MARKERS:
        _SECRET_MARKERS.append(marker)
        _add_needle(marker)
    SECRET_VALUES = _values_pattern()


def register_secret_env(*names: str) -> None:
    """Scrub the values of these environment variables (comma-separated lists too) from logs.

    Read now and again by every `configure`, so a key exported later still counts."""
    for name in names:
        if name not in _secret_env:
            _secret_env.append(name)
    _register_env_values(names)


def _register_env_values(names: Any) -> None:
    for name in names:
        for part in (os.environ.get(name) or "").split(","):
            register_secret(part.strip())


def is_secret_name(name: Any) -> bool:
    """Whether a field or header of this name holds a secret."""
    return isinstance(name, str) and _secret_key(name)


def bind_scope(**fields: Any) -> Any:
    """Replace the log scope for the current context; returns a token for `reset_scope`."""
    return _scope.set(tuple(fields.items()))


def reset_scope(token: Any) -> None:
    _scope.reset(token)


def current_scope() -> dict[str, Any]:
    s = _scope.get()
    return dict(s) if s else {}


def add_run_context(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Processor: add request id, pipeline, step and attempt of the current step attempt."""
    s = _scope.get()
    if s:
        for k, v in s:
            event.setdefault(k, v)
    return event


def register_secret(value: str | None) -> None:
    """Scrub this exact value from every log line (configured keys, say)."""
    if value and len(value) >= 6 and value not in _extra_secrets:
        _extra_secrets.add(value)
        _add_needle(value)


def scrub_known(text: str) -> str:
    """Replace every registered secret value in `text` (exact matches only)."""
    for s in _extra_secrets:
        if s in text:
            text = text.replace(s, "[REDACTED]")
    return text


def scrub(text: str) -> str:
    """Replace registered secrets and anything secret-looking in `text` with a marker."""
    text = scrub_known(text)
    for marker in _SECRET_MARKERS:  # see _SECRET_SHAPES: most texts hold none and skip the regex
        if marker in text:
            return SECRET_VALUES.sub("[REDACTED]", text)
    return text


_needles: list[str] = []
"""Every marker and registered secret as a JSON encoder writes it inside a string (orjson, and
the stdlib's ASCII form): if none is in a rendered line, `redact` would change no value in it."""


def _add_needle(text: str) -> None:
    for form in (orjson.dumps(text).decode()[1:-1], json.dumps(text)[1:-1]):
        if form not in _needles:
            _needles.append(form)


for _marker in _SECRET_MARKERS:
    _add_needle(_marker)


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    """Whether a field name holds a secret: the same few names come on every line."""
    return SECRET_KEYS.search(key) is not None


def _redact_value(key: str, value: Any) -> Any:
    if isinstance(key, str) and key and _secret_key(key) and value not in (None, "", 0):
        return "[REDACTED]"
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _redact_value(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value("", v) for v in value]
    return value


def redact(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Processor: mask secret-named fields and secret-looking values, tracebacks included."""
    return {k: _redact_value(k, v) for k, v in event.items()}


def _json_line(event: dict[str, Any], default: Any = None, **kw: Any) -> str:
    """orjson for the line (the stdlib encoder was a fifth of the access line's cost); the
    stdlib for what orjson refuses (integers beyond 64 bits, lone surrogates), so a log call
    never fails."""
    try:
        return orjson.dumps(event, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(event, default=default, **kw)


def _names_clean(value: Any) -> bool:
    """Whether `redact` would keep every field of `value` for its name (no secret-named field
    with a value, at any depth)."""
    if isinstance(value, dict):
        if _any_secret_name(tuple(value)):  # rare: look at the values of those fields
            if any(isinstance(k, str) and k and _secret_key(k) and v not in (None, "", 0) for k, v in value.items()):
                return False
        for v in value.values():
            if isinstance(v, (dict, list, tuple)) and not _names_clean(v):
                return False
    elif isinstance(value, (list, tuple)):
        return all(_names_clean(v) for v in value if isinstance(v, (dict, list, tuple)))
    return True


@functools.lru_cache(maxsize=1024)
def _any_secret_name(keys: tuple[Any, ...]) -> bool:
    """Whether any of these field names is a secret's: a line's fields come in a few sets."""
    return any(isinstance(k, str) and k and _secret_key(k) for k in keys)


@dataclass(frozen=True, slots=True)
class _Direct:
    """What `configure` set up for JSON lines, so `info_line` can write one without a logger."""

    processors: list[Any]
    chain: list[Any]  # a copy: `capture_logs` edits the configured list in place
    factory: Any
    wrapper: Any
    level: int
    printer: Any
    renderer: Any

    def current(self) -> bool:
        """Still structlog's configuration (a test's `capture_logs` swaps it, for instance)."""
        config = structlog.get_config()
        return config["processors"] is self.processors and self.processors == self.chain and config["logger_factory"] is self.factory and config["wrapper_class"] is self.wrapper


_direct: _Direct | None = None
_UTC = datetime.timezone.utc


def info_line(logger: Any, event: str, fields: dict[str, Any]) -> None:
    """`logger.info(event, **fields)`, the same line in a fraction of the work.

    With `configure`'s JSON set-up the line is built here: the same fields in the same order
    (`fields`, `event`, structlog's context variables, the run's scope, `level`, `timestamp`),
    rendered once; `redact` runs only when the line could hold a secret (a secret-named field,
    or a marker or registered secret in the rendered text), so the common line is one orjson
    call. The access line runs this once per request, where structlog's chain of processors
    (a context copy per line, a redact walk over every field) was a tenth of the HTTP layer's
    cost. Any other set-up, or a field structlog treats specially, goes through `logger`.
    """
    direct = _direct
    if direct is None or "exc_info" in fields or not direct.current():
        logger.info(event, **fields)
        return
    if direct.level > logging.INFO:
        return
    line = dict(fields)
    line["event"] = event
    if getattr(structlog.contextvars, "_CONTEXT_VARS", True):  # something bound structlog's context variables
        line = structlog.contextvars.merge_contextvars(None, "info", line)
    scope = _scope.get()
    if scope:
        for k, v in scope:
            line.setdefault(k, v)
    line["level"] = "info"
    line["timestamp"] = datetime.datetime.now(tz=_UTC).isoformat().replace("+00:00", "Z")
    text = direct.renderer(None, "info", line)
    if any(needle in text for needle in _needles) or not _names_clean(line):
        text = direct.renderer(None, "info", redact(None, "info", line))
    direct.printer.msg(text)


def configure(fmt: str | None = None, level: str | None = None, stream: Any = None, cache: bool = True) -> None:
    """Set up structlog: `fmt` is "json" or "console" (default: console on a terminal, else JSON).

    `cache=False` keeps loggers re-reading the configuration (tests reconfigure often).
    Tracebacks are rendered without local variables: structlog's default shows them, and a
    frame local can hold an API key.
    """
    fmt = (fmt or os.environ.get("ENGINE_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")).lower()
    level_name = (level or os.environ.get("ENGINE_LOG_LEVEL") or "info").upper()
    lvl = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    _register_env_values(_secret_env)
    renderer: Any
    if fmt == "json":
        exc = structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False))
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    else:
        exc = None
        renderer = structlog.dev.ConsoleRenderer(
            colors=sys.stderr.isatty() and "NO_COLOR" not in os.environ,
            exception_formatter=structlog.dev.plain_traceback,
        )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        add_run_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if exc is not None:
        processors.append(exc)
    processors += [redact, renderer]
    wrapper = structlog.make_filtering_bound_logger(lvl)
    factory = structlog.PrintLoggerFactory(stream or sys.stderr)
    structlog.configure(processors=processors, wrapper_class=wrapper, logger_factory=factory, cache_logger_on_first_use=cache)
    global _direct
    _direct = _Direct(processors, list(processors), factory, wrapper, lvl, factory(), renderer) if fmt == "json" else None
