"""Deleting backups with their streams, by hand (``backup delete``) or as retention
decides (``prune``; the daemon each active pass).

A backup is deleted in an order that leaves the site consistent after a crash at any
step (docs/format.md, rule 5 and "Deleting a backup"):

1. its manifest: from then on the backup and its stream do not exist for any reader;
2. the binlog data objects its records name and no other stream's record does (data
   objects are shared between streams: the references are those of every stream
   whose manifest is still there);
3. its stream's objects (records, markers, archive status) and promotion records;
4. last, its own objects under ``backups/<id>/`` (data, my.cnf, marks): while any is
   there, the deletion is unfinished, and the site's listing shows it as a *leftover*
   (objects without a manifest).

Leftovers are finished by the next ``prune`` or ``backup delete`` (and by the next
backup, ``ops/backup.py``): at once for the backups this host was deleting (recorded in
``state_directory/backup-deletions.json`` before step 1), after 24 hours for others
(another host may be taking that backup right now). Finishing repeats steps 2-4, which
is why the records go only after the data objects they name.

Only the ``ObjectStore`` port and plain data come in; the policy is
``domain/retention.py``'s.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from binhoard.config import BackupSettings
from binhoard.domain.catalog import BinlogRecord, stream_prefix
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import DeletionRefusedError, NotFoundError, ObjectNotFoundError
from binhoard.domain.manifest import backup_prefix, manifest_key
from binhoard.domain.retention import (
    GfsCounts,
    RetentionCandidate,
    RetentionDecision,
    RetentionPolicy,
    plan_deletion,
    plan_retention,
)
from binhoard.localstate import StateFile, exclusive
from binhoard.ops.catalog import SiteState, read_site
from binhoard.ops.site import LEFTOVER_GRACE, Leftover, removable_leftovers
from binhoard.ops.sitecache import SiteCache
from binhoard.storage.store import ObjectInfo, ObjectStore, read_all

log = logging.getLogger("binhoard.expire")


def retention_policy(settings: BackupSettings) -> RetentionPolicy:
    days = settings.backup_age_days_max
    counts = settings.retention
    return RetentionPolicy(
        count_min=settings.backup_count_min,
        count_max=settings.backup_count_max,
        age_max=None if days is None else timedelta(days=days),
        gfs=GfsCounts(counts.hourly, counts.daily, counts.weekly, counts.monthly, counts.yearly),
    )


def retention_candidates(site: SiteState) -> list[RetentionCandidate]:
    """Every backup of the site as retention sees it. *Open*: its stream has no
    ``closed.json`` and is not broken (the archiver writes into no other)."""
    streams = {s.stream_id: s for s in site.streams}
    found = []
    for entry in site.backups.entries:
        manifest, stream = entry.manifest, streams.get(entry.backup_id)
        found.append(
            RetentionCandidate(
                backup_id=entry.backup_id,
                completed_at=None if manifest is None else manifest.completed_at,
                chain=() if manifest is None else manifest.chain,
                open=stream is not None and stream.closed is None and stream.broken is None,
                broken=None if entry.broken is None else entry.broken.reason,
                preserve_until=entry.preserve_until,
                preserve_unreadable=(
                    None if entry.preserve_unreadable is None else entry.preserve_unreadable.reason
                ),
            )
        )
    return found


class DeletionJournal:
    """The backups this host is deleting (``backup-deletions.json``), so that the next run
    here finishes them at once, and the lock that keeps two deletions on this host from
    running together."""

    def __init__(self, state_directory: Path) -> None:
        self._file = StateFile(state_directory / "backup-deletions.json")
        self._lock = state_directory / "backup-deletion.lock"

    def pending(self) -> set[str]:
        ids = (self._file.read() or {}).get("deleting", [])
        return {i for i in ids if isinstance(i, str)} if isinstance(ids, list) else set()

    def begin(self, backup_ids: Iterable[str]) -> None:
        self._file.write({"deleting": sorted(self.pending() | set(backup_ids))})

    def done(self) -> None:
        self._file.clear()

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with exclusive(self._lock, "a deletion of backups"):
            yield


@dataclass(frozen=True)
class Deletion:
    """One backup deleted (or one leftover finished): objects removed."""

    backup_id: str
    objects: int  # under backups/ and streams/
    binlog_objects: int  # binlog data objects no other stream referenced


def binlog_references(store: ObjectStore, site: SiteState) -> dict[str, set[str]]:
    """The binlog data objects each stream's records name, by stream. Streams whose
    manifest cannot be read (not in ``site.streams``; rare) are read here: their
    objects are kept as long as their records are."""
    found = {s.stream_id: {r.object.key for r in s.records} for s in site.streams}
    for entry in site.backups.entries:
        if entry.backup_id not in found:
            listing = store.list(stream_prefix(entry.backup_id))
            found[entry.backup_id] = _named_data_keys(store, listing, ())
    return found


def _named_data_keys(
    store: ObjectStore, listing: Iterable[ObjectInfo], known: Iterable[BinlogRecord]
) -> set[str]:
    """The data objects the records in a stream's ``listing`` name: from the records
    already read (``known``), else read now. A record that cannot be read names nothing
    here; an object only it names is removed by the archiver, as one no record names."""
    named = {r.key: r.object.key for r in known}
    keys = set()
    for info in listing:
        if info.key in named:
            keys.add(named[info.key])
        elif "/binlogs/" in info.key:
            with contextlib.suppress(CorruptDocumentError, ObjectNotFoundError):
                record = BinlogRecord.from_bytes(read_all(store, info.key), key=info.key)
                keys.add(record.object.key)
    return keys


class _Deleter:
    """Deletes backups in the order of the module docstring. A binlog data object goes
    with the last stream that names it: the references of every stream (``references``,
    read when first needed) are counted down as streams go."""

    def __init__(
        self,
        store: ObjectStore,
        references: Callable[[], dict[str, set[str]]],
        records: dict[str, Sequence[BinlogRecord]] | None = None,
        cache: SiteCache | None = None,
    ) -> None:
        self.store = store
        self._references = references
        self._by_stream: dict[str, set[str]] | None = None
        self._count: Counter[str] = Counter()
        self.records = records or {}
        self.cache = cache

    def _unreferenced(self, backup_id: str, keys: set[str]) -> set[str]:
        """Of ``keys``, those no stream but ``backup_id`` (going now) names."""
        if self._by_stream is None:
            self._by_stream = self._references()
            self._count.update(k for named in self._by_stream.values() for k in named)
        self._count.subtract(self._by_stream.pop(backup_id, set()))
        return {k for k in keys if self._count[k] <= 0}

    def run(self, backup_ids: Iterable[str], step: Callable[[str], Deletion]) -> list[Deletion]:
        """``step`` for each backup in turn; what the cache must forget is written even
        when one fails."""
        done = []
        try:
            for backup_id in backup_ids:
                done.append(step(backup_id))
                log.info(
                    "removed backup %s: %d objects, %d binlog data objects",
                    backup_id,
                    done[-1].objects,
                    done[-1].binlog_objects,
                )
        finally:
            if self.cache is not None:
                self.cache.commit()
        return done

    def delete(self, backup_id: str) -> Deletion:
        """Steps 1-4."""
        self.store.delete(manifest_key(backup_id))
        return self.finish(backup_id, objects=1)

    def finish(self, backup_id: str, *, objects: int = 0) -> Deletion:
        """Steps 2-4: everything of a backup whose manifest is gone."""
        stream = list(self.store.list(stream_prefix(backup_id)))
        data = _named_data_keys(self.store, stream, self.records.get(backup_id, ()))
        if data:
            data = self._unreferenced(backup_id, data)
        for key in sorted(data):
            self.store.delete(key)
        for info in stream:  # records, markers, promotions
            self.store.delete(info.key)
        own = list(self.store.list(backup_prefix(backup_id)))
        for info in own:
            self.store.delete(info.key)
        if self.cache is not None:
            self.cache.forget(self.cache.load(stream_prefix(backup_id)))
            self.cache.forget(self.cache.load(backup_prefix(backup_id)))
        return Deletion(backup_id, objects + len(stream) + len(own), len(data))


def delete_backups(
    store: ObjectStore,
    site: SiteState,
    backup_ids: Sequence[str],
    *,
    journal: DeletionJournal | None = None,
    cache: SiteCache | None = None,
) -> list[Deletion]:
    """Deletes ``backup_ids`` (of ``site``, read just before) with their streams, in the
    order given: an incremental must come before the backups it builds on, so that none
    is ever left without its parents."""
    if not backup_ids:
        return []
    if journal is not None:
        journal.begin(backup_ids)
    deleter = _Deleter(
        store,
        lambda: binlog_references(store, site),
        {s.stream_id: s.records for s in site.streams},
        cache,
    )
    return deleter.run(backup_ids, deleter.delete)


def finish_leftovers(
    store: ObjectStore,
    leftovers: Iterable[Leftover],
    references: Callable[[], dict[str, set[str]]],
    cache: SiteCache | None = None,
) -> list[Deletion]:
    """Removes what backups without a manifest left: an interrupted deletion's streams
    and binlog data objects (steps 2-4) as well as an interrupted backup's objects.
    ``references``: ``binlog_references`` of the site (asked only if needed)."""
    deleter = _Deleter(store, references, cache=cache)
    return deleter.run([left.backup_id for left in leftovers], deleter.finish)


def apply_retention(
    store: ObjectStore,
    site: SiteState,
    decisions: Sequence[RetentionDecision],
    *,
    journal: DeletionJournal | None = None,
    cache: SiteCache | None = None,
) -> list[Deletion]:
    """Deletes what ``decisions`` (``plan_retention`` on ``site``) say, newest first."""
    doomed = [d.backup_id for d in reversed(decisions) if not d.keep]
    return delete_backups(store, site, doomed, journal=journal, cache=cache)


@dataclass(frozen=True)
class PruneReport:
    decisions: list[RetentionDecision]
    deleted: list[Deletion] = field(default_factory=list)  # empty on a dry run
    finished: list[Deletion] = field(default_factory=list)  # leftovers removed
    leftovers: list[str] = field(default_factory=list)  # leftovers waiting (another host's)


def prune_site(
    store: ObjectStore,
    site: SiteState,
    policy: RetentionPolicy,
    now: datetime,
    *,
    journal: DeletionJournal | None = None,
    cache: SiteCache | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Retention on ``site`` (read just before, e.g. by an archive pass): finishes
    leftovers that may be removed now, then deletes what the policy says. No request
    beyond the deletions themselves (and a few listings per backup deleted). With a
    ``journal``, holds this host's deletion lock (``ConflictError`` if another process
    here is deleting)."""
    decisions = plan_retention(retention_candidates(site), policy, now)
    with _locked(journal):
        ours = journal.pending() if journal is not None else set()
        leftovers = list(site.backups.leftovers)
        removable = removable_leftovers(leftovers, ours=ours, now=now, grace=LEFTOVER_GRACE)
        waiting = [left.backup_id for left in leftovers if left not in removable]
        if dry_run:
            return PruneReport(decisions, leftovers=waiting)

        def references() -> dict[str, set[str]]:
            return binlog_references(store, site)

        finished = finish_leftovers(store, removable, references, cache)
        deleted = apply_retention(store, site, decisions, journal=journal, cache=cache)
        if journal is not None:
            journal.done()
    return PruneReport(decisions, deleted, finished, waiting)


def _locked(journal: DeletionJournal | None) -> contextlib.AbstractContextManager[None]:
    return journal.locked() if journal is not None else contextlib.nullcontext()


def prune(
    store: ObjectStore,
    policy: RetentionPolicy,
    now: datetime,
    *,
    journal: DeletionJournal | None = None,
    cache: SiteCache | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Reads the site (through ``cache``: only what is new) and applies retention
    (``prune_site``)."""
    site = read_site(store, cache, incremental=True)
    return prune_site(store, site, policy, now, journal=journal, cache=cache, dry_run=dry_run)


def delete_backup(
    store: ObjectStore,
    backup_id: str,
    now: datetime,
    *,
    force: bool = False,
    journal: DeletionJournal | None = None,
    cache: SiteCache | None = None,
) -> list[Deletion]:
    """Deletes one backup by hand, with the incrementals that build on it. Refused
    (``DeletionRefusedError``, saying why) for what retention would never delete (an open
    stream, the newest backup that can be restored, a preserved one) and when
    incrementals would go with it, unless ``force``."""
    with _locked(journal):
        site = read_site(store, cache, incremental=True)
        plan = plan_deletion(retention_candidates(site), backup_id, now)
        if plan is None:
            raise NotFoundError(f"no backup {backup_id} in {store.describe()}")
        if plan.refusals and not force:
            raise DeletionRefusedError(
                f"not deleting backup {backup_id}: " + "; ".join(plan.refusals)
            )
        deleted = delete_backups(store, site, plan.backup_ids, journal=journal, cache=cache)
        if journal is not None:
            journal.done()
        return deleted
