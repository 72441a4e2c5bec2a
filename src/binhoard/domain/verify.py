"""What ``binhoard verify`` checks of a site, and its report (docs/verify.md).

Pure: given the keys a listing holds and the documents read, which objects to check
against what (``plan_checks``), which are missing, whether an earlier verify already
proved an object (``already_verified``), and the report with its exit status.

Every object of a site is covered by something that fails if any of its bytes changes:

* a JSON document (manifest, mark, binlog record, marker, promotion, archive status):
  its own checksum and its one stored form (``documents.unseal``);
* a data object a document references (backup data, ``my.cnf``, binlog data): the
  reference's sizes and sha256 of the stored bytes and of the plaintext, age's
  authentication and the compression format's check;
* a data object nothing references (a leftover): age's authentication (the header MAC
  and every chunk's tag, the last chunk's mark) and the compression format's check.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from binhoard.domain.catalog import (
    ArchiveStatus,
    BinlogRecord,
    StreamMarker,
    binlog_record_key,
    seq_of_record_key,
)
from binhoard.domain.documents import FORMAT_VERSION, CorruptDocumentError, unseal
from binhoard.domain.errors import ArchiveStalledError, BinhoardError, CorruptSiteError
from binhoard.domain.manifest import BackupManifest, ObjectRef, manifest_key
from binhoard.domain.marks import BackupMark, parse_mark_key
from binhoard.domain.promotion import Promotion, promotion_key, seq_of_promotion_key

DocumentKind = Literal[
    "manifest",
    "mark",
    "binlog_record",
    "completed",
    "closed",
    "archive_status",
    "promotion",
    "site_marker",
    "document",
]
DataKind = Literal["data", "my_cnf", "binlog_data", "unreferenced"]
ObjectKind = DocumentKind | DataKind
Status = Literal["ok", "skipped", "corrupt", "missing", "unreferenced"]
BAD: tuple[Status, ...] = ("corrupt", "missing")

# What a document or an unreferenced age object is checked against (the ``expectation``
# of the verified record; a data object's is its reference's digest).
SEALED = "sealed document"
# Listed in docs/format.md's key layout, without a checksum; this version writes none.
SITE_MARKER = "binhoard-site.json"
AGE_ONLY = "age authentication"

_STREAM_DOCUMENTS: dict[str, DocumentKind] = {
    "completed.json": "completed",
    "closed.json": "closed",
    "archive-status.json": "archive_status",
}


def owner_of(key: str) -> str | None:
    """The backup (stream) id a key of ``backups/<id>/`` or ``streams/<id>/`` belongs to."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] in ("backups", "streams"):
        return parts[1]
    return None


def document_kind(key: str) -> DocumentKind | None:
    """What JSON document ``key`` is (``document``: one this version does not know);
    ``None`` for a key that is not a document."""
    if not key.endswith(".json"):
        return None
    parts = key.split("/")
    kind: DocumentKind = "document"
    if key == SITE_MARKER:
        kind = "site_marker"
    elif len(parts) == 3 and parts[0] == "backups" and parts[2] == "manifest.json":
        kind = "manifest"
    elif parse_mark_key(key) is not None:
        kind = "mark"
    elif len(parts) == 3 and parts[0] == "streams" and parts[2] in _STREAM_DOCUMENTS:
        kind = _STREAM_DOCUMENTS[parts[2]]
    elif len(parts) == 4 and parts[0] == "streams" and parts[2] == "binlogs":
        kind = "binlog_record"
    elif len(parts) == 4 and seq_of_promotion_key(key) is not None:
        kind = "promotion"
    return kind


def _unseal(raw: bytes, key: str) -> object:
    return unseal(raw, key=key)


def _site_marker(raw: bytes, key: str) -> object:
    """``{"format_version": 1}``: JSON, and a version this binhoard reads (it carries no
    checksum to check)."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDocumentError(key, f"not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format_version") != FORMAT_VERSION:
        raise CorruptDocumentError(key, f"not a site marker of format {FORMAT_VERSION}")
    return document


# Each document is read by the parser its readers use: the checksum, the stored form,
# the format version, the fields, and that it names the key it is stored under.
_PARSERS: dict[ObjectKind, Callable[[bytes, str], object]] = {
    "manifest": lambda raw, key: BackupManifest.from_bytes(raw, key=key),
    "mark": lambda raw, key: BackupMark.from_bytes(raw, key=key),
    "binlog_record": lambda raw, key: BinlogRecord.from_bytes(raw, key=key),
    "completed": lambda raw, key: StreamMarker.from_bytes(raw, key=key),
    "closed": lambda raw, key: StreamMarker.from_bytes(raw, key=key),
    "archive_status": lambda raw, key: ArchiveStatus.from_bytes(raw, key=key),
    "promotion": lambda raw, key: Promotion.from_bytes(raw, key=key),
    "site_marker": _site_marker,
    "document": _unseal,
}


def check_document(kind: ObjectKind, raw: bytes, key: str) -> object:
    """The document ``raw`` holds, verified as its readers verify it; raises
    ``CorruptDocumentError`` naming ``key`` (``ValueError`` for a data object's kind)."""
    parse = _PARSERS.get(kind)
    if parse is None:
        raise ValueError(f"{key} ({kind}) is not a document")
    return parse(raw, key)


def ref_expectation(ref: ObjectRef) -> str:
    return (
        f"{ref.compression} stored {ref.stored_size} {ref.stored_sha256}"
        f" plain {ref.plain_size} {ref.plain_sha256}"
    )


@dataclass(frozen=True)
class Check:
    """One object to read whole: a document (``ref`` None, kind a ``DocumentKind``), a
    referenced data object (``ref``), or an unreferenced one (kind ``unreferenced``)."""

    key: str
    kind: ObjectKind
    ref: ObjectRef | None = None
    referenced_by: tuple[str, ...] = ()

    @property
    def expectation(self) -> str:
        if self.ref is not None:
            return ref_expectation(self.ref)
        return AGE_ONLY if self.kind == "unreferenced" else SEALED

    @property
    def checkable(self) -> bool:
        """Whether anything can be checked: an unreferenced object that is neither a
        document nor an age file is not one binhoard writes."""
        return self.kind != "unreferenced" or self.key.endswith(".age")


@dataclass(frozen=True)
class ObjectResult:
    key: str
    kind: ObjectKind
    status: Status
    detail: str | None = None
    size: int | None = None
    referenced_by: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "status": self.status,
            "detail": self.detail,
            "size": self.size,
            "referenced_by": list(self.referenced_by),
        }


@dataclass(frozen=True)
class Scope:
    """The backups a verify covers: ``None`` for the whole site (every object), else the
    named backups with their streams, and the backups of their chains (an incremental
    is restored on its parents: their manifests and data, not their streams)."""

    backups: frozenset[str] | None = None
    chains: frozenset[str] = frozenset()

    @classmethod
    def of(cls, chosen: Iterable[str], manifests: Mapping[str, BackupManifest]) -> Scope:
        ids = frozenset(chosen)
        chains = {b for i in ids if i in manifests for b in manifests[i].chain} | ids
        return cls(ids, frozenset(chains))

    def covers(self, key: str) -> bool:
        if self.backups is None:
            return True
        owner = owner_of(key)
        if key.startswith("streams/"):
            return owner in self.backups
        return key.startswith("backups/") and owner in self.chains

    def covers_stream(self, stream_id: str) -> bool:
        return self.backups is None or stream_id in self.backups


@dataclass(frozen=True)
class Plan:
    checks: tuple[Check, ...]
    problems: tuple[ObjectResult, ...]  # missing, or referenced in two ways


def plan_documents(listed: Collection[str], scope: Scope) -> Plan:
    """The documents in scope among the keys a listing holds; a hole in a stream's
    record or promotion numbering is a *missing* document (they are written
    create-if-absent, in order)."""
    checks = []
    for key in sorted(listed):
        kind = document_kind(key)
        if kind is not None and scope.covers(key):
            checks.append(Check(key, kind))
    return Plan(tuple(checks), tuple(_holes(listed, scope)))


def plan_data(
    listed: Collection[str],
    scope: Scope,
    manifests: Sequence[BackupManifest],
    records: Sequence[BinlogRecord],
) -> Plan:
    """The objects that the ``manifests`` and ``records`` (every record, fenced ones too)
    in scope reference, and for the whole site every other object that is not a
    document. A referenced object, or a chain's manifest, that the listing lacks is
    *missing*."""
    refs: dict[str, tuple[DataKind, list[tuple[ObjectRef, str]]]] = {}

    def add(kind: DataKind, ref: ObjectRef, by: str) -> None:
        refs.setdefault(ref.key, (kind, []))[1].append((ref, by))

    problems: list[ObjectResult] = []
    for manifest in manifests:
        by = manifest_key(manifest.backup_id)
        if not scope.covers(by):
            continue
        add("data", manifest.data, by)
        add("my_cnf", manifest.my_cnf, by)
        for parent in manifest.chain[:-1]:
            key = manifest_key(parent)
            if key not in listed and all(p.key != key for p in problems):
                gone = f"backup {manifest.backup_id} builds on backup {parent}"
                problems.append(ObjectResult(key, "manifest", "missing", gone))
    for record in records:
        if scope.covers_stream(record.stream_id):
            add("binlog_data", record.object, record.key)
    checks: list[Check] = []
    for key, (kind, named) in sorted(refs.items()):
        by_keys = tuple(sorted({by for _, by in named}))
        if key not in listed:
            missing = ObjectResult(key, kind, "missing", "no object under this key", None, by_keys)
            problems.append(missing)
            continue
        if len({ref_expectation(ref) for ref, _ in named}) > 1:
            why = "the documents that reference it record different digests"
            problems.append(ObjectResult(key, kind, "corrupt", why, None, by_keys))
        checks.append(Check(key, kind, named[0][0], by_keys))
    if scope.backups is None:
        for key in sorted(listed):
            if document_kind(key) is None and key not in refs:
                checks.append(Check(key, "unreferenced"))
    return Plan(tuple(checks), tuple(problems))


def _holes(listed: Collection[str], scope: Scope) -> list[ObjectResult]:
    """Records and promotions missing from their numbering, by the key they would have."""
    records: dict[str, set[int]] = defaultdict(set)
    promotions: dict[str, set[int]] = defaultdict(set)
    for key in listed:
        kind = document_kind(key)
        stream = owner_of(key)
        if stream is None or not scope.covers(key):
            continue
        if kind == "binlog_record":
            try:
                records[stream].add(seq_of_record_key(key))
            except ValueError:
                continue
        elif kind == "promotion":
            seq = seq_of_promotion_key(key)
            if seq is not None:
                promotions[stream].add(seq)
    found: list[ObjectResult] = []
    for stream, seqs in sorted(records.items()):
        for seq in sorted(set(range(max(seqs) + 1)) - seqs):
            key = binlog_record_key(stream, seq)
            found.append(
                ObjectResult(key, "binlog_record", "missing", "a hole in the record numbering")
            )
    for stream, seqs in sorted(promotions.items()):
        for seq in sorted(set(range(max(seqs) + 1)) - seqs):
            key = promotion_key(stream, seq)
            found.append(
                ObjectResult(key, "promotion", "missing", "a hole in the promotion numbering")
            )
    return found


@dataclass(frozen=True)
class Proof:
    """How the site described an object when a verify read it whole, and what it was
    checked against: while all three stay the same the object has not changed."""

    size: int
    identity: str
    expectation: str


def already_verified(check: Check, size: int, identity: str, proofs: Mapping[str, Proof]) -> bool:
    known = proofs.get(check.key)
    return known is not None and known == Proof(size, identity, check.expectation)


@dataclass(frozen=True)
class StreamResult:
    """The GTID chain of one stream, from its snapshot to its newest record, after the
    fencing rule: ``problems`` are gaps, overlaps and broken continuity across a
    promotion (``StreamState.problems``), and why the stream is broken if it is."""

    stream_id: str
    records: int
    fenced: int
    promotions: int
    snapshot: str
    end_position: str
    problems: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "records": self.records,
            "fenced_records": self.fenced,
            "promotions": self.promotions,
            "snapshot_gtid_position": self.snapshot,
            "end_gtid_position": self.end_position,
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class VerifyReport:
    location: str
    backups: tuple[str, ...] | None  # None: the whole site
    full: bool
    objects: tuple[ObjectResult, ...]
    streams: tuple[StreamResult, ...]
    bytes_read: int
    seconds: float
    counts: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        counts = dict.fromkeys(("ok", "skipped", "corrupt", "missing", "unreferenced"), 0)
        for result in self.objects:
            counts[result.status] += 1
        object.__setattr__(self, "counts", counts)

    @property
    def bad(self) -> list[ObjectResult]:
        return [r for r in self.objects if r.status in BAD]

    @property
    def stream_problems(self) -> list[str]:
        return [f"stream {s.stream_id}: {p}" for s in self.streams for p in s.problems]

    def error(self) -> BinhoardError | None:
        """What the command ends with: corrupt or missing objects (exit 8) before gaps
        in a stream (exit 9, as ``binlog list``); None when everything verified."""
        bad = self.bad
        if bad:
            names = ", ".join(r.key for r in bad[:5]) + (", ..." if len(bad) > 5 else "")
            return CorruptSiteError(
                f"{len(bad)} object(s) of {self.location} are corrupt or missing: {names}"
            )
        problems = self.stream_problems
        if problems:
            return ArchiveStalledError(
                f"{len(problems)} problem(s) in the binlog streams: {problems[0]}"
            )
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "location": self.location,
            "backups": None if self.backups is None else list(self.backups),
            "full": self.full,
            "ok": self.error() is None,
            "summary": {
                **self.counts,
                "objects": len(self.objects),
                "bytes_read": self.bytes_read,
                "seconds": round(self.seconds, 3),
                "stream_problems": len(self.stream_problems),
            },
            "objects": [r.to_json() for r in self.objects],
            "streams": [s.to_json() for s in self.streams],
        }
