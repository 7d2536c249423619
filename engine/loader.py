"""Reading pipeline files: YAML with positions, `${ENV:-default}` interpolation, references.

Only plain YAML is read (PyYAML's safe composer; any `!!python/...` or other custom tag is an
error, never constructed). Every scalar keeps its position so that every later error can
name `file:line:col`. Loading collects every error in the file and raises them together.

A value written once for several files lives in `vars.yaml` next to them (`NAME: value`,
`${ENV:-default}` allowed) or under a file's own `vars:`, and is used as `${{ vars.NAME }}`
(`${{ vars.NAME.key }}` for a part of it). Such a reference is replaced by its value while the
file loads, so it is checked like a value written in place; an unknown name is a located error.

A pipeline file is input like any other, so reading it is bounded: a file larger than
`MAX_DOCUMENT_BYTES` is refused unread, and aliases are counted as they are composed, before
anything is expanded: more than `MAX_ALIASES` alias uses, or aliases standing for more than
`MAX_ALIAS_NODES` nodes in all, is an error at the alias that crossed the line. That is what
keeps a "billion laughs" file (ten aliases of ten aliases of ...) a located error in
milliseconds instead of an expansion that eats the machine's memory.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.errors import Location, SpecError, SpecErrors
from engine.spec import PIPELINE_FIELDS, STEP_FIELDS, PipelineSpec

_STANDARD_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
    "tag:yaml.org,2002:timestamp",
}
_ENV = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
_RESOLVER = yaml.resolver.Resolver()
MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_ALIASES = 1000
MAX_ALIAS_NODES = 100_000
_REF = re.compile(r"^\$\{\{\s*(!?)\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}$")

VARS_FILE = "vars.yaml"
"""The shared variables of the pipelines in a directory (not a pipeline itself)."""
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Ref:
    """A reference to the run input or another step's output, e.g. `${{ steps.call.body }}`."""

    step: str | None  # None: the run input
    path: tuple[str, ...]
    negate: bool
    text: str
    location: Location | None = field(default=None, compare=False)
    facts: bool = False  # `${{ facts.STEP.KEY }}`: what the step told besides its output

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class VarRef:
    """`${{ vars.NAME.key }}` while a file loads; replaced by the value before anything else sees it."""

    name: str
    path: tuple[str, ...]
    negate: bool
    text: str
    location: Location


@dataclass(slots=True)
class Vars:
    """Named values pipeline files use as `${{ vars.NAME }}`: a default written once."""

    values: dict[str, Any] = field(default_factory=dict)
    file: str | None = None
    errors: list[SpecError] = field(default_factory=list)  # unset environment variables (lenient)


def load_vars(path: str | Path, env: dict[str, str] | None = None, *, lenient: bool = False) -> Vars:
    """Read a vars file (`NAME: value` per line; `${ENV:-default}` allowed); absent: no vars."""
    p = Path(path)
    if not p.is_file():
        return Vars()
    text = _read(p)
    reader = _Reader(str(p), os.environ if env is None else env)
    _check_size(text, str(p))
    node = _compose(text, str(p))
    data = {} if node is None else reader.value(node, ())
    errors = list(reader.errors)
    if not isinstance(data, dict):
        errors.append(SpecError("a vars file must be a mapping of names to values", reader.positions.get(()), "write e.g. base_url: https://example.com/v1"))
        data = {}
    for name in data:
        if not _VAR_NAME.match(name):
            errors.append(SpecError(f"'{name}' is not a variable name", reader.positions.get((name, "<key>")), "use letters, digits and _ (e.g. base_url)"))
    _refuse_refs(data, reader, (), errors)
    if errors:
        raise SpecErrors(reader.unset + without_echoes(errors, reader.unset))
    if reader.unset and not lenient:
        raise SpecErrors(reader.unset)
    return Vars(data, str(p), reader.unset)


def _refuse_refs(value: Any, reader: _Reader, path: Path_, errors: list[SpecError]) -> None:
    """A variable is a value: it refers to nothing (no step, no input, no other variable)."""
    if isinstance(value, (Ref, VarRef)):
        errors.append(SpecError(f"a variable cannot be a reference ('{value.text}')", value.location, "write the value itself"))
    elif isinstance(value, dict):
        for k, v in value.items():
            _refuse_refs(v, reader, (*path, k), errors)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _refuse_refs(v, reader, (*path, i), errors)


def vars_beside(path: str | Path) -> Path:
    """The vars file that goes with a pipeline file or directory."""
    p = Path(path)
    return (p if p.is_dir() else p.parent) / VARS_FILE


class _Located:
    """Positions and sources of a YAML file's values (a pipeline or a configuration file)."""

    __slots__ = ()
    file: str
    positions: dict[Path_, Location]
    sources: dict[Path_, str]

    def where(self, *path: str | int) -> Location:
        """The position of `path`, or of its nearest enclosing value that has one."""
        p: Path_ = tuple(path)
        while p:
            if p in self.positions:
                return self.positions[p]
            p = p[:-1]
        return self.positions.get((), Location(self.file, 1, 1))

    def shown(self, path: Path_, value: Any) -> str:
        """How to quote a value in a message: as written when it came from the environment,
        so an interpolated secret is never echoed."""
        raw = self.sources.get(tuple(path))
        return repr(raw) if raw is not None else repr(value)


@dataclass(slots=True)
class LoadedPipeline(_Located):
    """A parsed, schema-valid pipeline file, with the position of every value in it."""

    spec: PipelineSpec
    file: str
    positions: dict[Path_, Location]
    sources: dict[Path_, str] = field(default_factory=dict)
    errors: list[SpecError] = field(default_factory=list)
    """Errors that left the file's structure intact (an unset environment variable), kept
    when loading with `lenient=True` so the file is still checked with the others."""
    vars_used: dict[Path_, str] = field(default_factory=dict)
    """Where a `${{ vars.NAME }}` stood, and NAME (what `engine graph` notes)."""
    env: Any = field(default=None, repr=False)  # what `${VAR}` read: a file a parameter names is read with it too



def load_file(path: str | Path, env: dict[str, str] | None = None, *, lenient: bool = False, shared: Vars | None = None) -> LoadedPipeline:
    """Load one pipeline file; raises `SpecErrors` with every problem found in it.

    With `lenient`, an unset environment variable does not stop the load: its error is kept
    in the result's `errors`, so the file can still be checked (and its other mistakes, and
    those of the files that use it, reported in the same pass). `shared` are the variables of
    its directory; when not given, they are read from the `vars.yaml` beside the file.
    """
    p = Path(path)
    if shared is None:
        shared = load_vars(vars_beside(p), env, lenient=lenient)
    return load_text(_read(p), str(p), env=env, default_name=p.stem, lenient=lenient, shared=shared)


def _read(p: Path) -> str:
    try:
        with p.open("rb") as f:
            data = f.read(MAX_DOCUMENT_BYTES + 1)  # never more than the cap, whatever the file is
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecErrors([SpecError(f"cannot read pipeline file: {exc}", Location(str(p), 1, 1))]) from exc


class _AliasLimit(yaml.MarkedYAMLError):
    """Aliases beyond the caps: raised at the alias, before it is expanded."""


class _CappedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting alias uses and the nodes they stand for while composing.

    Composing never copies an alias's node (the tree shares it), so counting here is cheap;
    the expansion a bomb relies on would only happen later, when the tree is walked."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}  # id(node) -> nodes it stands for, once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if not self.check_event(yaml.AliasEvent):
            node = super().compose_node(parent, index)
            self._sizes[id(node)] = 1 + sum(self._sizes.get(id(child), 1) for child in _children(node))
            return node
        mark = self.peek_event().start_mark
        node = super().compose_node(parent, index)
        self._aliases += 1
        size = self._sizes.get(id(node))
        if size is None:
            raise _AliasLimit(None, None, "an alias refers to a node that contains it (a recursive structure)", mark, "a pipeline is a tree: write the repeated part out instead")
        self._alias_nodes += size
        if self._aliases > MAX_ALIASES:
            raise _AliasLimit(None, None, f"more than {MAX_ALIASES} YAML aliases", mark, "a pipeline file needs few anchors; write the values out")
        if self._alias_nodes > MAX_ALIAS_NODES:
            raise _AliasLimit(
                None, None, f"YAML aliases expand to more than {MAX_ALIAS_NODES} values (an alias bomb?)", mark, "the file is refused rather than expanded; write the values out"
            )
        return node


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_text(
    text: str,
    file: str = "<string>",
    env: dict[str, str] | None = None,
    default_name: str | None = None,
    *,
    lenient: bool = False,
    shared: Vars | None = None,
) -> LoadedPipeline:
    """Load a pipeline from YAML text (`file` is only used in messages); `shared` are the
    variables its `${{ vars.NAME }}` references may name besides its own `vars:`."""
    reader = _Reader(file, os.environ if env is None else env)
    _check_size(text, file)
    node = _compose(text, file)
    if node is None:
        raise SpecErrors([SpecError("the file is empty", Location(file, 1, 1), "a pipeline needs `steps:` and `output:`")])
    data = reader.value(node, ())
    errors, unset = reader.errors, reader.unset
    if not isinstance(data, dict):
        errors.append(SpecError("a pipeline file must be a mapping", reader.positions.get(()), "start with `name:`, `steps:` and `output:`"))
        raise SpecErrors(unset + errors)
    used: dict[Path_, str] = {}
    data = _fill_vars(data, shared or Vars(), reader, used)
    if "name" not in data and default_name is not None:
        data["name"] = default_name
    loaded = LoadedPipeline(spec=None, file=file, positions=reader.positions, sources=reader.sources, vars_used=used, env=reader.env)  # type: ignore[arg-type]
    try:
        loaded.spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        errors.extend(_explain(e, loaded) for e in exc.errors())
    if errors:
        raise SpecErrors(unset + without_echoes(errors, unset))
    if unset and not lenient:
        raise SpecErrors(unset)
    loaded.errors = unset
    return loaded


def _fill_vars(data: dict[str, Any], shared: Vars, reader: _Reader, used: dict[Path_, str]) -> dict[str, Any]:
    """Take the file's own `vars:` out and replace every `${{ vars.NAME }}` by its value."""
    own = data.pop("vars", None)
    scope = dict(shared.values)
    if own is not None:
        if not isinstance(own, dict):
            reader.errors.append(SpecError("`vars` must be a mapping of names to values", reader.positions.get(("vars",)), "write e.g. vars: {base_url: https://example.com/v1}"))
        else:
            for name, value in own.items():
                if not _VAR_NAME.match(name):
                    reader.errors.append(SpecError(f"'{name}' is not a variable name", reader.positions.get(("vars", name, "<key>")), "use letters, digits and _ (e.g. base_url)"))
                _refuse_refs(value, reader, ("vars", name), reader.errors)
                scope[name] = value
    where = f"{shared.file} or " if shared.file else f"a {VARS_FILE} beside the file or "

    def fill(value: Any, path: Path_) -> Any:
        if isinstance(value, VarRef):
            if value.name not in scope:
                close = difflib.get_close_matches(value.name, list(scope), n=1)
                hint = f"did you mean 'vars.{close[0]}'?" if close else f"define it in {where}under the file's `vars:`"
                reader.errors.append(SpecError(f"unknown variable 'vars.{value.name}'", value.location, hint))
                return None
            out = scope[value.name]
            for i, key in enumerate(value.path):
                if not isinstance(out, dict) or key not in out:
                    reader.errors.append(SpecError(f"'vars.{'.'.join([value.name, *value.path[: i + 1]])}' does not exist", value.location, "name a key the variable has"))
                    return None
                out = out[key]
            if value.negate:
                if not isinstance(out, bool):
                    reader.errors.append(SpecError(f"'{value.text}' negates a value that is not true or false", value.location, "negate only a boolean variable"))
                    return None
                out = not out
            used[path] = value.name
            reader.sources[path] = value.text  # messages quote the reference, never the value (it may be a key)
            return copy.deepcopy(out)
        if isinstance(value, dict):
            return {k: fill(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v, (*path, i)) for i, v in enumerate(value)]
        return value

    return fill(data, ())


def _check_size(text: str, file: str) -> None:
    if len(text.encode("utf-8")) > MAX_DOCUMENT_BYTES:
        raise SpecErrors([SpecError(f"the file is larger than {MAX_DOCUMENT_BYTES} bytes", Location(file, 1, 1), "a pipeline file is a page of YAML; split it into pipelines that run each other")])


def without_echoes(errors: list[SpecError], causes: list[SpecError]) -> list[SpecError]:
    """`errors` minus those at the position of one of `causes` (an unset variable reads as
    "", so the value it was in may be reported again as mistyped: one message is enough)."""
    at = {c.location for c in causes}
    return [e for e in errors if e.location not in at]


def _compose(text: str, file: str) -> yaml.Node | None:
    """The YAML node tree of a text (None when empty); a syntax error is a located SpecErrors."""
    try:
        return yaml.compose(text, Loader=_CappedLoader)
    except _AliasLimit as exc:
        mark = exc.problem_mark
        raise SpecErrors([SpecError(str(exc.problem), Location(file, mark.line + 1, mark.column + 1), exc.note or "")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        hint = ""
        if exc.context and exc.context_mark is not None and exc.problem_mark is not None and exc.context_mark.line != exc.problem_mark.line:
            opened = re.sub(r"^while parsing (an? )?", "", exc.context)
            hint = f"the {opened} opened at {exc.context_mark.line + 1}:{exc.context_mark.column + 1} may be missing its closing bracket"
        raise SpecErrors([SpecError(f"invalid YAML: {exc.problem or exc}", loc, hint)]) from None


@dataclass(slots=True)
class Document(_Located):
    """A YAML file other than a pipeline (a step package's configuration), read the same way:
    plain YAML, `${ENV:-default}` interpolated, the position of every value kept."""

    data: Any
    file: str
    positions: dict[Path_, Location]
    sources: dict[Path_, str] = field(default_factory=dict)


def read_document(path: str | Path, env: Any = None) -> Document:
    """Read a YAML configuration file; raises `SpecErrors` (located) for what YAML or the
    environment get wrong. Validating its content is the caller's job, with `where()`."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_DOCUMENT_BYTES:
            raise SpecErrors([SpecError(f"the file is larger than {MAX_DOCUMENT_BYTES} bytes", Location(str(p), 1, 1))])
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecErrors([SpecError(f"cannot read {p.name}: {exc}", Location(str(p), 1, 1))]) from exc
    reader = _Reader(str(p), os.environ if env is None else env)
    node = _compose(text, str(p))
    data = reader.value(node, ()) if node is not None else None
    if reader.errors or reader.unset:
        raise SpecErrors(reader.errors + reader.unset)
    return Document(data, str(p), reader.positions, reader.sources)


class _Reader:
    """Turns composed YAML nodes into Python values, recording positions and errors."""

    def __init__(self, file: str, env: Any) -> None:
        self.file = file
        self.env = env
        self.positions: dict[Path_, Location] = {}
        self.sources: dict[Path_, str] = {}
        self.errors: list[SpecError] = []
        self.unset: list[SpecError] = []  # unset environment variables

    def loc(self, node: yaml.Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def value(self, node: yaml.Node, path: Path_) -> Any:
        self.positions[path] = self.loc(node)
        if node.tag not in _STANDARD_TAGS:
            self.errors.append(
                SpecError(
                    f"unknown tag '{node.tag.replace('tag:yaml.org,2002:', '!!')}'",
                    self.loc(node),
                    "pipeline files are plain YAML: remove the tag (tags that build Python objects are never run)",
                )
            )
            return None
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.errors.append(SpecError("YAML merge keys (<<) are not supported", self.loc(key_node), "write the keys out"))
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    self.errors.append(SpecError("mapping keys must be plain words", self.loc(key_node)))
                    continue
                # Keys are names, never YAML 1.1 booleans: `on:` stays "on", as in GitHub Actions.
                key = key_node.value
                if key in out:
                    self.errors.append(SpecError(f"duplicate key '{key}'", self.loc(key_node), "each key may appear once; remove one of them"))
                    continue
                self.positions[path + (key, "<key>")] = self.loc(key_node)
                out[key] = self.value(value_node, path + (key,))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.value(item, path + (i,)) for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        raw = node.value
        if "$" in raw:
            interpolated = self.interpolate(raw, node)
            if interpolated != raw:
                self.sources[path] = raw
                if node.style is None and _ENV.fullmatch(raw) and interpolated != "":
                    # A plain scalar that was one variable: give it YAML's type (64 -> int).
                    tag = _RESOLVER.resolve(yaml.ScalarNode, interpolated, (True, False))
                    node = yaml.ScalarNode(tag, interpolated, node.start_mark, node.end_mark, node.style)
                else:
                    node = yaml.ScalarNode("tag:yaml.org,2002:str", interpolated, node.start_mark, node.end_mark, node.style)
                raw = interpolated
        if node.tag == "tag:yaml.org,2002:str" and "${{" in raw:
            return self.reference(raw, node)
        return _CONSTRUCTOR.construct_object(node)  # plain scalars only: no tags beyond YAML's own

    def interpolate(self, raw: str, node: yaml.Node) -> str:
        def sub(m: re.Match[str]) -> str:
            escaped, name, default = m.group(1), m.group(2), m.group(3)
            if escaped:
                return m.group(0)[1:]
            value = self.env.get(name)
            if value is None or (value == "" and ":-" in m.group(0)):
                if default is None:
                    self.unset.append(
                        SpecError(
                            f"environment variable '{name}' is not set",
                            self.loc(node),
                            f"set it, or give a default: ${{{name}:-value}}",
                        )
                    )
                    return ""
                return default
            return value

        return _ENV.sub(sub, raw)

    def reference(self, raw: str, node: yaml.Node) -> Any:
        m = _REF.match(raw.strip())
        loc = self.loc(node)
        if not m:
            self.errors.append(
                SpecError(
                    f"'{raw}' is not a reference",
                    loc,
                    "a reference is a whole value: ${{ input }}, ${{ input.key }} or ${{ steps.NAME.key }}",
                )
            )
            return None
        negate, dotted = m.group(1) == "!", m.group(2).split(".")
        if dotted[0] == "input":
            return Ref(None, tuple(dotted[1:]), negate, raw.strip(), loc)
        if dotted[0] == "steps" and len(dotted) >= 2 and dotted[1]:
            return Ref(dotted[1], tuple(dotted[2:]), negate, raw.strip(), loc)
        if dotted[0] == "vars" and len(dotted) >= 2 and dotted[1]:
            return VarRef(dotted[1], tuple(dotted[2:]), negate, raw.strip(), loc)
        if dotted[0] == "facts" and len(dotted) >= 2 and dotted[1]:
            return Ref(dotted[1], tuple(dotted[2:]), negate, raw.strip(), loc, facts=True)
        self.errors.append(
            SpecError(
                f"unknown reference '{m.group(2)}'",
                loc,
                "references start with 'input', 'steps.NAME', 'vars.NAME' or 'facts.NAME', e.g. ${{ steps.clean.body }}",
            )
        )
        return None


def _explain(err: Any, loaded: LoadedPipeline) -> SpecError:
    """Turn one pydantic error into a located message a pipeline author can act on."""
    loc_path = tuple(x for x in err["loc"] if not (isinstance(x, str) and x in {"str", "list[str]", "function-before[parse_duration(), float]"}))
    typ, msg = err["type"], err["msg"]
    in_step = len(loc_path) >= 2 and loc_path[0] == "steps"
    where_text = f"step '{loc_path[1]}'" if in_step else "the pipeline"
    if typ == "extra_forbidden":
        field_name = str(loc_path[-1])
        allowed = STEP_FIELDS if in_step and len(loc_path) == 3 else PIPELINE_FIELDS if len(loc_path) == 1 else None
        close = difflib.get_close_matches(field_name, allowed or [], n=1)
        hint = f"did you mean '{close[0]}'?" if close else (f"allowed: {', '.join(allowed)}" if allowed else "remove it")
        return SpecError(f"unknown field '{field_name}' in {where_text}", loaded.where(*loc_path[:-1], field_name, "<key>") or loaded.where(*loc_path), hint)
    if typ == "missing":
        field_name = str(loc_path[-1])
        hints = {
            "uses": "add `uses: <step name>` (see `engine steps`)",
            "output": "add `output: ${{ steps.LAST }}` naming what the pipeline returns",
            "steps": "add `steps:` with at least one step",
            "max": "add `max: N` (how many holders at once)",
        }
        return SpecError(f"{where_text} has no '{field_name}'", loaded.where(*loc_path[:-1]), hints.get(field_name, f"add `{field_name}:`"))
    inner = loc_path[2:] if in_step else loc_path
    dotted = ".".join(str(x) for x in inner) or "value"
    value = err.get("input")
    shown = f" (got {loaded.shown(loc_path, value)})" if not isinstance(value, (dict, list)) else ""
    text = msg.removeprefix("Input ").removeprefix("Value error, ")
    return SpecError(f"{where_text}: '{dotted}' {text}{shown}", loaded.where(*loc_path))
