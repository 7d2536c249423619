"""The file tools cannot leave the workspace: real symlinks, hard links and a racing rename in a
temporary workspace, with a canary outside it that must never appear and files outside that
must never change."""

from __future__ import annotations

import ctypes
import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from steps.tools import files
from steps.tools.workspace import ToolRefused, Workspace

CANARY = "CANARY-ws-51c2-do-not-leak"
LIM = files.FileLimits()


class Tree:
    """W (the workspace) and O (outside, holding the canary) side by side."""

    def __init__(self, base: Path) -> None:
        self.w = base / "w"
        self.o = base / "o"
        self.w.mkdir()
        self.o.mkdir()
        (self.o / "secret.txt").write_text(CANARY + "\n")
        (self.o / "sub").mkdir()
        (self.o / "sub" / "secret.txt").write_text(CANARY + " sub\n")
        self.ws = Workspace.at(self.w)

    def digest(self) -> dict[str, str]:
        return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(self.o.rglob("*")) if p.is_file()}

    def call(self, tool: Callable[[Workspace, files.FileLimits, dict], str], **args: object) -> tuple[str, bool]:
        """(text, refused) of one tool call; the canary must not be in either."""
        try:
            text, refused = tool(self.ws, LIM, args), False
        except ToolRefused as exc:
            text, refused = str(exc), True
        assert CANARY not in text, text
        return text, refused


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Tree]:
    t = Tree(tmp_path)
    before = t.digest()
    yield t
    assert t.digest() == before, "a file outside the workspace changed"
    assert sorted(p.name for p in t.o.iterdir()) == ["secret.txt", "sub"], "something was created outside"


def test_a_symlink_anywhere_in_the_path_is_not_followed(tree: Tree) -> None:
    os.symlink(tree.o / "secret.txt", tree.w / "file-link")
    os.symlink(tree.o, tree.w / "dir-link")
    os.symlink("../o", tree.w / "rel-link")
    os.symlink("/etc/passwd", tree.w / "abs-link")
    for path in ("file-link", "dir-link/secret.txt", "rel-link/sub/secret.txt", "abs-link"):
        text, refused = tree.call(files.read, file_path=path)
        assert refused and "symlink" in text, text
        assert tree.call(files.edit, file_path=path, old_string="CANARY", new_string="x")[1]
        assert tree.call(files.notebook_read, notebook_path=path)[1]
    for path in ("file-link", "dir-link/new.txt", "rel-link/sub/new.txt"):
        text, refused = tree.call(files.write, file_path=path, content="pwned")
        assert refused and "symlink" in text, text
    assert tree.call(files.ls, path="dir-link")[1]
    assert tree.call(files.glob, pattern="*", path="dir-link")[1]
    assert tree.call(files.grep, pattern="CANARY", path="dir-link")[1]
    assert tree.call(files.grep, pattern="CANARY", path="file-link")[1]
    assert tree.call(files.multi_edit, file_path="dir-link/secret.txt", edits=[{"old_string": "C", "new_string": "x"}])[1]


def test_a_link_that_stays_inside_is_not_followed_either(tree: Tree) -> None:
    """One rule, held by the kernel: no link is followed, so none needs judging."""
    (tree.w / "real.txt").write_text("inside\n")
    os.symlink("real.txt", tree.w / "alias.txt")
    text, refused = tree.call(files.read, file_path="alias.txt")
    assert refused and "symlink" in text
    assert "inside" in tree.call(files.read, file_path="real.txt")[0]


def test_walks_never_follow_a_link_out(tree: Tree) -> None:
    (tree.w / "a").mkdir()
    (tree.w / "a" / "mine.txt").write_text("CANARY-free but matching: secret\n")
    os.symlink(tree.o, tree.w / "a" / "out")
    os.symlink(tree.o / "secret.txt", tree.w / "a" / "secret.txt")
    assert tree.call(files.grep, pattern="CANARY-ws")[0] == "No matches found"
    assert tree.call(files.grep, pattern="secret", output_mode="content")[0] == "a/mine.txt:1:CANARY-free but matching: secret"
    assert tree.call(files.glob, pattern="**/*")[0] == "a/mine.txt"
    listing = tree.call(files.ls, path="a")[0]
    assert "out@" in listing and "secret.txt@" in listing


def test_hard_links_are_refused(tree: Tree) -> None:
    os.link(tree.o / "secret.txt", tree.w / "hard.txt")
    for tool, args in ((files.read, {"file_path": "hard.txt"}),
                       (files.edit, {"file_path": "hard.txt", "old_string": "CANARY", "new_string": "x"}),
                       (files.write, {"file_path": "hard.txt", "content": "pwned"}),
                       (files.grep, {"pattern": "CANARY", "path": "hard.txt"})):
        text, refused = tree.call(tool, **args)
        assert refused and "hard links" in text, text
    assert tree.call(files.grep, pattern="CANARY")[0] == "No matches found"  # skipped by the walk too
    (tree.w / "hard.txt").unlink()


def test_paths_out_are_refused_before_anything_is_opened(tree: Tree) -> None:
    for path in ("../o/secret.txt", str(tree.o / "secret.txt"), "~/x", f"{tree.w}/../o/secret.txt", f"{tree.w}-evil/x", "/workspace/../o"):
        text, refused = tree.call(files.read, file_path=path)
        assert refused and "outside the workspace" in text, (path, text)


def test_absolute_paths_inside_and_the_sandbox_name(tree: Tree) -> None:
    """The real root and /workspace (what Bash sees) both name the workspace."""
    (tree.w / "n.txt").write_text("hello\n")
    assert "hello" in tree.call(files.read, file_path=str(tree.w / "n.txt"))[0]
    assert "hello" in tree.call(files.read, file_path="/workspace/n.txt")[0]
    assert tree.call(files.write, file_path="/workspace/d/e/new.txt", content="x")[0] == "Created d/e/new.txt (1 bytes)"
    assert (tree.w / "d" / "e" / "new.txt").read_text() == "x"


def test_fifo_is_refused_without_blocking(tree: Tree) -> None:
    os.mkfifo(tree.w / "p")
    assert "not a regular file" in tree.call(files.read, file_path="p")[0]
    assert "not a regular file" in tree.call(files.write, file_path="p", content="x")[0]


_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically, with no moment where either is missing."""
    if _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))


def _race(tree: Tree, reads: Callable[[], tuple[str, bool]], seconds: float = 3.0, max_reads: int = 3000) -> tuple[int, int, int]:
    """Swap W/d between a real directory and a symlink to O (atomically, in a loop) while `reads`
    runs, bounded in count and time. Returns (swaps, successful reads, refusals)."""
    (tree.w / "d").mkdir()
    (tree.w / "d" / "secret.txt").write_text("inside\n")
    os.symlink(tree.o, tree.w / "d-link")
    stop = threading.Event()
    swaps = 0

    def swap() -> None:
        nonlocal swaps
        while not stop.is_set():
            exchange(tree.w / "d", tree.w / "d-link")  # now W/d -> O
            exchange(tree.w / "d", tree.w / "d-link")  # back to the real directory
            swaps += 1

    t = threading.Thread(target=swap, daemon=True)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible: the swaps land mid-call
    t.start()
    ok = refused = 0
    deadline = time.monotonic() + seconds
    try:
        for _ in range(max_reads):
            text, was_refused = reads()
            if was_refused:
                refused += 1
            else:
                ok += 1
            if time.monotonic() > deadline:
                break
    finally:
        stop.set()
        t.join(10)
        sys.setswitchinterval(interval)
    assert not t.is_alive()
    return swaps, ok, refused


def test_racing_rename_cannot_redirect_a_read(tree: Tree) -> None:
    swaps, ok, refused = _race(tree, lambda: tree.call(files.read, file_path="d/secret.txt"))
    assert swaps > 0 and ok + refused > 0


def test_racing_rename_cannot_redirect_a_write(tree: Tree) -> None:
    n = 0

    def write() -> tuple[str, bool]:
        nonlocal n
        n += 1
        return tree.call(files.write, file_path=f"d/new{n % 5}.txt", content="x")

    swaps, ok, refused = _race(tree, write)
    assert swaps > 0 and ok + refused > 0
    # the fixture checks that nothing appeared in or changed under O


def test_racing_rename_cannot_redirect_a_walk(tree: Tree) -> None:
    """Files beside W/d widen the gap between listing W (d is a directory) and entering d: a walk
    that opened d by name, following links, would often be in O. (The real directory is found
    under either name; that is fine.)"""
    for i in range(100):
        (tree.w / f"f{i:03}.txt").write_text("x\n")

    def walk() -> tuple[str, bool]:
        text, refused = tree.call(files.grep, pattern="inside|CANARY", output_mode="content")
        assert text in ("d/secret.txt:1:inside", "d-link/secret.txt:1:inside", "No matches found"), text
        return text, refused

    swaps, ok, refused = _race(tree, walk, max_reads=300)
    assert swaps > 0 and ok + refused > 0
