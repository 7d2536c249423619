"""The step registry: dotted names for step functions, and what their signatures allow.

Steps in the project's `steps/` package register themselves with `@step("name")` when the
package is imported; the engine imports every package listed under the `engine.steps` entry
point group (see pyproject.toml), so it never imports the domain by name; the core steps
(engine/builtins.py, plain functions below this module) are registered when this module is
imported. A pipeline may also
name any function as `package.module:function`; those are imported on first use, but only
from module prefixes the deployment allows (`ENGINE_ALLOW_IMPORTS`, comma-separated; empty
means anything importable), because naming a function in YAML is running code.

The signature is read once, here, and feeds everything else: `engine check` validates YAML
parameters against it, `engine steps` prints it, and the executor binds inputs by it.
"""

from __future__ import annotations

import importlib
import inspect
import os
import typing
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from engine import builtins
from engine.errors import RegistryError

_CONTEXT_TYPE_NAMES = frozenset({"RunContext"})


@dataclass(frozen=True, slots=True)
class Param:
    """One keyword parameter of a step, as a pipeline author sees it."""

    name: str
    annotation: Any
    required: bool
    default: Any = None

    def describe(self) -> str:
        ann = _type_name(self.annotation)
        return f"{self.name}: {ann}" + ("" if self.required else f" = {self.default!r}")


@dataclass(frozen=True, slots=True)
class StepInfo:
    """A registered step: the function and what the engine needs to know to run it."""

    name: str
    fn: Callable[..., Any]
    params: dict[str, Param]
    wants_context: str | None
    is_async: bool
    blocking: bool
    side_effects: bool
    streams: bool
    accepts_any: bool
    doc: str = field(default="")
    sends: tuple[str, ...] | None = None  # the inputs that leave the process (what replay compares); None: all
    wants_facts: str | None = None  # the parameter the engine passes the step's Facts in
    facts: tuple[str, ...] = ()  # the keys it writes there (empty: any, e.g. a sub-run's)

    @property
    def summary(self) -> str:
        """The first docstring line: what `engine steps` prints for this step."""
        return self.doc.strip().splitlines()[0] if self.doc.strip() else "(no description)"


_registry: dict[str, StepInfo] = {}
_loaded_entry_points = False


def step(
    name: str, *, blocking: bool | None = None, side_effects: bool = False, sends: tuple[str, ...] | None = None,
    facts: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a function as the step `name`.

    Use on plain functions in a step package::

        @step("text.upper")
        def upper(text: str) -> str:
            '''Upper-case a text.'''
            return text.upper()

    A sync function runs in a worker thread unless `blocking=False` says it never blocks
    (pure, fast conversions), in which case it runs inline on the event loop: a thread hop
    costs more than such a step. `side_effects=True` marks a step whose repetition is not
    harmless; the engine then refuses to retry it unless the YAML says `idempotent: true`.
    `sends` names the inputs a step that talks to the outside world puts on the wire (the
    request body, the URL): `engine replay` compares those, not the step's settings; `()` says
    it sends nothing (a recorded step that only reads state that changes while serving).
    `facts` names the keys a step writes into its `Facts` parameter (`${{ facts.STEP.KEY }}`).
    The function itself is returned unchanged, so it stays testable without the engine.
    """

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = describe(name, fn, blocking=blocking, side_effects=side_effects, sends=sends, facts=facts)
        existing = _registry.get(name)
        if existing is not None and existing.fn is not fn:
            where = f"{existing.fn.__module__}.{existing.fn.__qualname__}"
            raise RegistryError(f"step '{name}' is already registered by {where}")
        _registry[name] = info
        return fn

    return register


def describe(
    name: str, fn: Callable[..., Any], *, blocking: bool | None = None, side_effects: bool = False, sends: tuple[str, ...] | None = None,
    facts: tuple[str, ...] = (),
) -> StepInfo:
    """Read a function's signature into a `StepInfo` (also used for `module:function` steps)."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)  # Annotated validators check YAML values too
    except Exception:  # unresolvable annotations: fall back to the raw ones
        hints = {}
    sig = inspect.signature(fn)
    params: dict[str, Param] = {}
    wants_context: str | None = None
    wants_facts: str | None = None
    accepts_any = False
    for p in sig.parameters.values():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            accepts_any = True
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            raise RegistryError(
                f"step '{name}': parameter '{p.name}' must be passable by keyword; "
                "steps are called with keyword inputs only"
            )
        ann = hints.get(p.name, p.annotation)
        if _is_context(ann) or (ann is inspect.Parameter.empty and p.name == "ctx"):
            wants_context = p.name
            continue
        if _is_facts(ann):
            wants_facts = p.name
            continue
        required = p.default is inspect.Parameter.empty
        params[p.name] = Param(p.name, ann, required, None if required else p.default)
    unknown = [s for s in sends or () if s not in params]
    if unknown:
        raise RegistryError(f"step '{name}': sends names {', '.join(unknown)}, which it has no parameter for")
    is_async = inspect.iscoroutinefunction(fn)
    is_gen = inspect.isasyncgenfunction(fn)
    ret = hints.get("return", sig.return_annotation)
    streams = is_gen or _is_async_iterator(ret)
    return StepInfo(
        name=name,
        fn=fn,
        params=params,
        wants_context=wants_context,
        is_async=is_async,
        blocking=(not is_async and not is_gen) if blocking is None else blocking,
        side_effects=side_effects,
        streams=streams,
        accepts_any=accepts_any,
        doc=inspect.getdoc(fn) or "",
        sends=None if sends is None else tuple(sends),
        wants_facts=wants_facts,
        facts=tuple(facts),
    )


def _is_context(ann: Any) -> bool:
    return getattr(ann, "__name__", None) in _CONTEXT_TYPE_NAMES or (
        isinstance(ann, str) and ann in _CONTEXT_TYPE_NAMES
    )


def _is_facts(ann: Any) -> bool:
    """`Facts`, or `Facts | None` (a step that also runs without the engine)."""
    from engine.types import Facts

    if isinstance(ann, str):
        return ann.replace(" ", "") in {"Facts", "Facts|None", "Optional[Facts]"}
    return ann is Facts or set(typing.get_args(ann)) == {Facts, type(None)}


def _is_async_iterator(ann: Any) -> bool:
    origin = typing.get_origin(ann) or ann
    return isinstance(origin, type) and issubclass(origin, AsyncIterator)


def _type_name(ann: Any) -> str:
    if typing.get_origin(ann) is typing.Annotated:
        ann = typing.get_args(ann)[0]
    if ann is inspect.Parameter.empty:
        return "any"
    if isinstance(ann, type) and not typing.get_args(ann):
        return ann.__name__
    return str(ann).replace("typing.", "").replace("collections.abc.", "")


def load_step_packages() -> None:
    """Import every package registered under the `engine.steps` entry point group, once."""
    global _loaded_entry_points
    if _loaded_entry_points:
        return
    _loaded_entry_points = True
    for ep in entry_points(group="engine.steps"):
        try:
            ep.load()
        except Exception as exc:  # a broken package must say which one it is
            raise RegistryError(f"step package '{ep.value}' failed to import: {exc}") from exc


def allowed_import(reference: str) -> bool:
    """Whether `module:function` references to this module are allowed by the deployment."""
    allow = [p.strip() for p in os.environ.get("ENGINE_ALLOW_IMPORTS", "").split(",") if p.strip()]
    if not allow:
        return True
    module = reference.partition(":")[0]
    return any(module == p or module.startswith(p + ".") for p in allow)


def resolve(name: str) -> StepInfo:
    """Find a step by registered name or `package.module:function` reference."""
    load_step_packages()
    info = _registry.get(name)
    if info is not None:
        return info
    if ":" not in name:
        raise RegistryError(f"unknown step '{name}'")
    if not allowed_import(name):
        raise RegistryError(
            f"'{name}' is outside the modules ENGINE_ALLOW_IMPORTS permits "
            f"({os.environ.get('ENGINE_ALLOW_IMPORTS')})"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise RegistryError(f"cannot import module '{module_name}': {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise RegistryError(f"module '{module_name}' has no function '{attr}'")
    info = describe(name, fn)
    _registry[name] = info
    return info


def catalogue() -> list[StepInfo]:
    """Every registered step, sorted by name (what `engine steps` prints)."""
    load_step_packages()
    return sorted((i for i in _registry.values() if ":" not in i.name), key=lambda i: i.name)


def names() -> list[str]:
    """Registered step names, sorted; used in 'did you mean' hints."""
    load_step_packages()
    return sorted(n for n in _registry if ":" not in n)


for _name, (_fn, _options) in builtins.CORE_STEPS.items():
    step(_name, **_options)(_fn)


_serving_notes: list[Callable[[], str]] = []


def serving_note(fn: Callable[[], str]) -> Callable[[], str]:
    """Register a function whose line `engine serve` prints at start-up (e.g. the upstream in use)."""
    _serving_notes.append(fn)
    return fn


def serving_notes() -> list[str]:
    load_step_packages()
    return [fn() for fn in _serving_notes]


_startup_checks: list[Callable[[], str | None]] = []


def startup_check(fn: Callable[[], str | None]) -> Callable[[], str | None]:
    """Register a check of the configuration `engine serve` runs before binding: it returns why
    the gateway cannot work as configured (one line), or None. `engine doctor` reports it too."""
    _startup_checks.append(fn)
    return fn


def startup_refusals() -> list[str]:
    load_step_packages()
    return [reason for fn in _startup_checks if (reason := fn())]


_configuration_files: dict[str, Callable[[Path], Any] | None] = {}


def configuration_file(name: str, check: Callable[[Path], Any] | None = None) -> str:
    """Declare a file name that may sit in a pipeline directory without being a pipeline
    (a step package's configuration, e.g. the upstreams it talks to): directories skip it,
    and `engine check` validates it with `check` (which raises SpecErrors, located)."""
    _configuration_files[name] = check
    return name


def configuration_files() -> frozenset[str]:
    load_step_packages()
    return frozenset(_configuration_files)


def configuration_check(path: Path) -> Callable[[Path], Any] | None:
    """The checker of a configuration file named like `path`, if its package gave one."""
    load_step_packages()
    return _configuration_files.get(path.name)


_doctor_checks: list[Callable[[], Any]] = []


def doctor_check(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register a check `engine doctor` runs: sync or async, returning `Finding`s."""
    _doctor_checks.append(fn)
    return fn


def doctor_checks() -> list[Callable[[], Any]]:
    load_step_packages()
    return list(_doctor_checks)


@dataclass(frozen=True, slots=True)
class Finding:
    """One line of `engine doctor`: "ok", "warn" or "fail", what was found, and what to do."""

    status: str
    message: str
    fix: str = ""
