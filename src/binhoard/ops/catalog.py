"""Reading a site's streams: binlog records and completed/closed markers (docs/format.md).

A stream whose records or markers cannot be used is *broken* (``StreamState.broken``,
naming the object); the others are read as usual. With a :class:`SiteCache`, documents
already read are not fetched again, and ``incremental`` reading (the archiver's, every
few seconds) lists each open stream only from its last known record on and closed
streams not at all: a pass costs requests for what is new, not for the history.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TypeVar

from binhoard.domain.catalog import (
    BinlogRecord,
    Broken,
    StreamMarker,
    binlog_record_key,
    binlog_records_prefix,
    closed_key,
    completed_key,
    seq_of_record_key,
    snapshot_inside,
    stream_prefix,
)
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import ObjectNotFoundError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.manifest import BackupManifest
from binhoard.domain.promotion import (
    Promotion,
    continuity_problems,
    current_owner,
    fence,
    ordering_problem,
    seq_of_promotion_key,
)
from binhoard.ops.site import BackupListing, read_backups, read_document
from binhoard.ops.sitecache import CachedDocument, SiteCache
from binhoard.storage.store import ObjectInfo, ObjectStore, read_all

T = TypeVar("T")


def read_records(
    store: ObjectStore, stream_id: str, cache: SiteCache | None = None
) -> list[BinlogRecord]:
    """A stream's binlog records in ``seq`` order; with ``cache``, only those it does not
    hold (as listed now) are fetched.

    Records are written create-if-absent in ``seq`` order, so a hole in the numbering
    means a record was deleted: that is corruption, reported by the key that is missing.
    """
    prefix = binlog_records_prefix(stream_id)
    cached = cache.load(prefix) if cache is not None else {}
    records: list[BinlogRecord] = []
    for info in store.list(prefix):
        try:
            seq = seq_of_record_key(info.key)
        except ValueError:
            continue
        if seq != len(records):
            raise _hole(stream_id, len(records), records)
        records.append(read_document(store, info, _parse_record, cache, cached))
    if cache is not None:
        cache.commit()
    return records


def _hole(stream_id: str, seq: int, records: list[BinlogRecord]) -> CorruptDocumentError:
    missing = records[-1].key if records else "(none)"
    return CorruptDocumentError(
        binlog_record_key(stream_id, seq),
        f"binlog record seq {seq} of stream {stream_id} is missing "
        f"(last present before it: {missing})",
    )


def read_marker(store: ObjectStore, key: str) -> StreamMarker | None:
    try:
        return StreamMarker.from_bytes(read_all(store, key), key=key)
    except ObjectNotFoundError:
        return None


@dataclass(frozen=True)
class StreamState:
    """A backup and the binlogs that follow it, as the site holds them.

    ``broken``: why the stream cannot be used (a corrupt record, marker or promotion, a
    missing record, or a broken backup); ``records`` are then the intact ones before
    the problem. Nothing is archived into a broken stream, and a restore uses it only up
    to the problem.

    ``records`` are those that count under the fencing rule (``domain/promotion.py``):
    ``fenced`` ones, a deposed owner's, are kept apart and never used; ``next_seq`` is
    the seq the stream's next record gets (fenced keys are taken).
    """

    backup: BackupManifest
    records: tuple[BinlogRecord, ...]
    completed: StreamMarker | None
    closed: StreamMarker | None
    broken: Broken | None = None
    promotions: tuple[Promotion, ...] = ()
    fenced: tuple[BinlogRecord, ...] = ()
    next_seq: int | None = None  # None: len(records) (no record fenced)

    @property
    def owner(self) -> int:
        """The server that may write the stream's next record."""
        return current_owner(self.backup.server_id, self.promotions)

    @property
    def seq_after(self) -> int:
        return len(self.records) if self.next_seq is None else self.next_seq

    @property
    def stream_id(self) -> str:
        return self.backup.backup_id

    @property
    def snapshot_gtid(self) -> GtidPosition:
        return GtidPosition.parse(self.backup.snapshot.gtid_position)

    @property
    def end_position(self) -> GtidPosition:
        """The GTID state the stream's archive reaches."""
        return self.records[-1].gtid_position_at_end if self.records else self.snapshot_gtid

    @property
    def newest_commit_time(self) -> int | None:
        times = [r.max_commit_time for r in self.records if r.max_commit_time is not None]
        return max(times) if times else None

    def problems(self) -> list[str]:
        """Every gap in the stream's archive, as sentences for logs and the API."""
        found = continuity_problems(self.records, self.promotions, self.snapshot_gtid)
        if self.records and not snapshot_inside(self.records[0], self.snapshot_gtid):
            found.insert(
                0,
                f"the first archived file {self.records[0].name} does not contain the "
                f"snapshot position {self.snapshot_gtid or '(empty)'}",
            )
        if self.broken is not None:
            found.insert(0, f"broken: {self.broken.reason}")
        return found


def _parse_record(raw: bytes, key: str) -> BinlogRecord:
    return BinlogRecord.from_bytes(raw, key=key)


def _parse_marker(raw: bytes, key: str) -> StreamMarker:
    return StreamMarker.from_bytes(raw, key=key)


def _parse_promotion(raw: bytes, key: str) -> Promotion:
    return Promotion.from_bytes(raw, key=key)


class _StreamReader:
    """Reads one stream, through the cache when there is one."""

    def __init__(self, store: ObjectStore, cache: SiteCache | None, backup: BackupManifest):
        self.store = store
        self.cache = cache
        self.backup = backup
        self.sid = backup.backup_id

    @cached_property
    def cached(self) -> Mapping[str, CachedDocument]:
        return self.cache.load(stream_prefix(self.sid)) if self.cache is not None else {}

    def read(self, *, incremental: bool) -> StreamState:
        if incremental and self.cache is not None:
            final = self.cache.final(stream_prefix(self.sid))
            if isinstance(final, StreamState) and final.backup == self.backup:
                return final  # built by an earlier pass of this process (below)
        known = sorted(k for k in self.cached if _is_record(k))
        if incremental and self._complete_and_closed(known):
            # Closed is final (format rule): nothing is added, and the stream goes away
            # only with its manifest. Nothing to ask the site.
            state = self._state(known, {}, from_cache=set(self.cached))
            if self.cache is not None and state.broken is None:
                self.cache.remember_final(stream_prefix(self.sid), state)
            return state
        if incremental and known:
            # Listed from the record before the last known one, so that the last known
            # one must be in the listing: if it is not (or differs), the cache is stale.
            last = seq_of_record_key(known[-1])
            after = binlog_record_key(self.sid, last - 1) if last else None
            listing = {
                i.key: i for i in self.store.list(stream_prefix(self.sid), start_after=after)
            }
            tail = listing.get(known[-1])
            if tail is not None and self.cached[known[-1]].matches(tail):
                keys = known[:-1] + sorted(k for k in listing if _is_record(k))
                return self._state(keys, listing, from_cache=set(known[:-1]))
        listing = {i.key: i for i in self.store.list(stream_prefix(self.sid))}
        if self.cache is not None:
            self.cache.forget(k for k in self.cached if k not in listing)
        return self._state(sorted(k for k in listing if _is_record(k)), listing, from_cache=set())

    def _complete_and_closed(self, known: list[str]) -> bool:
        """Whether the cache holds the stream's ``closed.json`` and every record up to
        the one it names (a stream broken before its end is never complete here)."""
        entry = self.cached.get(closed_key(self.sid))
        if entry is None:
            return False
        try:
            closed = _parse_marker(entry.body, closed_key(self.sid))
        except CorruptDocumentError:
            return False
        expected = [] if closed.seq is None else [binlog_record_key(self.sid, closed.seq)]
        return known[-1:] == expected and len(known) == (closed.seq or 0) + len(expected)

    def _state(
        self,
        record_keys: list[str],
        listing: Mapping[str, ObjectInfo],
        *,
        from_cache: set[str],
    ) -> StreamState:
        """The stream from the keys ``listing`` holds (listed now) and ``from_cache``
        (known from an earlier listing of a part of the site that cannot change)."""
        records: list[BinlogRecord] = []
        broken: Broken | None = None
        for key in record_keys:
            if seq_of_record_key(key) != len(records):
                hole = _hole(self.sid, len(records), records)
                broken = Broken(hole.key, hole.message)
                break
            try:
                records.append(self._document(key, listing, _parse_record))
            except CorruptDocumentError as exc:
                broken = Broken(exc.key, exc.message)
                break
            except ObjectNotFoundError as exc:
                broken = Broken(exc.key, f"binlog record {exc.key} was listed, then not found")
                break
        markers: list[StreamMarker | None] = []
        for key in (completed_key(self.sid), closed_key(self.sid)):
            marker = None
            if key in listing or key in from_cache:
                try:
                    marker = self._document(key, listing, _parse_marker)
                except CorruptDocumentError as exc:
                    broken = broken or Broken(exc.key, exc.message)
                except ObjectNotFoundError:
                    marker = None
            markers.append(marker)
        promotions, problem = self._promotions(listing, from_cache)
        split = fence(records, self.backup.server_id, promotions)
        kept = split.kept
        if problem is not None:
            # Ownership past the last sound promotion is unknown: nothing after the
            # point it takes over at counts (before the first one, nothing at all).
            limit = promotions[-1].takes_over_at if promotions else 0
            kept = tuple(r for r in kept if r.seq < limit)
            broken = broken or problem
        return StreamState(
            self.backup,
            kept,
            markers[0],
            markers[1],
            broken,
            promotions=tuple(promotions),
            fenced=split.fenced,
            next_seq=len(records) if split.fenced else None,
        )

    def _promotions(
        self, listing: Mapping[str, ObjectInfo], from_cache: set[str]
    ) -> tuple[list[Promotion], Broken | None]:
        """The stream's promotions in ``n`` order, up to the first that cannot be used
        (then also why). They sort after the records, so every listing of the stream
        holds them; a closed stream read from the cache alone has them in the cache."""
        keys = sorted(k for k in {*listing, *from_cache} if seq_of_promotion_key(k) is not None)
        promotions: list[Promotion] = []
        for key in keys:
            try:
                promotion = self._document(key, listing, _parse_promotion)
            except CorruptDocumentError as exc:
                return promotions, Broken(exc.key, exc.message)
            except ObjectNotFoundError as exc:
                gone = f"promotion {exc.key} was listed, then not found"
                return promotions, Broken(exc.key, gone)
            problem = ordering_problem([*promotions, promotion])
            if problem is not None:
                return promotions, Broken(*problem)
            promotions.append(promotion)
        return promotions, None

    def _document(
        self, key: str, listing: Mapping[str, ObjectInfo], parse: Callable[[bytes, str], T]
    ) -> T:
        info = listing.get(key)
        if info is not None:
            return read_document(self.store, info, parse, self.cache, self.cached)
        entry = self.cached[key]
        return read_document(
            self.store,
            ObjectInfo(key=key, size=entry.size),
            parse,
            self.cache,
            self.cached,
            listed=False,
        )


def _is_record(key: str) -> bool:
    if "/binlogs/" not in key:
        return False
    try:
        seq_of_record_key(key)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class SiteState:
    """Everything a site says about its backups and streams."""

    backups: BackupListing
    streams: tuple[StreamState, ...]  # one per readable manifest, oldest first

    @property
    def broken_streams(self) -> dict[str, Broken]:
        return {s.stream_id: s.broken for s in self.streams if s.broken is not None}


def read_site(
    store: ObjectStore, cache: SiteCache | None = None, *, incremental: bool = False
) -> SiteState:
    """The site's backups and streams. A broken backup or stream is reported in the
    result, never raised: one corrupt object must not stop work on the others. With
    ``cache``, documents already read are taken from it (and new ones added); with
    ``incremental`` too, streams are listed only from their last known record on
    (closed ones not at all), which is what an archive pass needs."""
    listing = read_backups(store, cache)
    broken = listing.broken
    streams = []
    for backup in listing.manifests:
        state = _StreamReader(store, cache, backup).read(incremental=incremental)
        cause = broken.get(backup.backup_id)
        if cause is not None and state.broken is None:
            state = replace(state, broken=cause)
        streams.append(state)
    if cache is not None:
        cache.commit()
    return SiteState(listing, tuple(streams))


def read_streams(
    store: ObjectStore, cache: SiteCache | None = None, *, incremental: bool = False
) -> list[StreamState]:
    """Every stream of the site whose backup's manifest can be read, oldest first;
    broken ones have ``broken`` set (see ``read_site``)."""
    return list(read_site(store, cache, incremental=incremental).streams)
