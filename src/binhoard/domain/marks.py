"""An operator's marks on a backup: kept until a time (``preserve``), or broken
(``broken``), as stored objects (docs/format.md, "Marks").

Manifests are immutable and checksummed, so a mark is a document of its own, written
create-if-absent under the backup's prefix, ``backups/<id>/<kind>/<seq>.json``; each
change is the next ``seq`` and the newest ``seq`` of a kind is what holds. Under
``backups/`` they come with the listing every reader makes anyway: knowing a backup's
marks costs no request, and reading the newest one a GET only the first time (the
local cache keeps immutable documents).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from binhoard.domain.catalog import SEQ_DIGITS
from binhoard.domain.documents import CorruptDocumentError, seal, unseal
from binhoard.domain.manifest import backup_prefix

MarkKind = Literal["preserve", "broken"]
MARK_KINDS: tuple[MarkKind, ...] = ("preserve", "broken")


def mark_prefix(backup_id: str, kind: MarkKind) -> str:
    return f"{backup_prefix(backup_id)}{kind}/"


def mark_key(backup_id: str, kind: MarkKind, seq: int) -> str:
    return f"{mark_prefix(backup_id, kind)}{seq:0{SEQ_DIGITS}d}.json"


def parse_mark_key(key: str) -> tuple[str, MarkKind, int] | None:
    """``(backup_id, kind, seq)`` of a mark key; ``None`` for any other key."""
    parts = key.split("/")
    if len(parts) != 4 or parts[0] != "backups":
        return None
    _, backup_id, kind, name = parts
    digits = name.removesuffix(".json")
    if kind not in MARK_KINDS or len(digits) != SEQ_DIGITS or not digits.isdigit():
        return None
    return backup_id, "preserve" if kind == "preserve" else "broken", int(digits)


@dataclass(frozen=True)
class BackupMark:
    """One mark. ``preserve``: keep the backup until ``preserve_until`` (``None`` clears
    an earlier one). ``broken``: the operator says the backup and its stream cannot be
    used (``broken``, with their ``reason``), or takes that back (``broken`` false)."""

    backup_id: str
    kind: MarkKind
    seq: int
    at: datetime  # when it was written
    preserve_until: datetime | None = None
    broken: bool = False
    reason: str | None = None

    @property
    def key(self) -> str:
        return mark_key(self.backup_id, self.kind, self.seq)

    def to_bytes(self) -> bytes:
        body: dict[str, Any] = {
            "backup_id": self.backup_id,
            "kind": self.kind,
            "seq": self.seq,
            "at": self.at.isoformat(),
        }
        if self.kind == "preserve":
            until = self.preserve_until
            body["preserve_until"] = None if until is None else until.isoformat()
        else:
            body["broken"] = self.broken
            body["reason"] = self.reason
        return seal(body)

    @classmethod
    def from_bytes(cls, raw: bytes, *, key: str) -> BackupMark:
        doc = unseal(raw, key=key)
        try:
            kind = doc["kind"]
            if kind not in MARK_KINDS:
                raise ValueError(f"kind {kind!r}")
            until = doc.get("preserve_until")
            broken = doc.get("broken", False)
            if not isinstance(broken, bool):
                raise ValueError("broken is not true or false")
            reason = doc.get("reason")
            mark = cls(
                backup_id=str(doc["backup_id"]),
                kind=kind,
                seq=int(doc["seq"]),
                at=_aware(str(doc["at"])),
                preserve_until=None if until is None else _aware(str(until)),
                broken=broken,
                reason=None if reason is None else str(reason),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDocumentError(key, f"missing or invalid field: {exc}") from None
        if mark.key != key:
            raise CorruptDocumentError(
                key, f"names {mark.kind} mark {mark.seq} of {mark.backup_id}"
            )
        return mark


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text} has no time zone")
    return moment
