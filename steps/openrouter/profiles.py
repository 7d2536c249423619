"""Model capability profiles: what each upstream model takes (PROTOCOL.md §5.2–5.4, §7.1, §9.12).

Claude Code asks for 32k–128k output tokens, sends JSON Schema 2020-12 that Gemini rejects,
marks cache breakpoints that only some providers honour, and echoes thinking blocks that only
the model family which produced them can read. Each of those needs to know the model, so one
`Profile` per upstream id answers them all. Figures come from OpenRouter's `GET {base}/models`
when it is reachable (fetched once per TTL through the upstream's pooled client) and from
`pipelines/profiles/models.yaml` otherwise; what no listing says (cache support, the
reasoning wire format, rejected schema keywords) always comes from the YAML.

Prices (USD per million tokens) come from the same two sources, the listing's `pricing` over the
YAML's `price`, and travel separately (`openrouter.prices`): a cost is accounting, not a
capability, so what goes upstream never depends on it.
"""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import orjson
import yaml
from pydantic import BaseModel, ConfigDict

from engine.capture import value_type
from engine.registry import step
from engine.run import RunContext
from engine.types import Request
from steps.providers.config import Providers, Target, single
from steps.providers.dialects import Dialect

if TYPE_CHECKING:  # httpx loads with the first listing fetch, not with `engine check`
    import httpx

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "pipelines" / "profiles" / "models.yaml"
RETRY_FAILED_FETCH = 60.0  # seconds before trying an unreachable listing again


@value_type
@dataclass(frozen=True, slots=True)
class Profile:
    """What one upstream model takes; None means unknown (nothing is clamped or dropped)."""

    model: str
    family: str
    context_length: int | None = None
    max_output: int | None = None
    supported: frozenset[str] | None = None
    vision: bool = True
    cache: bool = False
    reasoning: str = "details"  # details | content | none
    efforts: tuple[str, ...] = ("minimal", "low", "medium", "high", "xhigh", "max")
    schema_drop: frozenset[str] = frozenset()
    schema_formats: frozenset[str] | None = None

    def takes(self, param: str) -> bool:
        """Whether the model takes `param` (True when its parameter list is unknown)."""
        return self.supported is None or param in self.supported


@value_type
@dataclass(frozen=True, slots=True)
class Prices:
    """USD per million tokens of each kind; a cache price of None is billed as input."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None

    def cost(self, input: int, output: int, cache_read: int = 0, cache_write: int = 0) -> float:
        """The USD cost of a call's tokens (input excludes cache reads and writes)."""
        read = self.input if self.cache_read is None else self.cache_read
        write = self.input if self.cache_write is None else self.cache_write
        return (input * self.input + output * self.output + cache_read * read + cache_write * write) / 1e6


class _Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    match: list[str]
    price: _Price | None = None
    family: str | None = None
    context_length: int | None = None
    max_output: int | None = None
    supported: list[str] | None = None
    vision: bool | None = None
    cache: bool | None = None
    reasoning: Literal["details", "content", "none"] | None = None
    efforts: list[str] | None = None
    schema_drop: list[str] | None = None
    schema_formats: list[str] | None = None


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[_Rule]


def load_rules(path: str | Path = "") -> list[_Rule]:
    """The profile rules of a YAML file (the built-in one when `path` is empty), validated."""
    with open(path or DEFAULT_DATA, "rb") as f:
        raw = yaml.safe_load(f)
    return _Data.model_validate(raw).rules


def family_of(model: str) -> str:
    """The default signature family of an upstream id: its author (`openai/gpt-5` → openai)."""
    return model.split("/", 1)[0].lower() if "/" in model else model.lower()


class ProfileBook:
    """Profiles by model id: YAML rules, overlaid with the live listing; memoised per id."""

    def __init__(self, rules: list[_Rule]) -> None:
        self.rules = rules
        self.live: dict[str, dict] = {}
        self.fetched_at: float | None = None  # monotonic time of the last attempt
        self.fetch_ok = False
        self._memo: dict[str, Profile] = {}
        self._prices: dict[str, Prices | None] = {}
        self._lock = anyio.Lock()

    def get(self, model: str) -> Profile:
        found = self._memo.get(model)
        if found is None:
            found = self._memo[model] = self._build(model)
        return found

    def _build(self, model: str) -> Profile:
        fields: dict[str, Any] = {}
        lowered = model.lower()
        for rule in self.rules:
            if any(fnmatch.fnmatchcase(lowered, pat.lower()) for pat in rule.match):
                for key, value in rule.model_dump(exclude={"match", "price"}, exclude_none=True).items():
                    fields[key] = value
        profile = Profile(
            model=model,
            family=fields.get("family") or family_of(model),
            context_length=fields.get("context_length"),
            max_output=fields.get("max_output"),
            supported=frozenset(fields["supported"]) if "supported" in fields else None,
            vision=fields.get("vision", True),
            cache=fields.get("cache", False),
            reasoning=fields.get("reasoning", "details"),
            efforts=tuple(fields["efforts"]) if "efforts" in fields else Profile.efforts,
            schema_drop=frozenset(fields.get("schema_drop") or ()),
            schema_formats=frozenset(fields["schema_formats"]) if "schema_formats" in fields else None,
        )
        entry = self.live.get(model) or self.live.get(model.split(":", 1)[0])
        return _overlay(profile, entry) if entry else profile

    def prices(self, model: str) -> Prices | None:
        """The model's prices: the live listing's `pricing`, else the last matching YAML `price`."""
        if model not in self._prices:
            entry = self.live.get(model) or self.live.get(model.split(":", 1)[0])
            found = _listed_prices(entry) if entry else None
            if found is None:
                lowered = model.lower()
                for rule in self.rules:
                    if rule.price is not None and any(fnmatch.fnmatchcase(lowered, pat.lower()) for pat in rule.match):
                        found = Prices(**rule.price.model_dump())
            self._prices[model] = found
        return self._prices[model]

    def stale(self, ttl: float) -> bool:
        if self.fetched_at is None:
            return True
        age = time.monotonic() - self.fetched_at
        return age > (ttl if self.fetch_ok else min(ttl, RETRY_FAILED_FETCH))

    async def refresh(self, client: httpx.AsyncClient, base_url: str, key: str, ttl: float, timeout: float, log: Any) -> None:
        """Fetch the listing once per TTL; one request fetches while the others use what is known."""
        if not self.stale(ttl) or (self._lock.locked() and self.fetched_at is not None):
            return
        import httpx

        async with self._lock:
            if not self.stale(ttl):
                return
            headers = {"accept": "application/json"}
            if key:
                headers["authorization"] = f"Bearer {key}"
            try:
                with anyio.fail_after(timeout):
                    response = await client.get(base_url.rstrip("/") + "/models", headers=headers)
                    data = orjson.loads(response.content) if response.status_code == 200 else None
                entries = data.get("data") if isinstance(data, dict) else None
                if not isinstance(entries, list):
                    raise ValueError(f"HTTP {response.status_code}, no model list")
                self.live = {e["id"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)}
                self.fetch_ok = True
            except (httpx.HTTPError, TimeoutError, ValueError, orjson.JSONDecodeError) as exc:
                self.fetch_ok = False
                log.info("openrouter.models_unavailable", error=f"{type(exc).__name__}: {exc}"[:200])
            self.fetched_at = time.monotonic()
            self._memo = {}
            self._prices = {}


def _overlay(profile: Profile, entry: dict) -> Profile:
    """Live listing figures over the YAML ones (only the fields the listing actually has)."""
    changes: dict[str, Any] = {}
    ctx_len = entry.get("context_length") or entry.get("max_model_len")  # OpenRouter; vLLM
    if isinstance(ctx_len, int) and ctx_len > 0:
        changes["context_length"] = ctx_len
    top = entry.get("top_provider") if isinstance(entry.get("top_provider"), dict) else {}
    max_out = top.get("max_completion_tokens") or entry.get("max_completion_tokens")
    if isinstance(max_out, int) and max_out > 0:
        changes["max_output"] = max_out
    params = entry.get("supported_parameters")
    if isinstance(params, list) and params:
        changes["supported"] = frozenset(p for p in params if isinstance(p, str))
    arch = entry.get("architecture") if isinstance(entry.get("architecture"), dict) else {}
    modalities = arch.get("input_modalities")
    if isinstance(modalities, list):
        changes["vision"] = "image" in modalities
    return replace(profile, **changes) if changes else profile


def _per_million(value: Any) -> float | None:
    """An OpenRouter per-token price (a decimal string) in USD per million; None if absent or
    negative (OpenRouter lists -1 for routers whose price depends on the model they pick)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return round(number * 1e6, 9) if number >= 0 else None


def _listed_prices(entry: dict) -> Prices | None:
    """Prices from a listing entry's `pricing` (`prompt`, `completion`, `input_cache_read`,
    `input_cache_write`), or None when it has no usable prompt and completion price."""
    pricing = entry.get("pricing")
    if not isinstance(pricing, dict):
        return None
    prompt, completion = _per_million(pricing.get("prompt")), _per_million(pricing.get("completion"))
    if prompt is None or completion is None:
        return None
    return Prices(prompt, completion, _per_million(pricing.get("input_cache_read")), _per_million(pricing.get("input_cache_write")))


def _listing_client() -> httpx.AsyncClient:
    """For the model listing: a request an hour, so plain httpx (the per-request upstream
    path is steps/openrouter/transport.py)."""
    import httpx

    from steps.openrouter.transport import USER_AGENT

    return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0), trust_env=False, follow_redirects=False, headers={"user-agent": USER_AGENT})


def profile_book(ctx: RunContext, data: str = "", provider: str = "") -> ProfileBook:
    """The engine-wide ProfileBook for a data file and provider (each provider lists its own
    models). Made by a plain function, so sync steps (openrouter.prices) share it too."""
    return ctx.resource_now(f"openrouter.profiles:{data or DEFAULT_DATA}:{provider}", lambda: ProfileBook(load_rules(data)))


def for_dialect(profile: Profile, dialect: Dialect) -> Profile:
    """A profile as the provider's server takes it: how reasoning goes back, whether part-level
    cache_control may be sent (only OpenRouter passes it on to the models that honour it)."""
    if dialect.name == "openrouter":
        return profile
    return replace(profile, reasoning=dialect.reasoning_back, cache=profile.cache and dialect.cache_control)


@step("openrouter.profiles", sends=("providers", "base_url"))
async def profiles(
    models: list[str],
    ctx: RunContext,
    request: Request | None = None,
    providers: Providers | None = None,
    candidates: list[dict] | None = None,
    base_url: str = "",
    api_key: str = "",
    data: str = "",
    ttl: float = 3600.0,
    fetch: bool = True,
    fetch_timeout: float = 5.0,
) -> dict[str, Profile]:
    """Capability profiles (context, max output, parameters, vision, cache, schema rules) per model.

    With `providers` and the route's `candidates`, each model's profile comes from its own
    provider: that provider's `GET {base_url}/models` when `fetch`, its `fetch_models` and
    reachable (once per `ttl` seconds, with an httpx client of its own; a failed fetch is
    retried after a minute and never fails the request), overlaid on the YAML rules in `data`
    (default `pipelines/profiles/models.yaml`), which also say what no listing does, then
    adjusted to the provider's dialect. Without them, `base_url`/`api_key` is the one upstream.
    Keyed by the model id the payload carries (the first candidate wins a shared id).
    """
    from steps.openrouter.upstream import _client_key

    if providers is None:
        providers = single(base_url, api_key) if base_url else None
        candidates = None
    if providers is None:
        book = profile_book(ctx, data)
        return {m: book.get(m) for m in models}
    targets = [Target(c["provider"], c["model"], c.get("ref") or c["model"]) for c in candidates or () if c.get("provider") in providers.providers]
    if not targets:
        targets = [providers.resolve(m) for m in models]
    out: dict[str, Profile] = {}
    client_key = _client_key(request)
    for target in targets:
        if target.model in out:
            continue
        provider = providers.get(target.provider)
        book = profile_book(ctx, data, provider.name)
        if fetch and provider.fetch_models:
            client = await ctx.resource("openrouter.models_client", _listing_client)
            await book.refresh(client, provider.base_url, provider.key_for(client_key), ttl, fetch_timeout, ctx.log)
        out[target.model] = for_dialect(book.get(target.model), provider.speaks)
    for m in models:  # ids no candidate named (a caller's own list)
        if m not in out:
            out[m] = profile_book(ctx, data, providers.default).get(m)
    return out



@step("openrouter.prices", sends=(), blocking=False)
def prices(
    models: list[str], ctx: RunContext, profiles: dict[str, Profile] | None = None, data: str = "", candidates: list[dict[str, Any]] | None = None
) -> dict[str, Prices]:
    """USD per million input, output, cache-read and cache-write tokens, per model (when known).

    From the model listing `openrouter.profiles` fetched (pass its output as `profiles` so this
    runs after it; `candidates`, the routed `{provider, model}` list, says whose listing), else
    from the `price` of the YAML rules in `data`. A model with no known price is left out; its
    cost is then known only when the upstream reports one. The listing changes while serving: mark
    the step `record: true` so replay reads the prices the run read.
    """
    pairs = [(c["model"], c.get("provider") or "") for c in candidates] if candidates else [(m, "") for m in models]
    found: dict[str, Prices] = {}
    for model, provider in pairs:
        price = profile_book(ctx, data, provider).prices(model)
        if price is not None and model not in found:
            found[model] = price
    return found
