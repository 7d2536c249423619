"""File tools run by the gateway inside the workspace: Read, Write, Edit, MultiEdit, LS, Glob,
Grep, NotebookRead, NotebookEdit, TodoRead, TodoWrite.

Each is a plain sync function `(workspace, limits, input) -> str` that runs in a worker
thread and raises `ToolRefused` with a one-line reason; every read and every walk is capped
(bytes, lines, entries, time), so no input makes one of them unbounded. Names and inputs
follow Claude Code's tools, so a model trained on those calls them correctly.

None of them opens a path by name from the root: every file and directory is reached through
`Workspace` (one component at a time, each relative to an open directory descriptor, links
never followed), and walks descend through directory descriptors the same way, so what they
touch is beneath the workspace whatever happens to the tree while they run.
"""

from __future__ import annotations

import bisect
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from steps.tools.workspace import MAX_DEPTH, Place, ToolRefused, Workspace, open_regular_at


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
    path = _str(args.get("file_path"), "file_path")
    offset = max(1, _int(args.get("offset"), "offset", 1))
    count = min(_int(args.get("limit"), "limit", lim.read_lines) or lim.read_lines, lim.read_lines)
    with ws.place(path) as place:
        fd, st = ws.open_regular(place)
    shown = place.shown
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
    path = _str(args.get("file_path"), "file_path")
    content = args.get("content")
    if not isinstance(content, str):
        raise ToolRefused("'content' must be a string")
    data = content.encode()
    if len(data) > lim.max_file_bytes:
        raise ToolRefused(f"content is {len(data)} bytes; the limit is {lim.max_file_bytes}")
    with ws.place(path, create_parents=True) as place:
        existed = ws.check_writable_target(place)
        ws.write_atomic(place, data)
    verb = "Updated" if existed else "Created"
    return f"{verb} {place.shown} ({len(data)} bytes)"


def _read_whole(ws: Workspace, lim: FileLimits, place: Place) -> str:
    fd, st = ws.open_regular(place)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if st.st_size > lim.max_file_bytes:
            raise ToolRefused(f"{place.shown} is {st.st_size} bytes; the limit is {lim.max_file_bytes}")
        data = f.read(lim.max_file_bytes + 1)
    if len(data) > lim.max_file_bytes:
        raise ToolRefused(f"{place.shown} is larger than {lim.max_file_bytes} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ToolRefused(f"{place.shown} is not UTF-8 text") from None


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
    with ws.place(_str(args.get("file_path"), "file_path")) as place:
        text = _read_whole(ws, lim, place)
        text, n = _apply(text, args.get("old_string"), args.get("new_string"), args.get("replace_all"), "")
        ws.write_atomic(place, text.encode())
    return f"Edited {place.shown}: {n} replacement{'s' if n != 1 else ''}"


def multi_edit(ws: Workspace, lim: FileLimits, args: dict) -> str:
    path = _str(args.get("file_path"), "file_path")
    edits = args.get("edits")
    if not isinstance(edits, list) or not edits or not all(isinstance(e, dict) for e in edits):
        raise ToolRefused("'edits' must be a non-empty list of {old_string, new_string} objects")
    with ws.place(path) as place:
        text = _read_whole(ws, lim, place)
        total = 0
        for i, e in enumerate(edits):  # all or nothing: the file is written once, at the end
            text, n = _apply(text, e.get("old_string"), e.get("new_string"), e.get("replace_all"), f"edit {i + 1}: ")
            total += n
        ws.write_atomic(place, text.encode())
    return f"Applied {len(edits)} edits ({total} replacements) to {place.shown}"


# -- LS, Glob, Grep --------------------------------------------------------------------------


def ls(ws: Workspace, lim: FileLimits, args: dict) -> str:
    ignore = args.get("ignore") or []
    from wcmatch import glob as wglob  # imported when a tool runs, not when pipelines load

    matcher = wglob.compile([p for p in ignore if isinstance(p, str)], flags=wglob.GLOBSTAR | wglob.DOTGLOB) if ignore else None
    out: list[str] = []
    total = 0
    with ws.directory(args.get("path") or None) as (fd, shown), os.scandir(fd) as it:
        for entry in it:
            if matcher is not None and matcher.match(entry.name):
                continue
            total += 1
            if len(out) < lim.list_entries:
                suffix = "@" if entry.is_symlink() else "/" if entry.is_dir(follow_symlinks=False) else ""
                out.append(entry.name + suffix)
    out.sort()
    text = f"{shown}:\n" + ("\n".join(f"  {name}" for name in out) if out else "  (empty)")
    if total > len(out):
        text += f"\n[truncated: {total} entries, showing {len(out)}]"
    return text


class _Walk:
    """A bounded walk of the regular files beneath an open directory, through descriptors only.

    Each subdirectory is opened relative to its parent's descriptor with `O_NOFOLLOW`, so a
    symlink is never followed (a loop `W/loop -> .` costs one entry) and a directory swapped
    for a link mid-walk is skipped, not entered. It stops after `max_entries` entries,
    `seconds`, or `MAX_DEPTH` levels down.
    """

    def __init__(self, max_entries: int, seconds: float) -> None:
        self.max_entries = max_entries
        self.deadline = time.monotonic() + seconds
        self.visited = 0
        self.stopped: str | None = None

    def files(self, top_fd: int) -> Iterator[tuple[str, int, str]]:
        """(path relative to the top, descriptor of its directory, name) for each regular file;
        the descriptor is open until the next item is asked for."""
        yield from self._directory(top_fd, "", 0)

    def _directory(self, fd: int, prefix: str, depth: int) -> Iterator[tuple[str, int, str]]:
        subdirs: list[str] = []
        try:
            it = os.scandir(fd)
        except OSError:
            return
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
                        subdirs.append(entry.name)
                    elif entry.is_file(follow_symlinks=False):
                        yield prefix + entry.name, fd, entry.name
                except OSError:
                    continue
        if depth >= MAX_DEPTH:
            return
        for name in subdirs:
            if self.stopped:
                return
            try:
                sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=fd)
            except OSError:
                continue  # gone, or swapped for a link: never followed
            try:
                yield from self._directory(sub, f"{prefix}{name}/", depth + 1)
            finally:
                os.close(sub)


def _pattern(value: Any, name: str) -> str:
    pattern = _str(value, name)
    if os.path.isabs(pattern) or ".." in pattern.split("/"):
        raise ToolRefused(f"{name} {pattern!r} must be relative to the search directory, without '..'")
    return pattern


def glob(ws: Workspace, lim: FileLimits, args: dict) -> str:
    from wcmatch import glob as wglob

    pattern = _pattern(args.get("pattern"), "pattern")
    matcher = wglob.compile(pattern, flags=wglob.GLOBSTAR | wglob.BRACE | wglob.DOTGLOB)
    walk = _Walk(lim.walk_entries, lim.walk_seconds)
    found: list[str] = []
    more = 0
    with ws.directory(args.get("path") or None) as (fd, base):
        for rel, _dir_fd, _name in walk.files(fd):
            if matcher.match(rel):
                if len(found) < lim.results:
                    found.append(rel)
                else:
                    more += 1
    found.sort()
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
    mode = args.get("output_mode") or "files_with_matches"
    if mode not in ("content", "files_with_matches", "count"):
        raise ToolRefused("output_mode must be content, files_with_matches or count")
    file_glob = args.get("glob")
    matcher = wglob.compile(_pattern(file_glob, "glob"), flags=wglob.GLOBSTAR | wglob.BRACE | wglob.DOTGLOB | wglob.MATCHBASE) if file_glob else None
    search = _Search(
        compiled=compiled,
        mode=mode,
        head_limit=_int(args.get("head_limit"), "head_limit", lim.results) or lim.results,
        before=_int(args.get("-B"), "-B", _int(args.get("-C"), "-C", 0)),
        after=_int(args.get("-A"), "-A", _int(args.get("-C"), "-C", 0)),
        numbers=bool(args.get("-n", True)),
        deadline=time.monotonic() + lim.grep_seconds,
        lim=lim,
    )
    walk = None
    with ws.place(args.get("path") or None) as place:
        st = ws.lstat(place)
        if st is None:
            raise ToolRefused(f"{place.shown} does not exist")
        if place.name and not stat.S_ISDIR(st.st_mode):
            fd, _st = ws.open_regular(place)
            os.close(fd)
            search.file(place.dir_fd, place.name, place.shown)
        else:
            walk = _Walk(lim.walk_entries, lim.grep_seconds)
            prefix = "" if place.shown == "." else place.shown + "/"
            with ws.subdirectory(place) as top:
                for rel, dir_fd, name in walk.files(top):
                    if len(search.out) >= search.head_limit:
                        break
                    if matcher is not None and not matcher.match(rel):
                        continue
                    search.file(dir_fd, name, prefix + rel)
    out = search.out
    result = "\n".join(out[: search.head_limit]) if out else "No matches found"
    if walk is not None and walk.stopped:
        result += f"\n[search {walk.stopped}; results may be incomplete]"
    return cap_text(result, lim.output_chars)


@dataclass(slots=True)
class _Search:
    """One Grep call's pattern, output mode and bounds; `file` adds one file's matches to `out`."""

    compiled: Any
    mode: str
    head_limit: int
    before: int
    after: int
    numbers: bool
    deadline: float
    lim: FileLimits
    out: list[str] = field(default_factory=list)

    def file(self, dir_fd: int, name: str, shown: str) -> None:
        lim = self.lim
        try:
            fd, _st = open_regular_at(dir_fd, name, shown)
        except ToolRefused:
            return
        with os.fdopen(fd, "rb", buffering=0) as f:
            data = f.read(lim.grep_file_bytes)
        if b"\x00" in data[:8192]:
            return
        text = data.decode("utf-8", "replace")
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise ToolRefused(f"grep timed out after {lim.grep_seconds:g} s")
        try:
            if self.mode == "files_with_matches":
                if self.compiled.search(text, timeout=remaining):
                    self.out.append(shown)
                return
            matches = list(self.compiled.finditer(text, timeout=remaining))
        except TimeoutError:
            raise ToolRefused(f"grep timed out after {lim.grep_seconds:g} s (pattern too expensive?)") from None
        if not matches:
            return
        if self.mode == "count":
            self.out.append(f"{shown}:{len(matches)}")
            return
        starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        all_lines = text.split("\n")
        wanted: set[int] = set()
        for m in matches:
            ln = bisect.bisect_right(starts, m.start()) - 1
            wanted.update(range(max(0, ln - self.before), min(len(all_lines), ln + self.after + 1)))
        for ln in sorted(wanted):
            line = all_lines[ln][:2000]
            self.out.append(f"{shown}:{ln + 1}:{line}" if self.numbers else f"{shown}:{line}")
            if len(self.out) >= self.head_limit:
                return


# -- Notebooks -------------------------------------------------------------------------------


def _load_notebook(ws: Workspace, lim: FileLimits, place: Place) -> dict:
    try:
        nb = orjson.loads(_read_whole(ws, lim, place))
    except orjson.JSONDecodeError:
        raise ToolRefused(f"{place.shown} is not a valid notebook (bad JSON)") from None
    if not isinstance(nb, dict) or not isinstance(nb.get("cells"), list):
        raise ToolRefused(f"{place.shown} is not a notebook (no cells)")
    return nb


def _source(cell: dict) -> str:
    src = cell.get("source")
    return "".join(src) if isinstance(src, list) else src if isinstance(src, str) else ""


def notebook_read(ws: Workspace, lim: FileLimits, args: dict) -> str:
    with ws.place(_str(args.get("notebook_path"), "notebook_path")) as place:
        nb = _load_notebook(ws, lim, place)
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
        raise ToolRefused(f"no cell with id {want!r} in {place.shown}")
    return cap_text("\n".join(parts) or "(no cells)", lim.output_chars)


def notebook_edit(ws: Workspace, lim: FileLimits, args: dict) -> str:
    with ws.place(_str(args.get("notebook_path"), "notebook_path")) as place:
        return _notebook_edit(ws, lim, args, place)


def _notebook_edit(ws: Workspace, lim: FileLimits, args: dict, place: Place) -> str:
    nb = _load_notebook(ws, lim, place)
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
    ws.write_atomic(place, data + b"\n")
    return f"{mode}d cell in {place.shown}" if mode != "replace" else f"replaced cell {cid} in {place.shown}"


# -- Todos -----------------------------------------------------------------------------------

TODO_FILE = ".agent/todos.json"


def todo_read(ws: Workspace, lim: FileLimits, args: dict) -> str:
    with ws.place(os.path.dirname(TODO_FILE)) as folder:
        if ws.lstat(folder) is None:
            return "[]"
    with ws.place(TODO_FILE) as place:
        if ws.lstat(place) is None:
            return "[]"
        return _read_whole(ws, lim, place)


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
    with ws.place(TODO_FILE, create_parents=True) as place:
        ws.write_atomic(place, data)
    return f"Saved {len(todos)} todos"

