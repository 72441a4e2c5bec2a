"""``binhoard verify``: read every object of a site (or of chosen backups) whole, check
it against what references it, and check each stream's GTID chain (docs/verify.md).

Nothing is written to disk but the record of what was proved (the ``verified`` table of
the site cache, ``ops/sitecache.py``): an object read whole and found sound is not read
again while the site describes it the same way (size, and its etag and Last-Modified,
or a local file's mtime, ctime and inode), unless ``full``. Data objects stream
through the download pipeline (bounded memory, nothing kept); documents are small.

What is decided (which objects, against what, the report) is ``domain/verify.py``;
the streams' gap, overlap and fencing checks are those every reader applies
(``ops/catalog.py`` ``read_site``, ``StreamState.problems``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from binhoard.crypto.age import Identity
from binhoard.domain.catalog import BinlogRecord
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import (
    IntegrityError,
    NotFoundError,
    ObjectNotFoundError,
    UsageError,
)
from binhoard.domain.manifest import BackupManifest, manifest_key
from binhoard.domain.verify import (
    Check,
    ObjectResult,
    Proof,
    Scope,
    Status,
    StreamResult,
    VerifyReport,
    already_verified,
    check_document,
    owner_of,
    plan_data,
    plan_documents,
)
from binhoard.ops.catalog import SiteState, read_site
from binhoard.ops.restore_backup import digest_of
from binhoard.ops.sitecache import SiteCache, Verified
from binhoard.storage.pipeline import decode_unrecorded, download
from binhoard.storage.store import ObjectInfo, ObjectStore, read_all
from binhoard.storage.wrappers import ForwardingStore

log = logging.getLogger("binhoard.verify")

# The record of what was proved is committed at least this often: a verify killed
# half-way re-reads at most this much on its next run.
COMMIT_EVERY_OBJECTS = 200
COMMIT_EVERY_BYTES = 256 * 1024 * 1024


def identity_of(info: ObjectInfo) -> str:
    """What the site says of an object that changes whenever it is written (S3: ETag and
    Last-Modified; a local directory: mtime, ctime and inode)."""
    modified = "" if info.last_modified is None else info.last_modified.isoformat()
    return f"{info.etag or ''}|{modified}|{info.change_id or ''}"


@dataclass(frozen=True)
class VerifyRequest:
    """``backups``: verify these backups and their streams (None: the whole site);
    ``full``: read everything again, even what an earlier verify proved."""

    backups: tuple[str, ...] | None = None
    full: bool = False


class _DocumentTap(ForwardingStore):
    """The store, keeping the bytes of every whole document read through it: the
    documents ``read_site`` fetches are then checked without a second GET."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.bodies: dict[str, bytes] = {}

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        chunks = self.inner.get(key, offset=offset, length=length)
        if offset or length is not None or not key.endswith(".json"):
            return chunks
        return self._keep(key, chunks)

    def _keep(self, key: str, chunks: Iterable[bytes]) -> Iterator[bytes]:
        parts = []
        for chunk in chunks:
            parts.append(bytes(chunk))
            yield chunk
        self.bodies[key] = b"".join(parts)


class _Run:
    """One verify: the results so far and the record of what was proved."""

    def __init__(
        self,
        store: ObjectStore,
        cache: SiteCache | None,
        listing: Mapping[str, ObjectInfo],
        full: bool,
    ) -> None:
        self.store = store
        self.cache = cache
        self.listing = listing
        self.full = full
        self.proofs: dict[str, Proof] = {}
        if cache is not None:
            self.proofs = {k: Proof(*row) for k, row in cache.verified().items()}
        self.results: list[ObjectResult] = []
        self.bytes_read = 0
        self._uncommitted = (0, 0)

    def skip(self, check: Check) -> bool:
        info = self.listing[check.key]
        if self.full or not already_verified(check, info.size, identity_of(info), self.proofs):
            return False
        self.results.append(
            ObjectResult(check.key, check.kind, "skipped", None, info.size, check.referenced_by)
        )
        return True

    def passed(self, check: Check, detail: str | None = None) -> None:
        info = self.listing[check.key]
        status: Status = "unreferenced" if check.kind == "unreferenced" else "ok"
        self.results.append(
            ObjectResult(check.key, check.kind, status, detail, info.size, check.referenced_by)
        )
        if self.cache is not None:
            row = Verified(info.size, identity_of(info), check.expectation)
            self.cache.mark_verified(check.key, row)
        self._count(info.size)

    def failed(self, check: Check, status: Literal["corrupt", "missing"], detail: str) -> None:
        info = self.listing[check.key]
        self.results.append(
            ObjectResult(check.key, check.kind, status, detail, info.size, check.referenced_by)
        )
        if self.cache is not None:
            self.cache.mark_verified(check.key, None)
        log.info("%s %s: %s", check.key, status, detail)
        self._count(info.size)

    def vanished(self, check: Check) -> None:
        """``check.key`` was listed and is gone: missing, unless retention or a leftover
        cleanup deleted it meanwhile (every backup that names it has lost its manifest,
        which goes first, or nothing names it)."""
        owners = {owner_of(k) for k in (check.key, *check.referenced_by)} - {None}
        if check.kind == "unreferenced" or not any(
            _exists(self.store, manifest_key(owner)) for owner in owners if owner is not None
        ):
            log.info("%s was deleted while verify ran", check.key)
            return
        self.failed(check, "missing", "listed, then not found")

    def _count(self, size: int) -> None:
        objects, size_since = self._uncommitted
        self._uncommitted = (objects + 1, size_since + size)
        if self.cache is not None and (
            objects + 1 >= COMMIT_EVERY_OBJECTS or size_since + size >= COMMIT_EVERY_BYTES
        ):
            self.commit()

    def commit(self) -> None:
        if self.cache is not None:
            self.cache.commit()
        self._uncommitted = (0, 0)


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        store.stat(key)
    except ObjectNotFoundError:
        return False
    return True


def verify_site(
    store: ObjectStore,
    identities: Sequence[Identity],
    request: VerifyRequest,
    *,
    cache: SiteCache | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> VerifyReport:
    """Reads and checks what ``request`` asks for (``NotFoundError`` for a backup that is
    not there) and reports each object and each stream; raises nothing for what it
    finds, only for a site it cannot read at all."""
    started = clock()
    listing = {info.key: info for info in store.list("")}
    tap = _DocumentTap(store)
    site = read_site(tap, None if request.full else cache)
    manifests = {m.backup_id: m for m in site.backups.manifests}
    scope = Scope()
    if request.backups is not None:
        unknown = [b for b in request.backups if manifest_key(b) not in listing]
        if unknown:
            raise NotFoundError(f"no backup {', '.join(unknown)} in {store.describe()}")
        scope = Scope.of(request.backups, manifests)
    run = _Run(store, cache, listing, request.full)
    documents = plan_documents(listing, scope)
    run.results += documents.problems
    known: dict[str, object] = {manifest_key(m.backup_id): m for m in manifests.values()}
    known |= {r.key: r for s in site.streams for r in (*s.records, *s.fenced)}
    for check in documents.checks:
        parsed = _check_document(run, tap.bodies, check, known)
        if parsed is not None:
            known[check.key] = parsed
    data = plan_data(
        listing,
        scope,
        [d for d in known.values() if isinstance(d, BackupManifest)],
        [d for d in known.values() if isinstance(d, BinlogRecord)],
    )
    run.results += data.problems
    for check in data.checks:
        _check_data(run, identities, check)
    run.commit()
    return VerifyReport(
        location=store.describe(),
        backups=request.backups,
        full=request.full,
        objects=tuple(sorted(run.results, key=lambda r: r.key)),
        streams=_streams(site, scope),
        bytes_read=run.bytes_read,
        seconds=clock() - started,
    )


def _check_document(
    run: _Run, fetched: Mapping[str, bytes], check: Check, known: Mapping[str, object]
) -> object | None:
    """Checks one document (``None`` if it fails); skipped when already proved and, for
    those that reference objects, when ``read_site`` has its content anyway."""
    references = check.kind in ("manifest", "binlog_record")
    if check.key not in fetched and (not references or check.key in known) and run.skip(check):
        return None
    raw = fetched.get(check.key)
    if raw is None:
        try:
            raw = read_all(run.store, check.key)
        except ObjectNotFoundError:
            run.vanished(check)
            return None
    # The bytes read are checked whatever their size: ``archive-status.json`` may have
    # been written again since the listing (the only object that is).
    run.bytes_read += len(raw)
    try:
        parsed = check_document(check.kind, raw, check.key)
    except CorruptDocumentError as exc:
        run.failed(check, "corrupt", exc.message.removeprefix(f"document {check.key} is corrupt: "))
        return None
    run.passed(check)
    if run.cache is not None:
        # What readers (and the next verify's ``read_site``) would fetch again otherwise.
        run.cache.store(run.listing[check.key], raw)
    return parsed


def _check_data(run: _Run, identities: Sequence[Identity], check: Check) -> None:
    if run.skip(check):
        return
    if not check.checkable:
        run.results.append(
            ObjectResult(
                check.key,
                check.kind,
                "unreferenced",
                "nothing references it and it is not an object binhoard writes: not checked",
                run.listing[check.key].size,
            )
        )
        return
    try:
        if check.ref is not None:
            chunks = download(
                run.store, check.key, expected=digest_of(check.ref), identities=identities
            )
        else:
            chunks = decode_unrecorded(run.store, check.key, identities=identities)
        for _ in chunks:
            pass
    except ObjectNotFoundError:
        run.vanished(check)
        return
    except IntegrityError as exc:
        prefix = f"object {check.key} failed verification: "
        run.failed(check, "corrupt", exc.message.removeprefix(prefix))
        return
    except UsageError as exc:
        # A key readers cannot decode (no ``.age`` suffix): as unusable as a corrupt one.
        run.failed(check, "corrupt", exc.message)
        return
    finally:
        run.bytes_read += run.listing[check.key].size
    leftover = "nothing references it (a leftover); it decrypts and decompresses"
    run.passed(check, leftover if check.ref is None else None)


def _streams(site: SiteState, scope: Scope) -> tuple[StreamResult, ...]:
    return tuple(
        StreamResult(
            stream_id=s.stream_id,
            records=len(s.records),
            fenced=len(s.fenced),
            promotions=len(s.promotions),
            snapshot=s.snapshot_gtid.format(),
            end_position=s.end_position.format(),
            problems=tuple(s.problems()),
        )
        for s in site.streams
        if scope.covers_stream(s.stream_id)
    )
