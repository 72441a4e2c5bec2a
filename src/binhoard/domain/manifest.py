"""The backup manifest: the only truth about a backup, written last (docs/format.md)."""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from binhoard.domain.documents import CorruptDocumentError, seal, unseal
from binhoard.domain.history import check_history_id

BackupType = Literal["full", "incremental"]


def new_backup_id(now: datetime, token: str | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-<8 hex>``: sorts by start time, unique without coordination."""
    suffix = token if token is not None else secrets.token_hex(4)
    return f"{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{suffix}"


def backup_id_time(backup_id: str) -> datetime | None:
    """The start time (UTC, whole seconds) a backup id begins with; ``None`` for an id
    of another form."""
    try:
        return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def backup_prefix(backup_id: str) -> str:
    return f"backups/{backup_id}/"


def manifest_key(backup_id: str) -> str:
    return f"backups/{backup_id}/manifest.json"


@dataclass(frozen=True)
class ObjectRef:
    """A stored object and what a reader must verify about it."""

    key: str
    compression: str
    recipients: tuple[str, ...]
    stored_size: int
    stored_sha256: str
    plain_size: int
    plain_sha256: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectRef:
        return cls(
            key=str(data["key"]),
            compression=str(data["compression"]),
            recipients=tuple(str(r) for r in data["recipients"]),
            stored_size=int(data["stored_size"]),
            stored_sha256=str(data["stored_sha256"]),
            plain_size=int(data["plain_size"]),
            plain_sha256=str(data["plain_sha256"]),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recipients"] = list(self.recipients)
        return data


@dataclass(frozen=True)
class SnapshotPosition:
    """Where the consistent snapshot of a backup sits in the binlog stream."""

    binlog_file: str
    binlog_pos: int
    gtid_position: str  # @@gtid_current_pos at the snapshot, all domains ("" if none)


@dataclass(frozen=True)
class LsnRange:
    from_lsn: int
    to_lsn: int
    last_lsn: int


@dataclass(frozen=True)
class BackupManifest:
    backup_id: str
    backup_type: BackupType
    parent_backup_id: str | None
    chain: tuple[str, ...]
    server_id: int
    flavour: str
    server_version: str
    tool_version: str
    started_at: datetime
    completed_at: datetime
    snapshot: SnapshotPosition
    lsn: LsnRange
    data: ObjectRef
    my_cnf: ObjectRef
    extra: dict[str, Any] = field(default_factory=dict)
    # The history of the server it was taken of (domain/history.py); None in manifests
    # written before history ids existed.
    history_id: str | None = None

    @property
    def duration_seconds(self) -> float:
        return (self.completed_at - self.started_at).total_seconds()

    def to_bytes(self) -> bytes:
        # Written only when known: a manifest without one reads back exactly as it was.
        history = {} if self.history_id is None else {"history_id": self.history_id}
        return seal(
            {
                **history,
                "backup_id": self.backup_id,
                "backup_type": self.backup_type,
                "parent_backup_id": self.parent_backup_id,
                "chain": list(self.chain),
                "server_id": self.server_id,
                "flavour": self.flavour,
                "server_version": self.server_version,
                "tool_version": self.tool_version,
                "started_at": self.started_at.isoformat(),
                "completed_at": self.completed_at.isoformat(),
                "snapshot": asdict(self.snapshot),
                "lsn": asdict(self.lsn),
                "objects": {"data": self.data.to_dict(), "my_cnf": self.my_cnf.to_dict()},
                "extra": self.extra,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, key: str) -> BackupManifest:
        doc = unseal(raw, key=key)
        try:
            manifest = cls(
                backup_id=str(doc["backup_id"]),
                backup_type=_backup_type(doc["backup_type"]),
                parent_backup_id=doc["parent_backup_id"],
                chain=tuple(str(b) for b in doc["chain"]),
                server_id=int(doc["server_id"]),
                flavour=str(doc["flavour"]),
                server_version=str(doc["server_version"]),
                tool_version=str(doc["tool_version"]),
                started_at=datetime.fromisoformat(doc["started_at"]),
                completed_at=datetime.fromisoformat(doc["completed_at"]),
                snapshot=SnapshotPosition(
                    binlog_file=str(doc["snapshot"]["binlog_file"]),
                    binlog_pos=int(doc["snapshot"]["binlog_pos"]),
                    gtid_position=str(doc["snapshot"]["gtid_position"]),
                ),
                lsn=LsnRange(**{k: int(v) for k, v in doc["lsn"].items()}),
                data=ObjectRef.from_dict(doc["objects"]["data"]),
                my_cnf=ObjectRef.from_dict(doc["objects"]["my_cnf"]),
                extra=dict(doc.get("extra", {})),
                history_id=check_history_id(doc.get("history_id")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDocumentError(key, f"missing or invalid field: {exc}") from None
        if manifest_key(manifest.backup_id) != key:
            raise CorruptDocumentError(key, f"names backup {manifest.backup_id}")
        return manifest


def _backup_type(value: object) -> BackupType:
    if value == "full":
        return "full"
    if value == "incremental":
        return "incremental"
    raise ValueError(f"backup_type {value!r}")
