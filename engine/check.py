"""Semantic checks of loaded pipelines, and the checked plan the executor runs.

A pipeline that passes here cannot fail to start for a reason the file could have told us:
every step exists, every reference points at a step, the graph has no cycle, every parameter
the function needs is given, none it lacks is, literal parameters have the right type, every
step contributes to the output, and a step that may be skipped declares what its dependents
get instead. All problems are collected and returned together.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from engine import registry
from engine.errors import RegistryError, SpecError, SpecErrors
from engine.loader import LoadedPipeline, Ref
from engine.registry import StepInfo
from engine.spec import BreakerSpec, LimitSpec, RetrySpec
from engine.types import PipelineName

_ROUTE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS)\s+(/\S*)$")


@dataclass(slots=True, eq=False)
class Node:
    """One checked step, ready to run: its function, fixed parameters and wired inputs."""

    name: str
    info: StepInfo
    static: dict[str, Any]
    refs: list[tuple[str, Ref]]
    nested: list[tuple[str, Any]]
    deps: tuple[str, ...]
    cond: Ref | None
    else_value: Any
    retry: RetrySpec | None
    timeout: float | None
    idle_timeout: float | None
    limit: str | None
    record: bool
    dependents: list[str] = field(default_factory=list)
    vars: tuple[str, ...] = ()  # the `${{ vars.NAME }}` its YAML used (drawn by `engine graph`)
    candidates: Ref | None = None  # one attempt per item of the list it points at
    breaker: str | None = None
    # Worked out once here, read for every step of every run:
    info_inline: bool = field(init=False, default=False)  # never awaits: sync, non-blocking, no limit/retry/candidates
    direct: bool = field(init=False, default=False)  # no policy applies (timeout, limit, retry, record...): called in place
    first_scope: tuple[tuple[str, Any], ...] = field(init=False, default=())  # its log scope's tail in a first attempt
    histograms: dict[str, Any] = field(init=False, default_factory=dict)  # outcome -> its duration histogram child

    def __post_init__(self) -> None:
        info = self.info
        self.info_inline = not (info.is_async or info.blocking or info.streams) and self.limit is None and self.retry is None and self.candidates is None
        plain = self.limit is None and self.retry is None and self.candidates is None and not self.record and not info.blocking
        self.direct = plain and (self.timeout is None or not (info.is_async or info.streams))  # a sync step's timeout never fires
        self.first_scope = (("step", self.name), ("attempt", 1))


@dataclass(slots=True, eq=False)
class Plan:
    """A checked pipeline: nodes in dependency order, what it outputs, how it renders errors."""

    name: str
    file: str
    description: str
    nodes: dict[str, Node]
    order: list[str]
    roots: list[str]
    output: Any
    errors: StepInfo | None
    routes: list[tuple[str, str]]  # what is served: no route switched off, none when the pipeline is disabled
    deadline: float | None
    limits: dict[str, LimitSpec]
    graph: Dependencies
    breakers: dict[str, BreakerSpec] = field(default_factory=dict)
    enabled: bool = True
    runs_code: bool = False
    declared_routes: list[tuple[str, str]] = field(default_factory=list)  # served or switched off (`engine run`)
    retry_budget: Any = None
    sequential: bool = False  # no two steps that may await could ever run at the same time
    access: dict[str, Any] = field(default_factory=dict)  # the access line's fields: name -> reference


@dataclass
class Dependencies:
    """Which steps use which, in file order: the little of a graph library a check needs.

    Ordering goes through the standard library's `graphlib` (the same order networkx's
    topological sort gives: generations, each in file order). networkx, a third of a second to
    import, is loaded only to list the cycles of a broken pipeline."""

    nodes: list[str]
    preds: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for n in self.nodes:
            self.preds.setdefault(n, [])

    def __contains__(self, name: object) -> bool:
        return name in self.preds

    def add_edges_from(self, edges: Iterable[tuple[str, str]]) -> None:
        for a, b in edges:
            if a not in self.preds[b]:
                self.preds[b].append(a)

    def ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        todo = list(self.preds.get(name, ()))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo.extend(self.preds[n])
        seen.discard(name)  # as networkx: a step in a cycle is not its own ancestor
        return seen

    def topological_order(self) -> list[str] | None:
        """Every step after the steps it uses, or None when they form a cycle."""
        import graphlib

        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for n in self.nodes:
            sorter.add(n)
        for n in self.nodes:
            sorter.add(n, *self.preds[n])
        try:
            return list(sorter.static_order())
        except graphlib.CycleError:
            return None

    def cycles(self) -> list[list[str]]:
        if self.topological_order() is not None:
            return []
        import networkx as nx

        graph = nx.DiGraph()
        graph.add_nodes_from(self.nodes)
        graph.add_edges_from((a, b) for b in self.nodes for a in self.preds[b])
        return list(nx.simple_cycles(graph))


def iter_refs(value: Any) -> Iterator[Ref]:
    """Every reference inside a value (references may sit anywhere in lists and mappings)."""
    if isinstance(value, Ref):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from iter_refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from iter_refs(v)


_adapters: dict[Any, TypeAdapter[Any] | None] = {}


def _adapter(annotation: Any) -> TypeAdapter[Any] | None:
    if annotation is inspect.Parameter.empty or annotation is Any or isinstance(annotation, str):
        return None
    try:
        return _adapters[annotation]
    except KeyError:
        pass
    except TypeError:  # unhashable annotation
        return None
    try:
        adapter: TypeAdapter[Any] | None = TypeAdapter(annotation)
    except Exception:  # not something pydantic can validate (a Protocol, say): unchecked
        adapter = None
    _adapters[annotation] = adapter
    return adapter


def check(loaded: list[LoadedPipeline]) -> tuple[list[Plan], list[SpecError]]:
    """Check a set of pipelines together (sub-pipeline names and routes span files)."""
    errors: list[SpecError] = []
    names = {lp.spec.name: lp for lp in loaded}
    seen_names: dict[str, LoadedPipeline] = {}
    for lp in loaded:
        other = seen_names.get(lp.spec.name)
        if other is not None:
            errors.append(SpecError(f"pipeline name '{lp.spec.name}' is also used by {other.file}", lp.where("name"), "give each pipeline its own name"))
        seen_names[lp.spec.name] = lp

    limits = _shared(loaded, "limits", "limit", errors)
    breakers = _shared(loaded, "breakers", "breaker", errors)

    routes: dict[tuple[str, str], LoadedPipeline] = {}
    plans = []
    for lp in loaded:
        plan = _check_one(lp, set(names), limits, errors, set(breakers))
        for route in plan.routes:
            prior_lp = routes.get(route)
            if prior_lp is not None:
                i = next((i for i, (text, _) in enumerate(lp.spec.route_switches) if text.split() == list(route)), 0)
                errors.append(SpecError(f"route '{route[0]} {route[1]}' is also served by {prior_lp.file}", _route_where(lp, i), "each route belongs to one pipeline"))
            routes[route] = lp
        plans.append(plan)
    return plans, errors


def _shared(loaded: list[LoadedPipeline], key: str, kind: str, errors: list[SpecError]) -> dict[str, Any]:
    """The named `limits:` or `breakers:` of every file, by name: one name is one object shared
    by all runs, so files that declare it must agree (the first declaration wins)."""
    found: dict[str, tuple[Any, LoadedPipeline]] = {}
    for lp in loaded:
        for name, spec in getattr(lp.spec, key).items():
            prior = found.get(name)
            if prior is not None and prior[0] != spec:
                errors.append(SpecError(f"{kind} '{name}' is declared differently in {prior[1].file}", lp.where(key, name), f"declare a shared {kind} the same way everywhere"))
            found.setdefault(name, (spec, lp))
    return {name: spec for name, (spec, _) in found.items()}


def _check_one(lp: LoadedPipeline, pipeline_names: set[str], limits: dict[str, LimitSpec], errors: list[SpecError], breakers: set[str] | None = None) -> Plan:
    spec = lp.spec
    step_names = list(spec.steps)
    nodes: dict[str, Node] = {}
    graph = Dependencies(list(step_names))

    told: list[tuple[Ref, str]] = []  # `facts.STEP.KEY` references, checked once the steps are known

    def ref_ok(ref: Ref, user: str) -> bool:
        if ref.facts and ref.step in spec.steps:
            told.append((ref, user))
        if ref.step is None or ref.step in spec.steps:
            return True
        close = difflib.get_close_matches(ref.step, step_names, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"steps are: {', '.join(step_names)}"
        errors.append(SpecError(f"{user} uses '{ref.text}', but step '{ref.step}' does not exist", ref.location, hint))
        return False

    for name, sspec in spec.steps.items():
        where_step = f"step '{name}'"
        try:
            info = registry.resolve(sspec.uses)
        except RegistryError as exc:
            close = difflib.get_close_matches(sspec.uses, registry.names(), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "`engine steps` lists the registered steps; user code is package.module:function"
            errors.append(SpecError(f"{where_step}: {exc}", lp.where("steps", name, "uses"), hint))
            continue

        static: dict[str, Any] = {}
        refs: list[tuple[str, Ref]] = []
        nested: list[tuple[str, Any]] = []
        deps: dict[str, None] = {}
        for pname, value in sspec.with_.items():
            loc = lp.where("steps", name, "with", pname, "<key>")
            param = info.params.get(pname)
            if param is None and not info.accepts_any:
                if pname == info.wants_context:
                    errors.append(SpecError(f"{where_step}: '{pname}' is the run context, given by the engine", loc, "remove it from `with`"))
                    continue
                allowed = ", ".join(info.params) or "(none)"
                close = difflib.get_close_matches(pname, list(info.params), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"{sspec.uses} takes: {allowed}"
                errors.append(SpecError(f"{where_step}: {sspec.uses} has no parameter '{pname}'", loc, hint))
                continue
            found = list(iter_refs(value))
            if isinstance(value, Ref):
                if ref_ok(value, where_step):
                    refs.append((pname, value))
            elif found:
                if all([ref_ok(r, where_step) for r in found]):
                    nested.append((pname, value))
            else:
                static[pname] = _check_literal(value, param, lp, name, pname, pipeline_names, errors)
            for r in found:
                if r.step is not None:
                    deps[r.step] = None
        for pname, param in info.params.items():
            if param.required and pname not in sspec.with_ and sspec.candidates is None:  # else each candidate's `with` gives it
                errors.append(SpecError(f"{where_step}: {sspec.uses} needs parameter '{pname}'", lp.where("steps", name, "with") or lp.where("steps", name), f"add `{pname}:` under `with:` ({param.describe()})"))

        cond = None
        if sspec.if_ is not None:
            if isinstance(sspec.if_, Ref):
                cond = sspec.if_ if ref_ok(sspec.if_, where_step) else None
                if cond is not None and cond.step is not None:
                    deps[cond.step] = None
            else:
                errors.append(SpecError(f"{where_step}: `if` must be a reference", lp.where("steps", name, "if"), "write e.g. if: ${{ steps.parse.stream }} or ${{ !input.dry_run }}"))
        for r in iter_refs(sspec.else_):
            if ref_ok(r, f"{where_step}'s else") and r.step is not None:
                deps[r.step] = None
        if sspec.retry is not None and sspec.retry.attempts > 1 and info.side_effects and not sspec.retry.idempotent:
            errors.append(SpecError(f"{where_step}: {sspec.uses} has side effects, so retrying it may repeat them", lp.where("steps", name, "retry"), "add `idempotent: true` under `retry:` if repeating is safe, or remove `retry`"))
        if sspec.limit is not None and sspec.limit not in limits:
            errors.append(SpecError(f"{where_step}: unknown limit '{sspec.limit}'", lp.where("steps", name, "limit"), f"declare it under `limits:` (declared: {', '.join(limits) or 'none'})"))
        candidates = None
        if sspec.candidates is not None:
            if not isinstance(sspec.candidates, Ref):
                errors.append(SpecError(f"{where_step}: `candidates` must be a reference to a list", lp.where("steps", name, "candidates"), "write e.g. candidates: ${{ steps.route.candidates }}"))
            elif ref_ok(sspec.candidates, where_step):
                candidates = sspec.candidates
                if candidates.step is not None:
                    deps[candidates.step] = None
        if sspec.breaker is not None:
            if sspec.breaker not in (breakers or set()):
                errors.append(SpecError(f"{where_step}: unknown breaker '{sspec.breaker}'", lp.where("steps", name, "breaker"), f"declare it under `breakers:` (declared: {', '.join(sorted(breakers or ())) or 'none'})"))
            if sspec.candidates is None:
                errors.append(SpecError(f"{where_step}: a breaker needs `candidates`", lp.where("steps", name, "breaker"), "a breaker keys each candidate; add `candidates:` or remove `breaker`"))
        if name in deps:
            errors.append(SpecError(f"{where_step} uses its own output", lp.where("steps", name), "a step cannot depend on itself; loops are sub-pipelines run from a step"))
            deps.pop(name)
        deps_t = tuple(d for d in deps if d in spec.steps)
        graph.add_edges_from((d, name) for d in deps_t)
        nodes[name] = Node(name, info, static, refs, nested, deps_t, cond, sspec.else_, sspec.retry, sspec.timeout, sspec.idle_timeout, sspec.limit, sspec.record, candidates=candidates, breaker=sspec.breaker)
        nodes[name].vars = tuple(dict.fromkeys(v for path, v in lp.vars_used.items() if path[:2] == ("steps", name)))

    output_deps: set[str] = set()
    for r in iter_refs(spec.output):
        if ref_ok(r, "the output") and r.step is not None:
            output_deps.add(r.step)
    if not list(iter_refs(spec.output)):
        errors.append(SpecError("the output uses no step", lp.where("output"), "write output: ${{ steps.LAST }}"))
    access_deps: set[str] = set()
    for field_name, value in spec.access.items():
        found = list(iter_refs(value))
        if not found:
            errors.append(SpecError(f"access field '{field_name}' is no reference", lp.where("access", field_name), "write e.g. model: ${{ facts.call.model }}; a constant tells nothing about a request"))
        for r in found:
            if ref_ok(r, f"access field '{field_name}'") and r.step is not None:
                access_deps.add(r.step)  # read when the request ends: it needs those steps
    for r, user in told:
        node = nodes.get(r.step or "")
        if node is None:
            continue
        if node.info.wants_facts is None:
            errors.append(SpecError(f"{user} uses '{r.text}', but {node.info.name} ('{r.step}') tells no facts", r.location, f"use its output, ${{{{ steps.{r.step} }}}}"))
        elif node.info.facts and (not r.path or r.path[0] not in node.info.facts):
            close = difflib.get_close_matches(r.path[0], list(node.info.facts), n=1) if r.path else []
            hint = f"did you mean '{close[0]}'?" if close else f"{node.info.name} tells: {', '.join(node.info.facts)}"
            errors.append(SpecError(f"{user} uses '{r.text}', but {node.info.name} tells no fact '{'.'.join(r.path)}'", r.location, hint))

    cycles = graph.cycles()
    position = {n: i for i, n in enumerate(step_names)}
    for cycle in cycles[:5]:
        start = min(range(len(cycle)), key=lambda i: position[cycle[i]])
        cycle = cycle[start:] + cycle[:start]
        path = " -> ".join(cycle + [cycle[0]])
        errors.append(SpecError(f"steps form a cycle: {path}", lp.where("steps", cycle[0]), "break the cycle; repetition belongs in a sub-pipeline run from a step"))

    # Every step must contribute to the output (or be a side effect someone asked for).
    # After a broken reference or an unknown step this would only repeat the same mistake.
    ref_errors = len(nodes) < len(spec.steps) or any("does not exist" in e.message for e in errors if e.location and e.location.file == lp.file)
    needed = output_deps | access_deps
    for d in output_deps | access_deps:
        if d in graph:
            needed |= graph.ancestors(d)
    for name, node in nodes.items():
        if name not in needed and not node.info.side_effects and not ref_errors:
            errors.append(SpecError(f"step '{name}' does not contribute to the output", lp.where("steps", name, "<key>") or lp.where("steps", name), "use its result in a later step or the output, or remove it"))

    # A skipped step yields its `else`; dependents need that declared.
    for name, node in nodes.items():
        for dep in node.deps:
            sdep = spec.steps.get(dep)
            if sdep is not None and sdep.if_ is not None and "else_" not in sdep.model_fields_set:
                errors.append(SpecError(f"step '{name}' uses '{dep}', which is skipped when its `if` is false, but '{dep}' declares no `else`", lp.where("steps", dep, "if"), f"add `else:` to '{dep}' with the value dependents get instead (null is allowed)"))
    for dep in output_deps:
        sdep = spec.steps.get(dep)
        if sdep is not None and sdep.if_ is not None and "else_" not in sdep.model_fields_set:
            errors.append(SpecError(f"the output uses '{dep}', which may be skipped, but it declares no `else`", lp.where("steps", dep, "if"), f"add `else:` to '{dep}'"))

    errors_info = None
    if spec.errors is not None:
        try:
            errors_info = registry.resolve(spec.errors)
            if "error" not in errors_info.params:
                errors.append(SpecError(f"error renderer {spec.errors} has no 'error' parameter", lp.where("errors"), "its signature must be (error, ctx) -> output"))
        except RegistryError as exc:
            errors.append(SpecError(f"errors: {exc}", lp.where("errors"), "name a registered step that renders an error"))

    parsed_routes, declared_routes = [], []
    for i, (route, served) in enumerate(spec.route_switches):
        m = _ROUTE.match(route.strip())
        if not m:
            errors.append(SpecError(f"route '{route}' is not 'METHOD /path'", _route_where(lp, i), "write e.g. route: POST /v1/items"))
        else:
            declared_routes.append((m.group(1), m.group(2)))
            if served:  # a switched-off route (or pipeline) is checked, never served
                parsed_routes.append((m.group(1), m.group(2)))

    order = (graph.topological_order() or step_names) if not cycles else step_names
    for name in order:
        node = nodes.get(name)
        if node is None:
            continue
        for d in node.deps:
            if d in nodes:
                nodes[d].dependents.append(name)
    roots = [n for n in order if n in nodes and not nodes[n].deps]
    sequential = not cycles and len(nodes) == len(spec.steps) and _totally_ordered(graph, [n for n in order if not nodes[n].info_inline])
    return Plan(
        name=spec.name,
        file=lp.file,
        description=spec.description,
        nodes=nodes,
        order=[n for n in order if n in nodes],
        roots=roots,
        output=spec.output,
        errors=errors_info,
        routes=parsed_routes,
        deadline=spec.deadline,
        limits=dict(spec.limits),
        breakers=dict(spec.breakers),
        graph=graph,
        retry_budget=spec.retry_budget,
        sequential=sequential,
        enabled=spec.enabled,
        runs_code=spec.runs_code,
        declared_routes=declared_routes,
        access=dict(spec.access),
    )


def _route_where(lp: LoadedPipeline, i: int) -> Any:
    """Where the `i`-th route is written (`route:` itself when it is a single entry)."""
    if not isinstance(lp.spec.route, list):
        return lp.where("route")
    return lp.where("route", i, "route") if not isinstance(lp.spec.route[i], str) else lp.where("route", i)


def _totally_ordered(graph: Dependencies, names: list[str]) -> bool:
    """Whether each of `names` (in topological order) depends on the one before it.

    Then running the plan step by step in topological order loses no concurrency: steps that
    never await (inline sync steps) cannot overlap with anything anyway.
    """
    return all(a in graph.ancestors(b) for a, b in zip(names, names[1:]))


def _check_literal(value: Any, param: Any, lp: LoadedPipeline, step_name: str, pname: str, pipeline_names: set[str], errors: list[SpecError]) -> Any:
    if param is None:
        return value
    loc = lp.where("steps", step_name, "with", pname)
    if param.annotation is PipelineName:
        if value not in pipeline_names:
            errors.append(SpecError(f"step '{step_name}': '{pname}' names pipeline '{value}', which is not loaded", loc, f"pipelines are: {', '.join(sorted(pipeline_names))}"))
        return value
    adapter = _adapter(param.annotation)
    if adapter is None:
        return value
    try:
        # A parameter type may read a file the value names (a configuration beside the
        # pipelines): it learns where the pipeline is and the environment it was read with,
        # and reports that file's own located errors.
        return adapter.validate_python(value, context={"file": lp.file, "env": lp.env})
    except SpecErrors as exc:
        seen = {str(e) for e in errors}  # several pipelines naming one file: its errors once
        errors.extend(e for e in exc.errors if str(e) not in seen)
        return value
    except ValidationError as exc:
        first = exc.errors()[0]
        expected = registry._type_name(param.annotation)
        shown = lp.shown(("steps", step_name, "with", pname), value)
        errors.append(SpecError(f"step '{step_name}': '{pname}' must be {expected}, got {shown}", loc, first["msg"][0].lower() + first["msg"][1:]))
        return value
