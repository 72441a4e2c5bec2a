"""The real doers (``jobs.Doers``): the only module of the daemon that calls ``ops``.

Each method runs on its slot's worker thread (``jobs.ThreadExecutor``) and keeps what
it opens on that thread (an archiver and its SQLite cache, the listing's caches).
Settings reloaded with SIGHUP reach them through :meth:`OpsDoers.configure`: the
objects built from the old settings are dropped by their own thread at its next job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from binhoard.allocator import release_freed_memory
from binhoard.app import (
    archive_config,
    backup_config,
    open_server,
    open_site,
    pitr_config,
    restore_test_config,
    scratch_servers,
    seed_settings,
)
from binhoard.config import Settings
from binhoard.daemon.jobs import (
    ArchiveDone,
    BackupDone,
    BackupStatus,
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
    StreamInfo,
    Work,
)
from binhoard.daemon.port import StreamWindow
from binhoard.daemon.state import (
    BrokenRequest,
    PreservationRequest,
    RestoreRecord,
    RestoreTestResult,
)
from binhoard.domain.errors import BinhoardError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.manifest import BackupManifest, BackupType
from binhoard.domain.promotion import CannotContinue
from binhoard.domain.server_facts import check_facts
from binhoard.metrics import Metrics
from binhoard.ops.archive import ArchiveLoop, BinlogArchiver
from binhoard.ops.backup import BackupProgress, create_backup
from binhoard.ops.catalog import SiteState, StreamState, read_site
from binhoard.ops.catchup import ArchiveCatchUp, CatchUpProgress
from binhoard.ops.expire import DeletionJournal, prune, retention_policy
from binhoard.ops.history import local_history, without_other_histories
from binhoard.ops.marks import mark_broken, preserve
from binhoard.ops.observe import (
    Throttle,
    record_backup,
    record_backup_progress,
    record_restore_progress,
    record_restore_test,
)
from binhoard.ops.pitr import PitrProgress, PitrRequest, PointInTimeRestore, restore_state
from binhoard.ops.promote import promote_stream
from binhoard.ops.purge import BinlogPurger
from binhoard.ops.restore_test import remove_leftovers, run_restore_test
from binhoard.ops.seed import check_primary, reconcile, repoint
from binhoard.ops.sitecache import SiteCache, open_cache
from binhoard.storage.pipeline import decryption_identities
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.daemon")


# How the doers open a site: ``app.open_site``. Tests that interleave nodes' jobs pass
# one that wraps it (tests/support/nodes.py: a hook runs before a chosen write).
SiteOpener = Callable[..., ObjectStore]


class OpsDoers:
    def __init__(
        self, settings: Settings, metrics: Metrics, *, open_store: SiteOpener = open_site
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self._open_site = open_store
        self._generation = 0  # bumped by configure(): objects of older settings are rebuilt
        self._archive: tuple[int, ArchiveLoop] | None = None
        self._caches: dict[str, tuple[int, SiteCache]] = {}
        self._purger: tuple[int, BinlogPurger, SiteCache] | None = None

    def configure(self, settings: Settings) -> None:
        self.settings = settings
        self._generation += 1

    # --- listing ------------------------------------------------------------------------
    def list_sites(self, work: Work) -> SiteView:
        listed_at = datetime.now(UTC)
        streams: list[StreamInfo] = []
        failures: dict[str, str] = {}
        for name, site in self.settings.backup_sites.items():
            work.check()
            store = self._open_site(self.settings, name, metrics=self.metrics)
            try:
                state = read_site(store, self._cache(name, store.describe()), incremental=True)
            except BinhoardError as exc:
                failures[name] = exc.message
                continue
            streams += site_streams(name, state, recovery_site=site.recovery_only)
        history = local_history(self.settings.state_directory)
        return SiteView(listed_at, tuple(streams), failures, history)

    def _cache(self, site: str, location: str) -> SiteCache:
        known = self._caches.get(site)
        if known is not None and known[0] == self._generation:
            return known[1]
        if known is not None:
            known[1].close()
        cache = open_cache(self.settings.state_directory, location)
        self._caches[site] = (self._generation, cache)
        return cache

    # --- backups ------------------------------------------------------------------------
    def take_backup(self, backup_type: BackupType, work: Work) -> BackupDone:
        throttle = Throttle()

        def progress(state: BackupProgress) -> None:
            status = BackupStatus(
                state.backup_id, state.phase, state.bytes_read, state.estimated_total
            )
            work.report(status)
            if throttle.due(state.phase):
                record_backup_progress(self.metrics, state)

        try:
            manifest = create_backup(
                open_server(self.settings),
                self._open_site(self.settings, metrics=self.metrics),
                backup_config(self.settings),
                backup_type=backup_type,
                progress=progress,
                cancel=work.cancel,
            )
        finally:
            # The upload's buffers, kept for reuse by the allocator, would otherwise
            # stay in the idle daemon until the next backup (~75 MB).
            release_freed_memory()
        record_backup(self.metrics, manifest)
        return BackupDone(
            manifest.backup_id, manifest.backup_type, manifest.started_at, manifest.completed_at
        )

    # --- archiving ----------------------------------------------------------------------
    def archive(self, rotate: bool, work: Work) -> ArchiveDone:
        loop = self._archive_loop()
        loop.archiver.cancel = work.cancel
        closed = self._rotate(loop.archiver) if rotate else None
        report = loop.tick()
        open_streams = tuple(
            OpenStream(s.stream_id, s.last_file) for s in report.streams if not s.closed
        )
        return ArchiveDone(
            closed_file=closed,
            open_streams=open_streams,
            newest_commit_time=report.newest_stored_commit_time,
            stall_reasons=tuple(report.stall_reasons),
            wrote=report.records_written > 0 or any(s.closed for s in report.streams),
            deposed=tuple(d.sentence for d in report.deposed),
        )

    def _archive_loop(self) -> ArchiveLoop:
        if self._archive is not None and self._archive[0] == self._generation:
            return self._archive[1]
        if self._archive is not None:
            self._archive[1].archiver.close()
        archiver = BinlogArchiver(
            open_server(self.settings),
            self._open_site(self.settings, metrics=self.metrics),
            archive_config(self.settings),
        )
        loop = ArchiveLoop(archiver, self.metrics)
        self._archive = (self._generation, loop)
        return loop

    @staticmethod
    def _rotate(archiver: BinlogArchiver) -> str:
        """Rotates the server's binlog; the name of the file it closed."""
        binlogs = archiver.server.binlogs
        closed = binlogs.list().active
        binlogs.flush()
        log.info("rotated the binlog as asked: %s closed", closed)
        return closed

    # --- binlog purge -------------------------------------------------------------------
    def purge(
        self,
        observing: bool,
        replication_state: Mapping[str, Mapping[str, str]],
        reported_at: Mapping[str, float],
        work: Work,
    ) -> PurgeDone:
        purger, cache = self._binlog_purger()
        store = self._open_site(self.settings, metrics=self.metrics)
        site = read_site(store, cache)
        history = local_history(self.settings.state_directory)
        site = without_other_histories(site, self.settings.server_id, history)
        work.check()
        report = purger.run(
            site, replication_state, reported_at, observing=observing, now=datetime.now(UTC)
        )
        decision = report.decision
        return PurgeDone(
            purged=report.purged,
            next_kept=report.server_kept or decision.kept,
            blocked_by=report.blocked_by,
            stale_nodes=decision.stale_nodes,
            more=decision.capped and bool(report.purged),
        )

    def _binlog_purger(self) -> tuple[BinlogPurger, SiteCache]:
        """Kept on the purge thread: its own cache of the upload site (the files it has
        read), and the end states it read of this node's files."""
        if self._purger is not None and self._purger[0] == self._generation:
            return self._purger[1], self._purger[2]
        if self._purger is not None:
            self._purger[2].close()
        settings = self.settings
        store = self._open_site(settings, metrics=self.metrics)
        cache = open_cache(settings.state_directory, store.describe())
        purger = BinlogPurger(
            open_server(settings), settings.server_id, settings.binlog_purge_settings, self.metrics
        )
        self._purger = (self._generation, purger, cache)
        return purger, cache

    # --- restore and promotion ----------------------------------------------------------
    def restore(self, request: RestoreRecord, work: Work) -> RestoreDone:
        """Starts the restore ``request`` asks for, or continues it: ``restore.json``
        records this request's restore if it was started after the request was
        accepted (an older one there is another request's)."""
        pitr_request = PitrRequest(
            site=request.site,
            target_args=request.target_args,
            backup_id=request.stream_id,
            approximate_ok=request.approximate_ok,
            replicate_from=request.replicate_from,
        )
        last_phase = [""]
        throttle = Throttle()

        def progress(p: PitrProgress) -> None:
            if throttle.due(p.phase):
                record_restore_progress(self.metrics, p)
            status = RestoreStatus(
                phase=p.phase,
                basebackup_compressed_bytes_downloaded=p.basebackup_compressed_bytes_downloaded,
                basebackup_compressed_bytes_total=p.basebackup_compressed_bytes_total,
                binlogs_being_restored=p.binlogs_being_restored,
                binlogs_pending=p.binlogs_pending,
                binlogs_restored=p.binlogs_restored,
            )
            work.report(status, force=p.phase != last_phase[0])
            last_phase[0] = p.phase

        restore = PointInTimeRestore(
            open_server(self.settings),
            self._open_site(self.settings, request.site, metrics=self.metrics),
            pitr_config(self.settings),
            progress=progress,
            cancel=work.cancel,
        )
        recorded = restore_state(self.settings.state_directory).read() or {}
        ours = _same_restore(recorded, pitr_request, request.requested_at)
        phase = recorded.get("phase")
        try:
            if ours and phase == "completed":
                return RestoreDone(str(recorded.get("final_gtid_position") or ""))
            if ours and phase != "failed":
                restore.resume()
            else:
                restore.start(pitr_request)
        finally:
            restore.close()
            release_freed_memory()  # the download's buffers, as after a backup
        return RestoreDone(str(restore.state.get("final_gtid_position") or ""))

    # --- restore tests ------------------------------------------------------------------
    def restore_test(self, site: str, stream_id: str | None, work: Work) -> RestoreTestDone:
        settings = self.settings
        try:
            report = run_restore_test(
                self._open_site(settings, site, metrics=self.metrics),
                restore_test_config(settings, site),
                scratch_servers(settings),
                stream_id=stream_id,
                cancel=work.cancel,
            )
        finally:
            release_freed_memory()  # the download's buffers, as after a restore
        record_restore_test(self.metrics, report)
        return RestoreTestDone(
            RestoreTestResult(
                result=report.outcome,
                reason=report.reason,
                started_at=report.started_at,
                finished_at=report.finished_at,
                rto_seconds=report.rto_seconds,
                gtid=report.gtid,
                tables_checked=report.tables_checked,
                site=report.site,
                stream_id=report.stream_id,
            )
        )

    def remove_restore_test_leftovers(self, work: Work) -> None:
        remove_leftovers(restore_test_config(self.settings), scratch_servers(self.settings))

    def repoint(self, primary: str, work: Work) -> RepointDone:
        """This replica replicates from ``primary`` from now on (``ops/seed.py``)."""
        settings = self.settings
        seed = seed_settings(settings)
        address = check_primary(primary, seed=seed, allowed=settings.replication.primaries)
        assert seed is not None  # check_primary refuses without the account
        done = repoint(open_server(settings), address, seed)
        return RepointDone(done.primary, done.position.format())

    def reconcile_replication(
        self, expected: str | None, interrupted: str | None, work: Work
    ) -> ReconcileDone:
        settings = self.settings
        seed = seed_settings(settings)
        address = None
        if interrupted is not None:
            address = check_primary(interrupted, seed=seed, allowed=settings.replication.primaries)
        found = reconcile(open_server(settings), expected, address, seed)
        return ReconcileDone(found.primary, found.problem)

    # --- the operator's marks, and retention -------------------------------------------
    def write_mark(self, request: PreservationRequest | BrokenRequest, work: Work) -> None:
        store = self._open_site(self.settings, request.site, metrics=self.metrics)
        now = datetime.now(UTC)
        if isinstance(request, PreservationRequest):
            preserve(store, request.stream_id, request.preserve_until, now=now)
        else:
            mark_broken(store, request.stream_id, broken=request.broken, now=now)

    def retention(self, work: Work) -> RetentionDone:
        name = self.settings.backup_settings.upload_site
        store = self._open_site(self.settings, name, metrics=self.metrics)
        report = prune(
            store,
            retention_policy(self.settings.backup_settings),
            datetime.now(UTC),
            journal=DeletionJournal(self.settings.state_directory),
            cache=self._cache(name, store.describe()),
        )
        for decision in report.decisions:
            if not decision.keep:
                log.info("retention: deleting %s: %s", decision.backup_id, decision.reason)
        return RetentionDone(tuple(d.backup_id for d in report.deleted))

    def promote(self, restore: RestoreRecord | None, force: bool, work: Work) -> PromoteDone:
        """This node takes over the stream it was restored from (``ops/promote.py``):
        replication stopped first (nothing more arrives from the old primary), what the
        old primary archived and the node lacks applied (``ops/catchup.py``), then the
        promotion record, at the server's ``@@gtid_current_pos``. A node not restored
        from a stream (observe from idle) has none to take over: its first backup, in
        active mode, opens its own."""
        last_phase = [""]

        def report(status: PromoteStatus) -> None:
            work.report(status, force=status.phase != last_phase[0])
            last_phase[0] = status.phase

        report(PromoteStatus("stopping_replication"))
        server = open_server(self.settings)
        if server.replication.status().configured:
            # Stopped even while it only tries to connect: an old primary that comes
            # back must not feed the new one.
            server.replication.stop()
        facts = check_facts(server.facts(), self.settings.server_id, what="cannot take over")
        if facts.read_only:
            log.warning("the server is read-only: set read_only=OFF for it to take writes")
        if restore is None:
            server.replication.remove()
            return PromoteDone(None)
        store = self._open_site(self.settings, restore.site, metrics=self.metrics)

        def progress(p: CatchUpProgress) -> None:
            report(
                PromoteStatus(
                    p.phase, p.binlogs_total, p.binlogs_applied, p.transactions_applied, p.target
                )
            )

        catch_up = ArchiveCatchUp(
            server,
            store,
            server_id=self.settings.server_id,
            directory=self.settings.temporary_directory / "promote-binlogs",
            max_binlog_bytes=self.settings.restore_max_binlog_bytes,
            identities=decryption_identities(
                self.settings.backup_sites[restore.site].encryption_keys
            ),
            progress=progress,
            cancel=work.cancel,
            give_up_unreadable=force,
        )
        catch_up.finish_interrupted()  # a killed run's apply: its position is the start

        def catching_up(
            stream: StreamState, position: GtidPosition
        ) -> GtidPosition | CannotContinue:
            reached = catch_up(stream, position)
            report(PromoteStatus("reading_archive", target_gtid=stream.end_position.format()))
            return reached

        report(PromoteStatus("reading_archive"))
        result = promote_stream(
            store,
            restore.stream_id,
            server_id=self.settings.server_id,
            position=GtidPosition.parse(server.facts().gtid_current_pos),
            now=datetime.now(UTC),
            history=local_history(self.settings.state_directory),
            force=force,
            catch_up=catching_up,
        )
        # The node is the primary now: its replication configuration goes, so that
        # nothing ever reconnects it to the old primary (a START SLAVE, a restart).
        server.replication.remove()
        return PromoteDone(result.stream_id, result.new_stream_needed)


def _same_restore(recorded: Mapping[str, object], request: PitrRequest, since: datetime) -> bool:
    """Whether ``restore.json`` records ``request``, started at or after ``since``."""
    try:
        started = datetime.fromisoformat(str(recorded.get("started_at")))
    except ValueError:
        return False
    return (
        recorded.get("site") == request.site
        and recorded.get("target_args") == request.target_args
        and recorded.get("requested_backup_id") == request.backup_id
        and recorded.get("replicate_from") == request.replicate_from
        and started.tzinfo is not None
        and started >= since
    )


# --- what a site holds, as the API shows it ---------------------------------------------
def site_streams(name: str, site: SiteState, *, recovery_site: bool) -> list[StreamInfo]:
    """Every backup of ``site`` with its stream, oldest first; a backup whose manifest
    cannot be read is listed too, broken."""
    streams = {s.stream_id: s for s in site.streams}
    found = []
    for entry in site.backups.entries:
        stream = streams.get(entry.backup_id)
        broken = entry.broken or (stream.broken if stream is not None else None)
        manifest = entry.manifest
        found.append(
            StreamInfo(
                site=name,
                stream_id=entry.backup_id,
                manifest=manifest,
                completed_at=manifest.completed_at if manifest else None,
                closed_at=stream.closed.at if stream and stream.closed else None,
                caught_up_at=stream.completed.at if stream and stream.completed else None,
                broken_reason=broken.reason if broken else None,
                broken_at=entry.broken_mark.at if entry.broken_mark else None,
                preserve_until=entry.preserve_until,
                recovery_site=recovery_site,
                window=_window(stream) if stream is not None else None,
                basebackup_info=basebackup_info(manifest) if manifest else {},
            )
        )
    return found


def _window(stream: StreamState) -> StreamWindow:
    backup = stream.backup
    first_gtid = backup.snapshot.gtid_position
    newest = stream.newest_commit_time
    return StreamWindow(
        first_time=backup.completed_at,
        first_gtid=first_gtid,
        last_time=datetime.fromtimestamp(newest, UTC) if newest else backup.completed_at,
        last_gtid=stream.end_position.format(),
    )


def basebackup_info(manifest: BackupManifest) -> dict[str, object]:
    """MyHoard's ``basebackup_info`` fields that binhoard has, and a few of its own."""
    return {
        "backup_type": manifest.backup_type,
        "incremental": manifest.backup_type == "incremental",
        "parent_backup_id": manifest.parent_backup_id,
        "server_id": manifest.server_id,
        "server_version": manifest.server_version,
        "tool_version": manifest.tool_version,
        "start_ts": manifest.started_at.timestamp(),
        "end_ts": manifest.completed_at.timestamp(),
        "gtid": manifest.snapshot.gtid_position,
        "binlog_name": manifest.snapshot.binlog_file,
        "binlog_position": manifest.snapshot.binlog_pos,
        "compressed_size": manifest.data.stored_size,
        "end_size": manifest.data.plain_size,
        "lsn_info": {
            "from_lsn": manifest.lsn.from_lsn,
            "to_lsn": manifest.lsn.to_lsn,
            "last_lsn": manifest.lsn.last_lsn,
        },
    }
