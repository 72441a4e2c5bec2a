"""The one error hierarchy of binhoard.

Every error a user can see is a ``BinhoardError``. Each class says whether retrying
can help, which HTTP status the API answers with and which exit code the CLI ends
with, so that those mappings live in one place and nowhere else.
"""

from __future__ import annotations


class BinhoardError(Exception):
    """Something went wrong."""

    exit_code: int = 1
    http_status: int = 500
    retryable: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class UsageError(BinhoardError):
    """The request or command line is not valid."""

    exit_code = 2
    http_status = 400


class PlanError(UsageError):
    """A restore cannot be planned as asked: the target lies outside what the backups and
    the binlog archive can reproduce exactly (the message says why and what would work)."""


class IncompatibleVersionError(UsageError):
    """The backup was taken by another MariaDB release series than this host's
    mariabackup: it prepares only backups of its own series (``domain/versions.py``).
    Nothing was restored; the message says what to do instead."""


class ConfigError(UsageError):
    """The configuration is not valid.

    ``problems`` lists every problem found, each as ``(key path, message)``, so that a
    user fixes all of them in one pass instead of one per run.
    """

    def __init__(self, file: str, problems: list[tuple[str, str]]) -> None:
        self.file = file
        self.problems = list(problems)
        lines = [f"{file}: {path}: {msg}" if path else f"{file}: {msg}" for path, msg in problems]
        count = len(problems)
        header = f"{file}: {count} configuration problem{'s' if count != 1 else ''}"
        super().__init__("\n".join([header, *lines]))


class AuthenticationError(UsageError):
    """The HTTP API needs the bearer token of ``http_auth_token``: send
    ``Authorization: Bearer <token>``."""

    http_status = 401


class RequestTooLargeError(UsageError):
    """The request body is larger than the HTTP API accepts."""

    http_status = 413


class UnsupportedMediaTypeError(UsageError):
    """The request body must be JSON (``Content-Type: application/json``)."""

    http_status = 415


class UnavailableError(BinhoardError):
    """The daemon cannot answer now: its controller did not decide in time, or it is
    stopping. Retrying later may work."""

    exit_code = 11
    http_status = 503
    retryable = True


class NotFoundError(BinhoardError):
    """The requested thing does not exist."""

    exit_code = 3
    http_status = 404


class ConflictError(BinhoardError):
    """The request conflicts with the current state."""

    exit_code = 4
    http_status = 409


class DeletionRefusedError(ConflictError):
    """A backup asked to be deleted is one retention would keep (the newest that can be
    restored, an open stream, a preserved one) or has incrementals that would go with
    it; the message says which. Deleting it anyway must be asked for explicitly."""


class ServerError(BinhoardError):
    """The database server or one of its tools failed."""

    exit_code = 5
    http_status = 502
    retryable = True


class ServerAccessDeniedError(ServerError):
    """The server refused binhoard's user: wrong password, unknown user, or a privilege
    it lacks. Retrying with the same credentials and grants fails the same way.

    ``server_errno`` is the server's error number (1045, 1044, 1698, 1227, ...).
    """

    retryable = False

    def __init__(self, message: str, *, server_errno: int = 0) -> None:
        self.server_errno = server_errno
        super().__init__(message)


class ServerQueryError(ServerError):
    """The server refused a statement (an SQL error); retrying it fails the same way.

    ``server_errno`` is the server's error number.
    """

    retryable = False

    def __init__(self, message: str, *, server_errno: int = 0) -> None:
        self.server_errno = server_errno
        super().__init__(message)


class ServerNotReadyError(ServerError):
    """The server is not configured as binhoard requires (``problems`` says how); nothing
    was done. Retrying fails the same way until the server or the configuration changes.
    """

    retryable = False

    def __init__(self, what: str, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{what}: " + "; ".join(self.problems))


class SandboxError(BinhoardError):
    """A sandbox MariaDB instance could not be managed."""

    exit_code = 6
    http_status = 500


class StorageError(BinhoardError):
    """Object storage failed."""

    exit_code = 7
    http_status = 502


class ObjectNotFoundError(StorageError, NotFoundError):
    """An object does not exist in storage."""

    exit_code = 7
    http_status = 404

    def __init__(self, key: str, detail: str = "") -> None:
        self.key = key
        super().__init__(f"object not found: {key}" + (f" ({detail})" if detail else ""))


class TransientStorageError(StorageError):
    """Object storage failed in a way that retrying may cure (5xx, reset, timeout)."""

    retryable = True


class PermanentStorageError(StorageError):
    """Object storage refused the request; retrying will not help (auth, bad request)."""


class PreconditionFailedError(StorageError, ConflictError):
    """A conditional write found the object already there."""

    exit_code = 4
    http_status = 409

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"object already exists: {key}")


class IntegrityError(StorageError):
    """A stored object failed verification: it is corrupt, truncated or was tampered with."""

    exit_code = 8

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        super().__init__(f"object {key} failed verification: {detail}")


class CorruptSiteError(BinhoardError):
    """``binhoard verify`` found objects of a site corrupt or missing; its report names
    each one and what is wrong with it."""

    exit_code = 8


class CorruptBinlogError(BinhoardError):
    """A binlog file is corrupt, truncated or not a binlog this reader understands.

    ``file`` and ``offset`` (the byte offset of the offending event, or of the point
    where the file ends too early) say where to look, e.g. with
    ``mariadb-binlog --start-position``.
    """

    exit_code = 8
    http_status = 500

    def __init__(self, file: str, offset: int, detail: str) -> None:
        self.file = file
        self.offset = offset
        self.detail = detail
        super().__init__(f"binlog {file} at byte offset {offset}: {detail}")


class ApplyError(ServerError):
    """The server's replication applier could not apply binlogs, or ended elsewhere than
    expected.

    ``gtid`` is the transaction it failed on when known; ``server_errno`` and
    ``server_message`` are the SQL thread's ``Last_SQL_Errno``/``Last_SQL_Error``.
    Retrying the same apply fails the same way.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        gtid: str | None = None,
        server_errno: int = 0,
        server_message: str = "",
    ) -> None:
        self.gtid = gtid
        self.server_errno = server_errno
        self.server_message = server_message
        super().__init__(message)


class ReplicationError(ServerError):
    """This server cannot replicate from the primary it was given. ``kind`` says why:
    ``unreachable`` (the primary does not answer, or refuses the replication account),
    ``divergent`` (its history does not contain this server's position), ``failed``
    (the IO or SQL thread stopped with an error, ``server_errno``), ``timeout`` (it did
    not catch up in time; resuming continues). Only ``unreachable`` and ``timeout`` can
    pass by themselves."""

    def __init__(self, message: str, *, kind: str, server_errno: int = 0) -> None:
        self.kind = kind
        self.server_errno = server_errno
        self.retryable = kind in ("unreachable", "timeout")
        super().__init__(message)


def format_bytes(count: int) -> str:
    """``1536`` -> ``1.5 KiB``: sizes in messages people act on."""
    if count < 1024:
        return f"{count} bytes"
    value = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


class DiskFullError(BinhoardError):
    """A local file system has no space left (ENOSPC or a quota).

    One line naming the directory, what it is for, the space the step needs there and
    the space free; retryable once space is freed (a restore continues with --resume).
    """

    exit_code = 10  # 9 is an archive gap (cli/binlog.py)
    http_status = 507
    retryable = True

    def __init__(
        self,
        path: str,
        *,
        what: str = "",
        needed: int | None = None,
        free: int | None = None,
        then: str = "",
    ) -> None:
        self.path = path
        self.what = what
        self.needed = needed
        self.free = free
        message = f"no space left on device in {path}" + (f" ({what})" if what else "")
        sizes = []
        if needed is not None:
            sizes.append(f"about {format_bytes(needed)} needed there")
        if free is not None:
            sizes.append(f"{format_bytes(free)} free")
        if sizes:
            message += ": " + ", ".join(sizes)
        if then:
            message += f"; {then}"
        super().__init__(message)


class ArchiveStalledError(BinhoardError):
    """Binlog archiving cannot advance: a stream has a gap, its last pass failed, or there
    is no open stream to archive into. Transactions committed since are not recoverable
    from the site until it moves again."""

    exit_code = 9


class CancelledError(BinhoardError):
    """Stopped before it finished: the daemon is shutting down. What was done so far is
    resumable (or cleaned up by the next run), so trying again later is right."""

    exit_code = 130  # as an interrupted command
    http_status = 503
    retryable = True
