"""Small pieces of local state that must survive a crash: atomic, fsync'd JSON files."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binhoard.domain.errors import ConflictError

log = logging.getLogger("binhoard.localstate")


class StateFile:
    """A JSON document replaced atomically (temp file, fsync, rename, fsync directory)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any] | None:
        """The document, or None if there is none. A file that is not a JSON object (a
        disk fault: writes are atomic) is treated as absent, with a warning naming it:
        every state file is a record that the next run can do without."""
        try:
            data = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            log.warning("ignoring unreadable state file %s: %s", self.path, exc)
            return None
        if not isinstance(data, dict):
            log.warning("ignoring unreadable state file %s: not a JSON object", self.path)
            return None
        return data

    def write(self, data: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.tmp")
        with temp.open("w") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(self.path)
        _fsync_dir(self.path.parent)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            _fsync_dir(self.path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def exclusive(lock_path: Path, what: str) -> Iterator[None]:
    """Holds an exclusive flock, so that two binhoards on one host never run ``what`` at once.

    The kernel drops the lock when the process dies, so a crash never leaves it stale.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConflictError(f"another binhoard process is already running {what}") from None
        yield
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ProcessId:
    """A process of this host: its pid and its start time, since pids are reused.

    Names what a process leaves while it works (temp files, journals of uploads in
    flight), so that a later process can tell a writer that still runs from one that
    was killed: a dead writer's leftovers are removed at once, not after a grace period.
    """

    pid: int
    start: str  # field 22 of /proc/<pid>/stat (clock ticks after boot); "" if unknown

    @classmethod
    def current(cls) -> ProcessId:
        pid = os.getpid()
        return cls(pid, _start_time(pid) or "")

    def alive(self) -> bool:
        """False only when this process is known to be gone; unknown counts as alive."""
        if not self.start:
            return True
        now = _start_time(self.pid)
        if now is None:
            # No such pid, unless /proc itself is unreadable: then nothing is known.
            return _start_time(os.getpid()) is None
        return now == self.start

    def tag(self) -> str:
        return f"{self.pid}-{self.start}"

    @classmethod
    def from_tag(cls, tag: str) -> ProcessId | None:
        pid, sep, start = tag.partition("-")
        if not sep or not pid.isdigit() or not (start.isdigit() or not start):
            return None
        return cls(int(pid), start)


def _start_time(pid: int) -> str | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after
    # the last ")"; starttime is field 22, the 20th after comm.
    fields = text.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else None


def host_name() -> str:
    """This host's name as it may appear in a file name (temp files on a shared site)."""
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:64] or "unknown"
