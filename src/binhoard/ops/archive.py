"""Archiving the server's closed binlogs into the site's open streams.

One pass (:meth:`BinlogArchiver.archive_once`) walks the server's binlog index, oldest
file first, and gives every open stream of this server the file it needs next:

1. the file is indexed with the binlog reader (every event checksum verified), and
   must start exactly where the stream's archive ends (its Gtid_list equals the end
   state of the previous record), or for a stream's first file, the backup's snapshot
   must sit at a transaction boundary of it with exactly the snapshot's GTID state;
2. its data object is uploaded once, whatever number of streams need it;
3. each stream gets a record, written create-if-absent: the record is the proof.

The site is the only state. A crash between 2 and 3 leaves an object no record names;
the next pass deletes and re-uploads it (objects are never rewritten under a name
someone references). A crash after 3 is simply the next pass's starting point. So a
re-run never duplicates or skips a file.

A problem (gap, purged file, corrupt file, snapshot not where the manifest says) stops
that stream where it is and is reported on every pass until a newer stream takes over.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from binhoard.config import Settings
from binhoard.domain.archiving import (
    Archive,
    Missing,
    NextStep,
    RotationTimer,
    Wait,
    next_step,
    state_at_offset,
)
from binhoard.domain.binlog import binlog_sort_key, compare_positions, describe_problem
from binhoard.domain.catalog import (
    BinlogRecord,
    StreamMarker,
    binlog_data_key,
    closed_key,
    completed_key,
)
from binhoard.domain.errors import (
    BinhoardError,
    ConflictError,
    CorruptBinlogError,
    ObjectNotFoundError,
    PreconditionFailedError,
    UsageError,
)
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.manifest import ObjectRef
from binhoard.localstate import StateFile, exclusive
from binhoard.metrics import Metrics
from binhoard.ops.backup import object_ref
from binhoard.ops.catalog import StreamState, read_streams
from binhoard.server import sql
from binhoard.server.binlog_reader import BinlogIndex, read_binlog
from binhoard.storage.pipeline import Codec, suffix, upload
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.archive")

READ_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ServerBinlogs:
    """The server's binlog index: every file, oldest first, and the one it writes."""

    directory: Path
    names: tuple[str, ...]
    active: str

    def path(self, name: str) -> Path:
        return self.directory / name


def server_binlogs(conn: sql.Connection, binlog_prefix: Path) -> ServerBinlogs:
    rows = sql.query(conn, "SHOW BINARY LOGS")
    status = sql.query(conn, "SHOW MASTER STATUS")
    if not status:
        raise UsageError("the server has binary logging off: nothing to archive")
    return ServerBinlogs(
        directory=binlog_prefix.parent,
        names=tuple(str(row[0]) for row in rows),
        active=str(status[0][0]),
    )


@dataclass
class StreamReport:
    stream_id: str
    records: int
    end_position: str
    newest_commit_time: int | None
    completed: bool
    closed: bool
    caught_up: bool  # every closed file of the server it needs is archived
    problems: list[str] = field(default_factory=list)


@dataclass
class ArchiveReport:
    """What a pass did and found; also written to ``binlog-archive.json`` for status."""

    at: str
    uploaded: list[str] = field(default_factory=list)
    records_written: int = 0
    streams: list[StreamReport] = field(default_factory=list)
    newest_stored_commit_time: int | None = None

    @property
    def problems(self) -> list[str]:
        return [f"stream {s.stream_id}: {p}" for s in self.streams for p in s.problems]


def status_file(settings: Settings) -> StateFile:
    return StateFile(settings.state_directory / "binlog-archive.json")


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(READ_CHUNK):
            yield chunk


def _start_digest(index: BinlogIndex) -> str:
    return hashlib.sha256(index.gtid_list_at_start.format().encode()).hexdigest()


class _Stream:
    """An open stream during one pass: its records grow as files are archived."""

    def __init__(self, state: StreamState) -> None:
        self.state = state
        self.records = list(state.records)
        self.problems = state.problems()
        self.completed = state.completed is not None
        self.closed = False

    @property
    def stream_id(self) -> str:
        return self.state.stream_id

    def next(self, server: ServerBinlogs) -> NextStep:
        snapshot = self.state.backup.snapshot
        return next_step(
            self.records[-1].name if self.records else None,
            snapshot.binlog_file,
            snapshot.binlog_pos,
            server.names,
            server.active,
        )


class BinlogArchiver:
    """Archives closed binlogs of the configured server into the upload site."""

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.store = store
        self.codec = Codec.from_site(settings.upload_site)
        self.now = now

    def archive_once(self) -> ArchiveReport:
        """One pass: archive every closed file each open stream needs. Holds the archive
        lock (one archiver per host); raises ``ConflictError`` if another one runs."""
        with exclusive(self.settings.state_directory / "binlog-archive.lock", "binlog archiving"):
            # A server_id other than the configured one matches no stream: the pass would
            # archive nothing and look successful.
            sql.check_server(
                self.settings.mysql.client_params, self.settings.server_id, what="cannot archive"
            )
            conn = sql.connect(self.settings.mysql.client_params)
            try:
                server = server_binlogs(conn, self.settings.mysql.binlog_prefix)
            finally:
                conn.close()
            return self._pass(server)

    def _pass(self, server: ServerBinlogs) -> ArchiveReport:
        report = ArchiveReport(at=self.now().isoformat())
        all_streams = read_streams(self.store)
        refs = {r.object.key: r.object for s in all_streams for r in s.records}
        streams = [
            _Stream(s)
            for s in all_streams
            if s.backup.server_id == self.settings.server_id and s.closed is None
        ]
        for name in server.names:
            if name == server.active:
                break
            wanting: list[tuple[_Stream, Archive]] = []
            for stream in streams:
                step = stream.next(server)
                if isinstance(step, Archive) and step.name == name and not stream.problems:
                    wanting.append((stream, step))
            if wanting:
                self._archive_file(server, name, wanting, refs, report)
        for stream in streams:
            step = stream.next(server)
            if isinstance(step, Missing) and not stream.problems:
                stream.problems.append(f"cannot archive {step.needed}: {step.detail}")
            caught_up = isinstance(step, Wait) and not stream.problems
            if caught_up and not stream.completed:
                self._mark(completed_key(stream.stream_id), stream, None)
                stream.completed = True
                log.info("stream %s has caught up with the server: completed", stream.stream_id)
        self._close_superseded(streams)
        for stream in streams:
            for problem in stream.problems:
                log.error("stream %s: %s", stream.stream_id, problem)
            report.streams.append(self._stream_report(stream, server))
        times = [s.newest_commit_time for s in report.streams if s.newest_commit_time is not None]
        report.newest_stored_commit_time = max(times) if times else None
        return report

    def _stream_report(self, stream: _Stream, server: ServerBinlogs) -> StreamReport:
        records = stream.records
        times = [r.max_commit_time for r in records if r.max_commit_time is not None]
        end = records[-1].gtid_position_at_end if records else stream.state.snapshot_gtid
        return StreamReport(
            stream_id=stream.stream_id,
            records=len(records),
            end_position=end.format(),
            newest_commit_time=max(times) if times else None,
            completed=stream.completed,
            closed=stream.closed,
            caught_up=isinstance(stream.next(server), Wait),
            problems=list(stream.problems),
        )

    def _archive_file(
        self,
        server: ServerBinlogs,
        name: str,
        wanting: list[tuple[_Stream, Archive]],
        refs: dict[str, ObjectRef],
        report: ArchiveReport,
    ) -> None:
        path = server.path(name)
        try:
            index = read_binlog(path)
        except (CorruptBinlogError, OSError) as exc:
            for stream, _ in wanting:
                stream.problems.append(f"cannot read {path}: {exc}")
            return
        accepted = [(s, step) for s, step in wanting if self._fits(s, step, index)]
        if not accepted:
            return
        key = binlog_data_key(
            self.settings.server_id,
            name,
            index.created,
            _start_digest(index),
            suffix(self.codec.algorithm),
        )
        ref = refs.get(key)
        if ref is None or ref.plain_size != index.size:
            ref = self._upload(key, path, index)
            refs[key] = ref
            report.uploaded.append(name)
        segment = index.segment()
        for stream, step in accepted:
            record = BinlogRecord(
                stream_id=stream.stream_id,
                seq=len(stream.records),
                server_id=self.settings.server_id,
                name=name,
                object=ref,
                gtid_list_at_start=segment.gtid_list_at_start,
                gtid_position_at_end=segment.end_position,
                first_gtid=segment.first_gtid,
                last_gtid=segment.last_gtid,
                first_commit_time=segment.first_commit_time,
                last_commit_time=segment.last_commit_time,
                min_commit_time=min(index.transactions.commit_times, default=None),
                max_commit_time=segment.max_commit_time,
                transactions=segment.transaction_count,
                start_offset=step.start_offset,
                archived_at=self.now(),
            )
            if self._write_record(stream, record):
                report.records_written += 1

    def _fits(self, stream: _Stream, step: Archive, index: BinlogIndex) -> bool:
        """Whether ``index`` continues ``stream`` exactly; records the problem if not."""
        if stream.records:
            previous = stream.records[-1]
            problems = compare_positions(
                previous.name,
                previous.gtid_position_at_end,
                index.name,
                index.gtid_list_at_start,
            )
            for problem in problems:
                stream.problems.append(describe_problem(problem))
            return not problems
        snapshot = stream.state.snapshot_gtid
        at_snapshot = state_at_offset(
            index.gtid_list_at_start, index.transactions, step.start_offset
        )
        if at_snapshot is None or at_snapshot != snapshot:
            stream.problems.append(
                f"the backup's snapshot {index.name}:{step.start_offset} "
                f"({snapshot or 'empty GTID position'}) is not a transaction boundary with that "
                f"GTID state in the file (found {at_snapshot})"
            )
            return False
        return True

    def _upload(self, key: str, path: Path, index: BinlogIndex) -> ObjectRef:
        # No record names this key (or its size differs): a leftover of a pass that
        # stopped between upload and record. Nobody can depend on it; replace it.
        with contextlib.suppress(ObjectNotFoundError):
            self.store.stat(key)
            self.store.delete(key)
            log.info("deleted %s: uploaded before, but never recorded", key)
        started = time.monotonic()
        digest = upload(self.store, key, _file_chunks(path), self.codec, if_absent=True)
        if digest.plain_size != index.size:
            raise CorruptBinlogError(
                str(path),
                index.size,
                f"changed while it was archived ({index.size} bytes indexed, "
                f"{digest.plain_size} uploaded): a closed binlog must not change",
            )
        log.info(
            "archived %s: %d bytes, %d stored, %d transactions, in %.2f s",
            path.name,
            digest.plain_size,
            digest.stored_size,
            len(index.transactions),
            time.monotonic() - started,
        )
        return object_ref(key, self.codec, digest)

    def _write_record(self, stream: _Stream, record: BinlogRecord) -> bool:
        try:
            self.store.put(record.key, [record.to_bytes()], if_absent=True)
        except PreconditionFailedError:
            raise ConflictError(
                f"{record.key} was written by someone else while this archiver held the "
                "stream: two archivers for one stream (another host?)"
            ) from None
        stream.records.append(record)
        return True

    def _mark(self, key: str, stream: _Stream, successor: str | None) -> None:
        marker = StreamMarker(
            stream_id=stream.stream_id,
            at=self.now(),
            seq=stream.records[-1].seq if stream.records else None,
            successor=successor,
        )
        with contextlib.suppress(PreconditionFailedError):
            self.store.put(key, [marker.to_bytes()], if_absent=True)

    def _close_superseded(self, streams: list[_Stream]) -> None:
        """Closes every open stream older than the newest completed one: that one
        carries archiving on, so the older ones get no more binlogs."""
        newest_completed = next((s for s in reversed(streams) if s.completed), None)
        if newest_completed is None:
            return
        for stream in streams:
            if stream is newest_completed:
                break
            self._mark(closed_key(stream.stream_id), stream, newest_completed.stream_id)
            stream.closed = True
            log.info(
                "stream %s closed: %s has taken over", stream.stream_id, newest_completed.stream_id
            )


def flush_and_wait(
    settings: Settings,
    archiver: BinlogArchiver,
    *,
    timeout: float,
    poll: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, ArchiveReport | None]:
    """Rotates the binlog now and waits until the file just closed is stored.

    Returns the closed file's name. Archives in this process when no other archiver
    runs; otherwise waits for the running one (e.g. the daemon) to store it. Raises
    ``BinhoardError`` on timeout or when the archive of the file is blocked by a problem.
    """
    conn = sql.connect(settings.mysql.client_params)
    try:
        before = server_binlogs(conn, settings.mysql.binlog_prefix).active
        sql.query(conn, "FLUSH BINARY LOGS")
    finally:
        conn.close()
    deadline = clock() + timeout
    report: ArchiveReport | None = None
    while True:
        try:
            report = archiver.archive_once()
        except ConflictError:
            report = None  # another archiver runs: watch the site instead
        if _stored(archiver.store, settings.server_id, before):
            return before, report
        if report is not None and not report.streams:
            raise UsageError(
                f"no open backup stream of server_id {settings.server_id} in "
                f"{archiver.store.describe()}: take a backup first (binhoard backup create)"
            )
        if report is not None and report.problems:
            raise BinhoardError(f"{before} cannot be archived: " + "; ".join(report.problems))
        if clock() >= deadline:
            raise BinhoardError(f"{before} was not stored within {timeout:g} s")
        time.sleep(poll)


def _stored(store: ObjectStore, server_id: int, name: str) -> bool:
    for stream in read_streams(store):
        if stream.backup.server_id != server_id or stream.closed is not None:
            continue
        if stream.records and binlog_sort_key(stream.records[-1].name) >= binlog_sort_key(name):
            return True
    return False


class ArchiveLoop:
    """What the daemon (and ``binhoard binlog archive --follow``) runs periodically:
    one archive pass, status and metrics, and the forced rotation that bounds how long
    a committed transaction waits in the server's active binlog (the RPO)."""

    def __init__(
        self,
        settings: Settings,
        archiver: BinlogArchiver,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.archiver = archiver
        self.metrics = metrics
        self.clock = clock
        self.timer = RotationTimer(settings.backup_settings.forced_binlog_rotation_interval)

    def tick(self) -> ArchiveReport:
        report = self.archiver.archive_once()
        if self._rotate_if_due(report):
            report = self.archiver.archive_once()
        publish(self.settings, report, self.metrics)
        return report

    def _rotate_if_due(self, report: ArchiveReport) -> bool:
        conn = sql.connect(self.settings.mysql.client_params)
        try:
            binlog_pos = GtidPosition.parse(
                sql.variables(conn, "gtid_binlog_pos")["gtid_binlog_pos"]
            )
            waiting = any(
                s.caught_up
                and not s.problems
                and not s.closed
                and not GtidPosition.parse(s.end_position).covers(binlog_pos)
                for s in report.streams
            )
            if not self.timer.due(waiting=waiting, now=self.clock()):
                return False
            sql.query(conn, "FLUSH BINARY LOGS")
        finally:
            conn.close()
        self.timer.rotated()
        self.metrics.increment("binhoard.binlog.forced_rotations")
        log.info(
            "rotated the binlog: transactions waited %.0f s or more",
            self.settings.backup_settings.forced_binlog_rotation_interval,
        )
        return True


def publish(settings: Settings, report: ArchiveReport, metrics: Metrics) -> None:
    """Writes the pass's report for ``binhoard binlog status`` and sets the metrics
    operators alarm on: the newest stored commit time (RPO) and the problem count."""
    status_file(settings).write({**asdict(report), "problems": report.problems})
    if report.newest_stored_commit_time is not None:
        metrics.gauge("binhoard.binlog.newest_stored_commit_time", report.newest_stored_commit_time)
    metrics.gauge("binhoard.binlog.archive_problems", len(report.problems))
    metrics.increment("binhoard.binlog.files_uploaded", len(report.uploaded))
