"""Restore planning: which backup, which archived binlog files, and where replay stops.

Pure: manifests, binlog records and transaction indexes in, decisions out; no I/O.
Planning happens at two levels, because the per-transaction index of a binlog file is
not stored (docs/format.md) but rebuilt by reading the downloaded file:

1. :func:`plan_restore` decides from the small metadata alone (manifests and the
   catalog's records): the base backup, the binlog files to download and apply (the
   stream's first record, which starts at the snapshot's byte position, up to the file
   that must contain the stop) and a :class:`StopSpec` for the last file.
2. :func:`exact_stop` takes the rebuilt index of the last file (and of the first, when
   they differ) and returns the exact stop: the files to apply and the end offset of the
   last transaction to apply, which is what ``START SLAVE SQL_THREAD UNTIL
   RELAY_LOG_POS`` needs (``UNTIL`` at a file's size never fires: notes/mariadb.md).

Rules (each one is tested in ``tests/unit/test_restore_plan.py``):

* **Time target T** (unix seconds, 1 s resolution like commit times): the restored
  database holds every transaction before the first transaction *in binlog order* whose
  commit time is ``>= T`` (``stop_for_time``; what ``mariadb-binlog --stop-datetime``
  does). Commit times are not monotonic, so the file holding that transaction is the
  first file (in order) whose ``max_commit_time >= T``: every earlier file has all its
  commit times ``< T``. If no archived file has one, the archive cannot prove where the
  stop is (transactions before T may still be unarchived): the plan is refused, also
  when the stream has no binlogs at all.
* **Backup for a time target**: the newest backup with ``completed_at <= T``. The
  snapshot is taken (under ``BACKUP STAGE BLOCK_COMMIT``) before the backup completes,
  and a transaction's binlog timestamp is taken no later than its commit (a replicated
  one carries its primary's, earlier, time), truncated to the second; so every
  transaction in the snapshot has a commit time ``< completed_at <= T`` and cannot be
  the stop: the stop lies after the snapshot. This assumes the database server's clock
  and the clock that wrote ``completed_at`` agree (binhoard runs on the database host)
  and no ``SET TIMESTAMP`` into the future. It is conservative: a backup that completed
  after T may still have its snapshot before the stop, but nothing recorded proves it.
  :func:`exact_stop` re-checks what it can see: a transaction of the first file that
  is in the snapshot and has a commit time ``>= T`` refuses the plan.
* **Approximate time** (``approximate_ok``, as MyHoard's ``target_time_approximate_ok``):
  apply whole files only, namely every file before the first file whose
  ``max_commit_time >= T``: the longest run of whole files all of whose transactions
  committed before T (MyHoard looks at the last commit time, which lets a transaction
  at or after T through when times are not monotonic; the maximum never does). The
  result is the state at a file boundary at or before the exact stop; no index is
  needed to choose it. A target after the archive is refused as for an exact target
  (``--to-latest`` restores the same files).
* **GTID target P**: apply the longest binlog prefix that P contains (``stop_for_gtid``)
  and require it to reach P exactly. Base backup: the newest whose snapshot position P
  covers, with the same server_id wherever P and the snapshot name the same sequence
  number (else it is another history). The last file is the first whose end position
  covers P; a file before it that already holds a transaction beyond P (domains
  interleave) makes P unreachable by replay and is refused. A domain of P that no
  backup's snapshot and no archived record has is refused first, naming the domains
  the archive has (``UnknownDomainError``).
* **File:position target**: apply every transaction of the files before ``file`` and
  those of ``file`` whose end offset is ``<= pos``. Base backup: the newest whose
  snapshot coordinates are at or before it (same binlog base name, numeric order).
* **Latest**: the newest backup, and every archived file of its stream; an empty
  stream restores the backup alone.
* **Gaps**: the records a plan applies must chain (``chain_problems``) and the first
  one must hold the snapshot (``snapshot_inside``); any problem there refuses, naming
  it. A problem after the last planned file is irrelevant, except for ``Latest``, whose
  target is the end of the archive.
* **A new owner's record starting inside its file** (after a promotion, ``starts_inside``):
  only its transactions after ``start_offset`` count, from the previous record's end,
  which must be the file's state there (:func:`exact_stop` checks it on the index).

Refusals are :class:`~binhoard.domain.errors.PlanError` subclasses (exit code 2) with a
message that says what the archive can do instead; records and indexes that contradict
each other raise :class:`ArchiveInconsistentError` (exit code 8).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from binhoard.domain.binlog import (
    SegmentProblem,
    TransactionIndexEntry,
    TransactionTable,
    binlog_sort_key,
    describe_problem,
    stop_for_gtid,
    stop_for_time,
)
from binhoard.domain.catalog import BinlogRecord, chain_problems, snapshot_inside, starts_inside
from binhoard.domain.errors import BinhoardError, NotFoundError, PlanError
from binhoard.domain.gtid import Gtid, GtidOrderError, GtidPosition
from binhoard.domain.manifest import BackupManifest

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_UNIX_RE = re.compile(r"@([0-9]+)")
_LAST_SECOND = (datetime.max.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    seconds=1
)
_POS_RE = re.compile(r"(?:([0-9]+)/)?([^/]+):([0-9]+)")


# --- errors ------------------------------------------------------------------------------
class TargetSyntaxError(PlanError):
    """A ``--to-*`` option is not a valid restore target."""


class NoBackupError(PlanError):
    """The site holds no backup (or not the one asked for)."""


class UnknownBackupError(NoBackupError, NotFoundError):
    """The backup asked for (``--backup ID``) is not in the site: not found, as a plain
    restore of an unknown backup says too."""

    exit_code = NotFoundError.exit_code
    http_status = NotFoundError.http_status


class TargetBeforeSnapshotError(PlanError):
    """The target precedes the snapshot of every usable backup."""


class TargetBeyondArchiveError(PlanError):
    """The target lies after the newest archived transaction."""


class UnknownDomainError(TargetBeyondArchiveError):
    """A GTID target names a replication domain that no backup or archived binlog has."""


class ArchiveGapError(PlanError):
    """The archive is not continuous between the snapshot and the stop point."""

    def __init__(self, message: str, problems: Sequence[SegmentProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__(message)


class AmbiguousPositionError(PlanError):
    """A ``FILE:POS`` target in a stream that holds files of that name of two servers."""


class TargetUnreachableError(PlanError):
    """No prefix of the archived binlog is exactly the target (GTID targets)."""


class ArchiveInconsistentError(BinhoardError):
    """A backup's records and binlog files contradict each other."""

    exit_code = 8


class BrokenBackupError(ArchiveInconsistentError):
    """The backup asked for, or the archive a target needs, is broken: an object it
    needs is corrupt or missing (the message names it)."""


# --- targets -----------------------------------------------------------------------------
def format_time(at: int) -> str:
    """``2024-05-01T12:00:00Z``: a unix time as binhoard shows it."""
    return (_EPOCH + at * _SECOND).strftime("%Y-%m-%dT%H:%M:%SZ")


# Read by people at the CLI and through the daemon's API alike: both ways are named.
_TO_LATEST = (
    "Restore to the newest transaction (--to-latest, or no target over the API), or wait "
    "until the archive reaches the target."
)


@dataclass(frozen=True, slots=True)
class Latest:
    """The newest archived transaction of the newest backup's stream."""

    def describe(self) -> str:
        return "the latest archived transaction"


@dataclass(frozen=True, slots=True)
class TimeTarget:
    """The database as of unix time ``at``: every transaction before the first one (in
    binlog order) committed at or after it."""

    at: int

    def __post_init__(self) -> None:
        if type(self.at) is not int or self.at < 0:
            raise ValueError(f"a time target is unix seconds >= 0, not {self.at!r}")
        if self.at > _LAST_SECOND:  # format_time and datetime end with year 9999
            raise ValueError(f"@{self.at} is after 9999-12-31T23:59:59Z (@{_LAST_SECOND})")

    @classmethod
    def from_datetime(cls, when: datetime) -> TimeTarget:
        """From an aware datetime in whole seconds; a naive one is refused (whose clock?),
        and so is a fraction of a second (commit times have 1 s resolution, and rounding
        either way would apply or skip transactions silently)."""
        if when.tzinfo is None or when.utcoffset() is None:
            raise ValueError(
                f"{when.isoformat()} has no time zone: add Z (UTC) or an offset such as "
                "+02:00, or give @<unix seconds>"
            )
        if when.microsecond:
            raise ValueError(
                f"{when.isoformat()} has a fraction of a second: commit times have 1-second "
                "resolution; give whole seconds"
            )
        return cls((when - _EPOCH) // _SECOND)

    def describe(self) -> str:
        return f"time {format_time(self.at)} (@{self.at})"


@dataclass(frozen=True, slots=True)
class GtidTarget:
    """The database at GTID position ``position`` (one GTID per domain)."""

    position: GtidPosition

    def __post_init__(self) -> None:
        if not self.position:
            raise ValueError("a GTID target needs at least one GTID")

    def describe(self) -> str:
        return f"GTID position {self.position}"


@dataclass(frozen=True, slots=True)
class FilePosTarget:
    """Every transaction of the binlog files before ``file``, and those of ``file`` that
    end at or before byte ``pos`` (coordinates as ``SHOW MASTER STATUS`` gives them), of
    the server ``server_id``. A stream taken over by another node holds the binlogs of
    two servers, whose names both start at ``binlog.000001``: there the position must
    name its server (``SERVER_ID/FILE:POS``); ``None`` where one server's files are all
    the stream has of that name."""

    file: str
    pos: int
    server_id: int | None = None

    def __post_init__(self) -> None:
        binlog_sort_key(self.file)  # raises ValueError for a name without a number
        if type(self.pos) is not int or self.pos < 4:
            raise ValueError(f"a binlog position is a byte offset >= 4, not {self.pos!r}")
        if self.server_id is not None and not 1 <= self.server_id < 2**32:
            # No server logs as 0 (binhoard's server_id is 1..2^32-1): a typo, named
            # here rather than as a position "not after the snapshot".
            raise ValueError(f"a server_id is 1..4294967295, not {self.server_id}")

    @property
    def text(self) -> str:
        """As ``--to-position`` takes it."""
        server = "" if self.server_id is None else f"{self.server_id}/"
        return f"{server}{self.file}:{self.pos}"

    def describe(self) -> str:
        return f"binlog position {self.text}"


Target = Latest | TimeTarget | GtidTarget | FilePosTarget


def parse_time_target(text: str, option: str = "--to-time") -> TimeTarget:
    """``--to-time`` (or another ``option`` that takes a time): ISO 8601 with a time
    zone (``2024-05-01T12:00:00Z``, ``2024-05-01 14:00:00+02:00``) or ``@<unix
    seconds>``."""
    text = text.strip()
    match = _UNIX_RE.fullmatch(text)
    try:
        if match is not None:
            return TimeTarget(int(match.group(1)))
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"not a time: {text!r} (give ISO 8601 with a time zone, such as "
                "2024-05-01T12:00:00Z, or @<unix seconds>)"
            ) from None
        return TimeTarget.from_datetime(when)
    except ValueError as exc:
        raise TargetSyntaxError(f"{option}: {exc}") from None


def parse_gtid_target(text: str) -> GtidTarget:
    """``--to-gtid``: a GTID position, ``0-1-100`` or ``0-1-100,1-2-7``."""
    try:
        return GtidTarget(GtidPosition.parse(text))
    except ValueError as exc:
        raise TargetSyntaxError(f"--to-gtid: {exc}") from None


def parse_position_target(text: str) -> FilePosTarget:
    """``--to-position``: ``FILE:POS``, such as ``binlog.000042:1234``, or
    ``SERVER_ID/FILE:POS`` (``7/binlog.000042:1234``) in a stream that holds the
    binlogs of two servers (after a takeover)."""
    match = _POS_RE.fullmatch(text.strip())
    if match is None:
        raise TargetSyntaxError(
            f"--to-position: {text!r} is not FILE:POS (binlog.000042:1234) or "
            "SERVER_ID/FILE:POS (7/binlog.000042:1234)"
        )
    server = match.group(1)
    try:
        return FilePosTarget(
            match.group(2), int(match.group(3)), int(server) if server is not None else None
        )
    except ValueError as exc:
        raise TargetSyntaxError(f"--to-position: {exc}") from None


def parse_target(
    *,
    to_latest: bool = False,
    to_time: str | None = None,
    to_gtid: str | None = None,
    to_position: str | None = None,
) -> Target:
    """The target named by exactly one of the CLI's ``--to-*`` options."""
    given = [
        name
        for name, value in (
            ("--to-latest", to_latest or None),
            ("--to-time", to_time),
            ("--to-gtid", to_gtid),
            ("--to-position", to_position),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise TargetSyntaxError(
            "give exactly one of --to-latest, --to-time, --to-gtid, --to-position"
            + (f" (given: {', '.join(given)})" if given else "")
        )
    for name, value in (
        ("--to-time", to_time),
        ("--to-gtid", to_gtid),
        ("--to-position", to_position),
    ):
        # An empty value (a shell variable that was not set) is a mistake, never "no target".
        if value is not None and not value.strip():
            raise TargetSyntaxError(f"{name} is empty: give the point to restore to")
    if to_time is not None:
        return parse_time_target(to_time)
    if to_gtid is not None:
        return parse_gtid_target(to_gtid)
    if to_position is not None:
        return parse_position_target(to_position)
    return Latest()


# --- plans -------------------------------------------------------------------------------
StopKind = Literal["snapshot", "end_of_file", "exact"]


@dataclass(frozen=True, slots=True)
class StopSpec:
    """Where replay stops, as far as the records tell.

    * ``snapshot``: nothing to apply; the backup alone is the target.
    * ``end_of_file``: after the last transaction of the last planned file.
    * ``exact``: inside the last planned file (possibly before its first transaction),
      decided by :func:`exact_stop` from that file's index.

    ``detail`` says it in words, for the CLI.
    """

    kind: StopKind
    detail: str


@dataclass(frozen=True)
class RestorePlan:
    """The outcome of :func:`plan_restore`.

    ``backup`` is the base (restore its ``chain``, full then incrementals); ``records``
    are the binlog files to download and apply in order, the first starting at the
    snapshot's byte position (its ``start_offset``), the last holding the stop.
    """

    backup: BackupManifest
    target: Target
    records: tuple[BinlogRecord, ...]
    stop: StopSpec
    approximate: bool = False

    @property
    def snapshot(self) -> GtidPosition:
        """The GTID position of the backup's snapshot: where replay starts."""
        return _snapshot_gtid(self.backup)

    @property
    def total_bytes(self) -> int:
        """Bytes of binlog to download (whole files)."""
        return sum(record.size for record in self.records)

    @property
    def transactions_upper_bound(self) -> int:
        """At most this many transactions get applied (the first file's count includes
        those already in the snapshot, the last file's those after the stop)."""
        return sum(record.transactions for record in self.records)


@dataclass(frozen=True)
class ResolvedStop:
    """The outcome of :func:`exact_stop`: exactly what replay applies.

    ``records`` is a prefix of the plan's records (trailing files with nothing to apply
    dropped; empty: the backup alone). ``end_offset`` is the end offset of the last
    transaction to apply in ``records[-1]`` (``UNTIL RELAY_LOG_POS``); it is ``None``
    when the stop falls after *all* of a file whose index :func:`exact_stop` was not
    given (a file between the first and the last planned one): then it is that file's
    last ``end_offsets`` entry, from the index the caller built when downloading it.
    ``gtid_position`` is the state after replay (check ``gtid_slave_pos`` against it);
    ``stop_before`` the first transaction of the last planned file left out, if any.
    """

    records: tuple[BinlogRecord, ...]
    end_offset: int | None
    transactions: int
    gtid_position: GtidPosition
    stop_before: TransactionIndexEntry | None = None


# --- choosing the backup -----------------------------------------------------------------
def _snapshot_gtid(backup: BackupManifest) -> GtidPosition:
    try:
        return GtidPosition.parse(backup.snapshot.gtid_position)
    except ValueError as exc:
        raise ArchiveInconsistentError(
            f"backup {backup.backup_id}: snapshot GTID position is not valid: {exc}"
        ) from None


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _same_history(target: GtidPosition, found: GtidPosition) -> list[tuple[Gtid, Gtid]]:
    """``(wanted, found)`` for every domain where both name the same sequence number
    but another server: two different transactions, so two histories."""
    return target.diverges_from(found)


def _coordinates(file: str, pos: int) -> tuple[tuple[str, int], int] | None:
    try:
        return binlog_sort_key(file), pos
    except ValueError:
        return None


def _precedes(backup: BackupManifest, target: Target) -> bool:
    """True if the backup's snapshot is known to be at or before the target."""
    if isinstance(target, Latest):
        return True
    if isinstance(target, TimeTarget):
        return _aware(backup.completed_at) <= _EPOCH + target.at * _SECOND
    if isinstance(target, GtidTarget):
        snapshot = _snapshot_gtid(backup)
        return target.position.covers(snapshot) and not _same_history(target.position, snapshot)
    if target.server_id is not None and target.server_id != backup.server_id:
        return False  # another server's file: only the stream's records can say
    here = _coordinates(backup.snapshot.binlog_file, backup.snapshot.binlog_pos)
    there = _coordinates(target.file, target.pos)
    return here is not None and there is not None and here[0][0] == there[0][0] and here <= there


def _holds_taken_over_file(
    backup: BackupManifest, records: Sequence[BinlogRecord], target: FilePosTarget
) -> bool:
    """Whether the stream holds the target's file as written by a server that took it
    over (its snapshot, in the backup's server's files, says nothing about those)."""
    return any(
        r.name == target.file
        and r.server_id != backup.server_id
        and target.server_id in (None, r.server_id)
        for r in records
    )


def _refuse_unknown_server(
    backup: BackupManifest, records: Sequence[BinlogRecord], target: Target
) -> None:
    """A ``SERVER_ID/FILE:POS`` whose server wrote nothing of the stream: named as such,
    not as a position before the snapshot."""
    if not isinstance(target, FilePosTarget) or target.server_id is None:
        return
    servers = {backup.server_id} | {r.server_id for r in records}
    if target.server_id not in servers:
        raise TargetBeforeSnapshotError(
            f"{target.describe()}: stream {backup.backup_id} holds no binlog of server_id "
            f"{target.server_id} (its servers: {', '.join(map(str, sorted(servers)))})"
        )


def _where(backup: BackupManifest) -> str:
    snap = backup.snapshot
    completed = (_aware(backup.completed_at) - _EPOCH) // _SECOND
    return (
        f"{backup.backup_id} (completed {format_time(completed)}, "
        f"snapshot at {snap.binlog_file}:{snap.binlog_pos}, "
        f"GTID {snap.gtid_position or '(empty)'})"
    )


def choose_backup(
    backups: Sequence[BackupManifest],
    target: Target,
    *,
    backup_id: str | None = None,
    catalog: Mapping[str, Sequence[BinlogRecord]] | None = None,
) -> BackupManifest:
    """The newest backup (``backups`` are oldest first) whose snapshot is known to be at
    or before ``target``; with ``backup_id``, that backup, if it is. For a binlog
    position, also one whose stream (in ``catalog``) holds the file as written by a
    server that took the stream over."""

    def precedes(backup: BackupManifest) -> bool:
        if _precedes(backup, target):
            return True
        records = (catalog or {}).get(backup.backup_id, ())
        return isinstance(target, FilePosTarget) and _holds_taken_over_file(backup, records, target)

    if not backups:
        raise NoBackupError("there is no backup to restore from")
    if backup_id is not None:
        chosen = [b for b in backups if b.backup_id == backup_id]
        if not chosen:
            raise UnknownBackupError(f"there is no backup {backup_id}")
        if not precedes(chosen[0]):
            _refuse_unknown_server(chosen[0], (catalog or {}).get(backup_id, ()), target)
            raise TargetBeforeSnapshotError(
                f"{target.describe()} is not known to be after the snapshot of backup "
                f"{_where(chosen[0])}"
            )
        return chosen[0]
    for backup in reversed(backups):
        if precedes(backup):
            return backup
    if isinstance(target, GtidTarget):
        _refuse_missing_domains(backups, target)
    why = ""
    if isinstance(target, TimeTarget):
        why = (
            ": a backup's snapshot is only known to precede times at or after the moment "
            "the backup completed"
        )
    raise TargetBeforeSnapshotError(
        f"no backup precedes {target.describe()}; the oldest is {_where(backups[0])}{why}"
    )


def _refuse_missing_domains(backups: Sequence[BackupManifest], target: GtidTarget) -> None:
    """A GTID target that leaves out a domain of the snapshots (``5-1-60`` on a server
    that also writes domain 9) is the whole GTID state, so no snapshot precedes it; say
    which domains it lacks instead of "no backup precedes"."""
    wanted = target.position
    for backup in reversed(backups):
        snapshot = _snapshot_gtid(backup)
        missing = [snapshot[d] for d in snapshot if d not in wanted]
        named = GtidPosition(snapshot[d] for d in snapshot if d in wanted)
        if missing and wanted.covers(named) and not _same_history(wanted, named):
            lacks = ", ".join(str(g.domain_id) for g in missing)
            has = ",".join(g.format() for g in missing)
            raise TargetBeforeSnapshotError(
                f"{target.describe()} names no GTID for domain{'s' if len(missing) > 1 else ''}"
                f" {lacks}, which the snapshot of backup {backup.backup_id} has ({has}): a GTID "
                "target is the whole GTID state, one GTID per domain; add the position of "
                f"every domain, such as {GtidPosition([*wanted.gtids, *missing])} or later "
                "(binhoard binlog list shows the GTIDs of each file)"
            )


# --- describing the archive --------------------------------------------------------------
def _reach(backup: BackupManifest, records: Sequence[BinlogRecord]) -> str:
    """How far a stream's archive goes, in words."""
    if not records:
        return (
            f"the archive of backup {backup.backup_id} holds no binlog after its snapshot "
            f"(GTID {backup.snapshot.gtid_position or '(empty)'})"
        )
    times = [r.max_commit_time for r in records if r.max_commit_time is not None]
    newest = f", newest commit time {format_time(max(times))}" if times else ""
    return (
        f"the archive of backup {backup.backup_id} reaches the end of {records[-1].name} "
        f"(GTID {records[-1].gtid_position_at_end or '(empty)'}{newest})"
    )


def _check_prefix(
    backup: BackupManifest,
    snapshot: GtidPosition,
    records: Sequence[BinlogRecord],
    target: Target,
) -> None:
    """Refuses unless ``records`` start at the snapshot and chain without a problem."""
    if not records:
        return
    first, snap = records[0], backup.snapshot
    if (first.name, first.start_offset) != (snap.binlog_file, snap.binlog_pos) or not (
        snapshot_inside(first, snapshot)
    ):
        raise ArchiveInconsistentError(
            f"the first binlog record of backup {backup.backup_id} ({first.name} from byte "
            f"{first.start_offset}, GTID {first.gtid_list_at_start or '(empty)'}.."
            f"{first.gtid_position_at_end or '(empty)'}) does not hold its snapshot "
            f"({snap.binlog_file}:{snap.binlog_pos}, GTID {snapshot or '(empty)'})"
        )
    problems = chain_problems(records)
    if not problems:
        return
    names = [r.name for r in records]
    complete = records[: names.index(problems[0].before) + 1]
    raise ArchiveGapError(
        f"cannot restore to {target.describe()}: the archive is not continuous before "
        f"that point: {'; '.join(describe_problem(p) for p in problems)}. "
        f"Up to the first problem, {_reach(backup, complete)}: choose a target before it.",
        problems,
    )


def _trim(records: Sequence[BinlogRecord]) -> tuple[BinlogRecord, ...]:
    """Without the trailing files that hold no transaction (nothing to apply there)."""
    end = len(records)
    while end and records[end - 1].transactions == 0:
        end -= 1
    return tuple(records[:end])


def _end_of(records: tuple[BinlogRecord, ...]) -> StopSpec:
    if not records:
        return StopSpec("snapshot", "nothing to apply: the backup alone is the target")
    return StopSpec("end_of_file", f"after the last transaction of {records[-1].name}")


# --- planning per target kind ------------------------------------------------------------
_Planned = tuple[tuple[BinlogRecord, ...], StopSpec]


def _plan_latest(
    backup: BackupManifest, snapshot: GtidPosition, records: tuple[BinlogRecord, ...]
) -> _Planned:
    _check_prefix(backup, snapshot, records, Latest())
    used = _trim(records)
    return used, _end_of(used)


def _plan_time(
    backup: BackupManifest,
    snapshot: GtidPosition,
    records: tuple[BinlogRecord, ...],
    target: TimeTarget,
    approximate: bool,
) -> _Planned:
    last = next(
        (
            i
            for i, r in enumerate(records)
            if r.max_commit_time is not None and r.max_commit_time >= target.at
        ),
        None,
    )
    if last is None:
        raise TargetBeyondArchiveError(
            f"{target.describe()} is after the newest archived transaction: "
            f"{_reach(backup, records)}. {_TO_LATEST}"
        )
    if approximate:
        used = _trim(records[:last])
        _check_prefix(backup, snapshot, used, target)
        return used, _end_of(used)
    used = records[: last + 1]
    _check_prefix(backup, snapshot, used, target)
    return used, StopSpec(
        "exact",
        f"before the first transaction committed at or after {format_time(target.at)}, "
        f"in {used[-1].name}",
    )


def _plan_gtid(
    backup: BackupManifest,
    snapshot: GtidPosition,
    records: tuple[BinlogRecord, ...],
    target: GtidTarget,
) -> _Planned:
    wanted = target.position
    if snapshot.covers(wanted):  # and wanted covers snapshot (_precedes): the snapshot
        return (), _end_of(())
    last = next((i for i, r in enumerate(records) if r.gtid_position_at_end.covers(wanted)), None)
    if last is None:
        end = records[-1].gtid_position_at_end if records else snapshot
        missing = ", ".join(
            f"{gtid} (archive: {end[d] if d in end else 'nothing in domain ' + str(d)})"
            for d, gtid in wanted.items()
            if not end.contains(gtid)
        )
        raise TargetBeyondArchiveError(
            f"{target.describe()} is not in the archive: missing {missing}; "
            f"{_reach(backup, records)}. {_TO_LATEST}"
        )
    used = records[: last + 1]
    _check_prefix(backup, snapshot, used, target)
    for record in used[:-1]:
        if not wanted.covers(record.gtid_position_at_end):
            raise TargetUnreachableError(
                f"no prefix of the binlog is exactly {target.describe()}: {record.name} "
                f"holds transactions beyond it (it ends at {record.gtid_position_at_end}) "
                f"before {used[-1].name} completes it (domains interleave). Choose a "
                "position the binlog passes through, such as the end of a file, or a time."
            )
    end = used[-1].gtid_position_at_end
    if clash := _same_history(wanted, end):
        want, found = clash[0]
        raise TargetUnreachableError(
            f"{target.describe()} is not in this history: the archive of backup "
            f"{backup.backup_id} has {found} where the target names {want}"
        )
    if wanted.covers(end):
        return used, _end_of(used)
    return used, StopSpec("exact", f"at {wanted}, in {used[-1].name}")


def _plan_position(
    backup: BackupManifest,
    snapshot: GtidPosition,
    records: tuple[BinlogRecord, ...],
    target: FilePosTarget,
) -> _Planned:
    snap = backup.snapshot
    server = _position_server(backup, records, target)
    at_snapshot = (server, target.file, target.pos)
    if at_snapshot == (backup.server_id, snap.binlog_file, snap.binlog_pos):
        return (), _end_of(())
    key = binlog_sort_key(target.file)
    try:
        # File names increase within one server's records (a new owner's start again).
        last = next(
            (
                i
                for i, r in enumerate(records)
                if r.server_id == server and binlog_sort_key(r.name) >= key
            ),
            None,
        )
    except ValueError as exc:
        raise ArchiveInconsistentError(f"backup {backup.backup_id}: {exc}") from None
    if last is None:
        raise TargetBeyondArchiveError(
            f"{target.file} is not archived yet: {_reach(backup, records)}. {_TO_LATEST}"
        )
    # Everything before the target file is applied, so the records must chain up to and
    # including the first one at or after it (a file missing there held no transaction).
    _check_prefix(backup, snapshot, records[: last + 1], target)
    if records[last].name != target.file:  # not archived: it held no transaction
        used = _trim(records[:last])
        return used, _end_of(used)
    if target.pos > records[last].size:
        # No server gives such a position: a typo, which would otherwise apply the
        # whole file and look like success.
        raise TargetSyntaxError(
            f"--to-position: {target.file}:{target.pos} lies beyond the end of "
            f"{target.file} ({records[last].size} bytes)"
        )
    if records[last].transactions == 0:
        used = _trim(records[: last + 1])
        return used, _end_of(used)
    return records[: last + 1], StopSpec(
        "exact", f"after the last transaction ending at or before {target.file}:{target.pos}"
    )


def _position_server(
    backup: BackupManifest, records: Sequence[BinlogRecord], target: FilePosTarget
) -> int:
    """The server whose file ``target`` names: its own ``server_id``, else the one server
    of the stream whose records have that file name. After a takeover a stream holds
    the files of two servers, each from ``binlog.000001``: a name two of them have, or a
    name none of them has, must say which server's it is."""
    if target.server_id is not None:
        return target.server_id
    holders: dict[int, BinlogRecord] = {}
    for record in records:
        if record.name == target.file:
            holders.setdefault(record.server_id, record)
    servers = sorted({backup.server_id, *(r.server_id for r in records)})
    if len(holders) == 1:
        return next(iter(holders))
    if len(holders) > 1:
        found = " and ".join(
            f"server {sid}'s (record {r.seq})" for sid, r in sorted(holders.items())
        )
        asks = " or ".join(
            FilePosTarget(target.file, target.pos, sid).text for sid in sorted(holders)
        )
        raise AmbiguousPositionError(
            f"--to-position {target.text} is ambiguous: the archive of backup "
            f"{backup.backup_id} holds {target.file} of two servers, {found} (the stream "
            f"was taken over); give {asks}"
        )
    if len(servers) > 1:
        asks = " or ".join(FilePosTarget(target.file, target.pos, sid).text for sid in servers)
        raise AmbiguousPositionError(
            f"--to-position {target.text} is ambiguous: {target.file} is not in the archive "
            f"of backup {backup.backup_id}, which holds the binlogs of servers "
            f"{', '.join(str(s) for s in servers)} (the stream was taken over); give {asks}"
        )
    return backup.server_id


def _check_domains(
    backups: Sequence[BackupManifest],
    catalog: Mapping[str, Sequence[BinlogRecord]],
    target: GtidTarget,
) -> None:
    """Refuses a target naming a domain the site never saw: no backup could precede it
    and no binlog reach it, and "no backup precedes" would send the user looking for an
    older backup that cannot exist."""
    known: set[int] = set()
    for backup in backups:
        known.update(_snapshot_gtid(backup))
    for records in catalog.values():
        for record in records:
            known.update(record.gtid_list_at_start)
            known.update(record.gtid_position_at_end)
    unknown = sorted(set(target.position) - known)
    if not unknown:
        return
    names = ", ".join(str(d) for d in unknown)
    there = ", ".join(str(d) for d in sorted(known)) or "none (no transaction at all)"
    plural = "s" if len(unknown) > 1 else ""
    raise UnknownDomainError(
        f"cannot restore to {target.describe()}: GTID domain{plural} {names} "
        f"{'are' if plural else 'is'} not in the archive (domains in the archive: {there}). "
        "Check the domain id of the target (@@gtid_domain_id of the server that wrote it)."
    )


def plan_restore(
    backups: Sequence[BackupManifest],
    catalog: Mapping[str, Sequence[BinlogRecord]],
    target: Target,
    *,
    approximate_ok: bool = False,
    backup_id: str | None = None,
    broken_backups: Mapping[str, str] | None = None,
    broken_streams: Mapping[str, str] | None = None,
) -> RestorePlan:
    """Plans a restore from the metadata alone (see the module docstring for the rules).

    ``backups`` oldest first, the usable ones; ``catalog`` maps a stream id (= backup
    id) to its records in ``seq`` order (a missing stream has no records).
    ``approximate_ok`` only changes time targets. ``backup_id`` forces the base backup
    (it must precede the target). ``broken_backups`` (id: why) are never chosen; asked
    for, they are refused with the reason. For ``broken_streams`` (id: why) the catalog
    holds the intact records before the problem: a target they reach is planned as
    usual, any other (and ``Latest``, whose end is unknown) is refused with the reason.
    """
    if backup_id is not None and broken_backups and backup_id in broken_backups:
        raise BrokenBackupError(
            f"backup {backup_id} cannot be restored: {broken_backups[backup_id]}"
        )
    stream_broken = broken_streams or {}
    if backups and isinstance(target, GtidTarget):
        _check_domains(backups, catalog, target)
    backup = choose_backup(backups, target, backup_id=backup_id, catalog=catalog)
    snapshot = _snapshot_gtid(backup)
    records = tuple(catalog.get(backup.backup_id, ()))
    approximate = approximate_ok and isinstance(target, TimeTarget)
    why = stream_broken.get(backup.backup_id)
    if why is not None:
        try:
            return _plan_in_broken(backup, records, target, approximate, why)
        except BrokenBackupError as refusal:
            if backup_id is not None:
                raise
            older = _older_than(backups, backup)
            plan = _plan_older(older, catalog, target, approximate_ok, broken_streams)
            if plan is None:
                raise
            if isinstance(target, Latest):
                # "Latest" is unknown past the break: never silently less; say what the
                # older backup reaches and let the operator choose it.
                raise BrokenBackupError(
                    f"{refusal.message} Or restore backup {plan.backup.backup_id}, whose "
                    f"archive {_reach(plan.backup, plan.records)}, to its newest transaction "
                    f"(--backup {plan.backup.backup_id} --to-latest, or stream_id "
                    f"{plan.backup.backup_id} and no target over the API)."
                ) from None
            return plan  # an exact target: the same database, from an older backup
    if isinstance(target, Latest):
        used, stop = _plan_latest(backup, snapshot, records)
    elif isinstance(target, TimeTarget):
        used, stop = _plan_time(backup, snapshot, records, target, approximate)
    elif isinstance(target, GtidTarget):
        used, stop = _plan_gtid(backup, snapshot, records, target)
    else:
        used, stop = _plan_position(backup, snapshot, records, target)
    return RestorePlan(backup, target, used, stop, approximate)


def _older_than(backups: Sequence[BackupManifest], backup: BackupManifest) -> list[BackupManifest]:
    """The backups before ``backup`` of its history: an older backup of the history it
    was forked from holds another database at the same time or GTID."""
    ids = [b.backup_id for b in backups]
    older = backups[: ids.index(backup.backup_id)]
    return [b for b in older if b.history_id == backup.history_id]


def _plan_older(
    older: Sequence[BackupManifest],
    catalog: Mapping[str, Sequence[BinlogRecord]],
    target: Target,
    approximate_ok: bool,
    broken_streams: Mapping[str, str] | None,
) -> RestorePlan | None:
    """The plan from an older backup whose archive reaches ``target``, if one does (a
    newer backup's archive is broken before it)."""
    if not older:
        return None
    try:
        return plan_restore(
            older,
            catalog,
            target,
            approximate_ok=approximate_ok,
            broken_streams=broken_streams,
        )
    except (PlanError, ArchiveInconsistentError):
        return None


def _plan_in_broken(
    backup: BackupManifest,
    records: tuple[BinlogRecord, ...],
    target: Target,
    approximate: bool,
    why: str,
) -> RestorePlan:
    """A plan on the intact records of a broken stream, if they reach the target."""
    refusal = (
        f"cannot restore to {target.describe()}: the binlog archive of backup "
        f"{backup.backup_id} is broken ({why}); before the problem, {_reach(backup, records)}"
    )
    if isinstance(target, Latest):
        raise BrokenBackupError(f"{refusal}. Choose a target before the problem.")
    intact = {backup.backup_id: records}
    try:
        plan = plan_restore([backup], intact, target, approximate_ok=approximate)
    except TargetBeyondArchiveError:
        raise BrokenBackupError(f"{refusal}. Choose a target before the problem.") from None
    return plan


# --- the exact stop ----------------------------------------------------------------------
def _check_table(record: BinlogRecord, table: TransactionTable) -> None:
    first = table[0].gtid if len(table) else None
    last = table[-1].gtid if len(table) else None
    newest = max(table.commit_times) if len(table) else None
    if (len(table), first, last, newest) != (
        record.transactions,
        record.first_gtid,
        record.last_gtid,
        record.max_commit_time,
    ):
        raise ArchiveInconsistentError(
            f"the index of {record.name} (stream {record.stream_id}, seq {record.seq}: "
            f"{len(table)} transactions, {first}..{last}, newest commit {newest}) does not "
            f"match its record ({record.transactions} transactions, {record.first_gtid}.."
            f"{record.last_gtid}, newest commit {record.max_commit_time})"
        )


def _split(
    record: BinlogRecord, table: TransactionTable, what: str = "the snapshot position"
) -> tuple[TransactionTable, TransactionTable]:
    """``(before, from)`` the record's ``start_offset``, which must be a transaction
    boundary: for the first file, the transactions in the snapshot and after it."""
    at = bisect.bisect_left(table.start_offsets, record.start_offset)
    if at and table.end_offsets[at - 1] > record.start_offset:
        raise ArchiveInconsistentError(
            f"{what} {record.name}:{record.start_offset} lies inside "
            f"transaction {table[at - 1].gtid}"
        )
    return table[:at], table[at:]


def _continued_part(
    before: BinlogRecord, record: BinlogRecord, table: TransactionTable
) -> TransactionTable:
    """The transactions of a record that starts inside its file (``starts_inside``)
    after its ``start_offset``, where the file's GTID state must be exactly the previous
    record's end: what is before it was applied from the previous owner's records."""
    _check_table(record, table)
    earlier, after = _split(record, table, "the start position of the new owner's record")
    found = _advance(record.gtid_list_at_start, earlier)
    if found != before.gtid_position_at_end:
        raise ArchiveInconsistentError(
            f"stream {record.stream_id}, seq {record.seq}: the GTID state at its start "
            f"position {record.name}:{record.start_offset} is {found or '(empty)'}, not the "
            f"end of the record before it ({before.name}: "
            f"{before.gtid_position_at_end or '(empty)'})"
        )
    return after


def _advance(start: GtidPosition, table: TransactionTable) -> GtidPosition:
    """``start`` moved past every transaction of ``table`` (plain integers in the loop:
    the part of a first file before the snapshot can hold millions)."""
    state = {g.domain_id: (g.server_id, g.seq_no) for g in start.values()}
    for domain, server, seq, *_ in table.rows():
        state[domain] = (server, seq)
    return GtidPosition(Gtid(d, server, seq) for d, (server, seq) in state.items())


def _check_snapshot(plan: RestorePlan, first: BinlogRecord, in_snapshot: TransactionTable) -> None:
    snapshot = plan.snapshot
    found = _advance(first.gtid_list_at_start, in_snapshot)
    if found != snapshot:
        raise ArchiveInconsistentError(
            f"backup {plan.backup.backup_id}: the GTID state at its snapshot position "
            f"{first.name}:{first.start_offset} is {found or '(empty)'}, not its snapshot "
            f"{snapshot or '(empty)'}"
        )
    target = plan.target
    if isinstance(target, TimeTarget):
        late = next((i for i, t in enumerate(in_snapshot.commit_times) if t >= target.at), None)
        if late is not None:
            entry = in_snapshot[late]
            raise TargetBeforeSnapshotError(
                f"{target.describe()} precedes the snapshot of backup "
                f"{plan.backup.backup_id}: it holds {entry.gtid}, committed at "
                f"{format_time(entry.commit_time)}. Restore from an older backup "
                "(--backup) or choose a later time."
            )


def _count_in_last(
    plan: RestorePlan, transactions: TransactionTable, start: GtidPosition
) -> tuple[int, TransactionIndexEntry | None]:
    """How many of the last file's (countable) transactions to apply, and the first
    one left out."""
    target, name = plan.target, plan.records[-1].name
    if plan.stop.kind == "end_of_file":
        return len(transactions), None
    if isinstance(target, TimeTarget):
        point = stop_for_time(transactions, target.at)
        if not point.found:
            raise ArchiveInconsistentError(
                f"the record of {name} has a commit time at or after "
                f"{format_time(target.at)}, its index after the snapshot has none"
            )
        return point.count, point.stop_before
    if isinstance(target, GtidTarget):
        try:
            found = stop_for_gtid(transactions, target.position, start)
        except GtidOrderError as exc:
            raise ArchiveInconsistentError(f"{name}: {exc}") from None
        if not found.reached:
            missing = ", ".join(
                str(g) for g in target.position.values() if not found.position.contains(g)
            )
            raise TargetUnreachableError(
                f"no prefix of the binlog is exactly {target.describe()}: replay must stop "
                f"before {found.stop_before.gtid if found.stop_before else 'the end'} in "
                f"{name} (beyond the target) at {found.position}, without {missing} "
                "(domains interleave). Choose a position the binlog passes through, or a time."
            )
        if clash := _same_history(target.position, found.position):
            want, other = clash[0]
            raise TargetUnreachableError(
                f"{target.describe()} is not in this history: {name} has {other} where "
                f"the target names {want}"
            )
        return found.count, found.stop_before
    if isinstance(target, FilePosTarget):
        count = bisect.bisect_right(transactions.end_offsets, target.pos)
        return count, transactions[count] if count < len(transactions) else None
    raise AssertionError(f"a {plan.stop.kind} stop for {target.describe()}")


def _counted(
    records: Sequence[BinlogRecord], from_first: int, tables: Mapping[int, TransactionTable]
) -> list[int]:
    """How many transactions each planned file applies: ``from_first`` (after the
    snapshot) in the first, those after the start position in one that starts inside
    (by its index in ``tables``), all of the others."""
    counted = [from_first, *(r.transactions for r in records[1:])]
    for index in range(1, len(records)):
        if not starts_inside(records, index):
            continue
        table = tables.get(index)
        if table is None:
            raise ValueError(
                f"exact_stop needs the index of {records[index].name} (plan file {index}), "
                "whose record starts inside it"
            )
        counted[index] = len(_continued_part(records[index - 1], records[index], table))
    return counted


def exact_stop(
    plan: RestorePlan,
    last_file_transactions: TransactionTable,
    first_file_transactions: TransactionTable | None = None,
    inside_transactions: Mapping[int, TransactionTable] | None = None,
) -> ResolvedStop:
    """The exact stop of ``plan``, from the rebuilt index of its last file (and of its
    first file when the plan has more than one: it is required then; and, by index in
    ``plan.records``, of every file between them whose record starts inside it,
    :func:`~binhoard.domain.catalog.starts_inside`).

    Transactions before the first file's ``start_offset`` are in the snapshot and never
    count; they are checked against the snapshot's GTID position and, for a time
    target, against the target (one committed at or after it means the target precedes
    the snapshot). A record that starts inside its file (a new owner's first after a
    promotion) counts only its transactions after its ``start_offset``, from the
    previous record's end, which must be the file's state there. If the target is
    reached before any transaction of the last file, replay stops after the last
    transaction of the nearest earlier file that has one, and the files after it are
    dropped.
    """
    records = plan.records
    snapshot = plan.snapshot
    if not records:
        return ResolvedStop((), None, 0, snapshot)
    first, last = records[0], records[-1]
    if len(records) == 1:
        first_table = last_file_transactions
    elif first_file_transactions is None:
        raise ValueError("exact_stop needs the first file's index when a plan has two or more")
    else:
        first_table = first_file_transactions
        _check_table(last, last_file_transactions)
    _check_table(first, first_table)
    in_snapshot, after_snapshot = _split(first, first_table)
    _check_snapshot(plan, first, in_snapshot)
    counted = _counted(
        records,
        len(after_snapshot),
        {**(inside_transactions or {}), len(records) - 1: last_file_transactions},
    )
    single = len(records) == 1
    if single:
        countable, start = after_snapshot, snapshot
    elif starts_inside(records, len(records) - 1):
        countable = last_file_transactions[len(last_file_transactions) - counted[-1] :]
        start = records[-2].gtid_position_at_end
    else:
        countable, start = last_file_transactions, last.gtid_list_at_start
    count, stop_before = _count_in_last(plan, countable, start)
    if count:
        return ResolvedStop(
            records,
            countable.end_offsets[count - 1],
            sum(counted[:-1]) + count,
            last.gtid_position_at_end
            if count == len(countable)
            else _advance(start, countable[:count]),
            stop_before,
        )
    # Nothing of the last file: stop after the nearest earlier file with a transaction.
    index = len(records) - 2
    while index > 0 and counted[index] == 0:
        index -= 1
    if index < 0 or (index == 0 and not after_snapshot):
        return ResolvedStop((), None, 0, snapshot, stop_before)
    return ResolvedStop(
        records[: index + 1],
        after_snapshot.end_offsets[-1] if index == 0 else None,
        sum(counted[: index + 1]),
        records[index].gtid_position_at_end,
        stop_before,
    )
