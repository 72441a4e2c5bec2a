"""Taking a backup: the server's backup tool (mariabackup) streamed through the pipeline
into the site, manifest last.

Nothing of the backup touches local disk but the tool's LSN files and log. Objects
are written data first, then my.cnf, then the manifest, so an interrupted backup leaves
at most two objects without a manifest; the next run deletes them (``cleanup``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from binhoard.config import BackupSite
from binhoard.domain.backup_decision import (
    BackupDecision,
    BackupSchedule,
    choose_parent,
    decide_backup,
)
from binhoard.domain.errors import (
    CancelledError,
    ConflictError,
    ServerAccessDeniedError,
    ServerQueryError,
    UsageError,
)
from binhoard.domain.history import History
from binhoard.domain.manifest import (
    BackupManifest,
    BackupType,
    ObjectRef,
    backup_prefix,
    manifest_key,
    new_backup_id,
)
from binhoard.domain.privileges import MARKER_PRIVILEGES, MARKER_SCHEMA
from binhoard.domain.restore_test import MARKER_EXTRA, MARKER_WRITTEN, READ_ONLY_NO_MARKER
from binhoard.domain.server_facts import check_facts
from binhoard.domain.versions import incremental_base_problem
from binhoard.localstate import StateFile, exclusive
from binhoard.ops.catalog import read_site
from binhoard.ops.expire import DeletionJournal, binlog_references, finish_leftovers
from binhoard.ops.history import local_history
from binhoard.ops.site import LEFTOVER_GRACE, find_leftovers, list_backups, removable_leftovers
from binhoard.ports.server import CheckpointWait, InnoDBFlushing, Server
from binhoard.storage.pipeline import Codec, ObjectDigest, suffix, upload
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.backup")

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


@dataclass(frozen=True)
class BackupConfig:
    """What a backup needs besides its ports (``app.backup_config`` makes it)."""

    site_name: str  # the upload site, for messages
    site: BackupSite  # its codec; recovery_only
    schedule: BackupSchedule
    server_id: int  # the configured server's: the backup must be of that one
    state_directory: Path
    temporary_directory: Path
    write_marker: bool = True  # restore_test.write_marker


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


def _in_progress(config: BackupConfig) -> StateFile:
    return StateFile(config.state_directory / "backup-in-progress.json")


def cleanup_leftovers(config: BackupConfig, store: ObjectStore, now: datetime) -> list[str]:
    """Removes what backups without a manifest left (``expire.finish_leftovers``): at
    once the backup this host was taking, or the deletions it was making, when it
    stopped; any other once untouched for a day. Returns their backup ids."""
    state = _in_progress(config).read()
    ours = DeletionJournal(config.state_directory).pending()
    if state is not None and isinstance(state.get("backup_id"), str):
        ours.add(state["backup_id"])
    removable = removable_leftovers(find_leftovers(store), ours=ours, now=now, grace=LEFTOVER_GRACE)
    # The site's references are read only if a leftover is an interrupted deletion
    # whose stream still names binlog data objects (rare).
    finish_leftovers(store, removable, lambda: binlog_references(store, read_site(store)))
    _remove_work_dirs(config.temporary_directory)
    _in_progress(config).clear()
    return [left.backup_id for left in removable]


def _remove_work_dirs(temporary_directory: Path) -> None:
    """mariabackup's LSN files and log of backups killed before they could remove them.

    The temporary directory is this host's and the caller holds the backup lock, so every
    ``backup-*`` there belongs to a backup that is no longer running.
    """
    with contextlib.suppress(OSError):
        for work_dir in temporary_directory.glob("backup-*"):
            log.info("removing %s, left by an interrupted backup", work_dir)
            shutil.rmtree(work_dir, ignore_errors=True)


DecisionCallback = Callable[[BackupDecision], None]


def _backup_lock(config: BackupConfig) -> AbstractContextManager[None]:
    return exclusive(config.state_directory / "backup.lock", "a backup")


def take_backup(
    server: Server,
    store: ObjectStore,
    config: BackupConfig,
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
            stack.enter_context(_backup_lock(config))
        except ConflictError:
            if not if_due:
                raise
            _report(on_decision, BackupDecision(None, "another backup is running on this host"))
            return None
        history = local_history(config.state_directory)
        backups = own_history(list_backups(store), history)
        decision = decide_backup(
            config.schedule,
            config.server_id,
            backups,
            now(),
            requested=requested,
            if_due=if_due,
        )
        _report(on_decision, decision)
        if decision.backup_type is None:
            return None
        return _take_locked(
            server,
            store,
            config,
            backup_type=decision.backup_type,
            backups=backups,
            history=history,
            progress=progress,
            now=now,
        )


def create_backup(
    server: Server,
    store: ObjectStore,
    config: BackupConfig,
    *,
    backup_type: BackupType = "full",
    progress: ProgressCallback | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    cancel: threading.Event | None = None,
) -> BackupManifest:
    """Takes a backup of exactly ``backup_type`` into ``store`` and returns its manifest.
    Once ``cancel`` is set it stops (``CancelledError``) and removes what it stored."""
    with _backup_lock(config):
        history = local_history(config.state_directory)
        backups = own_history(list_backups(store), history) if backup_type == "incremental" else []
        return _take_locked(
            server,
            store,
            config,
            backup_type=backup_type,
            backups=backups,
            history=history,
            progress=progress,
            now=now,
            cancel=cancel,
        )


def own_history(backups: Sequence[BackupManifest], history: History) -> list[BackupManifest]:
    """The backups of this node's history (``domain/history.py``): the only ones the
    schedule counts and an incremental builds on. A backup of the history this node was
    forked from has the same server_id, but LSNs and GTIDs of another database."""
    return [b for b in backups if history.holds(b.history_id)]


def _report(on_decision: DecisionCallback | None, decision: BackupDecision) -> None:
    log.info("backup decision: %s (%s)", decision.backup_type or "none", decision.reason)
    if on_decision is not None:
        on_decision(decision)


def _take_locked(
    server: Server,
    store: ObjectStore,
    config: BackupConfig,
    *,
    backup_type: BackupType,
    backups: Sequence[BackupManifest],
    history: History,
    progress: ProgressCallback | None,
    now: Callable[[], datetime],
    cancel: threading.Event | None = None,
) -> BackupManifest:
    """The backup itself; the caller holds the backup lock. ``backups``: the site's of
    this node's ``history`` (read once, under the lock), from which an incremental's
    parent is chosen."""
    if config.site.recovery_only:
        raise UsageError(f"site {config.site_name} is recovery_only")
    # Before anything touches the site: a backup of a server other than the configured one
    # would be recorded under an id the archiver never looks for.
    facts = check_facts(server.facts(), config.server_id, what="cannot back up")
    cleanup_leftovers(config, store, now())
    parent = choose_parent(backups, config.server_id) if backup_type == "incremental" else None
    why_not = incremental_base_problem(parent, facts.version) if parent is not None else None
    if why_not is not None:
        log.warning("%s; taking a full backup", why_not)
        backup_type, parent = "full", None
    started = now()
    backup_id = new_backup_id(started)
    _in_progress(config).write({"backup_id": backup_id, "started_at": started.isoformat()})
    state = BackupProgress(backup_id=backup_id)
    state.estimated_total = server.backup_tool.estimated_size()
    marker = write_marker(server, backup_id, read_only=facts.read_only, enabled=config.write_marker)
    run = _BackupRun(server, store, config, state=state, progress=progress, cancel=cancel)
    try:
        manifest = run.execute(
            backup_id, backup_type, parent, started, now, marker=marker, history=history
        )
    except Exception:
        # Best effort now; if this fails too, the next run deletes the leftovers.
        cleanup_leftovers(config, store, now())
        raise
    _in_progress(config).clear()
    return manifest


def write_marker(server: Server, backup_id: str, *, read_only: bool, enabled: bool) -> str:
    """Writes the marker row a restore test looks for (``binhoard.backup_marker``,
    ``server.checks``) before the backup starts; what the manifest records: "written",
    or why not. Never fails the backup: a read-only server (a replica: a write there
    would be an errant transaction) is not written to, and a missing privilege or a
    refusal is said and recorded."""
    if not enabled:
        return "restore_test.write_marker is off"
    if read_only:
        return READ_ONLY_NO_MARKER
    try:
        server.checks.write_marker(backup_id)
    except ServerAccessDeniedError:
        why = (
            f"binhoard's account may not write it: grant {', '.join(MARKER_PRIVILEGES)} ON "
            f"{MARKER_SCHEMA}.* (docs/servers.md)"
        )
    except ServerQueryError as exc:
        why = f"the server refused it: {exc.message}"
    else:
        return MARKER_WRITTEN
    log.warning("backup %s has no marker row: %s", backup_id, why)
    return f"no marker: {why}"


def _log_checkpoint_wait(wait: CheckpointWait) -> None:
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

    def __init__(self, state_directory: Path) -> None:
        self._file = StateFile(state_directory / "innodb-flush-settings.json")

    def save(self, values: dict[str, str]) -> None:
        self._file.write({"settings": values})

    def clear(self) -> None:
        self._file.clear()

    def restore_left_over(self, flushing: InnoDBFlushing) -> None:
        if not self._file.path.exists():
            return
        left = self._file.read()
        values = left.get("settings") if left else None
        names = set(flushing.setting_names())
        if (
            isinstance(values, dict)
            and values
            and set(values) <= names
            and all(isinstance(v, str) for v in values.values())
        ):
            try:
                flushing.put_back(values)
            except ServerQueryError as exc:
                self._restore_startup_values(flushing, f"the server refused a value: {exc}")
            else:
                log.warning("restored InnoDB flushing settings left changed by a killed backup")
        else:
            self._restore_startup_values(flushing, "it does not hold the settings")
        self._file.clear()

    def _restore_startup_values(self, flushing: InnoDBFlushing, why: str) -> None:
        """The saved values are lost: the server may still flush as a killed backup made
        it. Its startup values (its option file, else defaults) are the best guess: set
        them and say so, rather than take the changed values for the server's own."""
        values = flushing.startup_values()
        flushing.put_back(values)
        log.warning(
            "%s is damaged (%s): a killed backup may have left InnoDB flushing changed and "
            "its saved values are lost; set them to the server's startup values (its "
            "option file, else the defaults): %s",
            self._file.path,
            why,
            ", ".join(f"{k}={v}" for k, v in values.items()),
        )


class _BackupRun:
    def __init__(
        self,
        server: Server,
        store: ObjectStore,
        config: BackupConfig,
        *,
        state: BackupProgress,
        progress: ProgressCallback | None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.config = config
        self.codec = Codec.from_site(config.site)
        self.state = state
        self.progress = progress
        self.cancel = cancel

    def report(self, phase: str | None = None) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise CancelledError(f"backup {self.state.backup_id} cancelled")
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
        *,
        marker: str,
        history: History,
    ) -> BackupManifest:
        server, codec, store = self.server, self.codec, self.store
        facts = server.facts()
        self.report("advancing the InnoDB checkpoint")
        journal = FlushSettingsJournal(self.config.state_directory)
        journal.restore_left_over(server.flushing)
        _log_checkpoint_wait(server.flushing.bound_checkpoint_age(journal))
        tool = server.backup_tool
        work_dir = self.config.temporary_directory / f"backup-{backup_id}"
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
        cnf_digest = upload(store, cnf_key, [tool.option_file()], codec)
        manifest = BackupManifest(
            backup_id=backup_id,
            backup_type=backup_type,
            parent_backup_id=parent.backup_id if parent else None,
            chain=(*parent.chain, backup_id) if parent else (backup_id,),
            server_id=facts.server_id,
            flavour=server.flavour,
            server_version=facts.version,
            tool_version=tool.version(),
            started_at=started,
            completed_at=now(),
            snapshot=snapshot,
            lsn=lsn,
            data=object_ref(data_key, codec, data_digest),
            my_cnf=object_ref(cnf_key, codec, cnf_digest),
            extra={MARKER_EXTRA: marker},
            # Which history the snapshot is of: GTIDs and server_id alone cannot tell
            # (domain/history.py).
            history_id=history.history_id,
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
