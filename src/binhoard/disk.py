"""Local disk space: recognising a full file system, and saying how full it is."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from binhoard.domain.errors import DiskFullError

_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# How MariaDB's tools (mbstream, mariabackup) report it: my_error's "Errcode: 28", or
# strerror's text.
_NO_SPACE_TEXT = re.compile(
    r"Errcode: (?:28|122)\b|errno:? (?:28|122)\b|No space left on device|Disk quota exceeded"
)


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE_ERRNOS


def says_no_space(text: str) -> bool:
    """Whether a tool's output reports a full file system."""
    return _NO_SPACE_TEXT.search(text) is not None


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer can still use on ``path``'s file system."""
    place = path
    while not place.exists() and place != place.parent:
        place = place.parent
    try:
        stat = os.statvfs(place)
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def disk_full(path: Path, *, what: str, needed: int | None, then: str = "") -> DiskFullError:
    """The error for a full ``path``, with the space free there measured now."""
    return DiskFullError(str(path), what=what, needed=needed, free=free_bytes(path), then=then)
