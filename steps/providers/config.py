"""Providers: the upstreams a gateway talks to, declared in `providers.yaml`.

    default: openrouter
    providers:
      openrouter:
        base_url: ${OPENROUTER_BASE_URL:-https://openrouter.ai/api/v1}
        api_key: ${OPENROUTER_API_KEY:-}
        forward_client_key: true        # no api_key: send the client's own key
        dialect: openrouter
        headers: {x-title: engine gateway}
      local:
        base_url: http://127.0.0.1:11434/v1
        dialect: ollama

A model reference is `NAME:MODEL` where NAME is a declared provider (`local:qwen2.5-coder:7b`
is model `qwen2.5-coder:7b` of `local`); anything else is a model of the default provider,
so OpenRouter ids (`anthropic/claude-sonnet-4.5`, `deepseek/deepseek-r1:free`) keep working.

How the file reaches the steps: it is a parameter resolved when the pipelines load. The
`providers.load` step takes `file:` (relative to the pipeline file, or absolute); the
parameter's type reads and validates the file right then, so `engine check`, `engine serve`
and `engine doctor` report its mistakes located (file:line:col) with the pipelines' own, and
a request never reads a file. The step's output is the loaded `Providers`, an edge to every
step that needs an upstream (route, profiles, call, the model listing), which `engine graph`
draws and a capture records; no step reads the file or the environment on its own.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.capture import value_type
from engine.errors import SpecError, SpecErrors
from engine.loader import Document, read_document
from engine.logs import register_secret
from engine.registry import configuration_file, step
from steps.providers.dialects import DIALECTS, Dialect

__all__ = ["PROVIDERS_FILE", "Provider", "Providers", "ProvidersFile", "Target", "load_providers"]

PROVIDERS_FILE = configuration_file("providers.yaml", check=lambda path: load_providers(path))
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class _ProviderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="the OpenAI-compatible base URL, ending before /chat/completions")
    api_key: str = Field("", description="the key sent as `Authorization: Bearer`; empty: none")
    forward_client_key: bool = Field(False, description="with no api_key, send the client's own key")
    headers: dict[str, str] = Field(default_factory=dict, description="extra request headers")
    dialect: str = Field("openai", description=f"one of: {', '.join(DIALECTS)}")
    fetch_models: bool = Field(True, description="read GET {base_url}/models for the model profiles")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip()
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"must start with http:// or https:// (got {value!r})")
        return value.rstrip("/")

    @field_validator("dialect")
    @classmethod
    def _dialect(cls, value: str) -> str:
        if value not in DIALECTS:
            close = difflib.get_close_matches(value, list(DIALECTS), n=1)
            raise ValueError(f"unknown dialect {value!r}" + (f"; did you mean {close[0]!r}?" if close else f"; dialects: {', '.join(DIALECTS)}"))
        return value


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: str
    providers: dict[str, _ProviderSpec] = Field(min_length=1)

    @field_validator("providers")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(f"provider name {name!r} may use letters, digits, '_', '.' and '-' only (no ':' or '/')")
        return value

    @model_validator(mode="after")
    def _default_declared(self) -> _Spec:
        if self.default not in self.providers:
            raise ValueError(f"default provider {self.default!r} is not declared under providers ({', '.join(self.providers)})")
        return self


@value_type  # a recorded input of the upstream call: replay rebuilds it from the capture
@dataclass(frozen=True, slots=True)
class Provider:
    """One declared upstream."""

    name: str
    base_url: str
    api_key: str = ""
    forward_client_key: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    dialect: str = "openai"
    fetch_models: bool = True

    @property
    def speaks(self) -> Dialect:
        return DIALECTS[self.dialect]

    def key_for(self, client_key: str) -> str:
        """The key to send: the provider's own, else the client's when it forwards keys."""
        return self.api_key or (client_key if self.forward_client_key else "")


@dataclass(frozen=True, slots=True)
class Target:
    """A resolved model reference: which provider, which model id it knows, and the reference."""

    provider: str
    model: str
    ref: str


@value_type
@dataclass(frozen=True, slots=True)
class Providers:
    """The declared providers and the default one; resolves model references."""

    default: str
    providers: dict[str, Provider]

    def resolve(self, ref: str) -> Target:
        """`NAME:MODEL` with a declared NAME → that provider; anything else → the default's."""
        name, sep, model = ref.partition(":")
        if sep and model and name in self.providers:
            return Target(name, model, ref)
        return Target(self.default, ref, ref)

    def get(self, name: str) -> Provider:
        return self.providers[name]

    def shown(self, target: Target) -> str:
        """How a target is named to people (logs, `x-upstream-model`): bare on the default provider."""
        return target.model if target.provider == self.default else f"{target.provider}:{target.model}"


def single(base_url: str, api_key: str = "", headers: dict[str, str] | None = None, dialect: str = "openrouter") -> Providers:
    """One provider named "default" that forwards client keys when it has none (the shape of
    a call step configured without providers.yaml)."""
    provider = Provider("default", base_url.rstrip("/"), api_key, True, dict(headers or {}), dialect)
    return Providers("default", {"default": provider})


def load_providers(path: str | Path, env: Any = None) -> Providers:
    """Read and validate a providers file; every mistake is a located SpecError (all at once)."""
    doc = read_document(path, env)
    try:
        spec = _Spec.model_validate(doc.data if doc.data is not None else {})
    except ValidationError as exc:
        raise SpecErrors([_explain(e, doc) for e in exc.errors()]) from None
    providers = {
        name: Provider(name, p.base_url, p.api_key, p.forward_client_key, dict(p.headers), p.dialect, p.fetch_models)
        for name, p in spec.providers.items()
    }
    for provider in providers.values():
        register_secret(provider.api_key)  # a key given only here is scrubbed from logs too
    return Providers(spec.default, providers)


def _explain(err: Any, doc: Document) -> SpecError:
    """One pydantic error as a located message a user can act on."""
    loc = tuple(err["loc"])
    parent = ".".join(str(x) for x in loc[:-1]) or "the file"
    text = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = list(_ProviderSpec.model_fields) if len(loc) == 3 else list(_Spec.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(known)}"
        return SpecError(f"unknown field '{loc[-1]}' in {parent}", doc.where(*loc, "<key>"), hint)
    if err["type"] == "missing":
        return SpecError(f"{parent} has no '{loc[-1]}'", doc.where(*loc[:-1]), f"add `{loc[-1]}:`")
    value = err.get("input")
    shown = f" (got {doc.shown(loc, value)})" if not isinstance(value, (dict, list)) and "got" not in text else ""
    where = doc.where(*loc) if loc else doc.where("default")  # a whole-file rule: at `default:`
    return SpecError(f"'{'.'.join(str(x) for x in loc) or 'the file'}': {text}{shown}", where)


def _from_parameter(value: Any, info: ValidationInfo) -> Providers:
    if isinstance(value, Providers):
        return value
    if not isinstance(value, str) or not value.strip():
        raise PydanticCustomError("providers_file", "name the providers file (e.g. providers.yaml, relative to this pipeline)")
    context = info.context or {}
    path = Path(value.strip()).expanduser()
    if not path.is_absolute() and context.get("file"):
        path = Path(context["file"]).resolve().parent / path
    if not path.is_file():
        raise PydanticCustomError("providers_file", "no providers file at {path}: create it (README \"Providers\") or point ENGINE_PROVIDERS / --providers at one", {"path": str(path)})
    return load_providers(path, context.get("env"))


ProvidersFile = Annotated[Providers, PlainValidator(_from_parameter)]
"""A step parameter naming a providers file; loaded and validated when the pipeline loads."""


@step("providers.load", blocking=False)
def load(file: ProvidersFile) -> Providers:
    """The declared upstreams (providers.yaml), read when the pipelines load; an edge to every upstream step."""
    return file


@step("providers.endpoint", blocking=False)
def endpoint(providers: Providers, model: str) -> dict:
    """`{base_url, api_key, model}` of a model reference: its provider's URL and key, its id there.

    For steps that call an upstream on their own (the web search backend): an empty `api_key`
    means the client's own key, as those steps forward it.
    """
    target = providers.resolve(model)
    provider = providers.get(target.provider)
    return {"base_url": provider.base_url, "api_key": provider.api_key, "model": target.model}
