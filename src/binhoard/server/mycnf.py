"""What the server's option file (``mysql.config_file_name``) tells mariadbd.

Read through MariaDB's own ``my_print_defaults --mysqld``, which resolves ``!include``
and ``!includedir``, picks the groups mariadbd reads (``[mysqld]``, ``[mariadbd]``,
``[server]``, ``[mariadb]``, the versioned ones...) and prints one option a line, in the
order mariadbd applies them (the last one wins); it masks passwords.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from binhoard.domain.errors import UsageError
from binhoard.server.process import find_executable

_FALSE = frozenset({"0", "off", "false", "no"})


def _normalise(name: str) -> str:
    name = name.strip().lower().replace("-", "_")
    return name.removeprefix("loose_")


def parse_print_defaults(text: str) -> dict[str, str]:
    """``--name=value`` lines as ``{name: value}`` (names with ``_``, ``loose-`` dropped;
    a flag without value maps to ``""``; the last occurrence wins, as in mariadbd)."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("--"):
            continue
        name, _, value = line[2:].partition("=")
        options[_normalise(name)] = value
    return options


@dataclass(frozen=True)
class ServerOptions:
    """The server options of one option file; paths resolved as mariadbd resolves them."""

    path: Path
    options: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.options.get(_normalise(name))

    def flag(self, name: str) -> bool:
        """A boolean option (``skip-slave-start``, ``skip_slave_start=1``) is set."""
        value = self.get(name)
        return value is not None and value.strip().lower() not in _FALSE

    @property
    def datadir(self) -> Path | None:
        value = self.get("datadir")
        return Path(value) if value else None

    def in_datadir(self, value: str, fallback_datadir: Path) -> Path:
        """A path option: relative ones are relative to the datadir (mariadbd's rule)."""
        path = Path(value)
        return path if path.is_absolute() else (self.datadir or fallback_datadir) / path

    def error_log(self, fallback_datadir: Path) -> Path | None:
        """Where mariadbd writes its error log: ``log_error`` (relative to the datadir;
        without a value ``<datadir>/<host name>.err``); None means standard error."""
        value = self.get("log_error")
        if value is None:
            return None
        if not value:
            value = f"{socket.gethostname().split('.')[0]}.err"
        return self.in_datadir(value, fallback_datadir)


def read_server_options(path: Path) -> ServerOptions:
    """The options mariadbd would read from ``path``; raises ``UsageError`` naming it."""
    tool = find_executable("mariadb-print-defaults", "my_print_defaults")
    result = subprocess.run(
        [tool, f"--defaults-file={path}", "--mysqld"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = " ".join(result.stderr.split()) or f"exit {result.returncode}"
        raise UsageError(f"cannot read mysql.config_file_name {path}: {reason}")
    return ServerOptions(path, parse_print_defaults(result.stdout))


@dataclass(frozen=True)
class FileOwner:
    """Who the server's files must belong to, and why (for messages)."""

    uid: int
    gid: int
    reason: str

    @property
    def name(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)

    def check(self) -> None:
        """``check_can_give`` (the server port's ``FilesOwner``)."""
        check_can_give(self)

    def give(self, *paths: Path) -> None:
        """``give_to`` (the server port's ``FilesOwner``)."""
        give_to(self, *paths)


def server_file_owner(options: ServerOptions, datadir: Path) -> FileOwner:
    """The server's user: ``user`` in its option file, else the owner of the datadir as
    the operator prepared it (it exists and binhoard only empties it), else of the
    nearest existing directory above it."""
    user = options.get("user")
    if user:
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            try:
                entry = pwd.getpwuid(int(user))
            except (KeyError, ValueError):
                raise UsageError(
                    f"user={user} in {options.path} is not a user of this host"
                ) from None
        return FileOwner(entry.pw_uid, entry.pw_gid, f"user={user} in {options.path}")
    place = datadir
    while not place.exists() and place != place.parent:
        place = place.parent
    info = place.stat()
    return FileOwner(info.st_uid, info.st_gid, f"the owner of {place}")


def check_can_give(owner: FileOwner) -> None:
    """Raises ``UsageError`` when this process cannot make files ``owner``'s (it is
    neither root nor that user), before any work whose result would be unusable."""
    if os.geteuid() not in (0, owner.uid):
        raise UsageError(
            f"the restored files must belong to {owner.name} ({owner.reason}), but binhoard "
            f"runs as uid {os.geteuid()} and cannot give them away: run the restore as root "
            f"or as {owner.name}"
        )


def give_to(owner: FileOwner, *paths: Path) -> None:
    """Makes ``paths`` (and everything below the directories among them) ``owner``'s,
    without following symbolic links. A no-op for files that already are."""
    for top in paths:
        _chown(top, owner)
        if top.is_dir() and not top.is_symlink():
            for root, dirs, files in os.walk(top):
                for name in (*dirs, *files):
                    _chown(Path(root) / name, owner)


def _chown(path: Path, owner: FileOwner) -> None:
    info = path.lstat()
    if (info.st_uid, info.st_gid) == (owner.uid, owner.gid):
        return
    try:
        os.lchown(path, owner.uid, owner.gid)
    except PermissionError:
        try:
            group = grp.getgrgid(owner.gid).gr_name
        except KeyError:
            group = str(owner.gid)
        raise UsageError(
            f"cannot give {path} to {owner.name}:{group} ({owner.reason}), whose server must "
            f"write it: binhoard runs as uid {os.geteuid()}; run the restore as root or as "
            f"{owner.name}"
        ) from None
