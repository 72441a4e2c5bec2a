"""Reading a backup site: which backups exist (by their manifests), and what is left over."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from binhoard.domain.errors import NotFoundError, ObjectNotFoundError
from binhoard.domain.manifest import BackupManifest, manifest_key
from binhoard.storage.store import ObjectInfo, ObjectStore, read_all

BACKUPS = "backups/"


def _backup_id_of(key: str) -> str:
    return key[len(BACKUPS) :].split("/", 1)[0]


def read_manifest(store: ObjectStore, backup_id: str) -> BackupManifest:
    key = manifest_key(backup_id)
    try:
        raw = read_all(store, key)
    except ObjectNotFoundError:
        raise NotFoundError(f"no backup {backup_id} in {store.describe()}") from None
    return BackupManifest.from_bytes(raw, key=key)


def list_backups(store: ObjectStore) -> list[BackupManifest]:
    """Every backup of the site, oldest first. A backup exists iff its manifest exists."""
    return [
        read_manifest(store, _backup_id_of(info.key))
        for info in store.list(BACKUPS)
        if info.key.endswith("/manifest.json")
    ]


@dataclass(frozen=True)
class Leftover:
    """Objects of a backup that never got its manifest (interrupted, crashed)."""

    backup_id: str
    objects: tuple[ObjectInfo, ...]

    @property
    def newest(self) -> datetime | None:
        times = [o.last_modified for o in self.objects if o.last_modified is not None]
        return max(times) if times else None


def find_leftovers(store: ObjectStore) -> list[Leftover]:
    grouped: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in store.list(BACKUPS):
        grouped[_backup_id_of(info.key)].append(info)
    return [
        Leftover(backup_id, tuple(objects))
        for backup_id, objects in sorted(grouped.items())
        if not any(o.key.endswith("/manifest.json") for o in objects)
    ]


def removable_leftovers(
    leftovers: list[Leftover], *, ours: str | None, now: datetime, grace: timedelta
) -> list[Leftover]:
    """Leftovers safe to delete: the one this host was taking when it stopped, and any
    untouched for ``grace`` (another host's crash). A backup in progress elsewhere writes
    continuously, so its objects are never older than the grace period."""
    return [
        left
        for left in leftovers
        if left.backup_id == ours or (left.newest is not None and now - left.newest > grace)
    ]
