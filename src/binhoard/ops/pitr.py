"""Point-in-time restore: a backup chain, then archived binlogs applied as relay logs.

A persisted phase machine (``<state_directory>/restore.json``), so that a restore killed
at any moment continues where it was when started again (``binhoard restore --resume``):

    getting_backup_info -> restoring_basebackup -> basebackup_restored
        -> applying_binlogs -> finalizing [-> replicating] -> completed   (or failed)

* **getting_backup_info**: the site's backups and binlog records are read and planned
  (``domain/restore_plan.py``); the plan (backup id, record keys, target) is saved.
* **restoring_basebackup**: the chain is restored into the (empty) datadir. Meanwhile
  the plan's binlogs are downloaded (verified, decrypted, decompressed) into the
  temporary directory, never more than ``restore_max_binlog_bytes`` at a time. A crash
  here wipes the datadir this restore filled and starts the phase again.
* **basebackup_restored**: the server is started and given the snapshot's GTID state.
* **applying_binlogs**: downloaded files are handed to the server's SQL thread in
  batches (the server port's ``relay_applier()``; ``domain/pitr.py`` cuts them); after
  each batch the number of records applied is saved. After a crash the server's
  ``gtid_slave_pos`` says exactly how far it got (``RelayApply.resume_point``): nothing
  is applied twice or skipped.
* **finalizing**: replication configuration is removed, durability restored, GTID
  state checked equal to the target's, and the server left running read-only.
* **replicating** (only with ``replicate_from``, binhoard's extension): the restored
  server becomes a replica of that primary and catches up (``ops/seed.py``); the
  point-in-time part is complete, so a resume goes straight back to this step.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from binhoard.config import BackupSite
from binhoard.disk import disk_full, is_no_space
from binhoard.domain.binlog import TransactionTable
from binhoard.domain.catalog import BinlogRecord, starts_inside
from binhoard.domain.errors import (
    BinhoardError,
    CancelledError,
    ConflictError,
    CorruptBinlogError,
    DiskFullError,
    IntegrityError,
    ObjectNotFoundError,
    UsageError,
)
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.manifest import BackupManifest
from binhoard.domain.pitr import (
    batch_stop_offset,
    next_batch,
    resume_batch,
    split_at_limit,
    state_problem,
)
from binhoard.domain.relay_plan import ApplyProgress, BatchFile
from binhoard.domain.replica import PrimaryAddress
from binhoard.domain.restore_plan import (
    ArchiveInconsistentError,
    ResolvedStop,
    RestorePlan,
    Target,
    exact_stop,
    parse_target,
    plan_restore,
)
from binhoard.domain.restore_target import target_problems
from binhoard.localstate import StateFile, exclusive
from binhoard.ops.catalog import SiteState, read_site
from binhoard.ops.history import other_histories, restored_history
from binhoard.ops.restore_backup import (
    RestoreProgress,
    backup_chain,
    check_empty_datadir,
    check_preparable_here,
    digest_of,
    empty_directory,
    restore_backup,
)
from binhoard.ops.seed import SeedSettings, check_primary, refuse_itself, replicate
from binhoard.ops.sitecache import SiteCache, open_cache
from binhoard.ports.server import RelayApply, Server
from binhoard.storage.pipeline import decryption_identities, download_to_file
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.restore")


@dataclass
class PitrProgress(RestoreProgress):
    """Restore progress with binlog apply (MyHoard's ``GET /status/restore`` fields)."""

    target: str = ""
    binlogs_total: int = 0
    binlogs_restored: int = 0
    binlogs_being_restored: int = 0
    binlogs_pending: int = 0
    binlog_bytes_total: int = 0
    binlog_bytes_downloaded: int = 0
    binlog_bytes_applied: int = 0
    transactions_applied: int = 0
    transactions_total: int = 0  # an upper bound until the stop is resolved
    transactions_per_second: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


PitrCallback = Callable[[PitrProgress], None]


@dataclass(frozen=True)
class PitrConfig:
    """What a point-in-time restore needs besides its ports (``app.pitr_config``)."""

    sites: Mapping[str, BackupSite]  # by name: the request's site has the keys
    state_directory: Path
    temporary_directory: Path
    data_directory: Path  # the server's datadir, restored into
    server_config_file: Path  # the server's option file, to name it in messages
    max_binlog_bytes: int  # restore_max_binlog_bytes
    # For ``replicate_from``: the replication account (None: not configured), and the
    # non-loopback primaries allowed (``replication.*``).
    seed: SeedSettings | None = None
    allowed_primaries: tuple[str, ...] = ()


def restore_state(state_directory: Path) -> StateFile:
    return StateFile(state_directory / "restore.json")


@dataclass(frozen=True)
class PitrRequest:
    """What to restore: ``target_args`` are :func:`parse_target`'s keyword arguments
    (``to_latest``, ``to_time``, ``to_gtid``, ``to_position``), kept as given so that a
    resumed restore plans exactly the same target."""

    site: str
    target_args: dict[str, Any]
    backup_id: str | None = None
    approximate_ok: bool = False
    replicate_from: str | None = None  # HOST:PORT: then replicate from it (ops/seed.py)

    @property
    def target(self) -> Target:
        return parse_target(**self.target_args)

    def primary(self, config: PitrConfig) -> PrimaryAddress | None:
        """The primary of ``replicate_from``, checked (``UsageError`` naming what is
        wrong); None without one."""
        if self.replicate_from is None:
            return None
        if not self.target_args.get("to_latest"):
            raise UsageError("replicate_from needs a restore to the latest transaction")
        return check_primary(
            self.replicate_from, seed=config.seed, allowed=config.allowed_primaries
        )


# --- the download side ---------------------------------------------------------------
class BinlogPrefetcher:
    """Downloads the plan's binlogs in order into ``directory``, keeping the bytes on
    local disk (being downloaded, waiting, or being applied) under ``budget``.

    The applier takes ready files with :meth:`take` and gives their bytes back with
    :meth:`release` once the server has consumed them.
    """

    def __init__(
        self,
        store: ObjectStore,
        records: Sequence[BinlogRecord],
        directory: Path,
        budget: int,
        identities: Sequence[Any],
        *,
        first: int = 0,
        on_downloaded: Callable[[BinlogRecord], None] | None = None,
    ) -> None:
        too_big = [r for r in records if r.size > budget]
        if too_big:
            raise UsageError(
                f"restore_max_binlog_bytes ({budget}) is smaller than binlog {too_big[0].name} "
                f"({too_big[0].size} bytes): raise it to at least the largest binlog file"
            )
        self.store = store
        self.records = list(records)
        self.directory = directory
        self.budget = budget
        self.identities = identities
        self.on_downloaded = on_downloaded
        self._cond = threading.Condition()
        self._used = 0
        self._ready: dict[int, Path] = {}
        self._next = first
        self._error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="binlog-prefetch", daemon=True)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    def path(self, index: int) -> Path:
        # Per server: after a promotion the new owner's file names start again.
        record = self.records[index]
        return self.directory / f"server-{record.server_id}" / record.name

    @property
    def peak(self) -> int:
        """The most bytes this keeps in ``directory`` at once: the budget, or less if
        the files left are smaller."""
        return min(self.budget, sum(r.size for r in self.records[self._next :]))

    def _run(self) -> None:
        try:
            for index in range(self._next, len(self.records)):
                record = self.records[index]
                with self._cond:
                    while not self._stopped and self._used + record.size > self.budget:
                        self._cond.wait()
                    if self._stopped:
                        return
                    self._used += record.size
                self.path(index).parent.mkdir(exist_ok=True)
                try:
                    download_to_file(
                        self.store,
                        record.object.key,
                        self.path(index),
                        expected=digest_of(record.object),
                        identities=self.identities,
                    )
                except OSError as exc:
                    if not is_no_space(exc):
                        raise
                    raise disk_full(
                        self.directory,
                        what="temporary_directory, binlogs waiting to be applied",
                        needed=self.peak,
                    ) from None
                if self.on_downloaded is not None:
                    self.on_downloaded(record)
                with self._cond:
                    self._ready[index] = self.path(index)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            with self._cond:
                self._error = exc
                self._cond.notify_all()

    def take(self, first: int, limit: int) -> list[int]:
        """Indexes ``first, first+1, ...`` (below ``limit``) that are downloaded; waits
        for at least ``first``. Raises what the download raised."""
        with self._cond:
            while first not in self._ready and self._error is None:
                self._cond.wait()
            if first not in self._ready and self._error is not None:
                raise self._error
            taken = []
            index = first
            while index < limit and index in self._ready:
                taken.append(index)
                index += 1
            return taken

    def release(self, indexes: Sequence[int]) -> None:
        with self._cond:
            for index in indexes:
                path = self._ready.pop(index, None)
                if path is not None:
                    path.unlink(missing_ok=True)
                    self._used -= self.records[index].size
            self._cond.notify_all()


# --- the phase machine ------------------------------------------------------------------
def plan_from_site(
    store: ObjectStore, cache: SiteCache | None, request: PitrRequest
) -> tuple[RestorePlan, SiteState]:
    """The restore plan for ``request`` from what the site holds now, and the site as
    read. Reading the site lists every backup and stream (the site decides what exists);
    with ``cache`` only documents it does not hold, as listed, are fetched, and each is
    verified again."""
    site = read_site(store, cache)
    return plan_restore(
        site.backups.usable,
        {s.stream_id: s.records for s in site.streams},
        request.target,
        approximate_ok=request.approximate_ok,
        backup_id=request.backup_id,
        broken_backups={b: x.reason for b, x in site.backups.broken.items()},
        broken_streams={b: x.reason for b, x in site.broken_streams.items()},
    ), site


class PointInTimeRestore:
    """A point-in-time restore into ``server`` (its datadir, ``config.data_directory``)
    from ``store``, the site a request names."""

    def __init__(
        self,
        server: Server,
        store: ObjectStore,
        config: PitrConfig,
        *,
        progress: PitrCallback | None = None,
        use_cache: bool = True,
        cancel: threading.Event | None = None,
    ) -> None:
        self.server = server
        # Checked at every progress report (of every phase): once set, the restore stops
        # with CancelledError, resumable like any interrupted one.
        self.cancel = cancel
        self.store = store
        self.config = config
        self.use_cache = use_cache
        self._cache: SiteCache | None = None
        self.state_file = restore_state(config.state_directory)
        self.state: dict[str, Any] = {}
        self.progress = PitrProgress()
        self.callback = progress
        self.first_table: TransactionTable | None = None
        # The indexes of files whose record starts inside them (a promotion's handover),
        # by plan index: the exact stop counts their transactions from that point.
        self.inside_tables: dict[int, TransactionTable] = {}
        self.resolved: ResolvedStop | None = None
        self.trx_before = 0  # transactions applied by earlier batches of this run

    # --- entry points -------------------------------------------------------------------
    def start(self, request: PitrRequest) -> PitrProgress:
        """A new restore into the server's datadir (``config.data_directory``), to
        ``request.target``."""
        with exclusive(self.config.state_directory / "restore.lock", "a restore"):
            existing = self._recorded()
            # Stopped while planning, nothing was changed yet: a new start may replace it.
            if existing and existing.get("phase") not in (
                "completed",
                "failed",
                "getting_backup_info",
            ):
                raise ConflictError(
                    f"an unfinished restore (phase {existing.get('phase')}, target "
                    f"{existing.get('target_text')}) is recorded in {self.state_file.path}: "
                    "continue it with `binhoard restore --resume`, or delete that file to "
                    "start over"
                )
            return self._start_locked(request)

    def _start_locked(self, request: PitrRequest) -> PitrProgress:
        check_empty_datadir(self.config.data_directory)
        target = request.target
        self.state = {
            "phase": "getting_backup_info",
            "site": request.site,
            "target_args": request.target_args,
            "target_text": target.describe(),
            "approximate_ok": request.approximate_ok,
            "requested_backup_id": request.backup_id,
            "replicate_from": request.replicate_from,
            "started_at": datetime.now(UTC).isoformat(),
        }
        self._save()
        self._report()
        try:
            primary = request.primary(self.config)
            if primary is not None and self.config.seed is not None:
                refuse_itself(self.server, primary, self.config.seed)
            plan, site = self._plan(request)
            # Every precondition at once, before any data is downloaded.
            check_restore_target(self.server, _source_server_ids(plan))
            # Refused here, not only by restore_backup, so that this restore ends "failed"
            # rather than unfinished; restore_backup says the warnings.
            check_preparable_here(self.server.backup_tool, backup_chain(self.store, plan.backup))
        except BinhoardError as exc:
            # Nothing was changed: a later start must not be told to resume this one.
            self.state["error"] = exc.message
            self._set_phase("failed")
            raise
        others = other_histories(site, plan, request.approximate_ok)
        for other in others:
            log.info("%s", other)
        # Before the datadir is touched: from here on the node holds neither what it held
        # nor, if this is a fork, anything its old history's streams may continue.
        history = restored_history(
            self.config.state_directory, site, plan, replicates=request.replicate_from is not None
        )
        self.state.update(
            backup_id=plan.backup.backup_id,
            records=len(plan.records),
            stop=plan.stop.detail,
            applied_records=0,
            history=f"{history.history_id}: {history.reason}",
            other_histories=others,
        )
        self._set_phase("restoring_basebackup")
        return self._run(plan)

    def close(self) -> None:
        """Closes the site cache's database, if it was opened (a daemon restores many
        times over; each restore's connection is closed when it ends)."""
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    @property
    def cache(self) -> SiteCache | None:
        """This host's cache of the site's documents (``ops/sitecache.py``, in its own
        state_directory, keyed by site), opened once: a restore over thousands of
        records fetches only those it has not read before (a resume, a restore on the
        archiving host, a second restore)."""
        if self.use_cache and self._cache is None:
            self._cache = open_cache(self.config.state_directory, self.store.describe())
        return self._cache

    def _plan(self, request: PitrRequest) -> tuple[RestorePlan, SiteState]:
        plan, site = plan_from_site(self.store, self.cache, request)
        log.info(
            "plan: stream %s (history %s), %d binlog files (%d bytes), stop: %s",
            plan.backup.backup_id,
            plan.backup.history_id or "written before history ids",
            len(plan.records),
            plan.total_bytes,
            plan.stop.detail,
        )
        return plan, site

    def resume(self) -> PitrProgress:
        """Continues the restore recorded in the state file."""
        with exclusive(self.config.state_directory / "restore.lock", "a restore"):
            state = self._recorded()
            if not state or state.get("phase") in ("completed", "failed", None):
                raise UsageError(f"no unfinished restore recorded in {self.state_file.path}")
            self.state = state
            if state["phase"] == "getting_backup_info":
                # Stopped before it had a plan: nothing was changed, so planning again is
                # all that resuming means.
                return self._start_locked(
                    PitrRequest(
                        str(state["site"]),
                        dict(state["target_args"]),
                        state.get("requested_backup_id"),
                        approximate_ok=bool(state.get("approximate_ok")),
                        replicate_from=state.get("replicate_from"),
                    )
                )
            # The same target and base backup give the same files: records are immutable
            # and a stream only grows at its end (a "latest" restore may now go further).
            request = self._recorded_request()
            if state["phase"] == "replicating":
                # The restore itself is done: only the replica is left to set up.
                log.info("resuming the restore at phase replicating")
                return self._replicate(request)
            plan, _ = self._plan(request)
            if len(plan.records) < int(state["records"]):
                raise ConflictError(
                    f"the plan changed since the restore began ({state['records']} binlog files "
                    f"then, {len(plan.records)} now): binlog records were removed from the site"
                )
            log.info("resuming the restore at phase %s", state["phase"])
            return self._run(plan)

    def _recorded_request(self) -> PitrRequest:
        """The request of the restore in ``self.state``, its backup chosen."""
        state = self.state
        replicate_from = state.get("replicate_from")
        return PitrRequest(
            site=str(state["site"]),
            target_args=dict(state["target_args"]),
            backup_id=str(state["backup_id"]),
            approximate_ok=bool(state.get("approximate_ok", False)),
            replicate_from=None if replicate_from is None else str(replicate_from),
        )

    def _recorded(self) -> dict[str, Any] | None:
        """The restore recorded in ``restore.json``, or None if there is none. A file
        that cannot be what this code wrote (a disk fault, an edit) is an error naming
        it: guessing could resume the wrong restore, or start a new one over the
        unfinished work of the old one."""
        path = self.state_file.path
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            state = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged(f"not JSON: {exc}") from None
        why = state_problem(state)
        if why is not None:
            raise self._damaged(why)
        return dict(state)

    def _damaged(self, why: str) -> ConflictError:
        return ConflictError(
            f"{self.state_file.path} is damaged ({why}): the restore it recorded cannot be "
            f"resumed. {start_over_advice(self.config)}"
        )

    # --- the phases -------------------------------------------------------------------
    def _run(self, plan: RestorePlan) -> PitrProgress:
        p = self.progress
        p.backup_id = plan.backup.backup_id
        p.target = str(self.state["target_text"])
        p.binlogs_total = len(plan.records)
        p.binlog_bytes_total = plan.total_bytes
        p.transactions_total = plan.transactions_upper_bound
        applied = int(self.state.get("applied_records", 0))
        p.binlogs_restored = applied
        site = self.config.sites[str(self.state["site"])]
        prefetcher = BinlogPrefetcher(
            self.store,
            plan.records,
            self.config.temporary_directory / "restore-binlogs",
            self.config.max_binlog_bytes,
            decryption_identities(site.encryption_keys),
            first=applied,
            on_downloaded=self._downloaded,
        )
        shutil.rmtree(prefetcher.directory, ignore_errors=True)
        prefetcher.start()
        try:
            if self.state["phase"] == "restoring_basebackup":
                self._restore_basebackup(plan.backup, prefetcher)
                self._set_phase("basebackup_restored")
            if self.state["phase"] == "basebackup_restored":
                self.server.process.ensure_running()
                self.server.set_gtid_state(plan.backup.snapshot.gtid_position)
                self._set_phase("applying_binlogs")
            if self.state["phase"] == "applying_binlogs":
                self.server.process.ensure_running()
                self._apply(plan, prefetcher)
                self._set_phase("finalizing")
            if self.state["phase"] == "finalizing":
                self.server.process.ensure_running()
                position = self._applier().finish(expected=self._expected_end(plan))
                self.state["final_gtid_position"] = position.format()
                self._set_phase("replicating" if self.state.get("replicate_from") else "completed")
        except DiskFullError as exc:
            # Files waiting to be applied are downloaded again on --resume: the space
            # they take now is free for whatever failed.
            prefetcher.stop()
            shutil.rmtree(prefetcher.directory, ignore_errors=True)
            error = disk_full(
                Path(exc.path),
                what=exc.what,
                needed=exc.needed,
                then="free space, then run `binhoard restore --resume`",
            )
            self.state["error"] = error.message
            self._save()
            raise error from None
        except BinhoardError as exc:
            self.state["error"] = self._explain(exc)
            self._save()
            raise
        finally:
            prefetcher.stop()
            shutil.rmtree(prefetcher.directory, ignore_errors=True)
        if self.state["phase"] == "replicating":
            return self._replicate(self._recorded_request())
        return self.progress

    def _replicate(self, request: PitrRequest) -> PitrProgress:
        """The ``replicating`` phase (``ops/seed.py``): after ``finalizing``, the restored
        server replicates from ``replicate_from`` and catches up; then ``completed``."""
        primary = request.primary(self.config)
        assert primary is not None and self.config.seed is not None  # checked at start
        self.progress.backup_id = str(self.state["backup_id"])
        self.progress.target = str(self.state["target_text"])
        self._report()
        try:
            self.server.process.ensure_running()
            reached = replicate(self.server, primary, self.config.seed, cancel=self.cancel)
        except BinhoardError as exc:
            self.state["error"] = exc.message
            self._save()
            raise
        self.state["replicated_to"] = reached.format()
        self.state.pop("error", None)
        self._set_phase("completed")
        return self.progress

    def _explain(self, exc: BinhoardError) -> str:
        """``exc``'s message, completed with what to do when resuming cannot help."""
        if isinstance(exc, _CANNOT_GET_PAST):
            # Resuming meets the same object again: say what the operator can do.
            exc.args = (
                f"{exc.message}. `binhoard restore --resume` cannot get past this; to "
                "restore to an earlier target, or from another backup (--backup), start "
                f"over: {start_over_advice(self.config)}",
            )
        return exc.message

    def _restore_basebackup(self, backup: BackupManifest, prefetcher: BinlogPrefetcher) -> None:
        datadir = self.config.data_directory
        if self.server.process.running():
            raise ConflictError(
                f"a server runs with {self.config.server_config_file} while its datadir "
                "is being restored: stop it first"
            )
        # This restore checked the datadir was empty when it began: whatever is there now
        # is its own unfinished work. The directory itself stays (it may be a mount point).
        empty_directory(datadir)

        def on_restore(state: RestoreProgress) -> None:
            self.progress.basebackup_compressed_bytes_downloaded = (
                state.basebackup_compressed_bytes_downloaded
            )
            self.progress.basebackup_compressed_bytes_total = (
                state.basebackup_compressed_bytes_total
            )
            self._report()

        restore_backup(
            self.server,
            self.store,
            backup.backup_id,
            datadir,
            site=self.config.sites[str(self.state["site"])],
            temporary_directory=self.config.temporary_directory,
            progress=on_restore,
            temporary_reserved=prefetcher.peak,
        )

    def _applier(self) -> RelayApply:
        return self.server.relay_applier()

    def _batch_file(self, path: Path) -> BatchFile:
        """A downloaded binlog and its index (every transaction, verified)."""
        return BatchFile(path, self.server.binlogs.read(path))

    def _apply(self, plan: RestorePlan, prefetcher: BinlogPrefetcher) -> None:
        records = plan.records
        applier = self._applier()
        first_batch = True
        start_offsets = [record.start_offset for record in records]
        while int(self.state["applied_records"]) < self._record_limit(plan):
            start = int(self.state["applied_records"])
            batch = next_batch(prefetcher.take(start, self._record_limit(plan)), start_offsets)
            indexes = batch.indexes  # the later ones stay downloaded for the next batch
            files = [self._batch_file(prefetcher.path(i)) for i in indexes]
            if start == 0:
                self.first_table = files[0].transactions
            elif starts_inside(records, start):
                self.inside_tables[start] = files[0].transactions
            last_file_index = len(records) - 1
            if last_file_index in indexes and self.resolved is None:
                self._resolve(plan, files[indexes.index(last_file_index)].transactions, prefetcher)
                kept, beyond = split_at_limit(indexes, self._record_limit(plan))
                prefetcher.release(beyond)
                indexes, files = kept, files[: len(kept)]
                if not indexes:
                    break
            start_offset = batch.start_offset
            if first_batch:
                # After a crash the server may have got anywhere in the files still to
                # apply (an interrupted batch can span more files than are downloaded
                # now); its gtid_slave_pos says where: nothing is applied twice or skipped.
                point = applier.resume_point(files)
                if point.server_error:
                    log.warning("the SQL thread had stopped on: %s", point.server_error)
                resumed = resume_batch(point, len(files), start_offset)
                if resumed.done >= len(files):
                    self._applied(indexes, prefetcher)
                    continue  # these were all applied: look at the next ones the same way
                first_batch = False
                if resumed.done:
                    self._applied(indexes[: resumed.done], prefetcher)
                    indexes, files = indexes[resumed.done :], files[resumed.done :]
                start_offset = resumed.start_offset
            stop_offset = batch_stop_offset(indexes[-1], self.resolved)
            self.progress.phase = "applying_binlogs"
            self.progress.binlogs_being_restored = len(indexes)
            self._report()
            result = applier.apply_batch(
                files,
                start_offset=start_offset,
                stop_offset=stop_offset,
                progress=self._on_apply,
                move=True,
            )
            self.trx_before += result.transactions
            self.progress.transactions_applied = self.trx_before
            self._applied(indexes, prefetcher)

    def _record_limit(self, plan: RestorePlan) -> int:
        return len(plan.records) if self.resolved is None else len(self.resolved.records)

    def _resolve(
        self, plan: RestorePlan, last_table: TransactionTable, prefetcher: BinlogPrefetcher
    ) -> None:
        records = plan.records
        first_table = self.first_table
        if len(records) > 1 and first_table is None:
            # Resumed after the first file was applied and deleted: index it again.
            first_table = self._reindex(records[0], prefetcher)
        inside = {
            i: self.inside_tables[i]
            if i in self.inside_tables
            else self._reindex(records[i], prefetcher)
            for i in range(1, len(records) - 1)
            if starts_inside(records, i)
        }
        self.resolved = exact_stop(plan, last_table, first_table, inside)
        self.progress.transactions_total = self.resolved.transactions
        self.progress.binlogs_total = len(self.resolved.records)
        log.info(
            "the restore stops at %s (%d files, %d transactions)",
            self.resolved.gtid_position or "(empty)",
            len(self.resolved.records),
            self.resolved.transactions,
        )

    def _reindex(self, record: BinlogRecord, prefetcher: BinlogPrefetcher) -> TransactionTable:
        """The index of a file already applied and deleted (a resumed run), read again."""
        path = prefetcher.directory / f"index-{record.name}"
        download_to_file(
            self.store,
            record.object.key,
            path,
            expected=digest_of(record.object),
            identities=prefetcher.identities,
        )
        try:
            return self.server.binlogs.read(path).transactions
        finally:
            path.unlink(missing_ok=True)

    def _expected_end(self, plan: RestorePlan) -> GtidPosition | None:
        if self.resolved is not None:
            return self.resolved.gtid_position
        if not plan.records:
            return plan.snapshot
        return None

    def _applied(self, indexes: Sequence[int], prefetcher: BinlogPrefetcher) -> None:
        prefetcher.release(indexes)
        self.progress.binlog_bytes_applied += sum(prefetcher.records[i].size for i in indexes)
        self.state["applied_records"] = indexes[-1] + 1
        self.progress.binlogs_restored = indexes[-1] + 1
        self.progress.binlogs_being_restored = 0
        self._save()
        self._report()

    def _on_apply(self, state: ApplyProgress) -> None:
        self.progress.transactions_applied = self.trx_before + state.transactions_applied
        self.progress.transactions_per_second = state.rate
        self._report()

    def _downloaded(self, record: BinlogRecord) -> None:
        self.progress.binlog_bytes_downloaded += record.size
        self.progress.binlogs_pending = max(
            0,
            self.progress.binlogs_total
            - self.progress.binlogs_restored
            - self.progress.binlogs_being_restored,
        )
        self._report()

    # --- state -------------------------------------------------------------------------
    def _set_phase(self, phase: str) -> None:
        self.state["phase"] = phase
        self._save()
        self._report()

    def _save(self) -> None:
        self.state["updated_at"] = datetime.now(UTC).isoformat()
        self.state_file.write(self.state)

    def _report(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError("the restore was cancelled")
        self.progress.phase = str(self.state.get("phase", self.progress.phase))
        if self.callback is not None:
            self.callback(self.progress)


def check_restore_target(server: Server, source_server_ids: Collection[int] = ()) -> None:
    """Raises ``UsageError`` listing every reason ``server`` cannot receive a
    point-in-time restore (``domain/restore_target.py``)."""
    target = server.restore_target()
    problems = target_problems(target, source_server_ids)
    if problems:
        raise UsageError(
            f"point-in-time restore into the server of {target.cnf} cannot work:\n  "
            + "\n  ".join(problems)
        )


def _source_server_ids(plan: RestorePlan) -> set[int]:
    return {plan.backup.server_id, *(r.server_id for r in plan.records)}


# What a resumed restore would meet again: the site's objects are immutable.
_CANNOT_GET_PAST = (
    IntegrityError,
    ObjectNotFoundError,
    CorruptBinlogError,
    ArchiveInconsistentError,
)


def start_over_advice(config: PitrConfig) -> str:
    """How to abandon an unfinished restore: what it changed is the datadir (and the
    server running on it)."""
    return (
        f"stop the server of {config.server_config_file} if it runs, empty "
        f"{config.data_directory}, delete {restore_state(config.state_directory).path}, "
        "then start a new restore"
    )
