"""Self-checksummed JSON documents (docs/format.md, "JSON documents").

Every document binhoard stores in plaintext carries ``format_version`` and a ``checksum``:
the sha256 of its canonical JSON without the ``checksum`` key. A document that fails the
check is corrupt and is reported by key, never used.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from binhoard.domain.errors import BinhoardError

FORMAT_VERSION = 1


class CorruptDocumentError(BinhoardError):
    """A stored document is not valid: unreadable, wrong checksum or unknown format."""

    exit_code = 8

    def __init__(self, key: str, detail: str) -> None:
        self.key = key
        super().__init__(f"document {key} is corrupt: {detail}")


def canonical_json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _checksum(body: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _stored_form(document: dict[str, Any]) -> bytes:
    # The one encoding a sealed document is stored in (docs/format.md, "JSON documents").
    return json.dumps(document, sort_keys=True, indent=1, ensure_ascii=False).encode() + b"\n"


def seal(body: dict[str, Any]) -> bytes:
    """Adds ``format_version`` and ``checksum``; returns the bytes to store."""
    document = {**body, "format_version": FORMAT_VERSION}
    document.pop("checksum", None)
    document["checksum"] = _checksum(document)
    return _stored_form(document)


def unseal(raw: bytes, *, key: str) -> dict[str, Any]:
    """Parses and verifies a sealed document; raises ``CorruptDocumentError`` naming ``key``."""
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptDocumentError(key, f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise CorruptDocumentError(key, "not a JSON object")
    claimed = document.pop("checksum", None)
    if claimed != _checksum(document):
        raise CorruptDocumentError(key, "checksum mismatch")
    # The checksum covers the content, not the layout: a changed space, newline or
    # number spelling keeps it. Every document binhoard ever wrote is in the one stored
    # form, so other bytes are a changed object, and any changed byte is found.
    if raw != _stored_form({**document, "checksum": claimed}):
        raise CorruptDocumentError(key, "its bytes are not the document's stored form")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        raise CorruptDocumentError(
            key, f"format_version {version!r}; this binhoard reads {FORMAT_VERSION}"
        )
    return document
