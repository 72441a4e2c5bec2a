"""Fakes for driving the daemon's controller step by step: a scripted clock, an
executor that runs jobs only when the test says so, and doers with behaviour over a
memory site (``SiteBuilder``): backups are written as manifests, archive passes as
records and markers, and the listing is the real ``read_site`` of that store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from binhoard.config import Settings, parse_settings
from binhoard.daemon.controller import Controller
from binhoard.daemon.jobs import (
    ArchiveDone,
    BackupDone,
    Doers,
    Job,
    JobProgress,
    OpenStream,
    PromoteDone,
    PromoteStatus,
    PurgeDone,
    ReconcileDone,
    RepointDone,
    RestoreDone,
    RestoreStatus,
    RestoreTestDone,
    RetentionDone,
    SiteView,
    Work,
    run_job,
)
from binhoard.daemon.port import Command, Ticket
from binhoard.daemon.state import (
    BrokenRequest,
    PreservationRequest,
    RestoreRecord,
    RestoreTestResult,
    StateStore,
)
from binhoard.daemon.workers import site_streams
from binhoard.domain.catalog import closed_key, completed_key
from binhoard.domain.errors import BinhoardError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.history import History
from binhoard.domain.manifest import (
    BackupManifest,
    BackupType,
    LsnRange,
    SnapshotPosition,
    manifest_key,
    new_backup_id,
)
from binhoard.domain.promotion import deposed_by
from binhoard.ops.archive import DeposedStreamReport
from binhoard.ops.catalog import StreamState, read_site
from binhoard.ops.expire import prune, retention_policy
from binhoard.ops.marks import mark_broken, preserve
from binhoard.ops.promote import promote_stream
from binhoard.ops.restore_test import choose_backup
from binhoard.storage.store import MemoryStore
from tests.support.sites import (
    HISTORY,
    SERVER_ID,
    SiteBuilder,
    binlog_name,
    position,
    ref,
    site_config,
)

RESTORE_PHASES = (
    "getting_backup_info",
    "restoring_basebackup",
    "basebackup_restored",
    "applying_binlogs",
    "finalizing",
)


@dataclass
class ScriptedClock:
    now: datetime

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


class ManualExecutor:
    """Holds started jobs until the test runs them (on its own thread, so that a step
    sees exactly what the test made happen)."""

    def __init__(self, post: Callable[[object], None]) -> None:
        self.post = post
        self.pending: list[tuple[str, Job]] = []
        self.stopped = False

    def start(self, slot: str, job: Job) -> None:
        self.pending.append((slot, job))

    def busy(self, slot: str) -> bool:
        return any(s == slot for s, _ in self.pending)

    def run(self, slot: str) -> None:
        """Runs the oldest pending job of ``slot``; it must have one."""
        index = next(i for i, (s, _) in enumerate(self.pending) if s == slot)
        _, job = self.pending.pop(index)
        work = Work(threading.Event(), lambda p: self.post(JobProgress(slot, p)))
        self.post(run_job(slot, job, work))

    def stop(self, timeout: float) -> bool:
        self.stopped = True
        return True


@dataclass
class FakeDoers:
    """Doers over a memory site and a pretend server whose binlog ``build.files + 1``
    is the active one. ``failures`` scripts an error for a method's next calls."""

    clock: ScriptedClock
    settings: Settings
    store: MemoryStore = field(default_factory=MemoryStore)
    server_id: int = SERVER_ID
    failures: dict[str, list[BinhoardError]] = field(default_factory=dict)
    restores: list[RestoreRecord] = field(default_factory=list)
    restore_stops_after: str | None = None  # raise once this phase is reported
    restore_reaches: str = position(42).format()  # the GTID a restore ends at
    rotations: int = 0
    configured: list[Settings] = field(default_factory=list)
    # Binlog purge: every pass's arguments; the files purged (the pretend server's
    # closed files, at most max_files_per_cycle a pass); what keeps the next one.
    purge_calls: list[tuple[bool, dict[str, dict[str, str]], dict[str, float]]] = field(
        default_factory=list
    )
    purged: int = 0
    purge_blocked_by: str | None = None
    stale_nodes: tuple[str, ...] = ()
    node_position: GtidPosition | None = None  # the server's @@gtid_current_pos at promote
    # Restore tests: (site, stream id asked for) of each; the result they give.
    restore_tests: list[tuple[str, str | None]] = field(default_factory=list)
    restore_test_result: str = "passed"
    leftovers_removed: int = 0
    # The promotion's catch-up applies the archive the node lacks (it reaches the end)
    # unless this is set: then it reports applying_binlogs and raises it, once; forced,
    # it gives up instead (as an archive that cannot be read).
    catch_up_error: BinhoardError | None = None
    repoints: list[str] = field(default_factory=list)  # the primaries re-pointed at
    # reconcile_replication's calls, and the problem it finds when nothing was interrupted.
    reconciled: list[tuple[str | None, str | None]] = field(default_factory=list)
    replication_problem: str | None = None
    retention_runs: int = 0
    history: History = HISTORY  # the node's (ops/history.py): a test forks it by changing it

    def __post_init__(self) -> None:
        self.build = SiteBuilder(self.store, server_id=self.server_id)

    def _fail(self, method: str) -> None:
        queued = self.failures.get(method)
        if queued:
            raise queued.pop(0)

    # --- jobs.Doers ---------------------------------------------------------------------
    def list_sites(self, work: Work) -> SiteView:
        self._fail("list_sites")
        state = read_site(self.store)
        streams = site_streams("default", state, recovery_site=False)
        return SiteView(self.clock.now, tuple(streams), {}, self.history)

    def take_backup(self, backup_type: BackupType, work: Work) -> BackupDone:
        self._fail("take_backup")
        manifest = self.put_backup(backup_type)
        return BackupDone(
            manifest.backup_id, backup_type, manifest.started_at, manifest.completed_at
        )

    def archive(self, rotate: bool, work: Work) -> ArchiveDone:
        self._fail("archive")
        closed = None
        if rotate:
            closed = binlog_name(self.build.files + 1)
            self.rotate()
        open_streams = []
        deposed = self._deposed()
        streams = [
            s
            for s in self.build.backups
            if s.server_id == self.server_id and self.history.holds(s.history_id)
        ]
        for backup in streams:
            if backup.backup_id in deposed:
                continue
            records = self.build.records[backup.backup_id]
            if self._closed(backup.backup_id):
                continue
            last = int(records[-1].name.rsplit(".", 1)[1]) if records else None
            first = last + 1 if last is not None else int(backup.snapshot.binlog_file[-6:])
            if self.build.files >= first:
                self.build.archive(backup.backup_id, self.build.files - first + 1)
            records = self.build.records[backup.backup_id]
            open_streams.append((backup.backup_id, records[-1].name if records else None))
        if open_streams:
            # The newest is caught up (completed) and takes over from the older ones.
            newest = open_streams[-1][0]
            if not self._marked(completed_key(newest)):
                self.build.mark(newest)
            for stream_id, _ in open_streams[:-1]:
                self.build.mark(stream_id, completed=False, closed_by=newest)
            open_streams = open_streams[-1:]
        return ArchiveDone(
            closed_file=closed,
            open_streams=tuple(OpenStream(s, f) for s, f in open_streams),
            newest_commit_time=None,
            stall_reasons=tuple(deposed.values())
            or (() if open_streams else ("no open backup stream of this server",)),
            wrote=True,
            deposed=tuple(deposed.values()),
        )

    def _deposed(self) -> dict[str, str]:
        """This server's open streams another node took over, as the archiver says it."""
        found = {}
        for s in read_site(self.store).streams:
            taken = deposed_by(self.server_id, s.backup.server_id, s.promotions)
            if taken is not None and s.closed is None:
                report = DeposedStreamReport(s.stream_id, taken.key, taken.server_id, "then")
                found[s.stream_id] = report.sentence
        return found

    def restore(self, request: RestoreRecord, work: Work) -> RestoreDone:
        self.restores.append(request)
        for phase in RESTORE_PHASES:
            work.report(RestoreStatus(phase), force=True)
            if phase == self.restore_stops_after:
                self._fail("restore")
        self._fail("restore")
        return RestoreDone(self.restore_reaches)

    def promote(self, restore: RestoreRecord | None, force: bool, work: Work) -> PromoteDone:
        work.report(PromoteStatus("stopping_replication"), force=True)
        self._fail("promote")
        if restore is None:
            return PromoteDone(None)
        (stream,) = (s for s in read_site(self.store).streams if s.stream_id == restore.stream_id)
        # The node's server: at the archive's end unless a test says otherwise.
        at = self.node_position if self.node_position is not None else stream.end_position

        def catch_up(stream: StreamState, position: GtidPosition) -> GtidPosition:
            end = stream.end_position.format()
            work.report(PromoteStatus("applying_binlogs", 2, 0, 0, end), force=True)
            error, self.catch_up_error = self.catch_up_error, None
            if error is not None and not force:
                raise error
            if error is None:
                self.node_position = stream.end_position
            work.report(PromoteStatus("reading_archive", target_gtid=end), force=True)
            return position if error is not None else stream.end_position

        work.report(PromoteStatus("reading_archive"), force=True)
        result = promote_stream(
            self.store,
            restore.stream_id,
            server_id=self.server_id,
            position=at,
            now=self.clock.now,
            history=self.history,
            force=force,
            catch_up=catch_up,
        )
        return PromoteDone(result.stream_id, result.new_stream_needed)

    def repoint(self, primary: str, work: Work) -> RepointDone:
        self._fail("repoint")
        self.repoints.append(primary)
        return RepointDone(primary, position(42).format())

    def reconcile_replication(
        self, expected: str | None, interrupted: str | None, work: Work
    ) -> ReconcileDone:
        self._fail("reconcile")
        self.reconciled.append((expected, interrupted))
        if interrupted is not None:
            self.repoints.append(interrupted)  # finished: the same re-point again
            return ReconcileDone(interrupted, None)
        return ReconcileDone(expected, self.replication_problem)

    def write_mark(self, request: PreservationRequest | BrokenRequest, work: Work) -> None:
        self._fail("write_mark")
        if isinstance(request, PreservationRequest):
            preserve(self.store, request.stream_id, request.preserve_until, now=self.clock.now)
        else:
            mark_broken(self.store, request.stream_id, broken=request.broken, now=self.clock.now)

    def retention(self, work: Work) -> RetentionDone:
        self._fail("retention")
        self.retention_runs += 1
        policy = retention_policy(self.settings.backup_settings)
        report = prune(self.store, policy, self.clock.now)
        deleted = {d.backup_id for d in report.deleted}
        self.build.backups = [b for b in self.build.backups if b.backup_id not in deleted]
        return RetentionDone(tuple(sorted(deleted)))

    def purge(
        self,
        observing: bool,
        replication_state: Mapping[str, Mapping[str, str]],
        reported_at: Mapping[str, float],
        work: Work,
    ) -> PurgeDone:
        self._fail("purge")
        state = {node: dict(p) for node, p in replication_state.items()}
        self.purge_calls.append((observing, state, dict(reported_at)))
        cap = self.settings.binlog_purge_settings.max_files_per_cycle
        first = self.purged
        if self.purge_blocked_by is None:
            self.purged = min(self.build.files, first + cap)
        names = tuple(binlog_name(n) for n in range(first + 1, self.purged + 1))
        return PurgeDone(
            purged=names,
            next_kept=binlog_name(self.purged + 1),
            blocked_by=self.purge_blocked_by or f"{binlog_name(self.purged + 1)}: cap or active",
            stale_nodes=self.stale_nodes,
            more=self.purged < self.build.files,
        )

    def restore_test(self, site: str, stream_id: str | None, work: Work) -> RestoreTestDone:
        self._fail("restore_test")
        self.restore_tests.append((site, stream_id))
        backup = choose_backup(read_site(self.store), stream_id)  # the op's choice
        now = self.clock.now
        return RestoreTestDone(
            RestoreTestResult(
                result=self.restore_test_result,
                reason=f"fake test: {self.restore_test_result}",
                started_at=now,
                finished_at=now,
                rto_seconds=12.5,
                gtid=backup.snapshot.gtid_position,
                tables_checked=3,
                site=site,
                stream_id=backup.backup_id,
            )
        )

    def remove_restore_test_leftovers(self, work: Work) -> None:
        self.leftovers_removed += 1

    def configure(self, settings: Settings) -> None:
        self.configured.append(settings)

    # --- the pretend server and site ----------------------------------------------------
    def rotate(self) -> None:
        self.rotations += 1
        self.build.files += 1

    def put_backup(
        self, backup_type: BackupType = "full", *, server_id: int | None = None
    ) -> BackupManifest:
        """A backup taken now (of another server: ``server_id``), its snapshot at the
        start of the active binlog."""
        now = self.clock.now
        backup_id = new_backup_id(now)
        active = self.build.files + 1
        parent = None
        if backup_type == "incremental":
            parent = max(
                (b for b in self.build.backups if b.server_id == self.server_id),
                key=lambda b: b.started_at,
            )
        manifest = BackupManifest(
            backup_id=backup_id,
            backup_type=backup_type,
            parent_backup_id=parent.backup_id if parent else None,
            chain=(*parent.chain, backup_id) if parent else (backup_id,),
            server_id=server_id or self.server_id,
            flavour="mariadb",
            server_version="10.11.19-MariaDB",
            tool_version="mariabackup",
            started_at=now,
            completed_at=now,
            snapshot=SnapshotPosition(
                binlog_name(active), 4, position(self.build._done(active)).format()
            ),
            lsn=LsnRange(0, 0, 0),
            data=ref(f"backups/{backup_id}/data.xbstream"),
            my_cnf=ref(f"backups/{backup_id}/my.cnf"),
            history_id=self.history.history_id if server_id is None else None,
        )
        self.store.put(manifest_key(backup_id), [manifest.to_bytes()], if_absent=True)
        self.build.backups.append(manifest)
        self.build.records[backup_id] = []
        return manifest

    def _closed(self, stream_id: str) -> bool:
        return self._marked(closed_key(stream_id))

    def _marked(self, key: str) -> bool:
        return key in {i.key for i in self.store.list("streams/")}

    def backup_ids(self) -> list[str]:
        return [b.backup_id for b in self.build.backups]


class SteppedController:
    """A controller over ``settings``' state directory and ``doers``, its jobs held by a
    manual executor, stepped at ``clock``."""

    def __init__(self, settings: Settings, doers: Doers, clock: ScriptedClock) -> None:
        self.clock = clock
        self.settings = settings
        self.doers = doers
        self.controller = self._controller()

    def _controller(self) -> Controller:
        return Controller(
            self.settings,
            StateStore.open(self.settings.state_directory),
            self.doers,
            make_executor=ManualExecutor,
        )

    @property
    def executor(self) -> ManualExecutor:
        executor = self.controller.executor
        assert isinstance(executor, ManualExecutor)
        return executor

    def restart(self) -> None:
        """As after a crash: a new controller on the same state; jobs in flight are lost."""
        self.controller.store.close()
        self.controller = self._controller()

    def step(self, **advance: float) -> None:
        if advance:
            self.clock.advance(**advance)
        self.controller.step(self.clock.now)

    def run(self, slot: str) -> None:
        """Runs the job waiting in ``slot``, then steps so the controller takes its result."""
        self.executor.run(slot)
        self.step()

    def settle(self, limit: int = 20, *, skip: tuple[str, ...] = ()) -> None:
        """Steps and runs jobs (but those of ``skip``'s slots) until nothing is left to
        run (at this clock time)."""
        self.step()
        for _ in range(limit):
            ready = [slot for slot, _ in self.executor.pending if slot not in skip]
            if not ready:
                return
            self.run(ready[0])
        raise AssertionError(f"still running after {limit} jobs: {self.executor.pending}")

    def submit(self, command: Command) -> Ticket:
        ticket = self.controller.submit(command)
        self.step()
        return ticket

    @property
    def mode(self) -> str:
        return self.controller.snapshot().status.mode

    def depose(self, stream_id: str) -> None:
        """A file more archived into this active node's ``stream_id``, then node 999
        takes the stream over."""
        self.doers.rotate()
        self.step(seconds=6)
        self.settle()
        self.take_over(stream_id, 999)

    def take_over(self, stream_id: str, server_id: int) -> None:
        """Node ``server_id`` promotes itself on ``stream_id`` at the archive's end (of
        this history): this daemon's server is deposed, or takes it back."""
        (stream,) = (s for s in read_site(self.doers.store).streams if s.stream_id == stream_id)
        taken = promote_stream(
            self.doers.store,
            stream_id,
            server_id=server_id,
            position=stream.end_position,
            now=self.clock.now,
            history=HISTORY,
        )
        assert taken.promotion is not None


class Harness(SteppedController):
    """A controller over a state directory, fake doers and a manual executor."""

    def __init__(self, directory: Path, start: datetime, **overrides: Any) -> None:
        self.directory = directory
        clock = ScriptedClock(start)
        settings = daemon_settings(directory, **overrides)
        self.doers: FakeDoers = FakeDoers(clock, settings)
        super().__init__(settings, self.doers, clock)


def daemon_settings(directory: Path, **overrides: Any) -> Settings:
    """``site_config``'s settings; ``section__key=value`` sets a key of a section."""
    data = site_config(directory)
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        if name:
            data.setdefault(section, {})[name] = value
        else:
            data[key] = value
    return parse_settings(data, source="test")
