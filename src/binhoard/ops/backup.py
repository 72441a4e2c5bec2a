"""Taking a backup: mariabackup streamed through the pipeline into the site, manifest last.

Nothing of the backup touches local disk but mariabackup's LSN files and log. Objects
are written data first, then my.cnf, then the manifest, so an interrupted backup leaves
at most two objects without a manifest; the next run deletes them (``cleanup``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from binhoard.config import Settings
from binhoard.domain.errors import NotFoundError, UsageError
from binhoard.domain.manifest import (
    BackupManifest,
    BackupType,
    ObjectRef,
    backup_prefix,
    manifest_key,
    new_backup_id,
)
from binhoard.localstate import StateFile, exclusive
from binhoard.ops.site import find_leftovers, list_backups, removable_leftovers
from binhoard.server import sql
from binhoard.server.backup_tool import MariaBackup
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
    _in_progress(settings).clear()
    return removed


def choose_parent(backups: list[BackupManifest], server_id: int) -> BackupManifest:
    """The backup an incremental builds on: the newest one taken of this same server.

    LSNs are physical positions of one server's InnoDB; another server's backups (before
    a failover) cannot be a parent.
    """
    candidates = [b for b in backups if b.server_id == server_id]
    if not candidates:
        raise NotFoundError(
            f"no earlier backup of server_id {server_id} to build an incremental backup on"
        )
    return candidates[-1]


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


def create_backup(
    settings: Settings,
    store: ObjectStore,
    *,
    backup_type: BackupType = "full",
    progress: ProgressCallback | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackupManifest:
    """Takes a full or incremental backup into ``store`` and returns its manifest."""
    site = settings.upload_site
    if site.recovery_only:
        raise UsageError(f"site {settings.backup_settings.upload_site} is recovery_only")
    with exclusive(settings.state_directory / "backup.lock", "a backup"):
        cleanup_leftovers(settings, store, now())
        parent = None
        if backup_type == "incremental":
            parent = choose_parent(list_backups(store), settings.server_id)
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
            self.report("flushing dirty pages")
            if not sql.flush_dirty_pages(conn):
                log.warning("InnoDB did not flush all dirty pages in time; continuing")
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
