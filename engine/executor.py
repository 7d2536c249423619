"""Running a checked pipeline: each step starts as soon as its inputs are ready.

Scheduling is dataflow. A task runs a step; when it finishes, each dependent whose inputs are
now all ready is started, the first one in the same task and the others in new tasks of the
run's task group. A linear chain therefore runs in one task with no scheduling overhead, and
independent branches overlap. The first failure cancels the siblings and is raised as itself
(not wrapped in an exception group), after streams the run produced are closed.

Each attempt of a step runs with the log scope bound (request id, pipeline, step, attempt),
under its own timeout, inside its named limit, and is retried per its YAML policy. The run's
deadline is one cancel scope around the whole run, not one per step: a scope costs about as
much as a cheap step, and most steps never await, so a scope of their own could never fire.
Sync steps marked blocking run in a worker thread, which anyio gives a copy of the context,
so their log lines carry the scope too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from engine import capture, logs, metrics, registry, retry, streams
from engine.check import Node, Plan, check
from engine.errors import DeadlineExceeded, EngineError, SpecError, SpecErrors, StepError, StepTimeout
from engine.breakers import Breakers
from engine.limits import Limits
from engine.loader import VARS_FILE, LoadedPipeline, Ref, Vars, load_file, load_vars, vars_beside, without_echoes
from engine.run import IdSource, Resources, RunContext
from engine.types import Facts

_log = structlog.get_logger("engine")
_step_histograms: dict[tuple[str, str, str], Any] = {}


def pipeline_files(paths: Iterable[str | Path]) -> list[Path]:
    """The YAML files named by `paths` (directories contribute their *.yaml / *.yml files,
    except the shared `vars.yaml`)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            others = {VARS_FILE, *registry.configuration_files()}  # the shared vars, and step packages' files beside pipelines
            out += sorted(x for x in p.iterdir() if x.suffix in {".yaml", ".yml"} and not x.name.startswith(".") and x.name not in others)
        else:
            out.append(p)
    return out


def load_plans(paths: Iterable[str | Path], env: dict[str, str] | None = None) -> list[Plan]:
    """Load and check pipeline files together; raises `SpecErrors` listing every problem."""
    errors: list[SpecError] = []
    loaded: list[LoadedPipeline] = []
    shared: dict[Path, Vars] = {}  # per directory, read once: its errors are reported once
    for f in pipeline_files(paths):
        where = vars_beside(f).resolve()
        if where not in shared:
            try:
                shared[where] = load_vars(where, env, lenient=True)
            except SpecErrors as exc:
                errors += exc.errors
                shared[where] = Vars()
            errors += shared[where].errors
        try:
            lp = load_file(f, env=env, lenient=True, shared=shared[where])  # an unset variable hides no other error
        except SpecErrors as exc:
            errors += exc.errors
            continue
        loaded.append(lp)
        errors += lp.errors
    plans, check_errors = check(loaded)
    errors += without_echoes(check_errors, errors)
    if errors:
        raise SpecErrors(errors)
    return plans


def facts_key(step: str) -> tuple[str, str]:
    """Where a run keeps a step's Facts among its results (a tuple: no step name clashes)."""
    return ("facts", step)


def resolve_ref(ref: Ref, results: dict[str, Any], input: Any) -> Any:
    if ref.facts:
        value = results.get(facts_key(ref.step or ""))  # absent when the step was skipped or never ran
    else:
        value = input if ref.step is None else results[ref.step]
    for key in ref.path:
        if value is None:
            break
        value = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
    return (not value) if ref.negate else value


def materialize(value: Any, results: dict[str, Any], input: Any) -> Any:
    """A YAML value with every reference in it replaced by what it points at."""
    if isinstance(value, Ref):
        return resolve_ref(value, results, input)
    if isinstance(value, dict):
        return {k: materialize(v, results, input) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v, results, input) for v in value]
    return value


def _register_static_secrets(plans: list[Plan]) -> None:
    """Scrub from every log line the secret-named parameters written in the YAML (a key
    interpolated from the environment, say), whichever variable they came from."""
    def walk(name: Any, value: Any) -> None:
        if isinstance(value, str):
            if logs.is_secret_name(name):
                logs.register_secret(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(k, v)
        elif isinstance(value, list):
            for v in value:
                walk(name, v)

    for plan in plans:
        for node in plan.nodes.values():
            walk(None, node.static)


class Engine:
    """Loaded pipelines plus what their runs share: resources, limits, the id source.

    Create with `Engine.load(["pipelines/"])`, run with `await engine.run("name", input)`, and
    `await engine.aclose()` at shutdown.
    """

    def __init__(self, plans: list[Plan], ids: IdSource | None = None) -> None:
        self.plans = {p.name: p for p in plans}
        _register_static_secrets(plans)
        limits = {}
        for p in plans:
            limits.update(p.limits)
        self.limits = Limits(limits)
        self.breakers = Breakers()
        for p in plans:
            self.breakers.add(p.breakers)
        budgets = [p.retry_budget for p in plans if p.retry_budget is not None]
        self.retry_budget = retry.RetryBudget(min(budgets, key=lambda b: b.ratio) if budgets else None)
        self.resources = Resources()
        self.ids = ids or IdSource()
        self.capture: Any = None  # a CaptureWriter when `engine serve --capture DIR`
        self.console: Any = None  # an engine.console.Console when the web console is on
        self.env: dict[str, str] | None = None  # None: the process environment
        self.step_log_level = os.environ.get("ENGINE_STEP_LOG_LEVEL", "debug").lower()
        self._step_log_checked: bool | None = None

    def step_log_enabled(self) -> bool:
        """Whether step-end lines at `step_log_level` would be written (asked once: hot path)."""
        if self._step_log_checked is None:
            level = logging.getLevelNamesMapping().get(self.step_log_level.upper(), logging.DEBUG)
            checker = getattr(_log.bind(), "is_enabled_for", None)
            self._step_log_checked = bool(checker(level)) if checker is not None else True
        return self._step_log_checked

    def swap(self, plans: list[Plan]) -> None:
        """Serve a new, already checked set of pipelines (live reload).

        Runs in flight keep the plan they started with. Limits keep their semaphores (and
        holders) by name; new names are added.
        """
        for p in plans:
            self.limits.add(p.limits)
            self.breakers.add(p.breakers)
        _register_static_secrets(plans)
        self.plans = {p.name: p for p in plans}
        self._step_log_checked = None

    @classmethod
    def load(cls, paths: Iterable[str | Path], env: dict[str, str] | None = None) -> Engine:
        engine = cls(load_plans(paths, env=env))
        engine.env = env  # a reload reads the same environment
        return engine

    async def aclose(self) -> None:
        await self.resources.aclose()

    def context(self, name: str, input: Any = None, *, request_id: str | None = None, parent: RunContext | None = None) -> RunContext:
        """A fresh context for a run of pipeline `name` (the HTTP layer creates it early)."""
        plan = self.plans[name]
        ids = parent.ids if parent is not None else self.ids
        deadline = None if plan.deadline is None else time.monotonic() + plan.deadline
        if parent is not None and parent.deadline is not None and not parent.response_started():
            deadline = parent.deadline if deadline is None else min(deadline, parent.deadline)
        return RunContext(
            request_id=request_id or (parent.request_id if parent else ids.new_id("req_")),
            pipeline=name,
            engine=self,
            input=input,
            deadline=deadline,
            ids=ids,
            parent=parent,
            streams=parent.streams if parent is not None else [],
            recorder=parent.recorder if parent is not None else None,
            replayer=parent.replayer if parent is not None else None,
            trace=parent.trace if parent is not None else [],
        )

    async def run(
        self, name: str, input: Any = None, *, parent: RunContext | None = None, ctx: RunContext | None = None,
        request_id: str | None = None, facts: Facts | None = None,
    ) -> Any:
        """Run pipeline `name` on `input` and return its output (or its rendered error).

        Streams in the output are live: whoever consumes them must close the run afterwards
        with `await ctx.aclose()` (the HTTP layer does); pass your own `ctx` to keep hold of it.
        The run's results stay in `ctx.results`, so its `access:` fields can be read when the
        request ends (`access_of`); a sub-run hands them up into `facts`, read when asked for.
        """
        plan = self.plans.get(name)
        if plan is None:
            raise EngineError(f"no pipeline named '{name}'; loaded: {', '.join(sorted(self.plans))}")
        if ctx is None:
            ctx = self.context(name, input, request_id=request_id, parent=parent)
        ctx.input = input
        top = parent is None and ctx.parent is None
        if top:
            self.retry_budget.active_runs += 1
        run = _Run(self, plan, ctx)
        ctx.results = run.results
        if facts is not None:
            for field_name, value in plan.access.items():
                facts.defer(field_name, functools.partial(materialize, value, run.results, input))
        try:
            results = await run.execute()
            if top:
                ctx.committed = True  # what runs from here on runs inside the response
            return materialize(plan.output, results, input)
        except Exception as exc:
            if plan.errors is None:
                raise
            return await self.render_error(plan, exc, ctx)
        finally:
            if top:
                self.retry_budget.active_runs -= 1

    async def render_error(self, plan: Plan, error: BaseException, ctx: RunContext) -> Any:
        """Turn an error into the pipeline's output with its `errors:` step."""
        info = plan.errors
        if info is None:
            raise error
        kwargs: dict[str, Any] = {"error": error}
        if info.wants_context:
            kwargs[info.wants_context] = ctx
        out = info.fn(**kwargs)
        if hasattr(out, "__await__"):
            out = await out
        return out


class _Run:
    """The state of one run: results so far, the failure if any, the task group."""

    __slots__ = ("engine", "plan", "ctx", "results", "pending", "failure", "tg", "scope_base", "current")

    def __init__(self, engine: Engine, plan: Plan, ctx: RunContext) -> None:
        self.engine = engine
        self.plan = plan
        self.ctx = ctx
        self.results: dict[str, Any] = {}
        self.pending = {} if plan.sequential else {name: len(node.deps) for name, node in plan.nodes.items()}
        self.failure: BaseException | None = None
        self.tg: Any = None
        self.scope_base = (("request_id", ctx.request_id), ("pipeline", plan.name))
        self.current: tuple[Node, int, float] | None = None  # the attempt in progress: node, attempt, start

    async def execute(self) -> dict[str, Any]:
        remaining = self.ctx.remaining()
        if remaining is None:
            return await self._execute()
        if remaining <= 0:
            first = self.plan.order[0] if self.plan.order else "?"
            raise DeadlineExceeded(f"the run's deadline passed before step '{first}'")
        with anyio.move_on_after(remaining):
            return await self._execute()
        # The deadline cancelled whatever was running: report it as that step's failure.
        exc = DeadlineExceeded("the run's deadline passed")
        if self.current is not None:
            node, attempt, start = self.current
            exc = DeadlineExceeded(f"the run's deadline passed during step '{node.name}'")
            exc.step, exc.attempts = node.name, attempt
            self.finished(node, "error", attempt, start, exc)
        raise exc

    async def _execute(self) -> dict[str, Any]:
        roots = self.plan.roots
        try:
            if self.plan.sequential:
                # Nothing here could overlap: no task group needed, just the order.
                nodes = self.plan.nodes
                for name in self.plan.order:
                    rest = self.begin(nodes[name])
                    if rest is not None:
                        await rest
            else:
                # asyncio's TaskGroup, not anyio's: a task costs ~2.4 us against ~15 us. The
                # run's cancellation still comes from anyio scopes (deadline, disconnect); the
                # group passes it on to its tasks and waits for them.
                try:
                    async with asyncio.TaskGroup() as tg:
                        self.tg = tg
                        for extra in roots[1:]:
                            tg.create_task(self.drive(self.plan.nodes[extra]))
                        await self.drive(self.plan.nodes[roots[0]])
                except BaseExceptionGroup:
                    if self.failure is None:
                        raise
                if self.failure is not None:
                    raise self.failure
        except BaseException:
            await self.ctx.aclose()
            raise
        return self.results

    async def drive(self, node: Node) -> None:
        """Run `node`, then the dependents it made ready.

        This task keeps every ready step that never awaits (inline sync steps: running them
        costs less than a task) and one step that may; each further step that may await gets
        a task of its own, so it overlaps with the others.
        """
        try:
            queue = [node]
            while queue:
                node = queue.pop()
                rest = self.begin(node)
                if rest is not None:
                    await rest
                waiting = any(not n.info_inline for n in queue)
                for dep_name in node.dependents:
                    self.pending[dep_name] -= 1
                    if self.pending[dep_name] == 0:
                        ready = self.plan.nodes[dep_name]
                        if ready.info_inline or not waiting:
                            queue.append(ready)
                            waiting = waiting or not ready.info_inline
                        else:
                            self.tg.create_task(self.drive(ready))
        except Exception as exc:
            if self.failure is None:
                self.failure = exc
            raise  # the group cancels the other branches; the run raises the first failure

    def begin(self, node: Node) -> Awaitable[None] | None:
        """Run `node` as far as it goes without awaiting: None when it is done, else what its
        caller awaits to finish it.

        Most steps are sync functions with no policy (no timeout, limit, retry, candidates or
        record): they run here to the end, with no coroutine of their own; a coroutine per
        step cost more than many of the steps."""
        results, ctx, input = self.results, self.ctx, self.ctx.input
        if node.cond is not None and not resolve_ref(node.cond, results, input):
            results[node.name] = materialize(node.else_value, results, input)
            alias = node.else_value
            if isinstance(alias, Ref) and alias.step is not None and not alias.path and not alias.facts:
                # Yielding another step's output, it tells that step's facts too.
                told = results.get(facts_key(alias.step))
                if told is not None:
                    results[facts_key(node.name)] = told
            ctx.trace.append((self.plan.name, node.name, "skipped", 0, 0.0, 0.0))
            return None
        kwargs = dict(node.static)
        for pname, ref in node.refs:
            if ref.path or ref.facts or ref.negate:
                kwargs[pname] = resolve_ref(ref, results, input)
            else:  # a whole output or the input, the common case, without a call
                kwargs[pname] = input if ref.step is None else results[ref.step]
        for pname, value in node.nested:
            kwargs[pname] = materialize(value, results, input)
        if node.info.wants_context:
            kwargs[node.info.wants_context] = ctx
        if node.info.wants_facts:
            kwargs[node.info.wants_facts] = results[facts_key(node.name)] = Facts()  # one for all its attempts
        if node.candidates is not None:
            return self.over_candidates(node, kwargs, resolve_ref(node.candidates, results, input))
        if not node.direct:
            return self.policed(node, kwargs)
        # No policy applies: what `attempt`, `invoke` and `call` would do is done here, in place.
        start = time.perf_counter()
        token = logs._scope.set(self.scope_base + node.first_scope)
        self.current = (node, 1, start)
        try:
            remaining = ctx.remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(f"the run's deadline passed before step '{node.name}'")
            value = node.info.fn(**kwargs)
            if node.info.is_async or hasattr(value, "__anext__"):  # streams.is_stream, inline
                return self.finish_direct(node, value, start)  # a coroutine to await, or a stream to prime
            self.finished(node, "ok", 1, start)
        except Exception as exc:
            self.failed(node, exc, 1, start)
            raise
        finally:
            logs._scope.reset(token)
        results[node.name] = value
        return None

    async def finish_direct(self, node: Node, value: Any, start: float) -> None:
        """The awaiting end of a step with no policy: its coroutine's result, a stream primed."""
        token = logs._scope.set(self.scope_base + node.first_scope)
        try:
            if node.info.is_async:
                value = await value
            if streams.is_stream(value):
                value = await self.streamed(node, value, None, 1, start)
            else:
                self.finished(node, "ok", 1, start)
        except Exception as exc:
            self.failed(node, exc, 1, start)
            raise
        finally:
            logs._scope.reset(token)
        self.results[node.name] = value

    async def policed(self, node: Node, kwargs: dict[str, Any]) -> None:
        """A step with a policy (timeout, limit, retry or record): each attempt through
        `attempt`, retried as its `retry:` says."""
        results = self.results
        budget = self.engine.retry_budget
        attempt = 0
        start = time.perf_counter()
        retrying = False  # this step holds one unit of the retry budget while it retries
        try:
            while True:
                attempt += 1
                token = logs._scope.set(self.scope_base + (("step", node.name), ("attempt", attempt)))
                self.current = (node, attempt, start)
                try:
                    value = await self.attempt(node, kwargs, attempt, start)
                except Exception as exc:
                    delay = self.retry_delay(node, exc, attempt, retrying)
                    if delay is None:
                        self.failed(node, exc, attempt, start)
                        raise
                    if not retrying:
                        retrying = True
                        budget.active_retries += 1
                    await anyio.sleep(delay)
                    continue
                finally:
                    logs._scope.reset(token)
                results[node.name] = value
                if not streams.is_stream(value):
                    self.finished(node, "ok", attempt, start)
                return
        finally:
            if retrying:
                budget.active_retries -= 1

    def retry_delay(self, node: Node, exc: Exception, attempt: int, holding: bool) -> float | None:
        """Seconds before the next try of `node` after `exc`, or None: return the error now.

        Logged and counted here, so a plain step and a step over candidates retry alike."""
        policy, ctx, budget = node.retry, self.ctx, self.engine.retry_budget
        delay = retry.next_delay(exc, policy, attempt, ctx.remaining()) if policy is not None else None
        if delay is not None and not holding and not budget.allow():
            _log.warning("step.retry_budget_exhausted", reason=_reason(exc), retries_in_flight=budget.active_retries)
            delay = None
        if delay is None:
            return None
        _log.info("step.retry", reason=_reason(exc), delay_s=round(delay, 3), next_attempt=attempt + 1)
        metrics.RETRIES.labels(self.plan.name, node.name, getattr(exc, "kind", type(exc).__name__)).inc()
        if ctx.replayer is not None and not ctx.replayer.realtime:
            delay = 0.0  # replaying as fast as possible: the wait already happened once
        return delay

    def failed(self, node: Node, exc: BaseException, attempts: int, start: float) -> None:
        if isinstance(exc, StepError):
            exc.step = exc.step or node.name
            exc.attempts = attempts
        self.finished(node, "error", attempts, start, exc)

    async def over_candidates(self, node: Node, kwargs: dict[str, Any], listed: Any) -> None:
        """Run `node` over its candidates: one attempt each, in order, until one succeeds.

        Each candidate is `{with: {...}, key: ..., name: ...}`: `with` gives this attempt's
        inputs (over the step's own), `key` keys the step's breaker, `name` is what logs show.
        A failed attempt moves on to the next candidate when its error says another may
        succeed (`fallback`); otherwise, or after the last candidate, the retry policy decides
        whether the list is tried again from its start (`retry.attempts` counts those rounds).
        Every attempt after the first, a fallback or a retry, is within the retry budget.
        Each attempt has the step's `timeout`; a candidate that timed out is not asked again
        (it would most likely time out again) but the next one is. A candidate whose breaker
        key is open is skipped while another is left, and the last one is always tried (panic
        mode), and a step that takes `Facts` is told it: `cooled`, the names of the candidates
        skipped. Each failed or skipped attempt is a trace entry (`fallback:STATUS`,
        `retry:STATUS`, `open`); the final outcome is the step's own entry as for any step.
        """
        cands = _candidates(node, listed)
        told = kwargs.get(node.info.wants_facts) if node.info.wants_facts else None
        breaker = self.engine.breakers.get(node.breaker) if node.breaker is not None else None
        if breaker is not None and not breaker.enabled:
            breaker = None
        ctx, budget, plan = self.ctx, self.engine.retry_budget, self.plan.name
        last = len(cands) - 1
        attempt = 0
        rounds = 0
        start = time.perf_counter()
        holding = False  # this step holds one unit of the retry budget once it tries again
        try:
            while True:
                rounds += 1
                error: Exception | None = None
                for i, (with_, key, name) in enumerate(cands):
                    if breaker is not None and not breaker.allow(key):
                        if i < last:
                            _log.info("step.breaker_skip", candidate=name, step=node.name, remaining_s=round(breaker.remaining(key), 3))
                            if told is not None:  # the breaker's state as this run read it
                                told.setdefault("cooled", []).append(name)
                            now = time.perf_counter()
                            ctx.trace.append((plan, node.name, "open", attempt, now, now))
                            continue
                        _log.info("step.breaker_panic", candidate=name, step=node.name, remaining_s=round(breaker.remaining(key), 3))
                    if attempt and not holding:
                        if error is not None and not budget.allow():
                            _log.warning("step.retry_budget_exhausted", reason=_reason(error), step=node.name, retries_in_flight=budget.active_retries)
                            if breaker is not None:
                                breaker.release(key)
                            self.failed(node, error, attempt, start)
                            raise error
                        holding = True
                        budget.active_retries += 1
                    attempt += 1
                    token = logs._scope.set(self.scope_base + (("step", node.name), ("attempt", attempt), ("candidate", name)))
                    self.current = (node, attempt, start)
                    began = time.perf_counter()
                    settled = False
                    try:
                        value = await self.attempt(node, {**kwargs, **with_}, attempt, start, candidate=True)
                    except Exception as exc:
                        error = exc
                        if breaker is not None:
                            settled = True
                            if getattr(exc, "about_candidate", False):
                                if breaker.failed(key):
                                    _log.warning("step.breaker_open", candidate=name, failures=breaker.spec.failures, cooldown_s=breaker.spec.cooldown)
                            else:
                                breaker.release(key)
                        status = getattr(exc, "status", None) or getattr(exc, "kind", type(exc).__name__)
                        if i < last and getattr(exc, "fallback", False):
                            _log.warning("step.fallback", reason=_reason(exc), candidate=name, next_candidate=cands[i + 1][2])
                            ctx.trace.append((plan, node.name, f"fallback:{status}", attempt, began, time.perf_counter()))
                            continue
                        break
                    else:
                        if breaker is not None:
                            settled = True
                            breaker.succeeded(key)
                        self.results[node.name] = value
                        if not streams.is_stream(value):
                            self.finished(node, "ok", attempt, start)
                        return
                    finally:
                        if breaker is not None and not settled:
                            breaker.release(key)  # cancelled: a probe without a verdict frees the slot
                        logs._scope.reset(token)
                assert error is not None  # the last candidate is always tried
                token = logs._scope.set(self.scope_base + (("step", node.name), ("attempt", attempt)))
                try:
                    delay = self.retry_delay(node, error, rounds, holding)
                finally:
                    logs._scope.reset(token)
                if delay is None:
                    self.failed(node, error, attempt, start)
                    raise error
                status = getattr(error, "status", None) or getattr(error, "kind", type(error).__name__)
                ctx.trace.append((plan, node.name, f"retry:{status}", attempt, start, time.perf_counter()))
                if not holding:
                    holding = True
                    budget.active_retries += 1
                await anyio.sleep(delay)
        finally:
            if holding:
                budget.active_retries -= 1

    async def attempt(self, node: Node, kwargs: dict[str, Any], attempt: int, start: float, candidate: bool = False) -> Any:
        remaining = self.ctx.remaining()
        if remaining is not None and remaining <= 0:
            raise DeadlineExceeded(f"the run's deadline passed before step '{node.name}'")
        timeout = node.timeout
        if timeout is None or node.info_inline:  # a step that never awaits cannot be interrupted
            return await self.invoke(node, kwargs, attempt, start)
        with anyio.move_on_after(timeout):
            return await self.invoke(node, kwargs, attempt, start)
        if candidate:
            # Not asked again (a 2 MB prompt would time out again); the next candidate is.
            raise StepTimeout(f"step '{node.name}' took longer than {timeout:g} s", retryable=False)
        raise StepTimeout(f"step '{node.name}' took longer than {timeout:g} s")

    async def invoke(self, node: Node, kwargs: dict[str, Any], attempt: int, start: float) -> Any:
        """One call of the step inside its limit; a stream keeps its slot until it ends."""
        release = None
        try:
            if node.limit is not None:
                release = await self.engine.limits.acquire(node.limit)
            if node.record and (self.ctx.recorder is not None or self.ctx.replayer is not None):
                value = await self.call_recorded(node, kwargs)
            else:
                value = await self.call(node, kwargs)
            if streams.is_stream(value):
                value = await self.streamed(node, value, release, attempt, start)
                release = None
            return value
        finally:
            if release is not None:
                release()

    async def streamed(self, node: Node, value: Any, release: Any, attempt: int, start: float) -> Any:
        """The stream a step returned, as the run hands it on; `release` (its limit slot) is
        called when the stream ends, or now when there is nothing to follow."""
        if any(value is s for s in self.ctx.streams):
            # A stream this run already primed, passed on unchanged (a sub-pipeline's output, a
            # step with nothing to add): wrapping it again would only add a layer per item.
            if release is not None:
                release()
            self.finished(node, "ok", attempt, start)
            return value
        return await self.primed(node, value, release, attempt, start)

    async def call(self, node: Node, kwargs: dict[str, Any]) -> Any:
        info = node.info
        if info.is_async:
            return await info.fn(**kwargs)
        if info.blocking:
            return await anyio.to_thread.run_sync(functools.partial(info.fn, **kwargs))
        return info.fn(**kwargs)

    async def call_recorded(self, node: Node, kwargs: dict[str, Any]) -> Any:
        """A `record: true` step: answered from the capture in replay, noted down in capture."""
        told = kwargs.get(node.info.wants_facts) if node.info.wants_facts else None
        inputs = {k: v for k, v in kwargs.items() if k != node.info.wants_context and k != node.info.wants_facts}
        if self.ctx.replayer is not None:
            return await self.ctx.replayer.answer(self.plan.name, node.name, inputs, told)
        entry = self.ctx.recorder.call(self.plan.name, node.name, inputs)
        try:
            value = await self.call(node, kwargs)
        except BaseException as exc:
            entry["error"] = capture.error_record(exc)
            if told:
                entry["facts"] = capture.jsonable(dict(told))
            raise
        if told:  # what the step told by the time it returned (replay tells it again)
            entry["facts"] = capture.jsonable(dict(told))
        if streams.is_stream(value):
            if not self.ctx.recorder.stream_items:
                entry["stream"] = "not recorded"
                return value
            return capture.recording_stream(value, entry, self.ctx.recorder)
        self.ctx.recorder.returned(entry, value)  # converted when the record is read
        return value

    async def primed(self, node: Node, it: Any, release: Any, attempt: int, start: float) -> Any:
        try:
            has_first, first = await streams.prime(it)
        except BaseException:
            if release is not None:
                release()
            raise
        if not has_first:
            if release is not None:
                release()
            self.finished(node, "ok", attempt, start)
            return streams.empty()

        def on_end(outcome: str, items: int) -> None:
            if release is not None:
                release()
            self.finished(node, outcome, attempt, start, items=items)

        stream = streams.follow(first, it, step=node.name, idle_timeout=node.idle_timeout, on_end=on_end)
        self.ctx.streams.append(stream)
        return stream

    def finished(self, node: Node, outcome: str, attempts: int, start: float, error: BaseException | None = None, items: int | None = None) -> None:
        end = time.perf_counter()
        self.ctx.trace.append((self.plan.name, node.name, outcome, attempts, start, end))
        histogram = node.histograms.get(outcome)
        if histogram is None:
            key = (self.plan.name, node.name, outcome)
            histogram = _step_histograms.get(key)
            if histogram is None:
                histogram = _step_histograms[key] = metrics.STEP_SECONDS.labels(*key)
            node.histograms[outcome] = histogram
        histogram.observe(end - start)
        failed = outcome == "error" or outcome == "timeout"
        if not failed and not self.engine.step_log_enabled():
            return
        level = "warning" if failed else self.engine.step_log_level
        fields: dict[str, Any] = {"duration_ms": round((end - start) * 1000, 3), "outcome": outcome, "attempts": attempts}
        if items is not None:
            fields["items"] = items
        if error is not None:
            fields["error"] = _reason(error)
        token = logs._scope.set(self.scope_base + (("step", node.name), ("attempt", attempts)))
        try:
            getattr(_log, level)("step.end", **fields)
        finally:
            logs._scope.reset(token)


def access_of(ctx: RunContext) -> dict[str, Any]:
    """The access line's fields a finished run declares (`access:`), read now: a stream's
    steps have written what they tell by the time it ended."""
    plan = ctx.engine.plans.get(ctx.pipeline)
    if plan is None or not plan.access:
        return {}
    out = {}
    results, input = ctx.results, ctx.input
    for name, value in plan.access.items():
        try:
            found = resolve_ref(value, results, input) if type(value) is Ref else materialize(value, results, input)
        except KeyError:  # a step the failed run never reached
            found = None
        if isinstance(found, Facts):
            found = found.resolved()
        if found is not None:
            out[name] = found
    return out


def failed_step(ctx: RunContext, exc: BaseException) -> str | None:
    """Which step a run failed in, as `pipeline.step`: the first failure its trace records
    (in a sub-pipeline, that is the inner step, not the `core.run` step around it), else the
    step a `StepError` names."""
    for entry in ctx.trace:
        if entry[2] in {"error", "timeout"}:
            return f"{entry[0]}.{entry[1]}"
    step = getattr(exc, "step", None)
    return f"{ctx.pipeline}.{step}" if step else None


def _candidates(node: Node, listed: Any) -> list[tuple[dict[str, Any], str, str]]:
    """The (inputs, breaker key, name) of each candidate in `listed` (see `over_candidates`)."""
    if not isinstance(listed, (list, tuple)) or not listed:
        raise StepError(f"step '{node.name}' has no candidates to try (its `candidates` gave {type(listed).__name__})", kind="no_candidates")
    out = []
    for i, c in enumerate(listed):
        if not isinstance(c, dict) or not isinstance(c.get("with", {}), dict):
            raise StepError(f"step '{node.name}': candidate {i} is not a mapping with a `with` mapping", kind="no_candidates")
        name = str(c.get("name") or c.get("key") or i)
        out.append((c.get("with") or {}, str(c.get("key") or name), name))
    return out


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StepError):
        status = getattr(exc, "status", None)
        return f"{exc.kind}{'=' + str(status) if status else ''}: {logs.scrub(exc.message)[:200]}"
    text = logs.scrub(str(exc))[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
