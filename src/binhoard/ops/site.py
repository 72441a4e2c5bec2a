"""Reading a backup site: which backups exist (by their manifests), which of them are
broken, and what is left over."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar, cast

from binhoard.domain.catalog import Broken, chain_breaks, stream_prefix
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import NotFoundError, ObjectNotFoundError
from binhoard.domain.manifest import BackupManifest, manifest_key
from binhoard.domain.marks import BackupMark, MarkKind, parse_mark_key
from binhoard.domain.schedule import format_utc
from binhoard.ops.sitecache import CachedDocument, SiteCache
from binhoard.storage.store import ObjectInfo, ObjectStore, read_all

BACKUPS = "backups/"
# Objects of a backup without a manifest are deleted by any host once untouched this
# long: a backup in progress writes continuously (docs/format.md, leftovers).
LEFTOVER_GRACE = timedelta(hours=24)

log = logging.getLogger("binhoard.site")

T = TypeVar("T")


def _backup_id_of(key: str) -> str:
    return key[len(BACKUPS) :].split("/", 1)[0]


def read_manifest(store: ObjectStore, backup_id: str) -> BackupManifest:
    key = manifest_key(backup_id)
    try:
        raw = read_all(store, key)
    except ObjectNotFoundError:
        raise NotFoundError(f"no backup {backup_id} in {store.describe()}") from None
    return BackupManifest.from_bytes(raw, key=key)


def read_document(
    store: ObjectStore,
    info: ObjectInfo,
    parse: Callable[[bytes, str], T],
    cache: SiteCache | None,
    cached: Mapping[str, CachedDocument],
    *,
    listed: bool = True,
) -> T:
    """The document ``info`` names, verified by ``parse`` (``CorruptDocumentError`` if
    it fails), from the cache when it holds it, else from the site (and then cached).

    ``listed``: ``info`` comes from a listing made now, so a cached copy is used only if
    it matches it; otherwise the caller knows the key is there from an earlier listing
    of an immutable part of the site.
    """
    entry = cached.get(info.key)
    if cache is not None and entry is not None and (not listed or entry.matches(info)):
        known = cache.parsed(info.key, entry.body)
        if known is not None:
            return cast(T, known)
        try:
            document = parse(entry.body, info.key)
        except CorruptDocumentError as exc:
            log.warning("cached copy of %s discarded: %s", info.key, exc.message)
            cache.forget([info.key])
        else:
            cache.remember(info.key, entry.body, document)
            return document
    raw = read_all(store, info.key)
    document = parse(raw, info.key)
    if cache is not None:
        cache.store(info, raw)
        cache.remember(info.key, raw, document)
    return document


@dataclass(frozen=True)
class BackupEntry:
    """One backup of a site: its manifest if it could be read, why it is broken, and the
    operator's marks (``domain/marks.py``): until when it is preserved, or why its
    newest preservation mark cannot be read, and the mark that says it is broken."""

    backup_id: str
    manifest: BackupManifest | None
    broken: Broken | None
    preserve_until: datetime | None = None
    preserve_unreadable: Broken | None = None
    broken_mark: BackupMark | None = None

    @property
    def key(self) -> str:
        return manifest_key(self.backup_id)


@dataclass(frozen=True)
class Leftover:
    """Objects of a backup that never got its manifest (interrupted, crashed)."""

    backup_id: str
    objects: tuple[ObjectInfo, ...]

    @property
    def newest(self) -> datetime | None:
        times = [o.last_modified for o in self.objects if o.last_modified is not None]
        return max(times) if times else None


@dataclass(frozen=True)
class BackupListing:
    """Every backup of a site (every ``manifest.json``), oldest first, and the objects
    under ``backups/`` of backups that have none (``leftovers``)."""

    entries: tuple[BackupEntry, ...]
    leftovers: tuple[Leftover, ...] = ()

    @property
    def usable(self) -> list[BackupManifest]:
        """The backups that can be restored: manifest verified, whole chain present."""
        return [e.manifest for e in self.entries if e.manifest is not None and e.broken is None]

    @property
    def broken(self) -> dict[str, Broken]:
        return {e.backup_id: e.broken for e in self.entries if e.broken is not None}

    @property
    def manifests(self) -> list[BackupManifest]:
        """Every manifest that could be read, broken chain or not."""
        return [e.manifest for e in self.entries if e.manifest is not None]


def _parse_manifest(raw: bytes, key: str) -> BackupManifest:
    return BackupManifest.from_bytes(raw, key=key)


def _parse_mark(raw: bytes, key: str) -> BackupMark:
    return BackupMark.from_bytes(raw, key=key)


class _Marks:
    """The newest mark of each kind of each backup, from the listing of ``backups/``:
    only the newest is read, since it alone holds."""

    def __init__(self) -> None:
        self.newest: dict[tuple[str, MarkKind], ObjectInfo] = {}

    def add(self, info: ObjectInfo) -> bool:
        parsed = parse_mark_key(info.key)
        if parsed is None:
            return False
        backup_id, kind, _ = parsed
        known = self.newest.get((backup_id, kind))
        if known is None or known.key < info.key:
            self.newest[(backup_id, kind)] = info
        return True

    def read(
        self,
        store: ObjectStore,
        backup_id: str,
        kind: MarkKind,
        cache: SiteCache | None,
        cached: Mapping[str, CachedDocument],
    ) -> BackupMark | Broken | None:
        """The newest mark of ``kind``; ``Broken`` if it cannot be read."""
        info = self.newest.get((backup_id, kind))
        if info is None:
            return None
        try:
            return read_document(store, info, _parse_mark, cache, cached)
        except ObjectNotFoundError:
            return None  # deleted since the listing: the backup is being deleted
        except CorruptDocumentError as exc:
            return Broken(exc.key, exc.message)


def read_backups(store: ObjectStore, cache: SiteCache | None = None) -> BackupListing:
    """Every backup of the site with what is broken (``Broken``) and its marks; one
    listing, and a GET for each manifest (and newest mark) the cache does not hold."""
    cached = cache.load(BACKUPS) if cache is not None else {}
    manifests: dict[str, BackupManifest] = {}
    unreadable: dict[str, Broken] = {}
    order: list[str] = []
    marks = _Marks()
    listed: list[ObjectInfo] = []
    for info in store.list(BACKUPS):
        listed.append(info)
        if marks.add(info) or not info.key.endswith("/manifest.json"):
            continue
        backup_id = _backup_id_of(info.key)
        try:
            manifests[backup_id] = read_document(store, info, _parse_manifest, cache, cached)
        except ObjectNotFoundError:
            continue  # deleted since the listing: the backup no longer exists
        except CorruptDocumentError as exc:
            unreadable[backup_id] = Broken(exc.key, exc.message)
        order.append(backup_id)
    preserved: dict[str, BackupMark | Broken | None] = {}
    marked: dict[str, BackupMark] = {}
    for backup_id in order:
        preserved[backup_id] = marks.read(store, backup_id, "preserve", cache, cached)
        mark = marks.read(store, backup_id, "broken", cache, cached)
        if isinstance(mark, Broken):
            unreadable.setdefault(backup_id, mark)
        elif mark is not None and mark.broken:
            marked[backup_id] = mark
    if cache is not None:
        _forget_deleted(cache, cached, set(order))
    broken = {**{b: _marked_broken(m) for b, m in marked.items()}, **unreadable}
    chained = chain_breaks(list(manifests.values()), broken)
    return BackupListing(
        tuple(
            _entry(
                b, manifests.get(b), broken.get(b) or chained.get(b), preserved[b], marked.get(b)
            )
            for b in order
        ),
        tuple(_leftovers(listed)),
    )


def _marked_broken(mark: BackupMark) -> Broken:
    why = f": {mark.reason}" if mark.reason else ""
    when = format_utc(mark.at)
    return Broken(mark.key, f"backup {mark.backup_id} was marked broken at {when}{why}")


def _entry(
    backup_id: str,
    manifest: BackupManifest | None,
    broken: Broken | None,
    preserve: BackupMark | Broken | None,
    broken_mark: BackupMark | None,
) -> BackupEntry:
    if isinstance(preserve, Broken):
        return BackupEntry(backup_id, manifest, broken, None, preserve, broken_mark)
    until = preserve.preserve_until if preserve is not None else None
    return BackupEntry(backup_id, manifest, broken, until, None, broken_mark)


def _forget_deleted(
    cache: SiteCache, cached: Mapping[str, CachedDocument], present: set[str]
) -> None:
    """Drops what the cache holds of backups whose manifest is gone: a backup is deleted
    manifest first (docs/format.md), so its stream is gone with it."""
    for key in cached:
        backup_id = _backup_id_of(key)
        if backup_id not in present:
            cache.forget([key])
            cache.forget(cache.load(stream_prefix(backup_id)))


def list_backups(store: ObjectStore, cache: SiteCache | None = None) -> list[BackupManifest]:
    """Every usable backup of the site, oldest first. A backup exists iff its manifest
    exists; broken ones (``read_backups``) are left out, with a warning naming them."""
    listing = read_backups(store, cache)
    for backup_id, broken in listing.broken.items():
        log.warning("backup %s is broken and ignored: %s", backup_id, broken.reason)
    return listing.usable


def _leftovers(listing: Iterable[ObjectInfo]) -> list[Leftover]:
    grouped: dict[str, list[ObjectInfo]] = defaultdict(list)
    for info in listing:
        grouped[_backup_id_of(info.key)].append(info)
    return [
        Leftover(backup_id, tuple(objects))
        for backup_id, objects in sorted(grouped.items())
        if not any(o.key.endswith("/manifest.json") for o in objects)
    ]


def find_leftovers(store: ObjectStore) -> list[Leftover]:
    """Objects under ``backups/`` of backups without a manifest (one listing; a
    :class:`BackupListing` has them too, from the listing it was read from)."""
    return _leftovers(store.list(BACKUPS))


def removable_leftovers(
    leftovers: Iterable[Leftover], *, ours: Collection[str], now: datetime, grace: timedelta
) -> list[Leftover]:
    """Leftovers safe to delete: those this host was writing or deleting when it stopped
    (``ours``), and any untouched for ``grace`` (another host's crash). A backup in
    progress elsewhere writes continuously, so its objects are never older than the
    grace period."""
    return [
        left
        for left in leftovers
        if left.backup_id in ours or (left.newest is not None and now - left.newest > grace)
    ]
