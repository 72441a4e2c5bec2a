"""The object storage port: the handful of operations binhoard needs of any backend.

Backends (``backends.py``) implement it; cross-cutting behaviour (retry, bandwidth
limit, metrics, fault injection) wraps it (``wrappers.py``); one conformance suite
(``tests/integration/test_storage_conformance.py``) runs against every backend.

Keys are ``/``-separated relative paths without a leading slash. Objects are
immutable once written: binhoard never overwrites a key with different content.

Errors raised: ``ObjectNotFoundError`` (missing key), ``PreconditionFailedError``
(create-if-absent found the key), ``TransientStorageError`` (retrying may help),
``PermanentStorageError`` (it will not).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from binhoard.domain.errors import (
    ObjectNotFoundError,
    PermanentStorageError,
    PreconditionFailedError,
)

DEFAULT_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """An object as a listing, ``stat`` or ``put`` describes it.

    ``change_id``: for a backend without an etag, what changes whenever the object is
    written or replaced, even by hand: a local file's mtime, ctime (which nobody can set
    back) and inode; None where the etag and ``last_modified`` are what the store gives.
    """

    key: str
    size: int
    last_modified: datetime | None = None
    etag: str | None = None
    change_id: str | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """Six operations; everything else is built from them."""

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        """Stores the concatenation of ``data`` (of any length, not known in advance).

        The object becomes visible whole or not at all. With ``if_absent`` the write
        fails with ``PreconditionFailedError`` if the key exists (atomically, on every
        backend): the primitive that ownership and promotion records rely on.
        """
        ...

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Streams the object's bytes from ``offset`` (``length`` bytes, or to the end).

        Raises ``ObjectNotFoundError`` before yielding anything if the key is missing.
        """
        ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key; with
        ``start_after``, only keys sorting after it (S3's ``start-after``), so that a
        reader that knows the beginning of a listing pays only for the rest.

        Backends page through large listings underneath; callers see one iterator.
        """
        ...

    def delete(self, key: str) -> None:
        """Removes the object; deleting a missing key is not an error."""
        ...

    def describe(self) -> str:
        """Where the store is, for messages (never with credentials)."""
        ...


def read_all(store: ObjectStore, key: str) -> bytes:
    return b"".join(store.get(key))


def validate_key(key: str) -> str:
    """Rejects keys that would escape a prefix or mean different things on different backends."""
    if (
        not key
        or key.startswith("/")
        or key.endswith("/")
        or "//" in key
        or "\\" in key
        or "\0" in key
        or any(part in (".", "..") for part in key.split("/"))
    ):
        raise PermanentStorageError(f"invalid object key: {key!r}")
    return key


class MemoryStore:
    """An in-process backend with the same semantics as the real ones, for unit tests."""

    def __init__(self) -> None:
        self._objects: dict[str, tuple[bytes, datetime, int]] = {}
        self._lock = threading.Lock()
        self._writes = 0  # each write's number is the object's change_id

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        validate_key(key)
        body = b"".join(bytes(chunk) for chunk in data)
        now = datetime.now(UTC)
        with self._lock:
            if if_absent and key in self._objects:
                raise PreconditionFailedError(key)
            self._writes += 1
            write = self._writes
            self._objects[key] = (body, now, write)
        return ObjectInfo(key, len(body), now, change_id=str(write))

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        validate_key(key)
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ObjectNotFoundError(key)
        body = entry[0]
        end = len(body) if length is None else min(len(body), offset + length)
        return _chunks(body, offset, end)

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        with self._lock:
            entry = self._objects.get(key)
        if entry is None:
            raise ObjectNotFoundError(key)
        return ObjectInfo(key, len(entry[0]), entry[1], change_id=str(entry[2]))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        with self._lock:
            items = sorted(
                (k, v)
                for k, v in self._objects.items()
                if k.startswith(prefix) and (start_after is None or k > start_after)
            )
        for key, (body, modified, write) in items:
            yield ObjectInfo(key, len(body), modified, change_id=str(write))

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._lock:
            self._objects.pop(key, None)

    def describe(self) -> str:
        return "memory"

    # For tests that corrupt stored objects on purpose.
    def replace_raw(self, key: str, body: bytes) -> None:
        with self._lock:
            self._writes += 1
            self._objects[key] = (body, datetime.now(UTC), self._writes)


def _chunks(body: bytes, start: int, end: int) -> Iterator[bytes]:
    for pos in range(start, end, DEFAULT_CHUNK):
        yield body[pos : min(end, pos + DEFAULT_CHUNK)]
