"""Archiving the server's closed binlogs into the site's open streams.

One pass (:meth:`BinlogArchiver.archive_once`) walks the server's binlog index, oldest
file first, and gives every open stream of this server the file it needs next:

1. the file is summarised in one scan of the binlog reader (every event checksum
   verified; no per-transaction index is kept, so memory does not grow with it), and
   must start exactly where the stream's archive ends (its Gtid_list equals the end
   state of the previous record), or for a stream's first file, the backup's snapshot
   must sit at a transaction boundary of it with exactly the snapshot's GTID state;
2. its data object is uploaded once, whatever number of streams need it, as a plain
   streaming (multipart) put under a key no other upload can have (the file's
   identity plus a random token), so any size fits in ``part_size x concurrency``;
3. each stream gets a record, written create-if-absent: the record is the proof, and
   the only arbiter. Two writers may both upload, only one record wins; the loser
   deletes its own object, which nobody can name.

The site is the only state that decides. A crash between 2 and 3 leaves an object no
record names: its key was written to ``binlog-uploads.json`` before the upload, so the
next pass on this host deletes it; one left by another host is deleted once untouched
for 24 hours (it may be mid-upload). A crash after 3 is simply the next pass's starting
point. So a re-run never duplicates or skips a file.

A problem (gap, purged file, corrupt file, snapshot not where the manifest says) stops
that stream where it is and is reported on every pass until a newer stream takes over.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from binhoard.config import BackupSite
from binhoard.domain.archiving import (
    Archive,
    Missing,
    NextStep,
    RotationTimer,
    ServerFiles,
    Wait,
    offset_of_state,
)
from binhoard.domain.binlog import (
    BinlogSegment,
    binlog_sort_key,
    compare_positions,
    describe_problem,
)
from binhoard.domain.binlog_file import BinlogSummary
from binhoard.domain.catalog import (
    ArchiveStatus,
    BinlogIdentity,
    BinlogRecord,
    StreamMarker,
    archive_status_key,
    binlog_data_key,
    binlog_identity,
    closed_key,
    completed_key,
    identity_of_data_key,
)
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import (
    ArchiveStalledError,
    BinhoardError,
    CancelledError,
    ConflictError,
    CorruptBinlogError,
    ObjectNotFoundError,
    PreconditionFailedError,
    UsageError,
)
from binhoard.domain.gtid import GtidOrderError, GtidPosition
from binhoard.domain.history import History
from binhoard.domain.manifest import ObjectRef
from binhoard.domain.promotion import deposed_by
from binhoard.domain.server_facts import check_facts
from binhoard.localstate import StateFile, exclusive
from binhoard.metric_names import (
    BINLOG_ARCHIVE_PASS_FAILURES,
    BINLOG_ARCHIVE_PROBLEMS,
    BINLOG_ARCHIVE_STALLED,
    BINLOG_DEPOSED_STREAMS,
    BINLOG_FILES_UPLOADED,
    BINLOG_FORCED_ROTATIONS,
    BINLOG_LAST_PASS_TIME,
    BINLOG_NEWEST_STORED_COMMIT_TIME,
    BINLOG_PENDING_BYTES,
    BINLOG_PENDING_FILES,
)
from binhoard.metrics import Metrics
from binhoard.ops.backup import object_ref
from binhoard.ops.catalog import StreamState, read_records, read_site, read_streams
from binhoard.ops.history import local_history, own_streams
from binhoard.ops.site import BackupEntry
from binhoard.ops.sitecache import SiteCache, open_cache
from binhoard.ports.server import Server, ServerBinlogs
from binhoard.storage.pipeline import Codec, suffix, upload
from binhoard.storage.store import ObjectInfo, ObjectStore, read_all
from binhoard.telemetry import report_error

log = logging.getLogger("binhoard.archive")

READ_CHUNK = 1024 * 1024
BINLOG_DATA_PREFIX = "binlogs/"
# Unrecorded data objects of other hosts are deleted once untouched this long: an upload
# in progress elsewhere becomes visible only when complete and is recorded right after.
LEFTOVER_GRACE = timedelta(hours=24)
# How often a pass lists every data object to look for such leftovers (one listing).
SWEEP_INTERVAL = timedelta(hours=1)


@dataclass(frozen=True)
class ArchiveConfig:
    """What archiving needs besides its ports (``app.archive_config`` makes it)."""

    server_id: int  # the configured server's: its streams are archived into
    site: BackupSite  # the upload site (its codec)
    state_directory: Path
    rotation_interval: float  # forced_binlog_rotation_interval, seconds


@dataclass
class StreamReport:
    stream_id: str
    records: int
    end_position: str
    newest_commit_time: int | None
    completed: bool
    closed: bool
    caught_up: bool  # every closed file of the server it needs is archived
    problems: list[str] = field(default_factory=list)  # gaps: the stream cannot continue
    error: str | None = None  # this pass failed to advance it; the next pass retries
    last_file: str | None = None  # the newest binlog archived into it

    @property
    def stalled(self) -> bool:
        return bool(self.problems) or self.error is not None


@dataclass
class BrokenStreamReport:
    """A stream the pass left alone because an object of it (named) cannot be used."""

    stream_id: str
    key: str
    reason: str


@dataclass
class DeposedStreamReport:
    """A stream of this server that another node took over (docs/format.md,
    "Promotions and fencing"): nothing more is archived into it from here."""

    stream_id: str
    promotion_key: str
    new_owner_server_id: int
    promoted_at: str

    @property
    def sentence(self) -> str:
        return (
            f"stream {self.stream_id} was taken over by server_id "
            f"{self.new_owner_server_id} at {self.promoted_at} ({self.promotion_key}): "
            "this server is deposed; nothing it writes there counts"
        )


@dataclass
class ArchiveReport:
    """What a pass did and found; also written to ``binlog-archive.json`` for status.

    ``failure`` is set when the pass as a whole failed (the site or the server could not
    be read); ``streams`` is then empty.
    """

    at: str
    uploaded: list[str] = field(default_factory=list)
    records_written: int = 0
    streams: list[StreamReport] = field(default_factory=list)
    newest_stored_commit_time: int | None = None
    failure: str | None = None
    broken: list[BrokenStreamReport] = field(default_factory=list)
    deposed: list[DeposedStreamReport] = field(default_factory=list)
    # This node's history (domain/history.py), and why it has it: only streams of it
    # are archived into.
    history: str | None = None
    # Open streams of this server_id of another history (the one a restore forked this
    # node from): left alone, as sentences.
    other_histories: list[str] = field(default_factory=list)
    # Closed server files an open stream still needs, and their size (None: unknown).
    pending_files: int | None = None
    pending_bytes: int | None = None

    @property
    def problems(self) -> list[str]:
        found = [f"stream {s.stream_id}: {p}" for s in self.streams for p in s.problems]
        found += [d.sentence for d in self.deposed]
        return found + [f"stream {b.stream_id} is broken: {b.reason}" for b in self.broken]

    @property
    def stall_reasons(self) -> list[str]:
        """Why archiving does not advance, as sentences; empty when it does."""
        if self.failure is not None:
            return [f"the archive pass failed: {self.failure}"]
        if self.deposed:
            # Not "take a backup": a deposed primary must not start a stream of its own.
            return [d.sentence for d in self.deposed]
        if not any(not s.closed for s in self.streams):
            mine = f" of this server's history ({self.history})" if self.history else ""
            return [
                f"no open backup stream{mine} of this server: take a backup "
                "(binhoard backup create)"
            ]
        found = list(self.problems)
        found += [f"stream {s.stream_id}: {s.error}" for s in self.streams if s.error]
        return found

    @property
    def stalled(self) -> bool:
        return bool(self.stall_reasons)


def status_file(state_directory: Path) -> StateFile:
    return StateFile(state_directory / "binlog-archive.json")


def uploads_file(state_directory: Path) -> StateFile:
    """Data keys this host started uploading and has not seen recorded yet, and when it
    last looked for other hosts' leftovers: ``{"pending": [key], "swept_at": iso}``."""
    return StateFile(state_directory / "binlog-uploads.json")


def _is_binlog_data_key(key: str) -> bool:
    return identity_of_data_key(key) is not None


def _swept_at(value: object, path: Path) -> datetime | None:
    """When this host last looked for other hosts' leftovers; None (look now) if the
    file does not say so readably."""
    if value is None:
        return None
    try:
        swept = datetime.fromisoformat(str(value))
    except ValueError:
        log.warning("ignoring %s: 'swept_at' is not a time: %r", path, value)
        return None
    if swept.tzinfo is None:
        log.warning("ignoring %s: 'swept_at' has no time zone: %r", path, value)
        return None
    return swept


def _file_chunks(path: Path, cancel: threading.Event | None) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(READ_CHUNK):
            if cancel is not None and cancel.is_set():
                # The key is in binlog-uploads.json: the next pass deletes the partial upload.
                raise CancelledError(f"archiving {path.name} cancelled")
            yield chunk


def _start_digest(index: BinlogSummary) -> str:
    return hashlib.sha256(index.gtid_list_at_start.format().encode()).hexdigest()


def _stored_uploads(streams: Sequence[StreamState]) -> dict[BinlogIdentity, ObjectRef]:
    """The stored upload of each file some record names. Any will do for another stream:
    matched by the file's identity, not by key (keys differ per upload, and keys
    written before upload tokens existed have none)."""
    refs: dict[BinlogIdentity, ObjectRef] = {}
    for stream in streams:
        for record in stream.records:
            identity = identity_of_data_key(record.object.key)
            if identity is not None:
                refs.setdefault(identity, record.object)
    return refs


class _Stream:
    """An open stream during one pass: its records grow as files are archived."""

    def __init__(self, state: StreamState, server_id: int) -> None:
        self.state = state
        # The promotion this server continues the stream from, until its first record
        # after it is written: its next file is then one of its own binlogs, starting
        # at the promotion's position (the archiver works the step out, with I/O).
        promotions = state.promotions
        taken = promotions[-1] if promotions and promotions[-1].server_id == server_id else None
        self.handover = (
            taken
            if taken is not None and not any(r.seq >= taken.takes_over_at for r in state.records)
            else None
        )
        self.handover_step: NextStep | None = None
        self.records = list(state.records)
        self.next_seq = state.seq_after  # fenced records take their seqs too
        self.problems = state.problems()
        self.completed = state.completed is not None
        self.closed = False
        self.error: str | None = None
        self._step: tuple[str | None, NextStep] | None = None

    @property
    def stream_id(self) -> str:
        return self.state.stream_id

    @property
    def handing_over(self) -> bool:
        """Whether the stream's next record is this server's first after its promotion."""
        handover = self.handover
        return handover is not None and all(r.seq < handover.takes_over_at for r in self.records)

    @property
    def start_position(self) -> GtidPosition | None:
        """Where the next file must start for a stream that does not continue its last
        record's file: the snapshot (no record yet) or the promotion's position."""
        if self.handing_over:
            assert self.handover is not None
            return self.handover.gtid_position
        return None if self.records else self.state.snapshot_gtid

    def next(self, files: ServerFiles) -> NextStep:
        """The stream's next step. It depends only on the stream's last record (and on
        ``files``, fixed for a pass), so it is worked out again only when a record has
        been added."""
        if self.handing_over:
            assert self.handover_step is not None  # worked out before the walk
            return self.handover_step
        last = self.records[-1].name if self.records else None
        if self._step is None or self._step[0] != last:
            snapshot = self.state.backup.snapshot
            step = files.next_step(last, snapshot.binlog_file, snapshot.binlog_pos)
            self._step = (last, step)
        return self._step[1]


class BinlogArchiver:
    """Archives closed binlogs of the configured server into the upload site."""

    def __init__(
        self,
        server: Server,
        store: ObjectStore,
        config: ArchiveConfig,
        *,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        use_cache: bool = True,
        cancel: threading.Event | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.cancel = cancel  # stops an upload in progress (the daemon is stopping)
        self.config = config
        self.codec = Codec.from_site(config.site)
        self.now = now
        # The archive-status.json last written or read per stream: what makes an idle
        # pass write nothing.
        self._site_status: dict[str, ArchiveStatus | None] = {}
        self.use_cache = use_cache
        self._cache: SiteCache | None = None

    def close(self) -> None:
        """Closes the site cache's database, if it was opened (it is opened again when
        needed). An archiver is closed when its process is done with it: Python 3.13
        reports an SQLite connection left to the garbage collector (ResourceWarning)."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def __enter__(self) -> BinlogArchiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def cache(self) -> SiteCache | None:
        """The local cache of the site's documents (``ops/sitecache.py``), opened once:
        with it a pass reads only what is new on the site."""
        if self.use_cache and self._cache is None:
            self._cache = open_cache(self.config.state_directory, self.store.describe())
        return self._cache

    def archive_once(self) -> ArchiveReport:
        """One pass: archive every closed file each open stream needs. Holds the archive
        lock (one archiver per host); raises ``ConflictError`` if another one runs."""
        with exclusive(self.config.state_directory / "binlog-archive.lock", "binlog archiving"):
            # A server_id other than the configured one matches no stream: the pass would
            # archive nothing and look successful.
            check_facts(self.server.facts(), self.config.server_id, what="cannot archive")
            return self.archive_files(self.server.binlogs.list())

    def archive_files(self, binlogs: ServerBinlogs) -> ArchiveReport:
        """One pass over the server's files as ``binlogs`` lists them (what
        :meth:`archive_once` runs under its lock)."""
        try:
            return self._archive_files(binlogs)
        finally:
            # What the pass wrote, in one transaction; also when it failed half-way.
            if self._cache is not None:
                self._cache.commit()

    def _archive_files(self, binlogs: ServerBinlogs) -> ArchiveReport:
        history = local_history(self.config.state_directory)
        report = ArchiveReport(
            at=self.now().isoformat(), history=f"{history.history_id}: {history.reason}"
        )
        site = read_site(self.store, self.cache, incremental=True)
        all_streams = site.streams
        # Intact records of broken streams count too: their objects must not be replaced.
        # So do fenced ones: a deposed primary's late files are kept for the operator.
        named = {r.object.key for s in all_streams for r in (*s.records, *s.fenced)}
        self._remove_leftovers(named)
        ours = own_streams(all_streams, history)
        report.other_histories = _other_histories(all_streams, history, self.config.server_id)
        refs = _stored_uploads(ours)
        # Its own streams, and those it took over (a promotion names it).
        streams = [
            _Stream(s, self.config.server_id)
            for s in ours
            if s.owner == self.config.server_id and s.closed is None and s.broken is None
        ]
        report.broken = _broken_streams(ours, site.backups.entries, self.config.server_id)
        report.deposed = deposed_streams(ours, self.config.server_id)
        if report.deposed:
            # Deposed on one stream is deposed: what this server commits from here on is
            # another history than the new owner's, so no stream of it gets more.
            streams = []
        files = ServerFiles(binlogs.names, binlogs.active)
        for stream in streams:
            if stream.handing_over:
                stream.handover_step = self._handover_step(stream, binlogs)
        self._walk(binlogs, files, streams, refs, report)
        for stream in streams:
            step = stream.next(files)
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
            if stream.error is not None:
                log.error("stream %s: %s", stream.stream_id, stream.error)
            report.streams.append(self._stream_report(stream, files))
            if not stream.closed:
                self._publish_status(report.streams[-1])
        times = [s.newest_commit_time for s in report.streams if s.newest_commit_time is not None]
        report.newest_stored_commit_time = max(times) if times else None
        report.pending_files, report.pending_bytes = _pending(binlogs, files, streams)
        return report

    def _walk(
        self,
        binlogs: ServerBinlogs,
        files: ServerFiles,
        streams: list[_Stream],
        refs: dict[BinlogIdentity, ObjectRef],
        report: ArchiveReport,
    ) -> None:
        """Walks the server's closed files oldest first, archiving each for the streams
        that need it next. Costs O(files + streams) besides the archiving: which streams
        want which file is kept by name, and only a stream that got a record moves."""
        wanted: dict[str, dict[int, _Stream]] = defaultdict(dict)
        for order, stream in enumerate(streams):
            step = stream.next(files)
            if isinstance(step, Archive):
                wanted[step.name][order] = stream
        for name in binlogs.names:
            if name == binlogs.active:
                break
            waiting = wanted.get(name)
            if not waiting:
                continue
            # In stream order, as every stream was asked in turn: the first stream's
            # record decides who cleans up an upload that lost the race.
            wanting: list[tuple[_Stream, Archive]] = []
            for order in sorted(waiting):
                stream = waiting[order]
                step = stream.next(files)
                if isinstance(step, Archive) and step.name == name and not stream.problems:
                    wanting.append((stream, step))
            if not wanting:
                continue
            self._archive_file(binlogs, name, wanting, refs, report)
            for order in sorted(waiting):
                step = waiting[order].next(files)
                if isinstance(step, Archive) and step.name != name:
                    # A later file in the index (or an earlier one, in an index out of
                    # order: the walk has passed it, so the next pass takes it, as before).
                    wanted[step.name][order] = waiting[order]

    def _stream_report(self, stream: _Stream, files: ServerFiles) -> StreamReport:
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
            caught_up=isinstance(stream.next(files), Wait),
            problems=list(stream.problems),
            error=stream.error,
            last_file=records[-1].name if records else None,
        )

    def _publish_status(self, stream: StreamReport) -> None:
        """Writes the stream's ``archive-status.json`` if its outcome changed. Best effort:
        a site that cannot take it now gets it on the next pass that can."""
        reasons = [*stream.problems, *([stream.error] if stream.error else [])]
        key = archive_status_key(stream.stream_id)
        if stream.stream_id not in self._site_status:
            try:
                previous = ArchiveStatus.from_bytes(read_all(self.store, key), key=key)
            except (ObjectNotFoundError, CorruptDocumentError):
                previous = None
            except BinhoardError as exc:
                log.warning("cannot read %s: %s", key, exc.message)
                return
            self._site_status[stream.stream_id] = previous
        previous = self._site_status[stream.stream_id]
        status = ArchiveStatus(
            stream_id=stream.stream_id,
            server_id=self.config.server_id,
            stalled=bool(reasons),
            since=self.now(),
            reason="; ".join(reasons) or None,
            end_position=GtidPosition.parse(stream.end_position),
        )
        if status.same_outcome(previous):
            return
        try:
            self.store.put(key, [status.to_bytes()])
        except BinhoardError as exc:
            log.warning("cannot write %s: %s", key, exc.message)
            return
        self._site_status[stream.stream_id] = status

    def _archive_file(
        self,
        binlogs: ServerBinlogs,
        name: str,
        wanting: list[tuple[_Stream, Archive]],
        refs: dict[BinlogIdentity, ObjectRef],
        report: ArchiveReport,
    ) -> None:
        path = binlogs.path(name)
        # A stream's first file must hold the snapshot: the states there come from the
        # same scan that summarises the file (no per-transaction index is kept).
        snapshots = {
            step.start_offset for stream, step in wanting if stream.start_position is not None
        }
        try:
            index = self.server.binlogs.summarize(path, states_at=snapshots)
            segment = index.segment()  # before anything is uploaded: it checks GTID order
        except (CorruptBinlogError, GtidOrderError, OSError) as exc:
            # GtidOrderError: the file breaks gtid_strict_mode (a transaction not after
            # the one before it in its domain); no restore could apply it as a stream.
            for stream, _ in wanting:
                stream.problems.append(f"cannot read {path}: {exc}")
            return
        accepted = [(s, step) for s, step in wanting if self._fits(s, step, index)]
        if not accepted:
            return
        try:
            self._store_file(path, index, segment, accepted=accepted, refs=refs, report=report)
        except BinhoardError as exc:
            # The file stays where it is for these streams; the next pass retries it.
            for stream, _ in accepted:
                if not stream.records or stream.records[-1].name != name:
                    stream.error = f"cannot archive {name}: {exc.message}"

    def _store_file(
        self,
        path: Path,
        index: BinlogSummary,
        segment: BinlogSegment,
        *,
        accepted: list[tuple[_Stream, Archive]],
        refs: dict[BinlogIdentity, ObjectRef],
        report: ArchiveReport,
    ) -> None:
        name = index.name
        identity = binlog_identity(self.config.server_id, name, index.created, _start_digest(index))
        ref = refs.get(identity)
        fresh = ref is None or ref.plain_size != index.size
        if ref is None or fresh:
            ref = self._upload(identity, path, index)
            refs[identity] = ref
            report.uploaded.append(name)
        for written, (stream, step) in enumerate(accepted):
            record = BinlogRecord(
                stream_id=stream.stream_id,
                seq=stream.next_seq,
                server_id=self.config.server_id,
                name=name,
                object=ref,
                gtid_list_at_start=segment.gtid_list_at_start,
                gtid_position_at_end=segment.end_position,
                first_gtid=segment.first_gtid,
                last_gtid=segment.last_gtid,
                first_commit_time=segment.first_commit_time,
                last_commit_time=segment.last_commit_time,
                min_commit_time=index.min_commit_time,
                max_commit_time=segment.max_commit_time,
                transactions=segment.transaction_count,
                start_offset=step.start_offset,
                archived_at=self.now(),
            )
            try:
                self._write_record(stream, record)
            except ConflictError:
                if fresh and written == 0:
                    # Another writer's record won; only this pass knows the key, so no
                    # record can name it.
                    self.store.delete(ref.key)
                    log.info("deleted %s: another writer's record for it won", ref.key)
                raise
            report.records_written += 1

    def _fits(self, stream: _Stream, step: Archive, index: BinlogSummary) -> bool:
        """Whether ``index`` continues ``stream`` exactly; records the problem if not."""
        start = stream.start_position
        if start is None:
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
        at_start = index.states_at[step.start_offset]
        if at_start is None or at_start != start:
            what = "the promotion's position" if stream.handing_over else "the backup's snapshot"
            stream.problems.append(
                f"{what} {index.name}:{step.start_offset} "
                f"({start or 'empty GTID position'}) is not a transaction boundary with that "
                f"GTID state in the file (found {at_start})"
            )
            return False
        return True

    def _handover_step(self, stream: _Stream, binlogs: ServerBinlogs) -> NextStep:
        """The first file of this server's own after its promotion on ``stream``: the
        newest closed binlog starting at or before the promotion's position, from the
        transaction boundary where its state is that position. A replica's binlogs hold
        what it replicated, so the position is usually inside a file."""
        assert stream.handover is not None
        position = stream.handover.gtid_position
        closed = [name for name in binlogs.names if name != binlogs.active]
        for name in reversed(closed):
            path = binlogs.path(name)
            try:
                index = self.server.binlogs.read(path)
            except (CorruptBinlogError, OSError) as exc:
                return Missing(name, f"cannot read {path}: {exc}")
            if not position.covers(index.gtid_list_at_start):
                continue  # starts after the position: an older file holds it
            offset = offset_of_state(index.gtid_list_at_start, index.transactions, position)
            if offset is None:
                return Missing(
                    name,
                    f"this server's binlog {name} (from {index.gtid_list_at_start or '(empty)'}) "
                    f"has no transaction boundary at the promotion's position "
                    f"{position or '(empty)'}: its binlogs are another history",
                )
            end = index.transactions[-1].end_offset if index.transactions else offset
            if offset == end and name == closed[-1]:
                return Wait(binlogs.active)  # the active file starts at the position
            return Archive(name, offset)
        if closed:
            return Missing(
                f"(the file holding {position or 'the empty position'})",
                f"this server's binlogs ({closed[0]}..) start after the promotion's position "
                f"{position or '(empty)'}: the transactions up to it were not logged here",
            )
        return Wait(binlogs.active)

    def _upload(self, identity: BinlogIdentity, path: Path, index: BinlogSummary) -> ObjectRef:
        key = binlog_data_key(identity, secrets.token_hex(8), suffix(self.codec.algorithm))
        # Written down before the first byte goes up: if this process dies before the
        # record names the object, the next pass knows the key is this host's to delete.
        self._set_pending([*self._pending(), key])
        started = time.monotonic()
        digest = upload(self.store, key, _file_chunks(path, self.cancel), self.codec)
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
            index.transaction_count,
            time.monotonic() - started,
        )
        return object_ref(key, self.codec, digest)

    @property
    def _uploads(self) -> StateFile:
        return uploads_file(self.config.state_directory)

    def _pending(self) -> list[str]:
        """Keys of this host's uploads not yet recorded. Only data keys count: this list
        decides what is deleted, and a damaged file must never name a manifest."""
        file = self._uploads
        pending = (file.read() or {}).get("pending", [])
        if not isinstance(pending, list):
            log.warning("ignoring %s: 'pending' is not a list of keys", file.path)
            return []
        keys = [k for k in pending if isinstance(k, str) and _is_binlog_data_key(k)]
        if len(keys) != len(pending):
            log.warning(
                "ignoring %d entries of %s that are not binlog data keys",
                len(pending) - len(keys),
                file.path,
            )
        return keys

    def _set_pending(self, keys: list[str]) -> None:
        state = self._uploads.read() or {}
        self._uploads.write({**state, "pending": keys})

    def _remove_leftovers(self, named: set[str]) -> None:
        """Deletes data objects no record names: at once those this host began uploading
        (listed in ``binlog-uploads.json``), others when untouched for ``LEFTOVER_GRACE``
        (looked for once per ``SWEEP_INTERVAL``: it takes a listing of every object)."""
        pending = self._pending()
        for key in pending:
            if key not in named:
                self.store.delete(key)
                log.info("deleted %s: uploaded by an interrupted pass, never recorded", key)
        if pending:
            self._set_pending([])
        state = self._uploads.read() or {}
        now = self.now()
        swept = _swept_at(state.get("swept_at"), self._uploads.path)
        if swept is not None and now - swept < SWEEP_INTERVAL:
            return
        for info in self.store.list(BINLOG_DATA_PREFIX):
            if info.key in named or info.last_modified is None:
                continue
            if now - info.last_modified > LEFTOVER_GRACE:
                self.store.delete(info.key)
                log.info("deleted %s: no record names it since %s", info.key, info.last_modified)
        self._uploads.write({**state, "pending": [], "swept_at": now.isoformat()})

    def _write_record(self, stream: _Stream, record: BinlogRecord) -> bool:
        body = record.to_bytes()
        try:
            info = self.store.put(record.key, [body], if_absent=True)
        except PreconditionFailedError:
            raise ConflictError(
                f"{record.key} was written by someone else while this archiver held the "
                "stream: two archivers for one stream (another host?)"
            ) from None
        stream.records.append(record)
        stream.next_seq = record.seq + 1
        self._written(info, body, record)
        return True

    def _written(self, info: ObjectInfo, body: bytes, document: object) -> None:
        """A document this pass has written (the write succeeded) goes into the cache as
        if read back: otherwise the next pass fetches every record and marker this one
        wrote. Kept only as the site describes it (size and etag, or mtime, from the
        write's answer); a listing that differs makes the next pass read it again."""
        cache = self.cache
        if cache is not None:
            cache.store(info, body)
            cache.remember(info.key, body, document)

    def _mark(self, key: str, stream: _Stream, successor: str | None) -> None:
        marker = StreamMarker(
            stream_id=stream.stream_id,
            at=self.now(),
            seq=stream.records[-1].seq if stream.records else None,
            successor=successor,
        )
        body = marker.to_bytes()
        try:
            info = self.store.put(key, [body], if_absent=True)
        except PreconditionFailedError:
            return  # another writer's marker is there: the site's, not ours, is cached
        self._written(info, body, marker)

    def _close_superseded(self, streams: list[_Stream]) -> None:
        """Closes every open stream older than the newest completed one: that one
        carries archiving on, so the older ones get no more binlogs. Only once the older
        stream's archive reaches the newer one's snapshot, though: a newer stream whose
        snapshot sits in the server's active file is completed before that file is
        archived anywhere, and closing the older one then would leave the transactions
        between the file's start and the snapshot in neither (a hole in the PITR
        window). A stream that cannot continue (a gap) is closed at once."""
        newest_completed = next((s for s in reversed(streams) if s.completed), None)
        if newest_completed is None:
            return
        snapshot = newest_completed.state.snapshot_gtid
        for stream in streams:
            if stream is newest_completed:
                break
            end = stream.records[-1].gtid_position_at_end if stream.records else None
            end = end if end is not None else stream.state.snapshot_gtid
            if not stream.problems and not end.covers(snapshot):
                log.debug(
                    "stream %s stays open until its archive reaches the snapshot %s of %s",
                    stream.stream_id,
                    snapshot,
                    newest_completed.stream_id,
                )
                continue
            self._mark(closed_key(stream.stream_id), stream, newest_completed.stream_id)
            stream.closed = True
            log.info(
                "stream %s closed: %s has taken over", stream.stream_id, newest_completed.stream_id
            )


def _pending(server: ServerBinlogs, files: ServerFiles, streams: list[_Stream]) -> tuple[int, int]:
    """The closed files of the server that an open stream still needs after the pass
    (from the earliest file any of them waits for, in index order), and their size. A
    file gone from the directory meanwhile counts with size 0."""
    wanted = {
        step.name
        for stream in streams
        if not stream.closed and isinstance(step := stream.next(files), Archive)
    }
    closed = [name for name in server.names if name != server.active]
    first = next((i for i, name in enumerate(closed) if name in wanted), len(closed))
    pending = closed[first:]
    size = 0
    for name in pending:
        with contextlib.suppress(OSError):  # purged since the index was read
            size += server.path(name).stat().st_size
    return len(pending), size


def _broken_streams(
    streams: Sequence[StreamState], entries: Sequence[BackupEntry], server_id: int
) -> list[BrokenStreamReport]:
    """The broken streams this server's archiver must report: its own, and those whose
    manifest cannot be read (whose they are is unknown). The pass goes on without them."""
    found = [
        BrokenStreamReport(s.stream_id, s.broken.key, s.broken.reason)
        for s in streams
        if s.broken is not None and s.backup.server_id == server_id and s.closed is None
    ]
    found += [
        BrokenStreamReport(e.backup_id, e.broken.key, e.broken.reason)
        for e in entries
        if e.manifest is None and e.broken is not None
    ]
    for broken in found:
        log.error("stream %s is broken, not archived into: %s", broken.stream_id, broken.reason)
    return found


def _other_histories(streams: Sequence[StreamState], history: History, server_id: int) -> list[str]:
    """Open streams this server would own but for their history: never written to,
    closed or fenced by it (they stay restorable as they are)."""
    found = [
        f"stream {s.stream_id} (history {s.backup.history_id or 'of before history ids'}) "
        f"is of another history than this server's ({history.history_id}: "
        f"{history.reason}): not archived into"
        for s in streams
        if s.owner == server_id and s.closed is None and not history.holds(s.backup.history_id)
    ]
    for sentence in found:
        log.debug("%s", sentence)
    return found


def deposed_streams(streams: Sequence[StreamState], server_id: int) -> list[DeposedStreamReport]:
    """This server's open streams that a promotion gave to another node: reported on
    every pass, loudly, since the server still writing means two primaries."""
    found = []
    for s in streams:
        promotion = deposed_by(server_id, s.backup.server_id, s.promotions)
        # Closed too: the new owner closes the stream as soon as its own first backup
        # covers it, seconds after the promotion. Only a stream this server owns that
        # began (or that it took over) after that promotion ends it: it was re-seeded
        # from the new owner's stream and promoted again.
        if promotion is not None and not _owns_since(streams, server_id, promotion.at):
            found.append(
                DeposedStreamReport(
                    s.stream_id, promotion.key, promotion.server_id, promotion.at.isoformat()
                )
            )
            log.error("%s", found[-1].sentence)
    return found


def _owns_since(streams: Sequence[StreamState], server_id: int, at: datetime) -> bool:
    """Whether ``server_id`` owns a stream it opened or took over after ``at``."""
    for s in streams:
        if s.owner != server_id:
            continue
        mine = [p.at for p in s.promotions if p.server_id == server_id]
        if max([s.backup.started_at, *mine]) > at:
            return True
    return False


def flush_and_wait(
    archiver: BinlogArchiver,
    *,
    timeout: float,
    poll: float = 0.2,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[str, ArchiveReport | None]:
    """Rotates the binlog of the archiver's server now and waits until the file just
    closed is stored.

    Returns the closed file's name. Archives in this process when no other archiver
    runs; otherwise waits for the running one (e.g. the daemon) to store it. Raises
    ``BinhoardError`` on timeout or when the archive of the file is blocked by a problem.
    """
    binlogs = archiver.server.binlogs
    before = binlogs.list().active
    binlogs.flush()
    server_id = archiver.config.server_id
    deadline = clock() + timeout
    report: ArchiveReport | None = None
    while True:
        try:
            report = archiver.archive_once()
        except ConflictError:
            report = None  # another archiver runs: watch the site instead
        if _stored(archiver.store, archiver.config, before, archiver.cache):
            return before, report
        if report is not None and not report.streams:
            raise UsageError(
                f"no open backup stream of server_id {server_id} in "
                f"{archiver.store.describe()}: take a backup first (binhoard backup create)"
            )
        if report is not None and report.problems:
            raise BinhoardError(f"{before} cannot be archived: " + "; ".join(report.problems))
        if clock() >= deadline:
            why = "; ".join(report.stall_reasons) if report is not None else ""
            raise BinhoardError(
                f"{before} was not stored within {timeout:g} s" + (f": {why}" if why else "")
            )
        time.sleep(poll)


def _stored(store: ObjectStore, config: ArchiveConfig, name: str, cache: SiteCache | None) -> bool:
    history = local_history(config.state_directory)
    for stream in read_streams(store, cache, incremental=True):
        if (
            stream.backup.server_id != config.server_id
            or stream.closed is not None
            or not history.holds(stream.backup.history_id)
        ):
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
        archiver: BinlogArchiver,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.archiver = archiver
        self.metrics = metrics
        self.clock = clock
        self.timer = RotationTimer(archiver.config.rotation_interval)
        self._failure: str | None = None  # the last pass's, reported once to Sentry

    def tick(self) -> ArchiveReport:
        """One pass (and a rotation if due). Never raises a ``BinhoardError``: a failed pass
        is a report with ``failure`` set, published like any other (the loop is the
        service and must keep going; the report makes the failure loud)."""
        try:
            report = self.archiver.archive_once()
            if self._rotate_if_due(report):
                report = self.archiver.archive_once()
        except BinhoardError as exc:
            report = ArchiveReport(at=self.archiver.now().isoformat(), failure=exc.message)
            # Counted every pass; sent to Sentry when it changes, not every two seconds.
            report_error(exc, self.metrics, "archive", to_sentry=exc.message != self._failure)
        self._failure = report.failure
        publish(self.archiver.config.state_directory, report, self.metrics)
        return report

    def _rotate_if_due(self, report: ArchiveReport) -> bool:
        server = self.archiver.server
        binlog_pos = GtidPosition.parse(server.facts().gtid_binlog_pos)
        waiting = any(
            s.caught_up
            and not s.problems
            and not s.closed
            and not GtidPosition.parse(s.end_position).covers(binlog_pos)
            for s in report.streams
        )
        if not self.timer.due(waiting=waiting, now=self.clock()):
            return False
        server.binlogs.flush()
        self.timer.rotated()
        self.metrics.increment(BINLOG_FORCED_ROTATIONS)
        log.info(
            "rotated the binlog: transactions waited %.0f s or more",
            self.archiver.config.rotation_interval,
        )
        return True


def publish(state_directory: Path, report: ArchiveReport, metrics: Metrics) -> None:
    """Writes the pass's report (``binlog-archive.json`` in ``state_directory``) for
    ``binhoard status`` and sets the metrics operators alarm on: the newest stored
    commit time (RPO), the problem count, whether archiving is stalled and failed
    passes. A stalled pass is logged at ERROR with its reasons; ``stalled_since``
    carries over from the previous report while it stays stalled."""
    previous = status_file(state_directory).read() or {}
    reasons = report.stall_reasons
    since = None
    if reasons:
        since = previous.get("stalled_since") or report.at
        for reason in reasons:
            log.error("binlog archive stalled since %s: %s", since, reason)
    if report.failure is not None and report.newest_stored_commit_time is None:
        # A failed pass learnt nothing new: keep what the last pass knew.
        report.newest_stored_commit_time = previous.get("newest_stored_commit_time")
    status_file(state_directory).write(
        {
            **asdict(report),
            "problems": report.problems,
            "stalled": bool(reasons),
            "stalled_since": since,
            "stall_reasons": reasons,
        }
    )
    if report.newest_stored_commit_time is not None:
        metrics.set_time(BINLOG_NEWEST_STORED_COMMIT_TIME, report.newest_stored_commit_time)
    if report.failure is None:
        metrics.set_time(BINLOG_LAST_PASS_TIME, datetime.fromisoformat(report.at))
    if report.pending_files is not None and report.pending_bytes is not None:
        metrics.gauge(BINLOG_PENDING_FILES, report.pending_files)
        metrics.gauge(BINLOG_PENDING_BYTES, report.pending_bytes)
    metrics.gauge(BINLOG_ARCHIVE_PROBLEMS, len(report.problems))
    metrics.gauge(BINLOG_ARCHIVE_STALLED, 1 if reasons else 0)
    metrics.gauge(BINLOG_DEPOSED_STREAMS, len(report.deposed))
    if report.failure is not None or any(s.error for s in report.streams):
        metrics.increment(BINLOG_ARCHIVE_PASS_FAILURES)
    metrics.increment(BINLOG_FILES_UPLOADED, len(report.uploaded))


def raise_if_stalled(report: ArchiveReport) -> None:
    """``ArchiveStalledError`` (exit status 9) naming every reason, if archiving is stalled."""
    reasons = report.stall_reasons
    if reasons:
        raise ArchiveStalledError("binlog archiving is stalled: " + "; ".join(reasons))


def read_archive_status(store: ObjectStore, stream_id: str) -> ArchiveStatus | None:
    key = archive_status_key(stream_id)
    try:
        return ArchiveStatus.from_bytes(read_all(store, key), key=key)
    except ObjectNotFoundError:
        return None


def archive_end_notes(
    store: ObjectStore, stream_id: str, cache: SiteCache | None = None
) -> tuple[str, str | None]:
    """For a restore to the latest point: where the stream's archive ends (its last
    transaction and commit time), and a warning if the archiver's last pass over the
    stream failed (written by the archiver to the site, so visible from any host).
    With ``cache``, the records the restore's planning read are not fetched again."""
    records = read_records(store, stream_id, cache)
    last = next((r for r in reversed(records) if r.last_gtid is not None), None)
    if last is None or last.last_gtid is None:
        end = f"the archive of stream {stream_id} holds no transaction after its snapshot"
    else:
        when = (
            datetime.fromtimestamp(last.last_commit_time, UTC).isoformat()
            if last.last_commit_time is not None
            else "unknown"
        )
        # The last transaction is one domain's; the position names every domain's end.
        end = (
            f"the archive of stream {stream_id} ends at transaction {last.last_gtid.format()} "
            f"(committed {when}, in {last.name}; GTID position "
            f"{records[-1].gtid_position_at_end.format()})"
        )
    try:
        status = read_archive_status(store, stream_id)
    except CorruptDocumentError as exc:  # a report, not the archive: say so and go on
        return end, (
            f"cannot tell whether the archiver's last pass over stream {stream_id} "
            f"succeeded ({exc.message}): transactions committed on the source after the "
            "archive's end may be missing from this restore"
        )
    if status is None or not status.stalled:
        return end, None
    return end, (
        f"the archiver's last pass over stream {stream_id} failed (stalled since "
        f"{status.since.isoformat()}: {status.reason}): transactions committed on the "
        "source after the archive's end are not in this restore"
    )
