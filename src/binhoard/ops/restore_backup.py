"""Restoring a backup chain into an empty datadir, and bringing the server up on it.

Every object of the chain is downloaded, verified, decrypted and decompressed as one
stream straight into ``mbstream -x``; the objects of a chain are fetched concurrently, so
the next one downloads while the current one extracts. The extraction directory is the
consumer that "can roll back": if any object fails verification the whole work directory
is discarded and nothing is moved into the datadir.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from binhoard.config import Settings
from binhoard.domain.errors import ServerError, UsageError
from binhoard.domain.manifest import BackupManifest, ObjectRef
from binhoard.ops.site import list_backups, read_manifest
from binhoard.server import sql
from binhoard.server.backup_tool import MariaBackup
from binhoard.server.process import ServerProcess
from binhoard.storage.pipeline import ObjectDigest, decryption_identities, download
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.restore")


@dataclass
class RestoreProgress:
    """Progress as data (MyHoard's field names where they exist)."""

    phase: str = "getting_backup_info"
    backup_id: str = ""
    basebackup_compressed_bytes_downloaded: int = 0
    basebackup_compressed_bytes_total: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_downloaded(self, count: int) -> None:
        with self._lock:
            self.basebackup_compressed_bytes_downloaded += count


ProgressCallback = Callable[[RestoreProgress], None]


def digest_of(ref: ObjectRef) -> ObjectDigest:
    return ObjectDigest(
        plain_size=ref.plain_size,
        plain_sha256=ref.plain_sha256,
        stored_size=ref.stored_size,
        stored_sha256=ref.stored_sha256,
    )


def resolve_backup(store: ObjectStore, backup_id: str) -> BackupManifest:
    """A backup by id, or the newest one for ``latest``."""
    if backup_id == "latest":
        backups = list_backups(store)
        if not backups:
            raise UsageError(f"no backups in {store.describe()}")
        return backups[-1]
    return read_manifest(store, backup_id)


def check_empty_datadir(datadir: Path) -> None:
    if datadir.exists() and any(datadir.iterdir()):
        raise UsageError(
            f"datadir {datadir} is not empty; binhoard restores only into an empty "
            "directory (move the old one aside first)"
        )


def restore_backup(
    settings: Settings,
    store: ObjectStore,
    backup_id: str,
    datadir: Path,
    *,
    site_name: str,
    progress: ProgressCallback | None = None,
) -> BackupManifest:
    """Downloads, verifies, extracts and prepares the chain of ``backup_id``, then moves it
    into ``datadir``. Returns the manifest of the restored backup."""
    state = RestoreProgress()

    def report(phase: str | None = None) -> None:
        if phase is not None:
            state.phase = phase
        if progress is not None:
            progress(state)

    report()
    check_empty_datadir(datadir)
    target = resolve_backup(store, backup_id)
    chain = [read_manifest(store, b) for b in target.chain[:-1]] + [target]
    state.backup_id = target.backup_id
    state.basebackup_compressed_bytes_total = sum(m.data.stored_size for m in chain)
    site = settings.backup_sites[site_name]
    identities = decryption_identities(site.encryption_keys)
    tool = MariaBackup(settings.mysql.config_file_name, settings.mysql.client_params)
    work = settings.temporary_directory / f"restore-{target.backup_id}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        report("restoring_basebackup")
        dirs = [work / f"{i}-{m.backup_id}" for i, m in enumerate(chain)]

        def fetch(manifest: BackupManifest, target_dir: Path) -> None:
            # The plaintext sha256 (0.6 CPU s/GiB) is not checked here: the stored bytes'
            # sha256, age's per-chunk authentication, zstd's content checksum, mbstream's
            # CRC32 per xbstream chunk and --prepare's page checksums all are (format.md).
            chunks = download(
                store,
                manifest.data.key,
                expected=digest_of(manifest.data),
                identities=identities,
                verify_plaintext=False,
            )
            ratio = manifest.data.stored_size / max(1, manifest.data.plain_size)
            tool.extract(_counting(chunks, ratio, state, report), target_dir)

        # Two at a time: the next object downloads while the current one extracts.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="restore-fetch") as pool:
            futures = [pool.submit(fetch, m, d) for m, d in zip(chain, dirs, strict=True)]
            for future in futures:
                future.result()
        report("preparing_basebackup")
        tool.prepare(dirs[0])
        for incremental in dirs[1:]:
            tool.prepare(dirs[0], incremental_dir=incremental)
        report("moving_basebackup")
        datadir.mkdir(parents=True, exist_ok=True)
        tool.move_back(dirs[0], datadir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report("basebackup_restored")
    log.info("backup %s restored into %s", target.backup_id, datadir)
    return target


def _counting(
    chunks: Iterable[bytes], ratio: float, state: RestoreProgress, report: Callable[[], None]
) -> Iterator[bytes]:
    # Counts plaintext, scaled to stored (compressed) bytes for MyHoard's field names.
    for chunk in chunks:
        state.add_downloaded(round(len(chunk) * ratio))
        report()
        yield chunk


def set_gtid_state(conn: sql.Connection, gtid_position: str) -> None:
    """Makes a freshly restored server's GTID state the snapshot's.

    A restored server has empty ``gtid_binlog_pos``/``gtid_slave_pos`` (binlogs are not in
    the backup). Binlog apply then continues from exactly this state.
    """
    sql.query(conn, "RESET MASTER")
    sql.query(conn, "SET GLOBAL gtid_binlog_state = %s", (gtid_position,))
    sql.query(conn, "SET GLOBAL gtid_slave_pos = %s", (gtid_position,))


def ensure_server_running(settings: Settings) -> None:
    """Starts the configured server unless it already answers: ``start_command`` when
    configured, else ``mariadbd --defaults-file=<config_file_name>``."""
    params = settings.mysql.client_params

    def answers() -> bool:
        try:
            sql.connect(params, timeout=2).close()
        except ServerError as exc:
            if not exc.retryable:
                raise  # it answered, refusing us (access denied): waiting cannot help
            return False
        return True

    if answers():
        return
    if settings.start_command:
        subprocess.run(settings.start_command, check=True)
        ServerProcess(settings.mysql.config_file_name).wait_until(answers)
    else:
        ServerProcess(settings.mysql.config_file_name).start(answers)


def start_restored_server(settings: Settings, manifest: BackupManifest) -> None:
    """Starts the server on its restored datadir and gives it the snapshot's GTID state."""
    ensure_server_running(settings)
    conn = sql.connect(settings.mysql.client_params)
    try:
        set_gtid_state(conn, manifest.snapshot.gtid_position)
    finally:
        conn.close()
