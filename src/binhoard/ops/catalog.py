"""Reading a site's streams: binlog records and completed/closed markers (docs/format.md)."""

from __future__ import annotations

from dataclasses import dataclass

from binhoard.domain.binlog import describe_problem
from binhoard.domain.catalog import (
    BinlogRecord,
    StreamMarker,
    binlog_records_prefix,
    chain_problems,
    closed_key,
    completed_key,
    seq_of_record_key,
    snapshot_inside,
)
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import ObjectNotFoundError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.manifest import BackupManifest
from binhoard.ops.site import list_backups
from binhoard.storage.store import ObjectStore, read_all


def read_records(store: ObjectStore, stream_id: str) -> list[BinlogRecord]:
    """A stream's binlog records in ``seq`` order.

    Records are written create-if-absent in ``seq`` order, so a hole in the numbering
    means a record was deleted: that is corruption, reported by the key that is missing.
    """
    records: list[BinlogRecord] = []
    for info in store.list(binlog_records_prefix(stream_id)):
        try:
            seq = seq_of_record_key(info.key)
        except ValueError:
            continue
        if seq != len(records):
            missing = records[-1].key if records else "(none)"
            raise CorruptDocumentError(
                info.key,
                f"binlog record seq {len(records)} of stream {stream_id} is missing "
                f"(last present before it: {missing})",
            )
        records.append(BinlogRecord.from_bytes(read_all(store, info.key), key=info.key))
    return records


def read_marker(store: ObjectStore, key: str) -> StreamMarker | None:
    try:
        return StreamMarker.from_bytes(read_all(store, key), key=key)
    except ObjectNotFoundError:
        return None


@dataclass(frozen=True)
class StreamState:
    """A backup and the binlogs that follow it, as the site holds them."""

    backup: BackupManifest
    records: tuple[BinlogRecord, ...]
    completed: StreamMarker | None
    closed: StreamMarker | None

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
        found = [describe_problem(p) for p in chain_problems(self.records)]
        if self.records and not snapshot_inside(self.records[0], self.snapshot_gtid):
            found.insert(
                0,
                f"the first archived file {self.records[0].name} does not contain the "
                f"snapshot position {self.snapshot_gtid or '(empty)'}",
            )
        return found


def read_stream(store: ObjectStore, backup: BackupManifest) -> StreamState:
    sid = backup.backup_id
    return StreamState(
        backup=backup,
        records=tuple(read_records(store, sid)),
        completed=read_marker(store, completed_key(sid)),
        closed=read_marker(store, closed_key(sid)),
    )


def read_streams(store: ObjectStore) -> list[StreamState]:
    """Every stream of the site, oldest first."""
    return [read_stream(store, backup) for backup in list_backups(store)]
