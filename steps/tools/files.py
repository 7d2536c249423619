"""File tools run by the gateway inside the workspace: Read, Write, Edit, MultiEdit, LS, Glob,
Grep, NotebookRead, NotebookEdit, TodoRead, TodoWrite.

Each is a plain sync function `(workspace, limits, input) -> str` that runs in a worker
thread and raises `ToolRefused` with a one-line reason; every read and every walk is capped
(bytes, lines, entries, time), so no input makes one of them unbounded. Names and inputs
follow Claude Code's tools, so a model trained on those calls them correctly.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from steps.tools.workspace import ToolRefused, Workspace


@dataclass(frozen=True, slots=True)
class FileLimits:
    """Caps for the file tools (from the pipeline YAML)."""

    read_lines: int = 2000
    read_line_chars: int = 2000
    read_bytes: int = 512 * 1024
    max_file_bytes: int = 10 * 1024 * 1024
    list_entries: int = 1000
    walk_entries: int = 100_000
    walk_seconds: float = 10.0
    results: int = 1000
    grep_seconds: float = 10.0
    grep_file_bytes: int = 10 * 1024 * 1024
    output_chars: int = 100_000


def _str(value: Any, name: str, *, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and value == ""):
        raise ToolRefused(f"'{name}' must be a non-empty string")
    return value


def _int(value: Any, name: str, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ToolRefused(f"'{name}' must be a non-negative integer")
    return value


def cap_text(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[output truncated: {len(text)} characters, showing the first {limit}]"


# -- Read ------------------------------------------------------------------------------------


def read(ws: Workspace, lim: FileLimits, args: dict) -> str:
    real = ws.resolve(_str(args.get("file_path"), "file_path"), must_exist=True)
    offset = max(1, _int(args.get("offset"), "offset", 1))
    count = min(_int(args.get("limit"), "limit", lim.read_lines) or lim.read_lines, lim.read_lines)
    fd, st = ws.open_regular(real)
    shown = ws.display(real)
    lines: list[str] = []
    scanned = 0
    line_no = 0
    more = False
    with os.fdopen(fd, "rb", buffering=0) as f:
        head = f.read(8192)
        if b"\x00" in head:
            return f"{shown} is a binary file ({st.st_size} bytes); not shown"
        buf = head
        while True:
            while (nl := buf.find(b"\n")) >= 0 or (buf and len(buf) > lim.read_line_chars * 4):
                if nl < 0:  # an endless line: cut it, drop the rest of it
                    raw, buf = buf[: lim.read_line_chars * 4], b""
                else:
                    raw, buf = buf[:nl], buf[nl + 1 :]
                line_no += 1
                if line_no >= offset:
                    if len(lines) >= count:
                        more = True
                        break
                    text = raw.decode("utf-8", "replace")
                    if len(text) > lim.read_line_chars:
                        text = text[: lim.read_line_chars] + " [line truncated]"
                    lines.append(f"{line_no:6d}\t{text}")
            if more or scanned >= lim.read_bytes:
                break
            chunk = f.read(65536)
            if not chunk:
                if buf:
                    line_no += 1
                    if line_no >= offset and len(lines) < count:
                        lines.append(f"{line_no:6d}\t{buf.decode('utf-8', 'replace')[: lim.read_line_chars]}")
                    elif line_no >= offset:
                        more = True
                break
            scanned += len(chunk)
            buf += chunk
    out = "\n".join(lines) if lines else f"(no lines at offset {offset}; the file has {line_no} lines)" if st.st_size else "(empty file)"
    if more or scanned >= lim.read_bytes:
        out += (
            f"\n[truncated: {shown} is {st.st_size} bytes; showed lines {offset}-{offset + len(lines) - 1}; "
            "use offset and limit to read further]"
        )
    return out


# -- Write, Edit, MultiEdit ------------------------------------------------------------------


def write(ws: Workspace, lim: FileLimits, args: dict) -> str:
    real = ws.resolve(_str(args.get("file_path"), "file_path"))
    content = args.get("content")
    if not isinstance(content, str):
        raise ToolRefused("'content' must be a string")
    data = content.encode()
    if len(data) > lim.max_file_bytes:
        raise ToolRefused(f"content is {len(data)} bytes; the limit is {lim.max_file_bytes}")
    existed = os.path.lexists(real)
    ws.write_atomic(real, data)
    verb = "Updated" if existed else "Created"
    return f"{verb} {ws.display(real)} ({len(data)} bytes)"


def _read_whole(ws: Workspace, lim: FileLimits, real: str) -> str:
    fd, st = ws.open_regular(real)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if st.st_size > lim.max_file_bytes:
            raise ToolRefused(f"{ws.display(real)} is {st.st_size} bytes; the limit is {lim.max_file_bytes}")
        data = f.read(lim.max_file_bytes + 1)
    if len(data) > lim.max_file_bytes:
        raise ToolRefused(f"{ws.display(real)} is larger than {lim.max_file_bytes} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ToolRefused(f"{ws.display(real)} is not UTF-8 text") from None


def _apply(text: str, old: Any, new: Any, replace_all: Any, where: str) -> tuple[str, int]:
    old = _str(old, "old_string")
    if not isinstance(new, str):
        raise ToolRefused("'new_string' must be a string")
    if old == new:
        raise ToolRefused(f"{where}old_string and new_string are the same")
    n = text.count(old)
    if n == 0:
        raise ToolRefused(f"{where}old_string was not found in the file")
    if n > 1 and not replace_all:
        raise ToolRefused(f"{where}old_string occurs {n} times; give more context or set replace_all")
    return text.replace(old, new) if replace_all else text.replace(old, new, 1), n if replace_all else 1


def edit(ws: Workspace, lim: FileLimits, args: dict) -> str:
    real = ws.resolve(_str(args.get("file_path"), "file_path"), must_exist=True)
    text = _read_whole(ws, lim, real)
    text, n = _apply(text, args.get("old_string"), args.get("new_string"), args.get("replace_all"), "")
    ws.write_atomic(real, text.encode())
    return f"Edited {ws.display(real)}: {n} replacement{'s' if n != 1 else ''}"


def multi_edit(ws: Workspace, lim: FileLimits, args: dict) -> str:
    real = ws.resolve(_str(args.get("file_path"), "file_path"), must_exist=True)
    edits = args.get("edits")
    if not isinstance(edits, list) or not edits or not all(isinstance(e, dict) for e in edits):
        raise ToolRefused("'edits' must be a non-empty list of {old_string, new_string} objects")
    text = _read_whole(ws, lim, real)
    total = 0
    for i, e in enumerate(edits):  # all or nothing: the file is written once, at the end
        text, n = _apply(text, e.get("old_string"), e.get("new_string"), e.get("replace_all"), f"edit {i + 1}: ")
        total += n
    ws.write_atomic(real, text.encode())
    return f"Applied {len(edits)} edits ({total} replacements) to {ws.display(real)}"


# -- LS, Glob, Grep --------------------------------------------------------------------------


def ls(ws: Workspace, lim: FileLimits, args: dict) -> str:
    real = ws.resolve(args.get("path") or None, must_exist=True)
    ignore = args.get("ignore") or []
    from wcmatch import glob as wglob  # imported when a tool runs, not when pipelines load

    matcher = wglob.compile([p for p in ignore if isinstance(p, str)], flags=wglob.GLOBSTAR | wglob.DOTGLOB) if ignore else None
    if not os.path.isdir(real) or os.path.islink(real):
        raise ToolRefused(f"{ws.display(real)} is not a directory")
    out: list[str] = []
    total = 0
    with os.scandir(real) as it:
        for entry in it:
            if matcher is not None and matcher.match(entry.name):
                continue
            total += 1
            if len(out) < lim.list_entries:
                suffix = "@" if entry.is_symlink() else "/" if entry.is_dir(follow_symlinks=False) else ""
                out.append(entry.name + suffix)
    out.sort()
    text = f"{ws.display(real)}:\n" + ("\n".join(f"  {name}" for name in out) if out else "  (empty)")
    if total > len(out):
        text += f"\n[truncated: {total} entries, showing {len(out)}]"
    return text


class _Walk:
    """A bounded walk of regular files under a directory: symlinks are never followed (so a
    loop `W/loop -> .` costs one entry), and it stops after `max_entries` or `seconds`."""

    def __init__(self, top: str, max_entries: int, seconds: float) -> None:
        self.top = top
        self.max_entries = max_entries
        self.deadline = time.monotonic() + seconds
        self.visited = 0
        self.stopped: str | None = None

    def files(self) -> Iterator[tuple[str, os.DirEntry[str]]]:
        stack = [self.top]
        while stack:
            d = stack.pop()
            try:
                it = os.scandir(d)
            except OSError:
                continue
            with it:
                for entry in it:
                    self.visited += 1
                    if self.visited > self.max_entries:
                        self.stopped = f"stopped after {self.max_entries} entries"
                        return
                    if self.visited % 1024 == 0 and time.monotonic() > self.deadline:
                        self.stopped = "stopped at the time limit"
                        return
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            yield os.path.relpath(entry.path, self.top), entry
                    except OSError:
                        continue


def _pattern(value: Any, name: str) -> str:
    pattern = _str(value, name)
    if os.path.isabs(pattern) or ".." in pattern.split("/"):
        raise ToolRefused(f"{name} {pattern!r} must be relative to the search directory, without '..'")
    return pattern


def glob(ws: Workspace, lim: FileLimits, args: dict) -> str:
    pattern = _pattern(args.get("pattern"), "pattern")
    top = ws.resolve(args.get("path") or None, must_exist=True)
    if not os.path.isdir(top):
        raise ToolRefused(f"{ws.display(top)} is not a directory")
    from wcmatch import glob as wglob

    matcher = wglob.compile(pattern, flags=wglob.GLOBSTAR | wglob.BRACE | wglob.DOTGLOB)
    walk = _Walk(top, lim.walk_entries, lim.walk_seconds)
    found: list[str] = []
    more = 0
    for rel, _entry in walk.files():
        if matcher.match(rel):
            if len(found) < lim.results:
                found.append(rel)
            else:
                more += 1
    found.sort()
    base = ws.display(top)
    lines = [p if base == "." else f"{base}/{p}" for p in found]
    text = "\n".join(lines) if lines else "No files found"
    if more:
        text += f"\n[truncated: showing {len(found)} of {len(found) + more} matches]"
    if walk.stopped:
        text += f"\n[search {walk.stopped}; results may be incomplete]"
    return text


def grep(ws: Workspace, lim: FileLimits, args: dict) -> str:
    """ripgrep-like search with a time budget: the `regex` module's `timeout` interrupts a
    catastrophic pattern such as `(a+)+$`, which the standard `re` cannot."""
    source = _str(args.get("pattern"), "pattern")
    import regex
    from wcmatch import glob as wglob

    flags = regex.MULTILINE | (regex.IGNORECASE if args.get("-i") else 0)
    if args.get("multiline"):
        flags |= regex.DOTALL
    try:
        compiled = regex.compile(source, flags)
    except regex.error as exc:
        raise ToolRefused(f"invalid regular expression: {exc}") from None
    top = ws.resolve(args.get("path") or None, must_exist=True)
    mode = args.get("output_mode") or "files_with_matches"
    if mode not in ("content", "files_with_matches", "count"):
        raise ToolRefused("output_mode must be content, files_with_matches or count")
    file_glob = args.get("glob")
    matcher = wglob.compile(_pattern(file_glob, "glob"), flags=wglob.GLOBSTAR | wglob.BRACE | wglob.DOTGLOB | wglob.MATCHBASE) if file_glob else None
    head_limit = _int(args.get("head_limit"), "head_limit", lim.results) or lim.results
    context = _int(args.get("-C"), "-C", 0)
    before = _int(args.get("-B"), "-B", context)
    after = _int(args.get("-A"), "-A", context)
    numbers = bool(args.get("-n", True))
    deadline = time.monotonic() + lim.grep_seconds

    if os.path.isfile(top):
        fd, _st = ws.open_regular(top)
        os.close(fd)
        files: Iterator[tuple[str, Any]] = iter([(ws.display(top), None)])
        walk = None
        base = ws.root
    else:
        walk = _Walk(top, lim.walk_entries, lim.grep_seconds)
        files = walk.files()
        base = top
    out: list[str] = []
    for rel, _entry in files:
        if len(out) >= head_limit:
            break
        if matcher is not None and not matcher.match(rel):
            continue
        real = os.path.join(base, rel)
        try:
            fd, st = ws.open_regular(real)
        except ToolRefused:
            continue
        with os.fdopen(fd, "rb", buffering=0) as f:
            data = f.read(lim.grep_file_bytes)
        if b"\x00" in data[:8192]:
            continue
        text = data.decode("utf-8", "replace")
        shown = ws.display(real)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ToolRefused(f"grep timed out after {lim.grep_seconds:g} s")
        try:
            if mode == "files_with_matches":
                if compiled.search(text, timeout=remaining):
                    out.append(shown)
                continue
            matches = list(compiled.finditer(text, timeout=remaining))
        except TimeoutError:
            raise ToolRefused(f"grep timed out after {lim.grep_seconds:g} s (pattern too expensive?)") from None
        if not matches:
            continue
        if mode == "count":
            out.append(f"{shown}:{len(matches)}")
            continue
        starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        all_lines = text.split("\n")
        wanted: set[int] = set()
        for m in matches:
            ln = bisect.bisect_right(starts, m.start()) - 1
            wanted.update(range(max(0, ln - before), min(len(all_lines), ln + after + 1)))
        for ln in sorted(wanted):
            line = all_lines[ln][:2000]
            out.append(f"{shown}:{ln + 1}:{line}" if numbers else f"{shown}:{line}")
            if len(out) >= head_limit:
                break
    result = "\n".join(out[:head_limit]) if out else "No matches found"
    if walk is not None and walk.stopped:
        result += f"\n[search {walk.stopped}; results may be incomplete]"
    return cap_text(result, lim.output_chars)


# -- Notebooks -------------------------------------------------------------------------------


def _load_notebook(ws: Workspace, lim: FileLimits, path: Any) -> tuple[str, dict]:
    real = ws.resolve(_str(path, "notebook_path"), must_exist=True)
    try:
        nb = orjson.loads(_read_whole(ws, lim, real))
    except orjson.JSONDecodeError:
        raise ToolRefused(f"{ws.display(real)} is not a valid notebook (bad JSON)") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ToolRefused(f"{ws.display(real)} is not a notebook (no cells)")
    return real, nb


def _source(cell: dict) -> str:
    src = cell.get("source")
    return "".join(src) if isinstance(src, list) else src if isinstance(src, str) else ""


def notebook_read(ws: Workspace, lim: FileLimits, args: dict) -> str:
    real, nb = _load_notebook(ws, lim, args.get("notebook_path"))
    want = args.get("cell_id")
    parts = []
    for i, cell in enumerate(nb["cells"]):
        if not isinstance(cell, dict):
            continue
        cid = cell.get("id") or f"cell-{i}"
        if want is not None and want != cid:
            continue
        parts.append(f'<cell id="{cid}" type="{cell.get("cell_type", "code")}">\n{_source(cell)}\n</cell>')
    if want is not None and not parts:
        raise ToolRefused(f"no cell with id {want!r} in {ws.display(real)}")
    return cap_text("\n".join(parts) or "(no cells)", lim.output_chars)


def notebook_edit(ws: Workspace, lim: FileLimits, args: dict) -> str:
    real, nb = _load_notebook(ws, lim, args.get("notebook_path"))
    cells: list = nb["cells"]
    mode = args.get("edit_mode") or "replace"
    if mode not in ("replace", "insert", "delete"):
        raise ToolRefused("edit_mode must be replace, insert or delete")
    cid = args.get("cell_id")
    index = None
    if cid is not None:
        index = next((i for i, c in enumerate(cells) if isinstance(c, dict) and (c.get("id") or f"cell-{i}") == cid), None)
        if index is None:
            raise ToolRefused(f"no cell with id {cid!r}")
    source = args.get("new_source")
    if mode != "delete" and not isinstance(source, str):
        raise ToolRefused("'new_source' must be a string")
    if mode == "delete":
        if index is None:
            raise ToolRefused("delete needs a cell_id")
        cells.pop(index)
    elif mode == "insert":
        kind = args.get("cell_type") or "code"
        if kind not in ("code", "markdown"):
            raise ToolRefused("cell_type must be code or markdown")
        cell: dict[str, Any] = {"cell_type": kind, "id": os.urandom(4).hex(), "metadata": {}, "source": source}
        if kind == "code":
            cell.update(outputs=[], execution_count=None)
        cells.insert(0 if index is None else index + 1, cell)
    else:
        if index is None:
            raise ToolRefused("replace needs a cell_id")
        cells[index]["source"] = source
        if args.get("cell_type") in ("code", "markdown"):
            cells[index]["cell_type"] = args["cell_type"]
    data = orjson.dumps(nb, option=orjson.OPT_INDENT_2)
    if len(data) > lim.max_file_bytes:
        raise ToolRefused(f"the notebook would be {len(data)} bytes; the limit is {lim.max_file_bytes}")
    ws.write_atomic(real, data + b"\n")
    return f"{mode}d cell in {ws.display(real)}" if mode != "replace" else f"replaced cell {cid} in {ws.display(real)}"


# -- Todos -----------------------------------------------------------------------------------

TODO_FILE = ".agent/todos.json"


def todo_read(ws: Workspace, lim: FileLimits, args: dict) -> str:
    real = ws.resolve(TODO_FILE)
    if not os.path.lexists(real):
        return "[]"
    return _read_whole(ws, lim, real)


def todo_write(ws: Workspace, lim: FileLimits, args: dict) -> str:
    todos = args.get("todos")
    if not isinstance(todos, list) or not all(isinstance(t, dict) and isinstance(t.get("content"), str) for t in todos):
        raise ToolRefused("'todos' must be a list of objects with a 'content' string")
    for t in todos:
        if t.get("status", "pending") not in ("pending", "in_progress", "completed"):
            raise ToolRefused("todo status must be pending, in_progress or completed")
    data = orjson.dumps(todos)
    if len(data) > lim.max_file_bytes:
        raise ToolRefused("too many todos")
    ws.write_atomic(ws.resolve(TODO_FILE), data)
    return f"Saved {len(todos)} todos"

