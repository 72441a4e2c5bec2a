"""Synthetic backup sites for tests and benchmarks: manifests, binlog records and stream
markers written through the storage port, as the archiver would write them, without a
database server. The GTID state advances by ``transactions`` per file, in domain 0."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from binhoard.crypto.age import Identity
from binhoard.domain.catalog import (
    BinlogRecord,
    StreamMarker,
    binlog_record_key,
    closed_key,
    completed_key,
)
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.history import History
from binhoard.domain.manifest import (
    BackupManifest,
    LsnRange,
    ObjectRef,
    SnapshotPosition,
    manifest_key,
)
from binhoard.storage.store import ObjectStore

EPOCH = datetime(2024, 5, 1, tzinfo=UTC)
SERVER_ID = 101
# A node's history that continues what was written before history ids (the sites here
# write manifests without one) and is not a fork.
HISTORY = History("0123456789abcdef", False, "the tests' node")


def ref(key: str, size: int = 1000) -> ObjectRef:
    return ObjectRef(key, "none", (), size, "0" * 64, size, "0" * 64)


def position(seq_no: int) -> GtidPosition:
    return GtidPosition([Gtid(0, SERVER_ID, seq_no)]) if seq_no else GtidPosition()


def binlog_name(n: int) -> str:
    return f"binlog.{n:06d}"


def put_full_backup(
    store: ObjectStore,
    backup_id: str,
    snapshot: SnapshotPosition,
    *,
    server_id: int = SERVER_ID,
    when: datetime = EPOCH,
) -> BackupManifest:
    """A full backup's manifest with ``snapshot``, written as ``backup create`` would
    (its data objects are not written: archiving and planning never read them)."""
    manifest = BackupManifest(
        backup_id=backup_id,
        backup_type="full",
        parent_backup_id=None,
        chain=(backup_id,),
        server_id=server_id,
        flavour="mariadb",
        server_version="10.11.19-MariaDB",
        tool_version="mariabackup",
        started_at=when,
        completed_at=when,
        snapshot=snapshot,
        lsn=LsnRange(0, 0, 0),
        data=ref(f"backups/{backup_id}/data.xbstream"),
        my_cnf=ref(f"backups/{backup_id}/my.cnf"),
    )
    store.put(manifest_key(backup_id), [manifest.to_bytes()])
    return manifest


@dataclass
class SiteBuilder:
    """Writes backups and their streams into ``store``; ``transactions`` per binlog file."""

    store: ObjectStore
    transactions: int = 10
    server_id: int = SERVER_ID
    files: int = 0  # binlog files the "server" has written so far
    backups: list[BackupManifest] = field(default_factory=list)
    records: dict[str, list[BinlogRecord]] = field(default_factory=dict)

    def backup(self, backup_id: str, *, parent: str | None = None) -> BackupManifest:
        """A backup whose snapshot is at the start of the next binlog file."""
        self.files += 1
        at = EPOCH + timedelta(minutes=self.files)
        chain: tuple[str, ...] = (backup_id,)
        if parent is not None:
            chain = (*next(b for b in self.backups if b.backup_id == parent).chain, backup_id)
        manifest = BackupManifest(
            backup_id=backup_id,
            backup_type="incremental" if parent else "full",
            parent_backup_id=parent,
            chain=chain,
            server_id=self.server_id,
            flavour="mariadb",
            server_version="10.11.19-MariaDB",
            tool_version="mariabackup",
            started_at=at,
            completed_at=at,
            snapshot=SnapshotPosition(
                binlog_name(self.files), 4, position(self._done(self.files)).format()
            ),
            lsn=LsnRange(0, 0, 0),
            data=ref(f"backups/{backup_id}/data.xbstream"),
            my_cnf=ref(f"backups/{backup_id}/my.cnf"),
        )
        self.store.put(manifest_key(backup_id), [manifest.to_bytes()], if_absent=True)
        self.backups.append(manifest)
        self.records[backup_id] = []
        self.files -= 1  # the snapshot's file is the next one written
        return manifest

    def _done(self, file_number: int) -> int:
        """Transactions before file ``file_number``."""
        return (file_number - 1) * self.transactions

    def archive(self, backup_id: str, count: int = 1) -> list[BinlogRecord]:
        """The stream's next ``count`` files (the server writes them now if needed)."""
        records = self.records[backup_id]
        written = []
        for _ in range(count):
            if records:
                number = int(records[-1].name.rsplit(".", 1)[1]) + 1
            else:
                snapshot = next(b for b in self.backups if b.backup_id == backup_id).snapshot
                number = int(snapshot.binlog_file.rsplit(".", 1)[1])
            self.files = max(self.files, number)
            start, end = self._done(number), self._done(number + 1)
            record = BinlogRecord(
                stream_id=backup_id,
                seq=len(records),
                server_id=self.server_id,
                name=binlog_name(number),
                object=ref(f"binlogs/{self.server_id}/{binlog_name(number)}"),
                gtid_list_at_start=position(start),
                gtid_position_at_end=position(end),
                first_gtid=Gtid(0, self.server_id, start + 1),
                last_gtid=Gtid(0, self.server_id, end),
                first_commit_time=number * 300,
                last_commit_time=number * 300 + 299,
                min_commit_time=number * 300,
                max_commit_time=number * 300 + 299,
                transactions=self.transactions,
                start_offset=4,
                archived_at=EPOCH,
            )
            self.store.put(record.key, [record.to_bytes()], if_absent=True)
            records.append(record)
            written.append(record)
        return written

    def mark(self, backup_id: str, *, completed: bool = True, closed_by: str | None = None) -> None:
        records = self.records[backup_id]
        seq = records[-1].seq if records else None
        if completed:
            marker = StreamMarker(backup_id, EPOCH, seq)
            self.store.put(completed_key(backup_id), [marker.to_bytes()], if_absent=True)
        if closed_by is not None:
            marker = StreamMarker(backup_id, EPOCH, seq, successor=closed_by)
            self.store.put(closed_key(backup_id), [marker.to_bytes()], if_absent=True)

    def record_key(self, backup_id: str, seq: int) -> str:
        return binlog_record_key(backup_id, seq)

    def put_objects(self) -> None:
        """Writes the objects the manifests and records name (a few bytes each), for
        tests of what deleting a backup removes."""
        keys = {k for b in self.backups for k in (b.data.key, b.my_cnf.key)}
        keys |= {r.object.key for records in self.records.values() for r in records}
        for key in sorted(keys):
            self.store.put(key, [key.encode()])


def full_incremental_full(store: ObjectStore) -> SiteBuilder:
    """A full backup A (binlog files 1-4) with an incremental B on it (4-6), then a full
    C (6-7); streams A and B are closed by C, which is completed. Neighbouring streams
    share a file (4, 6)."""
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 3)
    build.backup("B", parent="A")
    build.archive("A", 1)
    build.archive("B", 2)
    build.backup("C")
    build.archive("B", 1)
    build.archive("C", 2)
    build.mark("A", closed_by="C")
    build.mark("B", closed_by="C")
    build.mark("C")
    return build


class CountingObserver:
    """A ``StoreObserver`` (for ``MetricsStore``) that counts calls by operation."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def on_call(
        self, operation: str, key: str, seconds: float, nbytes: int, error: BaseException | None, /
    ) -> None:
        self.calls[operation] += 1

    def take(self) -> dict[str, int]:
        """The counts so far, then starts again from zero."""
        counts = dict(self.calls)
        self.calls.clear()
        return counts


def site_config(
    directory: Path,
    *,
    server_id: int = SERVER_ID,
    identity: Identity | None = None,
    private_key: bool = False,
) -> dict[str, Any]:
    """A binhoard configuration (as data) whose upload site is ``directory/site``, for
    commands that only read or write the site (no server is reached, or a fake one laid
    out in ``directory``: ``tests/support/fakeserver.py``). With ``private_key`` the site
    can also be restored from (its objects decrypted)."""
    identity = identity or Identity.generate()
    keys: dict[str, Any] = {"public": str(identity.recipient)}
    if private_key:
        keys["private"] = [identity.secret_text()]
    return {
        "backup_sites": {
            "default": {
                "object_storage": {"storage_type": "local", "directory": str(directory / "site")},
                "encryption_keys": keys,
            }
        },
        "mysql": {
            "config_file_name": str(directory / "my.cnf"),
            "data_directory": str(directory / "data"),
            "binlog_prefix": str(directory / "binlogs" / "binlog"),
        },
        "server_id": server_id,
        "state_directory": str(directory / "state"),
        "temporary_directory": str(directory / "tmp"),
    }
