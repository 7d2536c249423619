"""The `engine` command: serve, check, graph, run, replay, steps, doctor, usage, statusline.

Argparse, because none of the project's libraries is a CLI framework and the standard
library's is enough. Every subcommand's help ends with examples.

Start-up time matters (`engine statusline` runs after every assistant message, `engine check`
in editors and CI), so this module imports only the standard library at the top; each command
imports what it needs (the executor with the step packages, uvicorn, networkx, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from engine.errors import EngineError, SpecErrors


def version() -> str:
    """The installed package's version (pyproject.toml's when run from a checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("engine")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """`--version`, looked up only when asked for (importlib.metadata costs a few tens of ms)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(f"engine {version()}")
        parser.exit()


def load_plans(*args: Any, **kwargs: Any) -> Any:
    from engine.executor import load_plans as load

    return load(*args, **kwargs)


def pipeline_files(*args: Any, **kwargs: Any) -> Any:
    from engine.executor import pipeline_files as files

    return files(*args, **kwargs)


def default_pipelines() -> str:
    """`$ENGINE_PIPELINES`, else ./pipelines, else the pipelines shipped beside the package."""
    env = os.environ.get("ENGINE_PIPELINES")
    if env:
        return env
    if Path("pipelines").is_dir():
        return "pipelines"
    return str(Path(__file__).resolve().parent.parent / "pipelines")


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine",
        description="A declarative pipeline engine. Pipelines are YAML files wiring registered steps into a graph.",
        epilog=_examples("engine serve", "engine check pipelines/", "engine graph messages --format mermaid", "engine steps"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, examples: list[str]) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=_examples(*examples), formatter_class=argparse.RawDescriptionHelpFormatter)

    p = add("serve", "serve every pipeline that has a route, plus GET /health", ["engine serve", "engine serve --port 9000 --pipelines ./my-pipelines", "ENGINE_LOG_FORMAT=json engine serve --workers 4"])
    p.add_argument("--pipelines", default=None, metavar="DIR", help="pipeline directory (default: $ENGINE_PIPELINES or ./pipelines)")
    p.add_argument("--host", default=os.environ.get("ENGINE_HOST", "127.0.0.1"), help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("ENGINE_PORT", "8082")), help="port (default 8082)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--log-format", choices=["console", "json"], default=None, help="log output (default: console on a terminal, else json)")
    p.add_argument("--log-level", default=None, help="debug, info, warning, error (default info)")
    p.add_argument("--providers", default=None, metavar="FILE", help="the upstream providers file (default: $ENGINE_PROVIDERS or providers.yaml in the pipeline directory)")
    p.add_argument("--capture", default=os.environ.get("ENGINE_CAPTURE_DIR"), metavar="DIR", help="record every run into JSONL files in DIR (replay them with `engine replay`)")
    p.add_argument("--reload", action="store_true", help="apply pipeline edits without a restart (a broken edit is reported and the old set kept)")
    p.add_argument("--no-console", action="store_true", help="do not serve the web console at /console (same as ENGINE_CONSOLE=off; on by default on a loopback address)")
    p.add_argument(
        "--server-tools",
        action="store_true",
        help="serve the pipelines that run code on this machine (sets ENGINE_SERVER_TOOLS=on, which pipelines/agent.yaml reads in `enabled:`)",
    )
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="bind a non-loopback address without inbound keys (ENGINE_API_KEYS); anyone who can reach it can use it",
    )

    p = add("check", "validate pipeline files; exit 1 with file:line:col errors", ["engine check", "engine check pipelines/messages.yaml", "engine check pipelines/ my-pipelines/"])
    p.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (default: the pipeline directory)")

    p = add("graph", "draw a pipeline", ["engine graph messages", "engine graph pipelines/messages.yaml --format mermaid", "engine graph messages --format svg -o messages.svg"])
    p.add_argument("pipeline", help="a pipeline name or file")
    p.add_argument("--format", default="text", choices=["text", "mermaid", "dot", "svg", "png"])
    p.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE instead of stdout")
    p.add_argument("--pipelines", default=None, metavar="DIR")
    p.add_argument("--trace", default=None, metavar="CAPTURE", help="draw one captured run over the pipeline: what ran, was skipped or retried, and how long")
    p.add_argument("--run", default=None, metavar="REQUEST_ID", help="with --trace: which run (default: the last one of this pipeline)")

    p = add(
        "run",
        "run a pipeline once on an input file and print its output",
        ["engine run demo --input input.yaml", "engine run count_tokens --input body.json   # a routed pipeline: the file is the request body", "engine run pipelines/demo.yaml --input -"],
    )
    p.add_argument("pipeline", help="a pipeline name or file")
    p.add_argument(
        "--input",
        default=None,
        metavar="FILE",
        help="the run input ('-' for stdin): for a pipeline with a route, the request body (sent to its first route); otherwise a JSON or YAML value",
    )
    p.add_argument("--pipelines", default=None, metavar="DIR")
    p.add_argument("--traceback", action="store_true", help="on failure, show the Python traceback instead of one line")

    p = add(
        "replay",
        "re-run captured runs through the current pipelines, offline, and show what changed",
        ["engine replay captures/", "engine replay captures/capture-*.jsonl --pipelines ./pipelines", "engine replay tests/captures/stream.jsonl --realtime", "engine replay captures/ --live   # against the real upstream"],
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files or directories")
    p.add_argument("--pipelines", default=None, metavar="DIR")
    p.add_argument("--realtime", action="store_true", help="replay recorded streams with their recorded timing")
    p.add_argument("--live", action="store_true", help="send the captured requests to the real upstream instead of answering from the capture")
    p.add_argument("--quiet", action="store_true", help="print only runs that changed")
    p.add_argument(
        "--max-record-bytes",
        type=_byte_size,
        default="256M",
        metavar="SIZE",
        help="longest capture record read (default 256M); a longer one is reported and skipped unread",
    )

    p = add("steps", "list every registered step with its parameters", ["engine steps", "engine steps | grep core", "engine steps --format markdown   # the README's step catalogue"])
    p.add_argument("--format", default="text", choices=["text", "markdown"])

    p = add("doctor", "check the configuration, the pipelines and the upstream, and say what clients need", ["engine doctor", "engine doctor --pipelines ./pipelines", "engine doctor --providers ~/my-providers.yaml"])
    p.add_argument("--pipelines", default=None, metavar="DIR")
    p.add_argument("--providers", default=None, metavar="FILE", help="the upstream providers file (default: $ENGINE_PROVIDERS or providers.yaml in the pipeline directory)")

    p = add(
        "usage",
        "tokens and cost by model and by day, from JSON access logs or capture files",
        ["engine usage captures/", "ENGINE_LOG_FORMAT=json engine serve 2>> access.log; engine usage access.log", "engine usage captures/ --since 2026-12-01 --format json"],
    )
    p.add_argument("paths", nargs="*", metavar="LOG_OR_CAPTURE_DIR", help="JSON access logs, capture files, or directories of them (default: $ENGINE_CAPTURE_DIR)")
    p.add_argument("--format", default="table", choices=["table", "json"])
    p.add_argument("--session", default=None, metavar="ID", help="only the requests of one client session (the client's session id)")
    p.add_argument("--since", default=None, metavar="YYYY-MM-DD", help="only requests from that day (UTC) on")

    p = add(
        "statusline",
        "one status line for Claude Code's statusLine setting: the session's upstream model, tokens and cost",
        ['echo \'{"session_id": "..."}\' | engine statusline', "engine statusline --url http://127.0.0.1:8082", "engine statusline --from captures/"],
    )
    p.add_argument("--url", default=None, help="the gateway (default: $ANTHROPIC_BASE_URL, else http://127.0.0.1:8082)")
    p.add_argument("--from", dest="sources", nargs="+", default=None, metavar="LOG_OR_CAPTURE_DIR", help="read JSON access logs or captures instead of asking the gateway")
    return parser


def _byte_size(text: str) -> int:
    """`1048576`, `512K`, `64M` or `1G` as a number of bytes (argparse type)."""
    units = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
    number, unit = text.strip().upper().rstrip("B"), ""
    if number[-1:] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(number) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (e.g. 1048576, 512K, 64M, 1G)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("the size must be positive")
    return value


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Like `python -m` and uvicorn: user steps named package.module:function import from here.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    handler = {
        "serve": cmd_serve,
        "check": cmd_check,
        "graph": cmd_graph,
        "run": cmd_run,
        "replay": cmd_replay,
        "steps": cmd_steps,
        "doctor": cmd_doctor,
        "usage": cmd_usage,
        "statusline": cmd_statusline,
    }[args.command]
    try:
        return handler(args)
    except SpecErrors as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        print(f"{len(exc.errors)} error{'s' if len(exc.errors) != 1 else ''}", file=sys.stderr)
        return 1
    except EngineError as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _with_siblings(paths: list[str]) -> tuple[list[Path], set[Path]]:
    """What to load for `paths`, and which pipeline files they name.

    A directory stands for its pipelines; a file is loaded with the pipelines of its directory,
    because pipelines run one another by name (messages.yaml runs turn.yaml), so a file is
    only complete with its siblings. `engine check`, `graph`, `run` and `serve` all see the
    same set that way.
    """
    load: list[Path] = []
    named: set[Path] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise EngineError(f"no such file or directory: {raw}")
        if p.is_dir():
            files = pipeline_files([p])
            named.update(f.resolve() for f in files)
            if p.resolve() not in {x.resolve() for x in load}:
                load.append(p)
            continue
        named.add(p.resolve())
        directory = p.parent
        if directory.resolve() not in {x.resolve() for x in load}:
            load.append(directory)
        if p.resolve() not in {f.resolve() for f in pipeline_files([directory])}:
            load.append(p)  # named explicitly although its directory would not list it
    return load, named


def _select(target: str, pipelines: str | None) -> tuple[list[Any], str]:
    """Load the pipeline set that contains `target` (a name or a file) and return its name."""
    path = Path(target)
    if path.is_dir():
        raise EngineError(f"{target} is a directory; name a pipeline file, or a pipeline with --pipelines {target} NAME")
    if path.suffix in {".yaml", ".yml"} or "/" in target:
        load, _ = _with_siblings([target])
        plans = load_plans(load)
        for plan in plans:
            if Path(plan.file).resolve() == path.resolve():
                return plans, plan.name
        raise EngineError(f"{target} was loaded but holds no pipeline")
    plans = load_plans([pipelines or default_pipelines()])
    names = [p.name for p in plans]
    if target not in names:
        raise EngineError(f"no pipeline named '{target}'; pipelines are: {', '.join(sorted(names))}")
    return plans, target


def cmd_check(args: argparse.Namespace) -> int:
    from engine import registry
    from engine.loader import VARS_FILE, load_vars

    paths = args.paths or [default_pipelines()]
    configs = _configuration_files(paths)
    shared = [Path(p) for p in paths if Path(p).name == VARS_FILE and Path(p).is_file()]  # a directory's vars, not a pipeline
    others = [p for p in paths if Path(p) not in configs and Path(p) not in shared]
    load, named = _with_siblings(others) if others else ([], set())
    for config in [*configs, *shared]:  # the pipelines beside a configuration or vars file read it: load them too
        if config.parent.resolve() not in {x.resolve() for x in load}:
            load.append(config.parent)
    has_pipelines = bool(pipeline_files(load))
    if not has_pipelines and not configs and not shared:
        print(f"no pipeline files in {', '.join(paths)}", file=sys.stderr)
        return 1
    errors = []
    for file in shared:
        if not has_pipelines:  # else the pipelines' load reads it and reports its errors
            errors.extend(load_vars(file).errors)
    for config in configs:  # a step package's file beside the pipelines, checked its own way
        try:
            registry.configuration_check(config)(config)  # type: ignore[misc]
        except SpecErrors as exc:
            errors.extend(exc.errors)
    try:
        plans = load_plans(load) if has_pipelines else []  # every error of every file, at once (SpecErrors)
    except SpecErrors as exc:
        seen = {str(e) for e in errors}  # the pipelines that read a configuration file report its errors too
        raise SpecErrors(errors + [e for e in exc.errors if str(e) not in seen]) from None
    if errors:
        raise SpecErrors(errors)
    for file in shared:
        names = list(load_vars(file).values)
        print(f"{file}: OK (shared values: {', '.join(names) if names else 'none'})")
    for config in configs:
        print(f"{config}: OK (configuration: {config.name})")
    for plan in plans:
        if Path(plan.file).resolve() in named:
            print(f"{plan.file}: OK ({len(plan.nodes)} steps{', ' + ', '.join(f'{m} {p}' for m, p in plan.routes) if plan.routes else ''}{'' if plan.enabled else '; disabled: not served'})")
    return 0


def _configuration_files(paths: list[str]) -> list[Path]:
    """The step packages' configuration files among `paths` (named, or in a named directory)
    that their package can check."""
    from engine import registry

    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        candidates = sorted(p.iterdir()) if p.is_dir() else [p]
        found += [c for c in candidates if c.is_file() and registry.configuration_check(c) is not None]
    return found


def cmd_graph(args: argparse.Namespace) -> int:
    from engine import graph as graphs

    plans, name = _select(args.pipeline, args.pipelines)
    plan = next(p for p in plans if p.name == name)
    trace = _trace(args.trace, args.run, name) if args.trace else None
    if args.format in {"svg", "png"}:
        try:
            data = graphs.render_image(plan, args.format, trace)
        except graphs.GraphvizMissing as exc:
            print(f"engine: {exc}", file=sys.stderr)
            return 1
        if args.output:
            Path(args.output).write_bytes(data)
        else:
            sys.stdout.buffer.write(data)
        return 0
    text = {"text": graphs.to_text, "mermaid": graphs.to_mermaid, "dot": graphs.to_dot}[args.format](plan, trace)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _trace(capture: str, run: str | None, pipeline: str) -> Any:
    """The step timeline of one captured run of `pipeline` (records that cannot be read are
    reported on stderr and passed over)."""
    from engine import graph as graphs
    from engine.capture_reader import CaptureProblem, read_captures

    chosen = None
    for item in read_captures([capture]):
        if isinstance(item, CaptureProblem):
            print(f"engine: {item}", file=sys.stderr)
            continue
        ran = {t.get("pipeline", item.record.get("pipeline")) for t in item.record.get("trace") or []}
        if pipeline in ran and (run is None or item.record.get("request_id") == run):
            chosen = item
    if chosen is None:
        which = f"run '{run}' of pipeline '{pipeline}'" if run else f"a run of pipeline '{pipeline}'"
        raise EngineError(f"{capture} holds no {which}")
    return graphs.Trace.from_record(chosen.record, pipeline)


def cmd_replay(args: argparse.Namespace) -> int:
    """Replay, then print the summary first, then each run in request order with what changed."""
    import anyio

    from engine import logs
    from engine.capture_reader import Captured, CaptureProblem, read_captures
    from engine.executor import Engine
    from engine.replay import Summary, replay_all

    logs.configure(os.environ.get("ENGINE_LOG_FORMAT", "console"), os.environ.get("ENGINE_LOG_LEVEL", "error"))
    engine = Engine(load_plans([args.pipelines or default_pipelines()]))
    runs: list[Captured] = []
    problems: list[CaptureProblem] = []
    for item in read_captures(args.captures, max_record_bytes=args.max_record_bytes):
        (problems if isinstance(item, CaptureProblem) else runs).append(item)  # type: ignore[arg-type]

    async def go() -> list[Any]:
        try:
            return await replay_all(engine, runs, realtime=args.realtime, live=args.live)
        finally:
            await engine.aclose()

    results = anyio.run(go)
    summary = Summary(unreadable=len(problems))
    for result in results:
        summary.add(result)
    utf8 = (sys.stdout.encoding or "").lower().startswith("utf")
    same_mark, diff_mark = ("✓", "✗") if utf8 else ("ok", "CHANGED")
    print(f"{summary} ({'live against the upstream' if args.live else 'offline'})")
    for n, result in enumerate(results, 1):
        where = f"[{n}/{len(results)}] {result.captured.label}"
        if result.skipped:
            if not args.quiet:
                print(f"  - {where} skipped: {result.skipped}")
        elif result.same:
            if not args.quiet:
                print(f"  {same_mark} {where} matched ({result.seconds * 1000:.1f} ms)")
        else:
            changes = result.changes
            print(f"  {diff_mark} {where}: {len(changes)} difference{'s' if len(changes) != 1 else ''}")
            for line in changes[:40]:
                print(f"      {line}")
            if len(changes) > 40:
                print(f"      ... and {len(changes) - 40} more")
    for problem in problems:
        print(f"engine: unreadable capture record: {problem}", file=sys.stderr)
    return summary.exit_code


def _read_input(path: str | None, plan: Any) -> Any:
    """The run's input from `--input`: for a routed pipeline, the request body of a `Request`
    built from its (first) route; otherwise the file's JSON or YAML value."""
    from engine.types import Request

    if path is None:
        data = b""
    else:
        try:
            data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        except OSError as exc:
            raise EngineError(f"cannot read the input file {path}: {exc.strerror or exc}") from None
    yaml_file = path is not None and Path(path).suffix in {".yaml", ".yml"}
    if plan.declared_routes:  # served or not: `engine run` serves nothing
        method, route = plan.declared_routes[0]
        if yaml_file:
            data = json.dumps(_parse_input(path, data)).encode()
        headers = {"content-type": "application/json", "content-length": str(len(data))} if data else {}
        return Request(method=method, path=route, headers=headers, query={}, body=data, client="127.0.0.1")
    if path is None:
        return None
    return _parse_input(path, data)


def _parse_input(path: str | None, data: bytes) -> Any:
    import yaml

    try:
        return json.loads(data)
    except ValueError:
        pass
    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise EngineError(f"{path} is neither JSON nor YAML: {exc}") from None


def _failure(ctx: Any, exc: BaseException) -> str:
    """A failed run in one line: the step (from the error or the run's trace) and the error."""
    from engine.executor import failed_step

    step = failed_step(ctx, exc)
    message = getattr(exc, "message", None) or str(exc)
    what = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return f"step '{step}' failed: {what}" if step else f"the run failed: {what}"


def cmd_run(args: argparse.Namespace) -> int:
    import anyio

    from engine import logs
    from engine.executor import Engine
    from engine.streams import each, is_stream
    from engine.types import Reply

    logs.configure(os.environ.get("ENGINE_LOG_FORMAT", "console"), os.environ.get("ENGINE_LOG_LEVEL", "error"))
    plans, name = _select(args.pipeline, args.pipelines)
    plan = next(p for p in plans if p.name == name)
    data = _read_input(args.input, plan)
    engine = Engine(plans)

    async def go() -> int:
        ctx = engine.context(name, data)
        try:
            out = await engine.run(name, data, ctx=ctx)
            status = 0
            if isinstance(out, Reply):
                if out.status >= 400:
                    print(f"engine: {name} answered HTTP {out.status}", file=sys.stderr)
                    status = 1
                out = out.stream if out.stream is not None else out.body
            if is_stream(out):
                async for item in each(out):  # a batch's items one by one
                    _print_item(item)
            else:
                _print_item(out)
            return status
        except Exception as exc:
            if args.traceback:
                raise
            print(f"engine: {_failure(ctx, exc)} (--traceback shows where)", file=sys.stderr)
            return 1
        finally:
            await ctx.aclose()
            await engine.aclose()

    return anyio.run(go)


def _print_item(item: Any) -> None:
    if isinstance(item, bytes):
        sys.stdout.write(item.decode("utf-8", errors="replace"))
    elif isinstance(item, str):
        sys.stdout.write(item if item.endswith("\n") else item + "\n")
    else:
        sys.stdout.write(json.dumps(item, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def catalogue_markdown() -> str:
    """The step catalogue as a Markdown table (the README's copy is checked against it)."""
    from engine import registry

    rows = ["| step | what it does |", "| --- | --- |"]
    for info in registry.catalogue():
        params = ", ".join(info.params)
        flags = "".join(f" *({f})*" for f, on in (("stream", info.streams), ("side effects", info.side_effects)) if on)
        if info.wants_facts:
            flags += f" Tells: {', '.join(f'`{k}`' for k in info.facts) or 'its sub-run’s `access:` fields'}."
        rows.append(f"| `{info.name}({params})` | {info.summary.replace('|', '/')}{flags} |")
    return "\n".join(rows) + "\n"


def _use_providers(pipelines: str, providers: str | None) -> None:
    """The pipeline directory and, with --providers, the providers file (absolute: pipelines
    read it relative to their own directory) for this process and its workers."""
    os.environ["ENGINE_PIPELINES"] = pipelines
    if providers:
        os.environ["ENGINE_PROVIDERS"] = str(Path(providers).expanduser().resolve())


def cmd_doctor(args: argparse.Namespace) -> int:
    """Run the engine's own checks (pipelines load) and every check the step packages register."""
    import inspect

    import anyio

    from engine import registry

    utf8 = (sys.stdout.encoding or "").lower().startswith("utf")
    marks = {"ok": "✓" if utf8 else "ok", "warn": "!" if utf8 else "WARN", "fail": "✗" if utf8 else "FAIL"}
    findings: list[registry.Finding] = []
    pipelines = args.pipelines or default_pipelines()
    _use_providers(pipelines, args.providers)
    try:
        plans = load_plans([pipelines])
        routes = sum(len(p.routes) for p in plans)
        findings.append(registry.Finding("ok", f"{len(plans)} pipelines in {pipelines} load and check ({routes} routes)"))
    except SpecErrors as exc:
        findings.append(registry.Finding("fail", f"{len(exc.errors)} errors in {pipelines}", "run `engine check` to see them located"))

    async def run_checks() -> None:
        for check in registry.doctor_checks():
            try:
                result = check()
                if inspect.isawaitable(result):
                    result = await result
                findings.extend(result)
            except Exception as exc:  # a check that crashes is itself a finding
                findings.append(registry.Finding("fail", f"{getattr(check, '__name__', 'check')} failed: {exc}"))

    findings += [registry.Finding("fail", reason, "`engine serve` refuses to start until this is fixed") for reason in registry.startup_refusals()]
    anyio.run(run_checks)
    for f in findings:
        print(f"{marks.get(f.status, '?')} {f.message}")
        if f.fix:
            for line in f.fix.splitlines():
                print(f"    {line}")
    return 1 if any(f.status == "fail" for f in findings) else 0


def cmd_steps(args: argparse.Namespace) -> int:
    from engine import registry

    if args.format == "markdown":
        print(catalogue_markdown(), end="")
        return 0
    for info in registry.catalogue():
        params = ", ".join(p.describe() for p in info.params.values())
        flags = [f for f, on in (("stream", info.streams), ("side effects", info.side_effects)) if on]
        print(f"{info.name}({params})" + (f"  [{', '.join(flags)}]" if flags else ""))
        print(f"    {info.summary}")
        if info.wants_facts:
            print(f"    tells: {', '.join(info.facts) or 'its sub-run’s access: fields'}  (${{{{ facts.STEP.KEY }}}})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the pipelines; refuse to start (exit 2, one line on stderr) when serving would be unsafe."""
    import uvicorn

    from engine import guard, logs, registry

    pipelines = args.pipelines or default_pipelines()
    _use_providers(pipelines, args.providers)
    os.environ["ENGINE_HOST"] = args.host  # the guard (engine/guard.py) also accepts this name as Host
    if args.server_tools:
        os.environ["ENGINE_SERVER_TOOLS"] = "on"
    if args.capture:
        os.environ["ENGINE_CAPTURE_DIR"] = args.capture
    if args.reload:
        os.environ["ENGINE_RELOAD"] = "1"
    os.environ["ENGINE_CONSOLE"] = "off" if args.no_console else os.environ.get("ENGINE_CONSOLE") or ("on" if _is_loopback(args.host) else "off")
    if args.log_format:
        os.environ["ENGINE_LOG_FORMAT"] = args.log_format
    if args.log_level:
        os.environ["ENGINE_LOG_LEVEL"] = args.log_level
    logs.configure()
    keys = [k for k in os.environ.get("ENGINE_API_KEYS", "").split(",") if k.strip()]
    public = not _is_loopback(args.host)
    if public and not keys and not args.allow_unauthenticated:
        return _refuse(
            f"refusing to serve {args.host} without inbound keys: anyone who can reach it could use it. "
            "Set ENGINE_API_KEYS=key1,key2 (clients send one as a Bearer token or in their protocol's key header), "
            "or pass --allow-unauthenticated if something in front of it authenticates."
        )
    try:
        guard.policy_from_env(os.environ)
    except ValueError as exc:
        return _refuse(f"refusing to serve: {exc}")
    unsafe = _writable_by_others(pipelines)
    if unsafe:
        return _refuse(f"refusing to serve: {unsafe} is writable by group or others, and pipeline files run code (chmod go-w it)")
    refusals = registry.startup_refusals()
    if refusals:
        return _refuse("refusing to serve: " + "; ".join(refusals))
    plans = load_plans([pipelines])  # fail here, before binding, with every error listed
    exposed = guard.code_exposure(plans, args.host, bool(keys))
    if exposed:
        return _refuse(exposed)
    code = [p for p in plans if p.runs_code]
    routes = [f"{m} {p} -> {plan.name}" for plan in plans for m, p in plan.routes]
    print(f"engine serving http://{args.host}:{args.port} ({len(plans)} pipelines from {pipelines})", file=sys.stderr)
    for line in routes:
        print(f"  {line}", file=sys.stderr)
    print(f"  {_server_tools_line(code)}", file=sys.stderr)
    if args.capture:
        print(f"  capturing every run into {args.capture}", file=sys.stderr)
    from engine.console import enabled

    if enabled(os.environ["ENGINE_CONSOLE"]):
        print(f"  console at http://{args.host}:{args.port}/console" + (" (log in with an inbound key)" if keys else ""), file=sys.stderr)
    if args.reload:
        print(f"  reloading pipelines when files in {pipelines} change", file=sys.stderr)
    for line in registry.serving_notes():
        print(f"  {line}", file=sys.stderr)
    uvicorn.run(
        "engine.http:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers if args.workers > 1 else None,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return 0


def _refuse(reason: str) -> int:
    """Not starting because serving would be unsafe: one line saying why and what to do, exit 2."""
    print(f"engine: {reason}", file=sys.stderr)
    return 2


def _server_tools_line(code: list[Any]) -> str:
    """The start-up line that says whether anything here runs code on this machine."""
    on = [p.name for p in code if p.enabled]
    off = [p.name for p in code if not p.enabled]
    if on:
        routes = ", ".join(f"{m} {path}" for p in code if p.enabled for m, path in p.routes) or "no route"
        return f"server-side tools: ON: {', '.join(on)} runs code on this machine ({routes})"
    if off:
        return f"server-side tools: off ({', '.join(off)} not served; --server-tools or ENGINE_SERVER_TOOLS=on turns them on)"
    return "server-side tools: off (no pipeline runs code on this machine)"


def cmd_usage(args: argparse.Namespace) -> int:
    from engine import usage

    paths = args.paths or ([os.environ["ENGINE_CAPTURE_DIR"]] if os.environ.get("ENGINE_CAPTURE_DIR") else [])
    if not paths:
        print("engine: name JSON access logs or capture directories (or set ENGINE_CAPTURE_DIR); see `engine usage --help`", file=sys.stderr)
        return 2
    if args.since is not None:
        import datetime

        try:
            datetime.date.fromisoformat(args.since)
        except ValueError:
            print(f"engine: --since {args.since!r} is not a day; write it as YYYY-MM-DD (UTC), e.g. --since 2026-12-01", file=sys.stderr)
            return 2
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        print(f"engine: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 1
    summary = usage.summarise(paths, session=args.session, since=args.since)
    for problem in summary.problems:
        print(f"engine: {problem}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(summary.as_dict(), indent=2))
    elif not summary.records:
        print(f"no requests with usage in {', '.join(paths)} ({summary.skipped} other lines); access logs must be JSON (ENGINE_LOG_FORMAT=json)")
    else:
        print(usage.table(summary), end="")
    return 1 if summary.problems else 0


def cmd_statusline(args: argparse.Namespace) -> int:
    from engine.statusline import status_line

    print(status_line(sys.stdin.read(), args.url, args.sources))
    return 0


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _writable_by_others(pipelines: str) -> str | None:
    """The pipeline directory or file that group or others may write, if any (like ssh's StrictModes)."""
    import stat

    from engine.loader import vars_beside

    root = Path(pipelines)
    for p in [root, *pipeline_files([root]), vars_beside(root)]:  # the shared vars configure them too
        try:
            if p.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return str(p)
        except OSError:  # no such file (a directory without vars.yaml)
            continue
    return None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
