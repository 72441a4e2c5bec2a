"""Restoring a backup chain into an empty datadir, and bringing the server up on it.

Every object of the chain is downloaded, verified, decrypted and decompressed as one
stream straight into the server's backup tool (``mbstream -x``); the objects of a chain
are fetched concurrently, so the next one downloads while the current one extracts. The
extraction directory is the consumer that "can roll back": if any object fails
verification the whole work directory is discarded and nothing is moved into the
datadir.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from binhoard.config import BackupSite
from binhoard.crypto.age import Identity
from binhoard.disk import disk_full, is_no_space
from binhoard.domain.errors import DiskFullError, IntegrityError, ObjectNotFoundError, UsageError
from binhoard.domain.manifest import BackupManifest, ObjectRef
from binhoard.domain.restore_plan import BrokenBackupError
from binhoard.domain.versions import check_chain_preparable
from binhoard.ops.site import read_backups, read_manifest
from binhoard.ports.server import BackupTool, Server
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
    """A backup by id, or the newest usable one for ``latest``; a broken one (its
    manifest or one of its chain corrupt or missing) is refused, naming the object."""
    listing = read_backups(store)
    if backup_id == "latest":
        backups = listing.usable
        if not backups:
            raise UsageError(f"no usable backups in {store.describe()}")
        return backups[-1]
    broken = listing.broken.get(backup_id)
    if broken is not None:
        raise BrokenBackupError(f"backup {backup_id} cannot be restored: {broken.reason}")
    return read_manifest(store, backup_id)


def backup_chain(store: ObjectStore, target: BackupManifest) -> list[BackupManifest]:
    """The manifests of ``target``'s chain, the full backup first."""
    return [read_manifest(store, b) for b in target.chain[:-1]] + [target]


def check_preparable_here(tool: BackupTool, chain: list[BackupManifest]) -> list[str]:
    """Refuses, before anything is downloaded, a chain this host's mariabackup must not
    prepare: one taken by another MariaDB series (``domain/versions.py``). Returns the
    warnings for what it may."""
    return check_chain_preparable(chain, tool.version())


def check_empty_datadir(datadir: Path) -> None:
    if datadir.exists() and any(datadir.iterdir()):
        raise UsageError(
            f"datadir {datadir} is not empty; binhoard restores only into an empty "
            "directory (move the old one aside first)"
        )


def empty_directory(directory: Path) -> None:
    """Removes everything inside ``directory``, never ``directory`` itself: a datadir is
    often a mount point (removing it fails with EBUSY) or has owner, mode and SELinux
    context that the server needs. Symbolic links are removed, not followed."""
    if not directory.exists():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def restore_backup(
    server: Server,
    store: ObjectStore,
    backup_id: str,
    datadir: Path,
    *,
    site: BackupSite,
    temporary_directory: Path,
    progress: ProgressCallback | None = None,
    temporary_reserved: int = 0,
    retry_hint: str = "free space, then run the restore again",
) -> BackupManifest:
    """Downloads, verifies, extracts and prepares the chain of ``backup_id``, then moves it
    into ``datadir``, with ``server``'s backup tool. ``site``: the site ``store`` is,
    whose keys decrypt it. Returns the manifest of the restored backup.

    A full file system ends it with a :class:`DiskFullError` naming the directory and the
    space needed there (``temporary_reserved``: bytes other work of the caller keeps in
    the temporary directory meanwhile), followed by ``retry_hint``."""
    state = RestoreProgress()

    def report(phase: str | None = None) -> None:
        if phase is not None:
            state.phase = phase
        if progress is not None:
            progress(state)

    report()
    check_empty_datadir(datadir)
    # Whose the restored files will be is decided (and checked possible) before anything
    # is downloaded, from the datadir as the operator prepared it.
    tool = server.backup_tool
    owner = tool.files_owner(datadir)
    owner.check()
    target = resolve_backup(store, backup_id)
    chain = backup_chain(store, target)
    for warning in check_preparable_here(tool, chain):
        log.warning("%s", warning)
    state.backup_id = target.backup_id
    state.basebackup_compressed_bytes_total = sum(m.data.stored_size for m in chain)
    identities = decryption_identities(site.encryption_keys)
    _check_option_files(store, chain, identities)
    work = temporary_directory / f"restore-{target.backup_id}"
    # The extracted backup is about as large as the plaintext stream(s).
    extracted = sum(m.data.plain_size for m in chain)
    try:
        _restore_chain(store, chain, work, datadir, tool, identities, state, report)
    except (DiskFullError, OSError) as exc:
        if isinstance(exc, OSError) and not is_no_space(exc):
            raise
        path = Path(exc.path) if isinstance(exc, DiskFullError) else work
        if path.is_relative_to(datadir):
            raise disk_full(
                datadir, what="the datadir", needed=extracted, then=retry_hint
            ) from None
        raise disk_full(
            temporary_directory,
            what=f"temporary_directory, extracting backup {target.backup_id}",
            needed=extracted + temporary_reserved,
            then=retry_hint,
        ) from None
    # The tool leaves the files to whoever ran it (root): a server running as mysql
    # then cannot write them (Errcode 13 on ddl_recovery.log at start).
    owner.give(datadir)
    report("basebackup_restored")
    log.info("backup %s restored into %s", target.backup_id, datadir)
    return target


def _check_option_files(
    store: ObjectStore, chain: list[BackupManifest], identities: list[Identity]
) -> None:
    """Reads each backup's ``my.cnf`` (a few KiB) and warns, naming it, if it is corrupt
    or missing: the restore does not need it (the host's own configuration is used),
    so it does not fail, but an operator comparing configurations would."""
    for manifest in chain:
        ref = manifest.my_cnf
        try:
            for _ in download(store, ref.key, expected=digest_of(ref), identities=identities):
                pass
        except (IntegrityError, ObjectNotFoundError) as exc:
            log.warning("%s (the restore goes on: it does not use it)", exc.message)


def _restore_chain(  # noqa: PLR0917 - the steps of restore_backup, split for its error handling
    store: ObjectStore,
    chain: list[BackupManifest],
    work: Path,
    datadir: Path,
    tool: BackupTool,
    identities: list[Identity],
    state: RestoreProgress,
    report: Callable[..., None],
) -> None:
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
        # Before any error is reported: the space it frees is what a retry has.
        shutil.rmtree(work, ignore_errors=True)


def _counting(
    chunks: Iterable[bytes], ratio: float, state: RestoreProgress, report: Callable[[], None]
) -> Iterator[bytes]:
    # Counts plaintext, scaled to stored (compressed) bytes for MyHoard's field names.
    for chunk in chunks:
        state.add_downloaded(round(len(chunk) * ratio))
        report()
        yield chunk


def start_restored_server(server: Server, manifest: BackupManifest) -> None:
    """Starts the server on its restored datadir and gives it the snapshot's GTID state."""
    server.process.ensure_running()
    server.set_gtid_state(manifest.snapshot.gtid_position)
