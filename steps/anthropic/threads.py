"""Server-held threads (beta `message-threads-2026-08-12`), declined the way the SDKs recover.

A request with `thread: {type: "create"}` asks the server to keep the conversation under the
reply's id; `{type: "continue", previous_message_id}` then sends only the new turn. The gateway
keeps no conversation state (DESIGN "Scale": replicas share nothing), so it declines both, with
the `error.details.error_code` the SDKs act on:

- `continue` -> 404 `thread_not_found`: the SDK replays the full history under a new thread;
- `create` -> 400 `thread_unsupported_request`: a tool runner (and a thread opened with
  `unsupported_request_behavior="continue_unthreaded"`) sends the same turn again without
  `thread`, and every later turn too.

So a threaded client costs one extra request at its first turn and then runs as a plain one.
Without this, a continuation would be read as a standalone request (a bare tool_result) and
refused in a way no SDK recovers from.
"""

from __future__ import annotations

from typing import Any

from engine.registry import step
from steps.anthropic.errors import AnthropicError


@step("anthropic.threads", blocking=False)  # a dict lookup: a worker thread per request cost more than the step
def threads(body: dict[str, Any]) -> dict[str, Any]:
    """Pass a request without `thread` on; decline a threaded one with the SDKs' recovery codes."""
    thread = body.get("thread")
    if thread is None or thread is False:
        return body
    if isinstance(thread, dict) and thread.get("type") == "continue":
        raise AnthropicError(
            404,
            "not_found_error",
            "This gateway holds no thread state: replay the full conversation (without `thread`, or with a new thread).",
            details={"error_code": "thread_not_found"},
        )
    raise AnthropicError(
        400,
        "invalid_request_error",
        "This gateway does not hold threads: send the full conversation without `thread`.",
        details={"error_code": "thread_unsupported_request", "unsupported": []},
    )
