"""The daemon's durable state: a typed model, kept in one SQLite database.

What the daemon must remember across a crash or a restart is small: the mode, the
restore it was asked for and how far it got, the requests it accepted and has not
finished (a backup, binlog rotations, preservations, broken marks), whether backups are
paused, the replication state it was given, and a few last known facts for status.
It lives in ``state_directory/daemon.sqlite``, one table per part of
:class:`DaemonState`, whose columns are the fields of the part's dataclass.

Only the controller thread writes, and it writes the whole state in one transaction
(WAL journal, ``synchronous=FULL``: a commit is on disk when it returns), so a crash at
any instant leaves the state as it was after the last commit, never half of a step.
Nothing is written when nothing changed, so an idle daemon does not write at all.

The ops keep their own crash-safe records (``restore.json``, the archiver's upload
list, the backup in progress): they are shared with the command line, which can
continue what the daemon began. This state refers to them by what it asked for (the
restore's request and the time it was accepted), never copies them
(docs/architecture.md, "The daemon").
"""

from __future__ import annotations

import json
import sqlite3
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from binhoard.daemon.port import Mode, RestoreTestView
from binhoard.domain.errors import ConflictError

FILE_NAME = "daemon.sqlite"
# Each version only adds columns or tables (_migrate); the number tells an older binhoard
# that the file is newer than it. 2: restore.replicate_from; 3: control.replicating_from;
# 4: facts.deposed, facts.last_restore_test_at and the restore tests' results;
# 5: control.repointing_to.
SCHEMA_VERSION = 5

RestoreTargetKind = Literal["latest", "time", "gtid", "position"]
BackupReason = Literal["requested", "scheduled"]


@dataclass(frozen=True)
class Control:
    """What the operator set: the mode, a pause of scheduled backups, and the
    replication state (``PUT /replication_state``, kept for binlog purging)."""

    TABLE: ClassVar[str] = "control"

    mode: Mode = "idle"
    backups_paused_until: datetime | None = None
    replication_state: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # When each node was last reported (Unix seconds): stale reports are named.
    replication_reported_at: Mapping[str, float] = field(default_factory=dict)
    # The primary this node replicates from (HOST:PORT): set by a seeding restore and by
    # a re-point, cleared by a promotion.
    replicating_from: str | None = None
    # The primary a re-point is under way to: saved before the re-point stops
    # replication, cleared when it ends. Found at a start: a crash cut it short, and the
    # daemon finishes it or rolls it back (``ops/seed.py`` ``reconcile``).
    repointing_to: str | None = None


@dataclass(frozen=True)
class RestoreRecord:
    """The restore ``PUT /status`` asked for, and its phase as the controller last saw it.

    ``phase`` is ``pending`` until the restore reports its first phase, then one of
    ``ops/pitr.py``'s ``PHASES``; ``failed`` (with ``error``) when it cannot go on
    without the operator. The restore's own ``restore.json`` is the one it resumes
    from; ``requested_at`` tells this request's record from an older one there.
    """

    TABLE: ClassVar[str] = "restore"

    site: str
    stream_id: str
    target_kind: RestoreTargetKind
    target_value: str | None  # ISO 8601 time, GTID position or FILE:POS
    approximate_ok: bool
    requested_at: datetime
    phase: str = "pending"
    error: str | None = None
    final_gtid: str | None = None
    updated_at: datetime | None = None
    replicate_from: str | None = None  # HOST:PORT: then a replica of it (ops/seed.py)

    @property
    def target_args(self) -> dict[str, Any]:
        """The target as ``parse_target``'s keyword arguments (``ops/pitr.py``)."""
        return self.target_args_of(self.target_kind, self.target_value)

    @staticmethod
    def target_args_of(kind: RestoreTargetKind, value: str | None) -> dict[str, Any]:
        return {"to_latest": True} if kind == "latest" else {f"to_{kind}": value}

    def describe_target(self) -> str:
        if self.target_kind == "latest":
            return "the newest archived transaction"
        return f"{self.target_kind} {self.target_value}"


@dataclass(frozen=True)
class BackupRequest:
    """A backup to take (``requested``: asked for over HTTP; ``scheduled``: due by the
    schedule). ``started_at`` is set, durably, before the backup starts: after a crash a
    backup of this server that started at or after it is this one, so it is not taken
    twice."""

    TABLE: ClassVar[str] = "backup_request"

    incremental: bool
    reason: BackupReason
    requested_at: datetime
    started_at: datetime | None = None


@dataclass(frozen=True)
class RotationRequest:
    """``POST /backup {"backup_type": "binlog"}``: rotate, then archive the file closed.
    ``closed_file`` is set once the rotation happened; the request is done when that
    file is stored in every open stream of this server."""

    TABLE: ClassVar[str] = "rotation"

    request_id: int
    requested_at: datetime
    closed_file: str | None = None


@dataclass(frozen=True)
class PreservationRequest:
    """``PUT /backup/{stream_id}/preserve``, until retention has recorded it."""

    TABLE: ClassVar[str] = "preservation"

    site: str
    stream_id: str
    preserve_until: datetime | None
    requested_at: datetime


@dataclass(frozen=True)
class BrokenRequest:
    """``PATCH /backup/{stream_id} {"broken": ...}``, until it is recorded on the site
    (``broken`` false takes an earlier mark back)."""

    TABLE: ClassVar[str] = "broken_mark"

    site: str
    stream_id: str
    requested_at: datetime
    broken: bool = True


@dataclass(frozen=True)
class RestoreTestRequest:
    """A restore test to run: ``requested`` (``POST /backup/{stream_id}/test``) or
    ``scheduled`` (``restore_test``); ``stream_id`` None: the newest backup's.
    ``started_at`` is set before it starts: a test a restart interrupted is run again."""

    TABLE: ClassVar[str] = "restore_test_request"

    site: str
    stream_id: str | None
    reason: BackupReason
    requested_at: datetime
    started_at: datetime | None = None


@dataclass(frozen=True)
class RestoreTestResult(RestoreTestView):
    """The last restore test of one stream: what ``GET /backup`` shows with it."""

    TABLE: ClassVar[str] = "restore_test_result"

    site: str
    stream_id: str


@dataclass(frozen=True)
class Facts:
    """Last known facts, for status after a restart (the site stays the truth)."""

    TABLE: ClassVar[str] = "facts"

    last_backup_id: str | None = None
    last_backup_at: datetime | None = None
    newest_archived_commit_at: datetime | None = None
    archive_stalled_since: datetime | None = None
    archive_stall_reason: str | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    last_error_job: str | None = None  # whose: cleared when that job next succeeds
    last_restore_test_at: datetime | None = None  # the last scheduled one's start
    # The last archive pass's sentences about this server's streams another node took
    # over, one per line (None: not deposed). Kept so that a restarted daemon takes no
    # backup and deletes nothing in the seconds before its first pass finds it again.
    deposed: str | None = None


@dataclass(frozen=True)
class DaemonState:
    control: Control = Control()
    restore: RestoreRecord | None = None
    # The backup being taken (``started_at`` set) or to take, then at most one more
    # asked for while it runs: later requests merge into that one.
    backups: tuple[BackupRequest, ...] = ()
    rotations: tuple[RotationRequest, ...] = ()
    preservations: tuple[PreservationRequest, ...] = ()
    broken_marks: tuple[BrokenRequest, ...] = ()
    facts: Facts = Facts()
    restore_tests: tuple[RestoreTestRequest, ...] = ()
    # The newest result of each stream tested, oldest first (at most RESTORE_TEST_RESULTS).
    restore_test_results: tuple[RestoreTestResult, ...] = ()

    @property
    def mode(self) -> Mode:
        return self.control.mode

    def with_mode(self, mode: Mode) -> DaemonState:
        return replace(self, control=replace(self.control, mode=mode))


# --- the store ---------------------------------------------------------------------------
Row = TypeVar("Row")

# (attribute of DaemonState, dataclass, whether it holds many rows or at most one)
_PARTS: tuple[tuple[str, type[Any], bool], ...] = (
    ("control", Control, False),
    ("restore", RestoreRecord, False),
    ("backups", BackupRequest, True),
    ("rotations", RotationRequest, True),
    ("preservations", PreservationRequest, True),
    ("broken_marks", BrokenRequest, True),
    ("facts", Facts, False),
    # Tables added without a schema version change: an older binhoard ignores them.
    ("restore_tests", RestoreTestRequest, True),
    ("restore_test_results", RestoreTestResult, True),
)


class StateStore:
    """``daemon.sqlite``: load the state once, then save each changed state whole."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # Used by one thread at a time (the controller's); it may be opened by another.
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(str(exc)) from None
        self._saved: DaemonState | None = None

    @classmethod
    def open(cls, state_directory: Path) -> StateStore:
        return cls(state_directory / FILE_NAME)

    def _damaged(self, why: str) -> ConflictError:
        return ConflictError(
            f"the daemon's state {self.path} cannot be read ({why}): move it away to start "
            "again in idle mode (the site is unaffected; a restore in progress continues "
            "with `binhoard restore --resume`)"
        )

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise ConflictError(
                f"the daemon's state {self.path} was written by a newer binhoard "
                f"(schema {version}, this one knows {SCHEMA_VERSION})"
            )
        self._db.execute("BEGIN IMMEDIATE")
        for _, cls, _ in _PARTS:
            columns = ", ".join(f.name for f in fields(cls))
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {cls.TABLE} ({columns})")
            # A newer schema only adds fields (with defaults): their columns are added,
            # NULL in the rows there, which read as the field's default (_decode_row).
            present = {row[1] for row in self._db.execute(f"PRAGMA table_info({cls.TABLE})")}
            for name in (f.name for f in fields(cls)):
                if name not in present:
                    self._db.execute(f"ALTER TABLE {cls.TABLE} ADD COLUMN {name}")
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.execute("COMMIT")

    def load(self) -> DaemonState:
        parts: dict[str, Any] = {}
        try:
            for name, cls, many in _PARTS:
                columns = [f.name for f in fields(cls)]
                rows = [
                    _decode_row(cls, dict(zip(columns, row, strict=True)))
                    for row in self._db.execute(
                        f"SELECT {', '.join(columns)} FROM {cls.TABLE} ORDER BY rowid"
                    )
                ]
                if many:
                    parts[name] = tuple(rows)
                elif rows:
                    parts[name] = rows[0]
        except (sqlite3.DatabaseError, ValueError, TypeError, KeyError) as exc:
            raise self._damaged(str(exc)) from None
        state = DaemonState(**parts)
        self._saved = state
        return state

    def save(self, state: DaemonState) -> bool:
        """Writes ``state`` in one transaction, unless it is what was saved last.
        Returns whether it wrote."""
        if state == self._saved:
            return False
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for name, cls, many in _PARTS:
                value = getattr(state, name)
                rows = value if many else ([] if value is None else [value])
                columns = [f.name for f in fields(cls)]
                self._db.execute(f"DELETE FROM {cls.TABLE}")
                self._db.executemany(
                    f"INSERT INTO {cls.TABLE} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' for _ in columns)})",
                    [[_encode(getattr(row, c)) for c in columns] for row in rows],
                )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._saved = state
        return True

    def close(self) -> None:
        self._db.close()


def _encode(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True)
    return value


def _decode_row(cls: type[Row], row: dict[str, object]) -> Row:
    hints = typing.get_type_hints(cls)
    values = {
        name: _decode(hints[name], value)
        for name, value in row.items()
        # NULL in a column added later (``_add_new_columns``): the field's default.
        if value is not None or _optional(hints[name])
    }
    return cls(**values)


def _optional(hint: object) -> bool:
    return type(None) in typing.get_args(hint)


def _decode(hint: object, value: object) -> object:
    if value is None:
        return None
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in args if a is not type(None)]  # X | None: decode as X
    origin = typing.get_origin(hint) or hint
    if origin is datetime:
        moment = datetime.fromisoformat(str(value))
        if moment.tzinfo is None:
            raise ValueError(f"time without a zone: {value!r}")
        return moment
    if origin is bool:
        return bool(value)
    if origin is Mapping:
        decoded = json.loads(str(value))
        if not isinstance(decoded, dict):
            raise ValueError(f"not a JSON object: {value!r}")
        return decoded
    if origin is int and not isinstance(value, int):
        raise ValueError(f"not an integer: {value!r}")
    if origin in (str, Literal) and not isinstance(value, str):
        raise ValueError(f"not text: {value!r}")
    return value
