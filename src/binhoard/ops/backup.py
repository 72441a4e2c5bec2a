"""Taking a backup: mariabackup streamed through the pipeline into the site, manifest last.

Nothing of the backup touches local disk but mariabackup's LSN files and log. Objects
are written data first, then my.cnf, then the manifest, so an interrupted backup leaves
at most two objects without a manifest; the next run deletes them (``cleanup``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from binhoard.config import Settings
from binhoard.domain.errors import ConflictError, NotFoundError, ServerQueryError, UsageError
from binhoard.domain.manifest import (
    BackupManifest,
    BackupType,
    ObjectRef,
    backup_prefix,
    manifest_key,
    new_backup_id,
)
from binhoard.domain.schedule import Due, backup_due, choose_backup_type, incremental_parent
from binhoard.domain.versions import incremental_base_problem
from binhoard.localstate import StateFile, exclusive
from binhoard.ops.site import find_leftovers, list_backups, removable_leftovers
from binhoard.server import sql
from binhoard.server.backup_tool import MariaBackup
from binhoard.server.mycnf import read_server_options
from binhoard.storage.pipeline import Codec, ObjectDigest, suffix, upload
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.backup")

LEFTOVER_GRACE = timedelta(hours=24)
# mariabackup's copy threads (--parallel). They mostly wait for O_DIRECT reads; with two,
# one reads while the other writes to the stream, which keeps the compressor busy
# (bench/basebackup.py: -7% wall time against one).
COPY_THREADS = 2


@dataclass
class BackupProgress:
    """What a progress bar or the HTTP API shows while a backup runs."""

    backup_id: str = ""
    phase: str = "starting"
    bytes_read: int = 0  # from mariabackup (uncompressed)
    estimated_total: int = 0  # datadir size: a good estimate of the stream's size


ProgressCallback = Callable[[BackupProgress], None]


def object_ref(key: str, codec: Codec, digest: ObjectDigest) -> ObjectRef:
    return ObjectRef(
        key=key,
        compression=codec.algorithm,
        recipients=tuple(codec.recipients),
        stored_size=digest.stored_size,
        stored_sha256=digest.stored_sha256,
        plain_size=digest.plain_size,
        plain_sha256=digest.plain_sha256,
    )


def _in_progress(settings: Settings) -> StateFile:
    return StateFile(settings.state_directory / "backup-in-progress.json")


def cleanup_leftovers(settings: Settings, store: ObjectStore, now: datetime) -> list[str]:
    """Deletes objects of backups that never got a manifest; returns their backup ids."""
    state = _in_progress(settings).read()
    ours = state.get("backup_id") if state else None
    removed = []
    for left in removable_leftovers(
        find_leftovers(store), ours=ours, now=now, grace=LEFTOVER_GRACE
    ):
        for info in left.objects:
            store.delete(info.key)
        log.info("deleted %d objects of unfinished backup %s", len(left.objects), left.backup_id)
        removed.append(left.backup_id)
    _remove_work_dirs(settings)
    _in_progress(settings).clear()
    return removed


def _remove_work_dirs(settings: Settings) -> None:
    """mariabackup's LSN files and log of backups killed before they could remove them.

    The temporary directory is this host's and the caller holds the backup lock, so every
    ``backup-*`` there belongs to a backup that is no longer running.
    """
    with contextlib.suppress(OSError):
        for work_dir in settings.temporary_directory.glob("backup-*"):
            log.info("removing %s, left by an interrupted backup", work_dir)
            shutil.rmtree(work_dir, ignore_errors=True)


def choose_parent(backups: Sequence[BackupManifest], server_id: int) -> BackupManifest:
    """The backup an incremental builds on (``incremental_parent``); raises if none."""
    parent = incremental_parent(backups, server_id)
    if parent is None:
        raise NotFoundError(
            f"no earlier backup of server_id {server_id} to build an incremental backup on"
        )
    return parent


@dataclass(frozen=True)
class BackupDecision:
    """What ``take_backup`` decided, reported before the backup starts."""

    backup_type: BackupType | None  # None: no backup now
    reason: str  # why this type, or why no backup
    schedule: Due | None = None  # what the schedule said, when asked (``if_due``)


DecisionCallback = Callable[[BackupDecision], None]


def decide_backup(
    settings: Settings,
    backups: Sequence[BackupManifest],
    now: datetime,
    *,
    requested: BackupType | None = None,
    if_due: bool = False,
) -> BackupDecision:
    """Whether to take a backup now and which type: the schedule's answer (``backup_due``)
    when ``if_due``, then the type asked for, else the schedule's (``choose_backup_type``)."""
    bs = settings.backup_settings
    schedule = None
    if if_due:
        schedule = backup_due(
            now, backups, bs.backup_hour, bs.backup_minute, bs.backup_interval_minutes
        )
        if not schedule.due:
            return BackupDecision(None, schedule.reason, schedule)
    if requested is not None:
        return BackupDecision(requested, f"{requested} backup requested", schedule)
    choice = choose_backup_type(
        now,
        backups,
        settings.server_id,
        bs.incremental.enabled,
        bs.incremental.full_backup_days,
    )
    return BackupDecision(choice.backup_type, choice.reason, schedule)


def _datadir_size(datadir: Path) -> int:
    """Roughly what mariabackup will stream: the datadir without the redo log."""
    total = 0
    for path in datadir.rglob("*"):
        if path.name.startswith(("ib_logfile", "ibtmp")):
            continue
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _backup_lock(settings: Settings) -> AbstractContextManager[None]:
    return exclusive(settings.state_directory / "backup.lock", "a backup")


def take_backup(
    settings: Settings,
    store: ObjectStore,
    *,
    requested: BackupType | None = None,
    if_due: bool = False,
    on_decision: DecisionCallback | None = None,
    progress: ProgressCallback | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupManifest | None:
    """Takes the backup the schedule (or ``requested``) calls for; ``None`` when skipped.

    The decision (``decide_backup``) is made under the host's backup lock, from the site's
    backups at that moment, and given to ``on_decision`` before any work starts. With
    ``if_due`` a backup already running on this host is a reason to skip, not an error:
    run from cron every few minutes, a long backup would otherwise fail every later run.
    """
    with ExitStack() as stack:
        try:
            stack.enter_context(_backup_lock(settings))
        except ConflictError:
            if not if_due:
                raise
            _report(on_decision, BackupDecision(None, "another backup is running on this host"))
            return None
        backups = list_backups(store)
        decision = decide_backup(settings, backups, now(), requested=requested, if_due=if_due)
        _report(on_decision, decision)
        if decision.backup_type is None:
            return None
        return _take_locked(
            settings,
            store,
            backup_type=decision.backup_type,
            backups=backups,
            progress=progress,
            now=now,
        )


def create_backup(
    settings: Settings,
    store: ObjectStore,
    *,
    backup_type: BackupType = "full",
    progress: ProgressCallback | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupManifest:
    """Takes a backup of exactly ``backup_type`` into ``store`` and returns its manifest."""
    with _backup_lock(settings):
        backups = list_backups(store) if backup_type == "incremental" else []
        return _take_locked(
            settings,
            store,
            backup_type=backup_type,
            backups=backups,
            progress=progress,
            now=now,
        )


def _report(on_decision: DecisionCallback | None, decision: BackupDecision) -> None:
    log.info("backup decision: %s (%s)", decision.backup_type or "none", decision.reason)
    if on_decision is not None:
        on_decision(decision)


def _take_locked(
    settings: Settings,
    store: ObjectStore,
    *,
    backup_type: BackupType,
    backups: Sequence[BackupManifest],
    progress: ProgressCallback | None,
    now: Callable[[], datetime],
) -> BackupManifest:
    """The backup itself; the caller holds the backup lock. ``backups``: the site's, from
    which an incremental's parent is chosen."""
    site = settings.upload_site
    if site.recovery_only:
        raise UsageError(f"site {settings.backup_settings.upload_site} is recovery_only")
    # Before anything touches the site: a backup of a server other than the configured one
    # would be recorded under an id the archiver never looks for.
    facts = sql.check_server(
        settings.mysql.client_params, settings.server_id, what="cannot back up"
    )
    cleanup_leftovers(settings, store, now())
    parent = choose_parent(backups, settings.server_id) if backup_type == "incremental" else None
    why_not = incremental_base_problem(parent, facts.version) if parent is not None else None
    if why_not is not None:
        log.warning("%s; taking a full backup", why_not)
        backup_type, parent = "full", None
    started = now()
    backup_id = new_backup_id(started)
    _in_progress(settings).write({"backup_id": backup_id, "started_at": started.isoformat()})
    state = BackupProgress(backup_id=backup_id)
    state.estimated_total = _datadir_size(settings.mysql.data_directory)
    run = _BackupRun(settings, store, Codec.from_site(site), state, progress)
    try:
        manifest = run.execute(backup_id, backup_type, parent, started, now)
    except Exception:
        # Best effort now; if this fails too, the next run deletes the leftovers.
        cleanup_leftovers(settings, store, now())
        raise
    _in_progress(settings).clear()
    return manifest


def _log_checkpoint_wait(wait: sql.CheckpointWait) -> None:
    mib = 1024 * 1024
    if not wait.reached:
        log.warning(
            "InnoDB checkpoint still %.1f MiB behind after %.1f s of flushing; continuing "
            "(the next incremental backup re-copies pages changed within that redo)",
            wait.age_after / mib,
            wait.seconds,
        )
    elif wait.forced:
        log.info(
            "InnoDB checkpoint age %.1f -> %.1f MiB in %.2f s",
            wait.age_before / mib,
            wait.age_after / mib,
            wait.seconds,
        )


class FlushSettingsJournal:
    """The server's flushing settings, on local disk while a backup has changed them.

    A backup killed during ``bound_checkpoint_age`` would otherwise leave the server
    flushing at full I/O capacity until its next restart; the next backup puts the
    saved values back first.
    """

    def __init__(self, settings: Settings) -> None:
        self._file = StateFile(settings.state_directory / "innodb-flush-settings.json")
        self._cnf = settings.mysql.config_file_name

    def save(self, values: dict[str, str]) -> None:
        self._file.write({"settings": values})

    def clear(self) -> None:
        self._file.clear()

    def restore_left_over(self, conn: sql.Connection) -> None:
        if not self._file.path.exists():
            return
        left = self._file.read()
        values = left.get("settings") if left else None
        names = set(sql.flush_setting_names())
        if (
            isinstance(values, dict)
            and values
            and set(values) <= names
            and all(isinstance(v, str) for v in values.values())
        ):
            try:
                sql.restore_flush_settings(conn, values)
            except ServerQueryError as exc:
                self._restore_startup_values(conn, f"the server refused a value: {exc}")
            else:
                log.warning("restored InnoDB flushing settings left changed by a killed backup")
        else:
            self._restore_startup_values(conn, "it does not hold the settings")
        self._file.clear()

    def _restore_startup_values(self, conn: sql.Connection, why: str) -> None:
        """The saved values are lost: the server may still flush as a killed backup made
        it. Its startup values (my.cnf, else defaults) are the best guess: set them and
        say so, rather than take the changed values for the server's own."""
        try:
            configured = read_server_options(self._cnf).options
        except UsageError as exc:
            log.warning("%s", exc.message)
            configured = {}
        values = sql.startup_flush_settings(conn, configured)
        sql.restore_flush_settings(conn, values)
        log.warning(
            "%s is damaged (%s): a killed backup may have left InnoDB flushing changed and "
            "its saved values are lost; set them to the server's startup values (%s, else "
            "the defaults): %s",
            self._file.path,
            why,
            self._cnf,
            ", ".join(f"{k}={v}" for k, v in values.items()),
        )


class _BackupRun:
    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        codec: Codec,
        state: BackupProgress,
        progress: ProgressCallback | None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.codec = codec
        self.state = state
        self.progress = progress

    def report(self, phase: str | None = None) -> None:
        if phase is not None:
            self.state.phase = phase
        if self.progress is not None:
            self.progress(self.state)

    def execute(
        self,
        backup_id: str,
        backup_type: BackupType,
        parent: BackupManifest | None,
        started: datetime,
        now: Callable[[], datetime],
    ) -> BackupManifest:
        settings, codec, store = self.settings, self.codec, self.store
        conn = sql.connect(settings.mysql.client_params)
        try:
            facts = sql.server_facts(conn)
            self.report("advancing the InnoDB checkpoint")
            journal = FlushSettingsJournal(settings)
            journal.restore_left_over(conn)
            _log_checkpoint_wait(sql.bound_checkpoint_age(conn, journal=journal))
        finally:
            conn.close()
        tool = MariaBackup(settings.mysql.config_file_name, settings.mysql.client_params)
        work_dir = settings.temporary_directory / f"backup-{backup_id}"
        prefix = backup_prefix(backup_id)
        data_key = f"{prefix}data.xbstream{suffix(codec.algorithm)}"
        try:
            self.report("streaming")
            incremental_lsn = parent.lsn.to_lsn if parent else None
            with tool.backup(
                work_dir, incremental_lsn=incremental_lsn, parallel=COPY_THREADS
            ) as stream:
                data_digest = upload(store, data_key, self._counted(stream), codec)
                snapshot, lsn = stream.finish()
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        self.report("storing manifest")
        cnf_key = f"{prefix}my.cnf{suffix(codec.algorithm)}"
        cnf_digest = upload(store, cnf_key, [settings.mysql.config_file_name.read_bytes()], codec)
        manifest = BackupManifest(
            backup_id=backup_id,
            backup_type=backup_type,
            parent_backup_id=parent.backup_id if parent else None,
            chain=(*parent.chain, backup_id) if parent else (backup_id,),
            server_id=facts.server_id,
            flavour="mariadb",
            server_version=facts.version,
            tool_version=tool.version(),
            started_at=started,
            completed_at=now(),
            snapshot=snapshot,
            lsn=lsn,
            data=object_ref(data_key, codec, data_digest),
            my_cnf=object_ref(cnf_key, codec, cnf_digest),
        )
        store.put(manifest_key(backup_id), [manifest.to_bytes()], if_absent=True)
        self.report("done")
        log.info(
            "backup %s (%s) stored: %d bytes read, %d stored, snapshot %s",
            backup_id,
            backup_type,
            data_digest.plain_size,
            data_digest.stored_size,
            snapshot.gtid_position or "(no GTID)",
        )
        return manifest

    def _counted(self, stream: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in stream:
            self.state.bytes_read += len(chunk)
            self.report()
            yield chunk
