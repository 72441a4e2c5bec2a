"""A stream's binlog catalog: the records of archived binlog files (docs/format.md).

A *stream* is a backup plus the binlogs that follow its snapshot. Each archived file gets
one record, ``streams/<backup_id>/binlogs/<seq>.json``, written create-if-absent in
``seq`` order after its data object is stored, so the record is the proof the file is
archived. Records are pure data; reading and writing them is in ``ops/catalog.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from binhoard.domain.binlog import (
    BinlogSegment,
    DomainDropped,
    GtidGap,
    GtidOverlap,
    SegmentProblem,
    check_chain,
    compare_positions,
)
from binhoard.domain.documents import CorruptDocumentError, seal, unseal
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import BackupManifest, ObjectRef, manifest_key
from binhoard.domain.relay_plan import FIRST_EVENT_OFFSET

SEQ_DIGITS = 10


def stream_prefix(stream_id: str) -> str:
    return f"streams/{stream_id}/"


def binlog_records_prefix(stream_id: str) -> str:
    return f"streams/{stream_id}/binlogs/"


def binlog_record_key(stream_id: str, seq: int) -> str:
    return f"{binlog_records_prefix(stream_id)}{seq:0{SEQ_DIGITS}d}.json"


def completed_key(stream_id: str) -> str:
    return f"streams/{stream_id}/completed.json"


def closed_key(stream_id: str) -> str:
    return f"streams/{stream_id}/closed.json"


def archive_status_key(stream_id: str) -> str:
    return f"streams/{stream_id}/archive-status.json"


# The file's identity, then (from format 1.1 on) the upload's token, then the suffix.
_DATA_KEY = re.compile(
    r"binlogs/(?P<server_id>\d+)/(?P<name>[^/]+)-(?P<created>\d+)-(?P<start>[0-9a-f]{12})"
    r"(?:-(?P<token>[0-9a-f]{16}))?\.binlog(?:\.[a-z0-9]+)*"
)

BinlogIdentity = tuple[int, str, int, str]
"""``(server_id, name, created, start digest (12 hex))``: one binlog file, wherever stored."""


def binlog_identity(server_id: int, name: str, created: int, start_digest: str) -> BinlogIdentity:
    return (server_id, name, created, start_digest[:12])


def binlog_data_key(identity: BinlogIdentity, token: str, suffix: str) -> str:
    """Key of one upload of a binlog file: the file's identity (unique across servers and
    ``RESET MASTER``: name, Format_description time and a digest of its Gtid_list) and a
    random ``token`` (16 hex digits) unique to the upload, so that uploads never meet
    under one key and need no condition (the record decides which one counts)."""
    server_id, name, created, start = identity
    return f"binlogs/{server_id}/{name}-{created}-{start}-{token}.binlog{suffix}"


def identity_of_data_key(key: str) -> BinlogIdentity | None:
    """The file identity a data key names (with or without an upload token); ``None``
    for any other key."""
    match = _DATA_KEY.fullmatch(key)
    if match is None:
        return None
    return (
        int(match["server_id"]),
        match["name"],
        int(match["created"]),
        match["start"],
    )


def seq_of_record_key(key: str) -> int:
    """The ``seq`` of a record key; :class:`ValueError` for any other key."""
    name = key.rsplit("/", 1)[-1]
    if not name.endswith(".json") or len(name) != SEQ_DIGITS + 5:
        raise ValueError(f"not a binlog record key: {key}")
    return int(name[:SEQ_DIGITS])


def _opt_gtid(value: object) -> Gtid | None:
    return None if value is None else Gtid.parse(str(value))


def _opt_int(value: object) -> int | None:
    return None if value is None else int(str(value))


@dataclass(frozen=True)
class BinlogRecord:
    """One archived binlog file of a stream."""

    stream_id: str
    seq: int
    server_id: int
    name: str
    object: ObjectRef
    gtid_list_at_start: GtidPosition
    gtid_position_at_end: GtidPosition
    first_gtid: Gtid | None
    last_gtid: Gtid | None
    first_commit_time: int | None
    last_commit_time: int | None
    min_commit_time: int | None
    max_commit_time: int | None
    transactions: int
    start_offset: int
    archived_at: datetime

    @property
    def key(self) -> str:
        return binlog_record_key(self.stream_id, self.seq)

    @property
    def size(self) -> int:
        return self.object.plain_size

    def segment(self) -> BinlogSegment:
        """The record as a segment, for gap checks (``check_chain``)."""
        return BinlogSegment(
            name=self.name,
            size=self.size,
            gtid_list_at_start=self.gtid_list_at_start,
            end_position=self.gtid_position_at_end,
            transaction_count=self.transactions,
            first_gtid=self.first_gtid,
            last_gtid=self.last_gtid,
            first_commit_time=self.first_commit_time,
            last_commit_time=self.last_commit_time,
            max_commit_time=self.max_commit_time,
        )

    def to_bytes(self) -> bytes:
        return seal(
            {
                "stream_id": self.stream_id,
                "seq": self.seq,
                "server_id": self.server_id,
                "name": self.name,
                "object": self.object.to_dict(),
                "gtid_list_at_start": self.gtid_list_at_start.format(),
                "gtid_position_at_end": self.gtid_position_at_end.format(),
                "first_gtid": None if self.first_gtid is None else self.first_gtid.format(),
                "last_gtid": None if self.last_gtid is None else self.last_gtid.format(),
                "first_commit_time": self.first_commit_time,
                "last_commit_time": self.last_commit_time,
                "min_commit_time": self.min_commit_time,
                "max_commit_time": self.max_commit_time,
                "transactions": self.transactions,
                "start_offset": self.start_offset,
                "archived_at": self.archived_at.isoformat(),
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, key: str) -> BinlogRecord:
        doc = unseal(raw, key=key)
        try:
            record = cls(
                stream_id=str(doc["stream_id"]),
                seq=int(doc["seq"]),
                server_id=int(doc["server_id"]),
                name=str(doc["name"]),
                object=ObjectRef.from_dict(doc["object"]),
                gtid_list_at_start=GtidPosition.parse(str(doc["gtid_list_at_start"])),
                gtid_position_at_end=GtidPosition.parse(str(doc["gtid_position_at_end"])),
                first_gtid=_opt_gtid(doc["first_gtid"]),
                last_gtid=_opt_gtid(doc["last_gtid"]),
                first_commit_time=_opt_int(doc["first_commit_time"]),
                last_commit_time=_opt_int(doc["last_commit_time"]),
                min_commit_time=_opt_int(doc["min_commit_time"]),
                max_commit_time=_opt_int(doc["max_commit_time"]),
                transactions=int(doc["transactions"]),
                start_offset=int(doc["start_offset"]),
                archived_at=datetime.fromisoformat(str(doc["archived_at"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDocumentError(key, f"missing or invalid field: {exc}") from None
        if record.key != key:
            raise CorruptDocumentError(key, f"names stream {record.stream_id} seq {record.seq}")
        return record


@dataclass(frozen=True)
class StreamMarker:
    """``completed.json`` or ``closed.json`` of a stream."""

    stream_id: str
    at: datetime
    seq: int | None  # the last record's seq when written; None if the stream had none
    successor: str | None = None  # closed.json: the stream that took over

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "stream_id": self.stream_id,
            "at": self.at.isoformat(),
            "seq": self.seq,
        }
        if self.successor is not None:
            body["successor"] = self.successor
        return seal(body)

    @classmethod
    def from_bytes(cls, raw: bytes, *, key: str) -> StreamMarker:
        doc = unseal(raw, key=key)
        try:
            return cls(
                stream_id=str(doc["stream_id"]),
                at=datetime.fromisoformat(str(doc["at"])),
                seq=_opt_int(doc["seq"]),
                successor=None if doc.get("successor") is None else str(doc["successor"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDocumentError(key, f"missing or invalid field: {exc}") from None


def chain_problems(
    records: Sequence[BinlogRecord], end: GtidPosition | None = None
) -> list[SegmentProblem]:
    """Every gap, overlap or divergence between a stream's records (in ``seq`` order).

    Each record's Gtid_list must equal the state after the record before it. ``end``
    (e.g. the Gtid_list of the server's first file not yet archived) also catches a
    lost last file. Where the first record stands against the snapshot is checked by
    :func:`snapshot_inside`.

    Where the server changes (a promotion: records are fenced first, so only there)
    file names start again from the new owner's, so their order is checked within each
    server's run only; the GTID state must still carry over exactly. A new owner's
    first record that starts inside its file (:func:`starts_inside`) holds the previous
    record's end somewhere in it: its Gtid_list must be at or before that end and its
    end at or after it. That the state at its ``start_offset`` is exactly that end needs
    the file's index: the restore's exact stop checks it (``exact_stop``), and so does
    the applier before it applies anything (``plan_batch``).
    """
    runs: list[list[BinlogRecord]] = []
    for record in records:
        if not runs or runs[-1][-1].server_id != record.server_id:
            runs.append([])
        runs[-1].append(record)
    problems: list[SegmentProblem] = []
    for number, run in enumerate(runs):
        if number:
            before, after = runs[number - 1][-1], run[0]
            if after.start_offset > FIRST_EVENT_OFFSET:
                problems += _holds_position(before, after)
            else:
                problems += compare_positions(
                    before.name, before.gtid_position_at_end, after.name, after.gtid_list_at_start
                )
        last = number == len(runs) - 1
        problems += check_chain([r.segment() for r in run], end=end if last else None)
    return problems


def starts_inside(records: Sequence[BinlogRecord], index: int) -> bool:
    """Whether ``records[index]`` continues the stream from inside its file: a new
    owner's first record after a promotion, whose ``start_offset`` is past the file's
    first event (docs/format.md, "Promotions and fencing"). The stream's first record
    starts at the snapshot, which is another matter (:func:`snapshot_inside`)."""
    return index > 0 and records[index].start_offset > FIRST_EVENT_OFFSET


def _holds_position(before: BinlogRecord, after: BinlogRecord) -> list[SegmentProblem]:
    """Every way ``after``'s file cannot hold ``before``'s end: it starts after it in
    some domain (a gap), or ends before it (the file stops short of where the stream
    is). Per domain, as :func:`compare_positions` words it."""
    end = before.gtid_position_at_end
    at_start = compare_positions(before.name, end, after.name, after.gtid_list_at_start)
    at_end = compare_positions(before.name, end, after.name, after.gtid_position_at_end)
    # The file may start before the end (overlap) or before a domain began (dropped);
    # it may end after it (a gap up to its end is its own transactions).
    return [
        *(p for p in at_start if not isinstance(p, (GtidOverlap, DomainDropped))),
        *(p for p in at_end if not isinstance(p, GtidGap)),
    ]


def snapshot_inside(first: BinlogRecord, snapshot: GtidPosition) -> bool:
    """True if the backup's snapshot lies within the first record's file: every domain of
    the file's start state is at or before the snapshot, and the snapshot at or before
    the file's end state. (The archiver also checks it exactly, by replaying the file's
    index up to the snapshot's byte offset.)"""
    return snapshot.covers(first.gtid_list_at_start) and first.gtid_position_at_end.covers(snapshot)


@dataclass(frozen=True)
class ArchiveStatus:
    """``archive-status.json``: the outcome of the stream's last archive pass, for hosts
    other than the archiver's (a restore). The one object that is overwritten: only when
    the outcome or its reason changes, so an idle archiver writes nothing."""

    stream_id: str
    server_id: int
    stalled: bool
    since: datetime  # when this outcome began
    reason: str | None  # why it is stalled
    end_position: GtidPosition  # where the stream's archive ended when this was written

    def same_outcome(self, other: ArchiveStatus | None) -> bool:
        return (
            other is not None
            and (other.stalled, other.reason) == (self.stalled, self.reason)
            and other.stream_id == self.stream_id
        )

    def to_bytes(self) -> bytes:
        return seal(
            {
                "stream_id": self.stream_id,
                "server_id": self.server_id,
                "outcome": "stalled" if self.stalled else "ok",
                "since": self.since.isoformat(),
                "reason": self.reason,
                "end_position": self.end_position.format(),
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, key: str) -> ArchiveStatus:
        doc = unseal(raw, key=key)
        try:
            outcome = str(doc["outcome"])
            if outcome not in ("ok", "stalled"):
                raise ValueError(f"outcome {outcome!r}")
            return cls(
                stream_id=str(doc["stream_id"]),
                server_id=int(doc["server_id"]),
                stalled=outcome == "stalled",
                since=datetime.fromisoformat(str(doc["since"])),
                reason=None if doc["reason"] is None else str(doc["reason"]),
                end_position=GtidPosition.parse(str(doc["end_position"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDocumentError(key, f"missing or invalid field: {exc}") from None


# --- broken backups and streams ----------------------------------------------------------
@dataclass(frozen=True)
class Broken:
    """Why a backup or a stream cannot be used, naming the object to look at.

    A backup is broken when its manifest cannot be read or verified, or when its chain
    (an incremental's parents) holds a broken or missing backup: restoring it would need
    that one. A stream is broken when one of its records or markers cannot be read or
    verified, or when a record is missing from the ``seq`` numbering; the records before
    that point are intact. Nothing broken is ever chosen (for a restore, as a parent, to
    archive into); everything else goes on.
    """

    key: str  # the object that is corrupt or missing
    reason: str  # a sentence naming it


def chain_breaks(
    manifests: Sequence[BackupManifest], broken: Mapping[str, Broken]
) -> dict[str, Broken]:
    """The backups whose chain needs a backup that is broken (``broken``, by id) or not
    there at all, oldest first: an incremental cannot be restored without its parents."""
    present = {m.backup_id for m in manifests}
    found: dict[str, Broken] = {}
    for manifest in manifests:
        for parent in manifest.chain[:-1]:
            cause = broken.get(parent) or found.get(parent)
            if cause is not None:
                found[manifest.backup_id] = Broken(
                    cause.key,
                    f"backup {manifest.backup_id} builds on backup {parent}, which is "
                    f"broken: {cause.reason}",
                )
                break
            if parent not in present:
                found[manifest.backup_id] = Broken(
                    manifest_key(parent),
                    f"backup {manifest.backup_id} builds on backup {parent}, whose "
                    f"manifest {manifest_key(parent)} does not exist",
                )
                break
    return found
