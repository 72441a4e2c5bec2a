"""Writing an operator's marks on a backup: preserved until a time, or broken
(``domain/marks.py``; docs/format.md, "Marks"). Readers take them from the listing of
``backups/`` (``ops/site.py``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from binhoard.domain.errors import (
    ConflictError,
    NotFoundError,
    ObjectNotFoundError,
    PreconditionFailedError,
)
from binhoard.domain.manifest import backup_prefix, manifest_key
from binhoard.domain.marks import BackupMark, MarkKind, parse_mark_key
from binhoard.storage.store import ObjectStore

# Each attempt loses only to another writer of the same backup's marks at that moment.
ATTEMPTS = 5


def preserve(
    store: ObjectStore, backup_id: str, until: datetime | None, *, now: datetime
) -> BackupMark:
    """Keeps ``backup_id`` (and its stream) from retention until ``until``; ``None``
    takes an earlier preservation back."""
    return _write(store, BackupMark(backup_id, "preserve", 0, now, preserve_until=until))


def mark_broken(
    store: ObjectStore,
    backup_id: str,
    *,
    broken: bool = True,
    reason: str | None = None,
    now: datetime,
) -> BackupMark:
    """Says that ``backup_id`` and its stream cannot be used (``broken``): restores never
    choose it, nothing is archived into it or built on it, and retention deletes it
    once a newer backup can be restored. ``broken=False`` takes that back."""
    return _write(store, BackupMark(backup_id, "broken", 0, now, broken=broken, reason=reason))


def _write(store: ObjectStore, mark: BackupMark) -> BackupMark:
    """Writes ``mark`` as the next of its kind, create-if-absent, so that of two writers
    at once both land and the later ``seq`` holds."""
    for _ in range(ATTEMPTS):
        seq = _next_seq(store, mark.backup_id, mark.kind)
        mark = replace(mark, seq=seq)
        try:
            store.put(mark.key, [mark.to_bytes()], if_absent=True)
        except PreconditionFailedError:
            continue
        _check_exists(store, mark.backup_id, "was deleted while it was being marked")
        return mark
    raise ConflictError(
        f"could not write a {mark.kind} mark of backup {mark.backup_id}: others were "
        f"writing its marks at the same time ({ATTEMPTS} attempts)"
    )


def _next_seq(store: ObjectStore, backup_id: str, kind: MarkKind) -> int:
    """One listing of the backup's objects: whether it exists, and its newest mark."""
    seqs = []
    exists = False
    for info in store.list(backup_prefix(backup_id)):
        exists = exists or info.key == manifest_key(backup_id)
        parsed = parse_mark_key(info.key)
        if parsed is not None and parsed[1] == kind:
            seqs.append(parsed[2])
    if not exists:
        raise NotFoundError(f"no backup {backup_id} in {store.describe()}")
    return max(seqs) + 1 if seqs else 0


def _check_exists(store: ObjectStore, backup_id: str, what: str) -> None:
    """A deletion that began before the mark was written removes the mark with the
    backup: say so rather than report a mark that does not count."""
    try:
        store.stat(manifest_key(backup_id))
    except ObjectNotFoundError:
        raise NotFoundError(f"backup {backup_id} {what}") from None
