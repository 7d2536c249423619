"""The agent's workspace: every path a file tool touches is opened beneath it, by descriptor.

A path is first checked as text: `..` and `~` are refused, an absolute path must lie under the
root (or under /workspace, the name commands in the sandbox know it by), compared component
by component, never by string prefix (`/tmp/ws` does not contain `/tmp/ws-evil`:
blazickjp/shell-mcp-server PR #9). Then it is opened one component at a time, each relative to
the directory descriptor of the one before (`openat` with `O_NOFOLLOW | O_DIRECTORY`), starting
from a descriptor of the root. The kernel refuses to follow a symlink at any component, so a
link inside the root that points out (modelcontextprotocol/servers #1845), a directory swapped
for a link between a check and a use, or a rename racing the walk can never take the tool
outside: there is no check-then-use gap, only descriptors. Links are not followed at all, even
ones that stay inside: one rule the kernel enforces beats resolving targets by hand.

Why not `openat2(RESOLVE_BENEATH)`: it would also follow links that stay inside, but it needs
Linux 5.6 and a raw syscall through ctypes; per-component `O_NOFOLLOW` works on every kernel and
leaves nothing to get wrong. Regular files with more than one hard link are refused: a hard
link to a file outside the root is indistinguishable from the inside. Files are opened
`O_NONBLOCK` and must be regular (`S_ISREG`): a FIFO or a device never blocks a worker thread.
Writes go to a temporary file in the same directory descriptor and are renamed over the
target, so a write never lands on whatever a planted link or hard link points at.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath

from steps.tools.sandbox import MOUNT

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FILE_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
MAX_DEPTH = 256  # directory levels a path or a walk may descend


class ToolRefused(Exception):
    """A tool call the sandbox will not run; its message is the one-line reason for the model."""


@dataclass(frozen=True, slots=True)
class Place:
    """An entry `name` in the open directory `dir_fd`; `name` is "" for the root itself."""

    dir_fd: int
    name: str
    parts: tuple[str, ...]

    @property
    def shown(self) -> str:
        return "/".join(self.parts) or "."


@dataclass(frozen=True, slots=True)
class Workspace:
    """A root directory (created if missing) that all file tools are confined to."""

    root: str

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> Workspace:
        os.makedirs(path, exist_ok=True)
        return cls(os.path.realpath(path))

    # -- paths as text ------------------------------------------------------------------------

    def parts(self, path: str | None) -> tuple[str, ...]:
        """The components of `path` below the root; ToolRefused for anything that names a place
        outside it. Purely lexical: opening (below) is what the kernel holds to."""
        if path is None or path == "":
            return ()
        if not isinstance(path, str):
            raise ToolRefused("path must be a string")
        if "\x00" in path:
            raise ToolRefused("path contains a NUL byte")
        if path.startswith("~"):
            raise ToolRefused(f"path {path!r} is outside the workspace (home directories are not reachable)")
        pure = PurePosixPath(path)
        if ".." in pure.parts:
            raise ToolRefused(f"path {path!r} is outside the workspace ('..' is not allowed)")
        if pure.is_absolute():
            for base in (self.root, MOUNT):
                try:
                    pure = pure.relative_to(base)
                    break
                except ValueError:
                    continue
            else:
                raise ToolRefused(f"path {path!r} is outside the workspace {self.root}")
        parts = tuple(p for p in pure.parts if p not in ("", "."))
        if len(parts) > MAX_DEPTH:
            raise ToolRefused(f"path {path!r} is deeper than {MAX_DEPTH} levels")
        return parts

    # -- opening, one component at a time ------------------------------------------------------

    def _open_root(self) -> int:
        try:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise ToolRefused(f"the workspace cannot be opened: {exc.strerror}") from None

    def _refusal(self, dir_fd: int, name: str, shown: str, exc: OSError) -> ToolRefused:
        """Why `name` in `dir_fd` could not be opened as a directory, in words for the model."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return ToolRefused(f"{shown} does not exist")
        except OSError:
            return ToolRefused(f"cannot open {shown}: {exc.strerror}")
        if stat.S_ISLNK(st.st_mode):
            return ToolRefused(f"{shown} is a symlink; the file tools never follow links, so nothing outside the workspace is reachable through one")
        if not stat.S_ISDIR(st.st_mode):
            return ToolRefused(f"{shown} is not a directory")
        return ToolRefused(f"cannot open {shown}: {exc.strerror}")

    def _descend(self, parts: tuple[str, ...], *, create: bool) -> int:
        """A descriptor of the directory `parts` below the root; links are never followed."""
        fd = self._open_root()
        try:
            for i, name in enumerate(parts):
                shown = "/".join(parts[: i + 1])
                try:
                    nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise ToolRefused(f"{shown} does not exist") from None
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made by someone else meanwhile: opened (and checked) below
                    except OSError as exc:
                        raise ToolRefused(f"cannot create {shown}: {exc.strerror}") from None
                    try:
                        nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        raise self._refusal(fd, name, shown, exc) from None
                except OSError as exc:
                    raise self._refusal(fd, name, shown, exc) from None
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd

    @contextmanager
    def directory(self, path: str | None) -> Iterator[tuple[int, str]]:
        """(descriptor, shown name) of the existing directory `path`; closed on exit."""
        parts = self.parts(path)
        fd = self._descend(parts, create=False)
        try:
            yield fd, "/".join(parts) or "."
        finally:
            os.close(fd)

    @contextmanager
    def place(self, path: str | None, *, create_parents: bool = False) -> Iterator[Place]:
        """The open parent directory of `path` and the last component's name in it."""
        parts = self.parts(path)
        fd = self._descend(parts[:-1], create=create_parents)
        try:
            yield Place(fd, parts[-1] if parts else "", parts)
        finally:
            os.close(fd)

    def lstat(self, place: Place) -> os.stat_result | None:
        """The entry itself (a link is not followed), or None when it does not exist."""
        try:
            return os.stat(place.name or ".", dir_fd=place.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ToolRefused(f"cannot stat {place.shown}: {exc.strerror}") from None

    @contextmanager
    def subdirectory(self, place: Place) -> Iterator[int]:
        """A descriptor of the directory at `place` (the root when its name is empty)."""
        if not place.name:
            fd = os.dup(place.dir_fd)
        else:
            try:
                fd = os.open(place.name, _DIR_FLAGS, dir_fd=place.dir_fd)
            except OSError as exc:
                raise self._refusal(place.dir_fd, place.name, place.shown, exc) from None
        try:
            yield fd
        finally:
            os.close(fd)

    def open_regular(self, place: Place, *, max_links: int = 1) -> tuple[int, os.stat_result]:
        """Open an existing regular file for reading: no link followed, no FIFO or device, no hard link."""
        return open_regular_at(place.dir_fd, place.name, place.shown, max_links=max_links)

    def check_writable_target(self, place: Place) -> bool:
        """Whether the target exists; refuses a link, a non-regular or a multiply linked target."""
        st = self.lstat(place)
        if st is None:
            return False
        _check_regular(st, place.shown)
        return True

    def write_atomic(self, place: Place, data: bytes) -> None:
        """Write `data` to `place` through a temporary file in the same open directory.

        `os.replace` swaps the directory entry, so the write can never go through a hard link
        or a symlink planted at the target.
        """
        if not place.name:
            raise ToolRefused(". is a directory")
        self.check_writable_target(place)
        dir_fd, name = place.dir_fd, place.name
        tmp = f".{name[:200]}.{next(tempfile._get_candidate_names())}.tmp"  # noqa: SLF001 - same names tempfile uses
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise ToolRefused(f"cannot write {place.shown}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise


def _check_regular(st: os.stat_result, shown: str, max_links: int = 1) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise ToolRefused(f"{shown} is a symlink; the file tools never follow links, so nothing outside the workspace is reachable through one")
    if stat.S_ISDIR(st.st_mode):
        raise ToolRefused(f"{shown} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ToolRefused(f"{shown} is not a regular file")
    if st.st_nlink > max_links:
        raise ToolRefused(f"{shown} has {st.st_nlink} hard links; refusing a file that may live outside the workspace")


def open_regular_at(dir_fd: int, name: str, shown: str, *, max_links: int = 1) -> tuple[int, os.stat_result]:
    """Open `name` in `dir_fd` for reading (see `Workspace.open_regular`)."""
    if not name:
        raise ToolRefused(f"{shown} is a directory")
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise ToolRefused(f"{shown} does not exist") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise ToolRefused(f"{shown} is a symlink; the file tools never follow links, so nothing outside the workspace is reachable through one") from None
        if exc.errno == errno.EISDIR:
            raise ToolRefused(f"{shown} is a directory") from None
        raise ToolRefused(f"cannot open {shown}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        _check_regular(st, shown, max_links)
    except BaseException:
        os.close(fd)
        raise
    return fd, st
