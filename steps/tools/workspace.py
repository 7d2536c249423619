"""The agent's workspace: every path a server-side tool touches is resolved inside it.

Containment is checked on real paths, component-wise (`os.path.commonpath`), never by string
prefix: `/tmp/ws` does not contain `/tmp/ws-evil` (blazickjp/shell-mcp-server PR #9). `..`
components are refused outright, symlinks are resolved before the check (a link inside the
root pointing out is an escape: modelcontextprotocol/servers #1845), a path that does not
exist yet is checked through its resolved parent (DesktopCommanderMCP #420), and after a file
is opened its descriptor is checked again through `/proc/self/fd`, so a swap between check
and open is caught. Regular files with more than one hard link are refused: a hard link to a
file outside the root is indistinguishable from the inside. Files are opened `O_NONBLOCK`
and must be regular (`S_ISREG`): a FIFO or a device never blocks a worker thread.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path


class ToolRefused(Exception):
    """A tool call the sandbox will not run; its message is the one-line reason for the model."""


@dataclass(frozen=True, slots=True)
class Workspace:
    """A root directory (created if missing) that all file tools are confined to."""

    root: str

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> Workspace:
        os.makedirs(path, exist_ok=True)
        return cls(os.path.realpath(path))

    def contains(self, real: str) -> bool:
        return real == self.root or os.path.commonpath([self.root, real]) == self.root

    def resolve(self, path: str | None, *, must_exist: bool = False) -> str:
        """The real absolute path for `path` (relative to the root, or absolute inside it).

        Raises ToolRefused for anything that would leave the workspace.
        """
        if path is None or path == "":
            return self.root
        if not isinstance(path, str):
            raise ToolRefused("path must be a string")
        if "\x00" in path:
            raise ToolRefused("path contains a NUL byte")
        if path.startswith("~"):
            raise ToolRefused(f"path {path!r} is outside the workspace (home directories are not reachable)")
        if ".." in Path(path).parts:
            raise ToolRefused(f"path {path!r} is outside the workspace ('..' is not allowed)")
        joined = path if os.path.isabs(path) else os.path.join(self.root, path)
        joined = os.path.normpath(joined)
        if not self.contains(joined):
            raise ToolRefused(f"path {path!r} is outside the workspace {self.root}")
        real = os.path.realpath(joined)  # follows every symlink, also a dangling last one
        if not self.contains(real):
            raise ToolRefused(f"path {path!r} resolves outside the workspace (symlink)")
        if must_exist and not os.path.lexists(real):
            raise ToolRefused(f"{self.display(real)} does not exist")
        return real

    def display(self, real: str) -> str:
        """The path as the model should see it: relative to the root."""
        rel = os.path.relpath(real, self.root)
        return "." if rel == "." else rel

    def _check_fd(self, fd: int, shown: str) -> os.stat_result:
        where = os.readlink(f"/proc/self/fd/{fd}")
        if not self.contains(where):
            raise ToolRefused(f"{shown} moved outside the workspace while it was opened")
        return os.fstat(fd)

    def open_regular(self, real: str, *, max_links: int = 1) -> tuple[int, os.stat_result]:
        """Open an existing file for reading: O_NONBLOCK, no symlink at the end, regular only."""
        shown = self.display(real)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            raise ToolRefused(f"{shown} does not exist") from None
        except IsADirectoryError:
            raise ToolRefused(f"{shown} is a directory") from None
        except OSError as exc:
            raise ToolRefused(f"cannot open {shown}: {exc.strerror}") from None
        try:
            st = self._check_fd(fd, shown)
            if stat.S_ISDIR(st.st_mode):
                raise ToolRefused(f"{shown} is a directory")
            if not stat.S_ISREG(st.st_mode):
                raise ToolRefused(f"{shown} is not a regular file")
            if st.st_nlink > max_links:
                raise ToolRefused(f"{shown} has {st.st_nlink} hard links; refusing a file that may live outside the workspace")
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def check_writable_target(self, real: str) -> bool:
        """Whether `real` exists; refuses an existing non-regular or multiply linked target."""
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            return False
        shown = self.display(real)
        if stat.S_ISDIR(st.st_mode):
            raise ToolRefused(f"{shown} is a directory")
        if not stat.S_ISREG(st.st_mode):
            raise ToolRefused(f"{shown} is not a regular file")
        if st.st_nlink > 1:
            raise ToolRefused(f"{shown} has {st.st_nlink} hard links; refusing a file that may live outside the workspace")
        return True

    def write_atomic(self, real: str, data: bytes) -> None:
        """Write `data` to `real` through a temporary file in the same (checked) directory.

        `os.replace` swaps the directory entry, so the write can never go through a hard link
        or a symlink planted at the target; the parent is opened and verified by descriptor.
        """
        parent = os.path.dirname(real)
        if not self.contains(parent):
            raise ToolRefused(f"{self.display(real)} is outside the workspace")
        os.makedirs(parent, exist_ok=True)
        if not self.contains(os.path.realpath(parent)):
            raise ToolRefused(f"{self.display(real)} resolves outside the workspace (symlink)")
        self.check_writable_target(real)
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            self._check_fd(dir_fd, self.display(parent))
            name = os.path.basename(real)
            tmp = f".{name}.{next(tempfile._get_candidate_names())}.tmp"  # noqa: SLF001 - same names tempfile uses
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
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
        finally:
            os.close(dir_fd)
