"""Anthropic's server tools `web_search` and `web_fetch`, answered the way Anthropic answers them.

The search itself is a pluggable backend named in the YAML: a registered step name or a
`package.module:function`, called with `query`, `max_results` and the YAML `options`
(and the run context if it asks for one), returning a list of
`{url, title, content, page_age?}`. The default backend asks OpenRouter with its web plugin
(`plugins: [{id: "web"}]`) and reads the `url_citation` annotations of the answer.

`encrypted_content` and `encrypted_index` are our own encoding (base64url JSON with a
version prefix), not encryption: they only have to come back unchanged, and when a client
sends the history back, `decode_result` turns them into text for the upstream again.
"""

from __future__ import annotations

import base64
import inspect
from typing import Any

import orjson

from engine.registry import resolve, step
from engine.run import RunContext

PREFIX = "eng1."
CITED_TEXT_CHARS = 150


def encode(obj: Any) -> str:
    return PREFIX + base64.urlsafe_b64encode(orjson.dumps(obj)).decode().rstrip("=")


def decode(value: Any) -> Any:
    if not isinstance(value, str) or not value.startswith(PREFIX):
        return None
    data = value[len(PREFIX) :]
    try:
        return orjson.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None


def search_result_blocks(results: list[dict]) -> list[dict]:
    """Backend results → Anthropic `web_search_result` items."""
    out = []
    for r in results:
        url = r.get("url")
        if not isinstance(url, str) or not url:
            continue
        title = r.get("title") or url
        out.append({
            "type": "web_search_result",
            "url": url,
            "title": str(title),
            "encrypted_content": encode({"u": url, "t": str(title), "c": str(r.get("content") or "")[:4000]}),
            "page_age": r.get("page_age"),
        })
    return out


def citations_for(items: list[dict], limit: int = 3) -> list[dict]:
    """`web_search_result_location` citations for the first results (text of the answer)."""
    out = []
    for i, item in enumerate(items[:limit]):
        decoded = decode(item.get("encrypted_content")) or {}
        cited = " ".join(str(decoded.get("c") or item.get("title") or "").split())[:CITED_TEXT_CHARS]
        out.append({
            "type": "web_search_result_location",
            "url": item["url"],
            "title": item.get("title"),
            "encrypted_index": encode({"i": i, "u": item["url"]}),
            "cited_text": cited or item["url"],
        })
    return out


def results_text(items: list[dict]) -> str:
    """What the upstream model reads for a search: numbered results with their snippets."""
    if not items:
        return "No results."
    lines = []
    for i, item in enumerate(items, 1):
        decoded = decode(item.get("encrypted_content")) or {}
        lines.append(f"[{i}] {item.get('title')}\n{item.get('url')}\n{decoded.get('c') or ''}".rstrip())
    return "\n\n".join(lines)


def decode_result(block: dict) -> tuple[str, bool]:
    """A server tool result block from a client's history → (text for the upstream, is_error)."""
    kind = block.get("type")
    content = block.get("content")
    if kind == "web_search_tool_result":
        if isinstance(content, dict):
            return f"Error: {content.get('error_code') or 'unavailable'}", True
        return results_text([c for c in content or () if isinstance(c, dict)]), False
    if kind == "web_fetch_tool_result":
        if not isinstance(content, dict) or content.get("type") != "web_fetch_result":
            code = content.get("error_code") if isinstance(content, dict) else None
            return f"Error: {code or 'unavailable'}", True
        doc = content.get("content") or {}
        source = doc.get("source") or {}
        return f"{content.get('url')}\n\n{source.get('data') or ''}", False
    if isinstance(content, dict):
        stdout = content.get("stdout") or ""
        stderr = content.get("stderr") or ""
        failed = bool(content.get("return_code")) or "error" in str(content.get("type"))
        text = stderr if failed and stderr else stdout
        return text or (content.get("error_code") or ""), failed
    if isinstance(content, str):
        return content, False
    return "", False


async def call_backend(name: str, ctx: RunContext, **kwargs: Any) -> Any:
    """Call a backend named in YAML (registered step or module:function), sync or async."""
    info = resolve(name)
    if info.wants_context:
        kwargs[info.wants_context] = ctx
    if not info.accepts_any:
        kwargs = {k: v for k, v in kwargs.items() if k in info.params or k == info.wants_context}
    out = info.fn(**kwargs)
    if inspect.isawaitable(out):
        out = await out
    return out


@step("tools.web_search_openrouter")
async def web_search_openrouter(
    query: str,
    ctx: RunContext,
    max_results: int = 5,
    base_url: str = "https://openrouter.ai/api/v1",
    api_key: str = "",
    model: str = "openai/gpt-4o-mini",
    request: Any = None,
    timeout: float = 60.0,
) -> list[dict]:
    """Web search backend: one OpenRouter chat call with the web plugin; results from its url_citation annotations."""
    key = api_key or _client_key(request)
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": f"Search the web for: {query}"}],
        "plugins": [{"id": "web", "max_results": max_results}],
        "max_tokens": 1024,
    }
    import httpx  # imported with the first search, not when pipelines load

    client = await ctx.resource("tools.web_search.client", lambda: httpx.AsyncClient(timeout=timeout, trust_env=False))
    response = await client.post(base_url.rstrip("/") + "/chat/completions", content=orjson.dumps(payload), headers=headers)
    response.raise_for_status()
    body = response.json()
    message = ((body.get("choices") or [{}])[0] or {}).get("message") or {}
    out: list[dict] = []
    for ann in message.get("annotations") or ():
        cit = ann.get("url_citation") if isinstance(ann, dict) else None
        if isinstance(cit, dict) and cit.get("url") and all(o["url"] != cit["url"] for o in out):
            out.append({"url": cit["url"], "title": cit.get("title") or cit["url"], "content": cit.get("content") or ""})
    return out[:max_results]


def _client_key(request: Any) -> str:
    headers = getattr(request, "headers", None) or {}
    key = (headers.get("x-api-key") or "").strip()
    if key:
        return key
    scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
