"""The ops wired as the CLI wires them (ports and configurations from ``binhoard.app``),
for integration tests and benchmarks that hold a ``Settings`` and a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from binhoard.app import archive_config, backup_config, open_server, pitr_config
from binhoard.config import Settings
from binhoard.domain.manifest import BackupManifest
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.backup import create_backup
from binhoard.ops.pitr import PointInTimeRestore
from binhoard.ops.restore_backup import restore_backup
from binhoard.storage.store import ObjectStore


def backup(settings: Settings, store: ObjectStore, **kwargs: Any) -> BackupManifest:
    """``create_backup`` of the configured server (``backup_type``, ``progress``, ``now``)."""
    return create_backup(open_server(settings), store, backup_config(settings), **kwargs)


def restore(
    settings: Settings,
    store: ObjectStore,
    backup_id: str,
    datadir: Path,
    *,
    site: str = "default",
    **kwargs: Any,
) -> BackupManifest:
    """``restore_backup`` with the configured server's tool, from ``site``."""
    return restore_backup(
        open_server(settings),
        store,
        backup_id,
        datadir,
        site=settings.backup_sites[site],
        temporary_directory=settings.temporary_directory,
        **kwargs,
    )


def archiver(settings: Settings, store: ObjectStore, **kwargs: Any) -> BinlogArchiver:
    return BinlogArchiver(open_server(settings), store, archive_config(settings), **kwargs)


def point_in_time(settings: Settings, store: ObjectStore, **kwargs: Any) -> PointInTimeRestore:
    return PointInTimeRestore(open_server(settings), store, pitr_config(settings), **kwargs)
