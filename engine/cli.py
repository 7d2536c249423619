"""The `engine` command: serve, check, graph, run and steps.

Argparse, because none of the project's libraries is a CLI framework and the standard
library's is enough. Every subcommand's help ends with examples.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio

from engine import graph as graphs
from engine import logs, registry
from engine.errors import EngineError, SpecErrors
from engine.executor import Engine, load_plans, pipeline_files
from engine.streams import is_stream
from engine.types import Reply


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

    p = add("run", "run a pipeline once on an input file and print its output", ["engine run demo --input request.json", "engine run pipelines/demo.yaml --input input.yaml"])
    p.add_argument("pipeline", help="a pipeline name or file")
    p.add_argument("--input", required=True, metavar="FILE", help="JSON or YAML file with the run input ('-' for stdin)")
    p.add_argument("--pipelines", default=None, metavar="DIR")

    p = add(
        "replay",
        "re-run captured runs through the current pipelines, offline, and show what changed",
        ["engine replay captures/", "engine replay captures/capture-*.jsonl --pipelines ./pipelines", "engine replay tests/captures/stream.jsonl --realtime", "OPENROUTER_API_KEY=... engine replay captures/ --live"],
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files or directories")
    p.add_argument("--pipelines", default=None, metavar="DIR")
    p.add_argument("--realtime", action="store_true", help="replay recorded streams with their recorded timing")
    p.add_argument("--live", action="store_true", help="send the captured requests to the real upstream instead of answering from the capture")
    p.add_argument("--quiet", action="store_true", help="print only runs that changed")

    p = add("steps", "list every registered step with its parameters", ["engine steps", "engine steps | grep anthropic", "engine steps --format markdown   # the README's step catalogue"])
    p.add_argument("--format", default="text", choices=["text", "markdown"])

    p = add("doctor", "check the configuration, the pipelines and the upstream, and say what clients need", ["engine doctor", "OPENROUTER_API_KEY=sk-or-... engine doctor", "engine doctor --providers ~/my-providers.yaml"])
    p.add_argument("--pipelines", default=None, metavar="DIR")
    p.add_argument("--providers", default=None, metavar="FILE", help="the upstream providers file (default: $ENGINE_PROVIDERS or providers.yaml in the pipeline directory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Like `python -m` and uvicorn: user steps named package.module:function import from here.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    handler = {"serve": cmd_serve, "check": cmd_check, "graph": cmd_graph, "run": cmd_run, "replay": cmd_replay, "steps": cmd_steps, "doctor": cmd_doctor}[args.command]
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


def _select(target: str, pipelines: str | None) -> tuple[list[Any], str]:
    """Load the pipeline set that contains `target` (a name or a file) and return its name."""
    path = Path(target)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        directory = str(path.parent)
        plans = load_plans([directory])
        for plan in plans:
            if Path(plan.file).resolve() == path.resolve():
                return plans, plan.name
    plans = load_plans([pipelines or default_pipelines()])
    names = [p.name for p in plans]
    if target not in names:
        raise EngineError(f"no pipeline named '{target}'; pipelines are: {', '.join(sorted(names))}")
    return plans, target


def cmd_check(args: argparse.Namespace) -> int:
    paths = args.paths or [default_pipelines()]
    files = pipeline_files(paths)
    if not files:
        print(f"no pipeline files in {', '.join(paths)}", file=sys.stderr)
        return 1
    plans = load_plans(paths)
    for plan in plans:
        print(f"{plan.file}: OK ({len(plan.nodes)} steps{', ' + ', '.join(f'{m} {p}' for m, p in plan.routes) if plan.routes else ''})")
    return 0


def cmd_graph(args: argparse.Namespace) -> int:
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
    """The step timeline of one captured run of `pipeline`."""
    from engine.replay import Captured, read_captures

    chosen = None
    for item in read_captures([capture]):
        if not isinstance(item, Captured):
            continue
        ran = {t.get("pipeline", item.record.get("pipeline")) for t in item.record.get("trace") or []}
        if pipeline in ran and (run is None or item.record.get("request_id") == run):
            chosen = item
    if chosen is None:
        which = f"run '{run}' of pipeline '{pipeline}'" if run else f"a run of pipeline '{pipeline}'"
        raise EngineError(f"{capture} holds no {which}")
    return graphs.Trace.from_record(chosen.record, pipeline)


def cmd_replay(args: argparse.Namespace) -> int:
    from engine.replay import CaptureProblem, read_captures, replay_one

    logs.configure(os.environ.get("ENGINE_LOG_FORMAT", "console"), os.environ.get("ENGINE_LOG_LEVEL", "error"))
    engine = Engine(load_plans([args.pipelines or default_pipelines()]))
    items = list(read_captures(args.captures))
    runs = [i for i in items if not isinstance(i, CaptureProblem)]
    problems = [i for i in items if isinstance(i, CaptureProblem)]
    utf8 = (sys.stdout.encoding or "").lower().startswith("utf")
    same_mark, diff_mark = ("✓", "✗") if utf8 else ("ok", "CHANGED")
    print(f"replaying {len(runs)} run{'s' if len(runs) != 1 else ''} {'live against the upstream' if args.live else 'offline'}")
    counts = {"same": 0, "changed": 0, "skipped": 0}

    async def go() -> None:
        for n, captured in enumerate(runs, 1):
            result = await replay_one(engine, captured, realtime=args.realtime, live=args.live)
            progress = f"[{n}/{len(runs)}]"
            if result.skipped:
                counts["skipped"] += 1
                if not args.quiet:
                    print(f"  - {progress} {captured.label} skipped: {result.skipped}")
                continue
            if result.same:
                counts["same"] += 1
                if not args.quiet:
                    print(f"  {same_mark} {progress} {captured.label} same ({result.seconds * 1000:.1f} ms)")
                continue
            counts["changed"] += 1
            changes = result.input_changes + result.output_changes + ([result.error] if result.error else [])
            print(f"  {diff_mark} {progress} {captured.label}: {len(changes)} difference{'s' if len(changes) != 1 else ''}")
            for line in changes[:40]:
                print(f"      {line}")
            if len(changes) > 40:
                print(f"      ... and {len(changes) - 40} more")
        await engine.aclose()

    anyio.run(go)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    print(f"{counts['same']} same, {counts['changed']} changed" + (f", {counts['skipped']} skipped" if counts["skipped"] else "") + (f", {len(problems)} unreadable" if problems else ""))
    if counts["changed"]:
        return 1
    return 2 if problems else 0


def _read_input(path: str) -> Any:
    import yaml

    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return yaml.safe_load(text)


def cmd_run(args: argparse.Namespace) -> int:
    logs.configure(os.environ.get("ENGINE_LOG_FORMAT", "console"), os.environ.get("ENGINE_LOG_LEVEL", "warning"))
    plans, name = _select(args.pipeline, args.pipelines)
    data = _read_input(args.input)
    engine = Engine(plans)

    async def go() -> int:
        ctx = engine.context(name, data)
        try:
            out = await engine.run(name, data, ctx=ctx)
            status = 0
            if isinstance(out, Reply):
                status = 0 if out.status < 400 else 1
                out = out.stream if out.stream is not None else out.body
            if is_stream(out):
                async for item in out:
                    _print_item(item)
            else:
                _print_item(out)
            return status
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
    rows = ["| step | what it does |", "| --- | --- |"]
    for info in registry.catalogue():
        params = ", ".join(info.params)
        flags = "".join(f" *({f})*" for f, on in (("stream", info.streams), ("side effects", info.side_effects)) if on)
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

    anyio.run(run_checks)
    for f in findings:
        print(f"{marks.get(f.status, '?')} {f.message}")
        if f.fix:
            for line in f.fix.splitlines():
                print(f"    {line}")
    return 1 if any(f.status == "fail" for f in findings) else 0


def cmd_steps(args: argparse.Namespace) -> int:
    if args.format == "markdown":
        print(catalogue_markdown(), end="")
        return 0
    for info in registry.catalogue():
        params = ", ".join(p.describe() for p in info.params.values())
        flags = [f for f, on in (("stream", info.streams), ("side effects", info.side_effects)) if on]
        print(f"{info.name}({params})" + (f"  [{', '.join(flags)}]" if flags else ""))
        print(f"    {info.summary}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    pipelines = args.pipelines or default_pipelines()
    _use_providers(pipelines, args.providers)
    if args.capture:
        os.environ["ENGINE_CAPTURE_DIR"] = args.capture
    if args.reload:
        os.environ["ENGINE_RELOAD"] = "1"
    if args.log_format:
        os.environ["ENGINE_LOG_FORMAT"] = args.log_format
    if args.log_level:
        os.environ["ENGINE_LOG_LEVEL"] = args.log_level
    logs.configure()
    keys = [k for k in os.environ.get("ENGINE_API_KEYS", "").split(",") if k.strip()]
    if not keys and not _is_loopback(args.host) and not args.allow_unauthenticated:
        print(
            f"engine: refusing to serve {args.host} without inbound keys: anyone who can reach it could use it. "
            "Set ENGINE_API_KEYS=key1,key2 (clients send one as x-api-key or Bearer), "
            "or pass --allow-unauthenticated if something in front of it authenticates.",
            file=sys.stderr,
        )
        return 1
    unsafe = _writable_by_others(pipelines)
    if unsafe:
        print(f"engine: refusing to serve: {unsafe} is writable by group or others, and pipeline files run code (chmod go-w it)", file=sys.stderr)
        return 1
    plans = load_plans([pipelines])  # fail here, before binding, with every error listed
    routes = [f"{m} {p} -> {plan.name}" for plan in plans for m, p in plan.routes]
    print(f"engine serving http://{args.host}:{args.port} ({len(plans)} pipelines from {pipelines})", file=sys.stderr)
    for line in routes:
        print(f"  {line}", file=sys.stderr)
    if args.capture:
        print(f"  capturing every run into {args.capture}", file=sys.stderr)
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

    root = Path(pipelines)
    for p in [root, *pipeline_files([root])]:
        try:
            if p.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                return str(p)
        except OSError:
            continue
    return None


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
