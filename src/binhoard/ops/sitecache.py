"""A local cache of the site's immutable documents, so that reading a site costs
requests for what is new, not for its whole history (docs/format.md, "Local cache").

Manifests, binlog records and stream markers never change once written (format rule
1), so a document read and verified once need not be fetched again. The cache is a
SQLite database in ``state_directory`` (transactions make every write crash-safe, and
two binhoard processes on one host can share it), one row per document, keyed by the
site (its ``describe()``: the location, never credentials) and the object key, holding
the stored bytes and the size and etag the site listed for them.

It is only ever a copy of what the site says:

* a row is used only for a key the site still lists, with the same size (and etag,
  where the backend gives one): listings are always made, only GETs are saved;
* a row's bytes are verified again (the document checksum) every time they are used;
  a row that fails is dropped and the object fetched again;
* only documents that verified are stored, so a corrupt object on the site is reported
  on every read, and a repaired one is read afresh;
* a database that cannot be opened or read (corrupt, another schema) is deleted and
  built again from the site; one that stays unusable is bypassed with a warning.

The same database holds what ``binhoard verify`` proved (table ``verified``,
``ops/verify.py``): losing it only makes the next verify read everything again.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from binhoard.storage.store import ObjectInfo

log = logging.getLogger("binhoard.cache")

SCHEMA_VERSION = 1
FILE_NAME = "site-cache.sqlite"
_BUSY_TIMEOUT_MS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    site TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (site, key)
) WITHOUT ROWID
"""

# What ``binhoard verify`` proved of an object (docs/verify.md): read whole and found to
# match ``expectation`` while the site described it by ``size`` and ``identity``.
_VERIFIED_SCHEMA = """
CREATE TABLE IF NOT EXISTS verified (
    site TEXT NOT NULL,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    identity TEXT NOT NULL,
    expectation TEXT NOT NULL,
    PRIMARY KEY (site, key)
) WITHOUT ROWID
"""


class Verified(NamedTuple):
    """A row of the ``verified`` table: how the site described the object when it was
    verified, and what it was verified against."""

    size: int
    identity: str
    expectation: str


class CachedDocument:
    """A cached row: the bytes, and the listing facts they were stored with."""

    __slots__ = ("body", "etag", "size")

    def __init__(self, size: int, etag: str | None, body: bytes) -> None:
        self.size = size
        self.etag = etag
        self.body = body

    def matches(self, info: ObjectInfo) -> bool:
        """Whether the site's listing still describes these bytes."""
        if info.size != self.size or len(self.body) != self.size:
            return False
        return version_of(info) == self.etag


def version_of(info: ObjectInfo) -> str | None:
    """What changes when an object is written again: its etag where the backend gives
    one (S3, GCS, Azure), else its ``change_id`` (a local directory: mtime, ctime and
    inode, so that a file changed by hand and its mtime set back is read again)."""
    if info.etag is not None:
        return info.etag
    if info.change_id is not None:
        return info.change_id
    return None if info.last_modified is None else info.last_modified.isoformat()


class SiteCache:
    """The documents of one site already read and verified. Changes are buffered and
    written in one transaction by :meth:`commit`. Usable from any thread (one at a
    time: a lock serialises the calls)."""

    def __init__(self, path: Path, site: str) -> None:
        self.path = path
        self.site = site
        self._db: sqlite3.Connection | None = None
        self._pending: dict[str, tuple[int, str | None, bytes] | None] = {}
        self._verified_pending: dict[str, Verified | None] = {}
        self._lock = threading.RLock()
        # Documents parsed (and verified) by this process, by key, with the bytes they
        # came from: a long-running archiver does not re-verify thousands of unchanged
        # rows every pass, and a row whose bytes differ is parsed (verified) again.
        self._parsed: dict[str, tuple[bytes, object]] = {}
        # What readers built from documents that can no longer change (a closed stream
        # with all its records), by the key prefix it came from: an idle archive pass
        # rebuilt 5,000 records' closed streams from their rows every 5 s, ~1% of a core
        # (docs/benchmarks.md). Dropped when a document under the prefix is forgotten.
        self._final: dict[str, object] = {}
        self._open()

    # --- opening -------------------------------------------------------------------
    def _open(self) -> None:
        for attempt in (1, 2):
            try:
                self._db = self._connect()
                return
            except (sqlite3.Error, OSError) as exc:
                self._close()
                if attempt == 2:
                    log.warning(
                        "site cache %s unusable, reading the site without it: %s", self.path, exc
                    )
                    return
                log.warning("site cache %s unreadable (%s): starting a new one", self.path, exc)
                self._delete_files()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.path,
            timeout=_BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,  # calls are serialised by self._lock
        )
        try:
            db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA synchronous = FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
            # A cheap check that the file is a database whose pages can be read.
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check failed")
            db.execute(_SCHEMA)
            db.execute(_VERIFIED_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def _close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None

    def _delete_files(self) -> None:
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                self.path.with_name(self.path.name + suffix).unlink()

    def _failed(self, exc: sqlite3.Error) -> None:
        """A database error in use: drop the database (it is only a copy) and go on
        without it for this process."""
        log.warning("site cache %s failed (%s): discarded", self.path, exc)
        self._close()
        self._pending.clear()
        self._verified_pending.clear()
        self._delete_files()

    def close(self) -> None:
        with self._lock:
            self._close()

    def __enter__(self) -> SiteCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- reading -------------------------------------------------------------------
    def load(self, prefix: str) -> dict[str, CachedDocument]:
        """Every cached document whose key starts with ``prefix``."""
        with self._lock:
            return self._load(prefix)

    def _load(self, prefix: str) -> dict[str, CachedDocument]:
        if self._db is None:
            return {}
        try:
            rows = self._db.execute(
                "SELECT key, size, etag, body FROM documents "
                "WHERE site = ? AND key >= ? AND key < ?",
                (self.site, prefix, prefix + "\U0010ffff"),
            ).fetchall()
        except sqlite3.Error as exc:
            self._failed(exc)
            return {}
        found = {
            str(key): CachedDocument(int(size), etag, bytes(body)) for key, size, etag, body in rows
        }
        for key, pending in self._pending.items():
            if key.startswith(prefix):
                if pending is None:
                    found.pop(key, None)
                else:
                    found[key] = CachedDocument(*pending)
        return found

    def verified(self) -> dict[str, Verified]:
        """Every object of the site ``binhoard verify`` has proved, by key."""
        with self._lock:
            found: dict[str, Verified] = {}
            if self._db is not None:
                try:
                    rows = self._db.execute(
                        "SELECT key, size, identity, expectation FROM verified WHERE site = ?",
                        (self.site,),
                    ).fetchall()
                except sqlite3.Error as exc:
                    self._failed(exc)
                    rows = []
                found = {str(k): Verified(int(n), str(i), str(e)) for k, n, i, e in rows}
            for key, pending in self._verified_pending.items():
                if pending is None:
                    found.pop(key, None)
                else:
                    found[key] = pending
            return found

    def mark_verified(self, key: str, row: Verified | None) -> None:
        """Records (``None``: forgets) that ``key`` was verified, at the next commit."""
        with self._lock:
            self._verified_pending[key] = row

    def parsed(self, key: str, body: bytes) -> object | None:
        """The document this process parsed from exactly ``body``, if any."""
        with self._lock:
            memo = self._parsed.get(key)
        return memo[1] if memo is not None and memo[0] == body else None

    def remember(self, key: str, body: bytes, document: object) -> None:
        with self._lock:
            self._parsed[key] = (body, document)

    def final(self, prefix: str) -> object | None:
        """What :meth:`remember_final` kept for ``prefix`` in this process, if anything."""
        with self._lock:
            return self._final.get(prefix)

    def remember_final(self, prefix: str, value: object) -> None:
        with self._lock:
            self._final[prefix] = value

    # --- changing ------------------------------------------------------------------
    def store(self, info: ObjectInfo, body: bytes) -> None:
        """Remembers a document that verified, as the listing ``info`` described it
        (not if the bytes read are not the object listed: it changed in between)."""
        if len(body) == info.size:
            with self._lock:
                self._pending[info.key] = (info.size, version_of(info), body)

    def forget(self, keys: Iterable[str]) -> None:
        with self._lock:
            for key in keys:
                self._pending[key] = None
                self._parsed.pop(key, None)
                for prefix in [p for p in self._final if key.startswith(p)]:
                    del self._final[prefix]

    def commit(self) -> None:
        """Writes the remembered changes in one transaction (all or nothing)."""
        with self._lock:
            self._commit()

    def _commit(self) -> None:
        if self._db is None or not (self._pending or self._verified_pending):
            self._pending.clear()
            self._verified_pending.clear()
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            for key, pending in self._pending.items():
                if pending is None:
                    self._db.execute(
                        "DELETE FROM documents WHERE site = ? AND key = ?", (self.site, key)
                    )
                else:
                    size, etag, body = pending
                    self._db.execute(
                        "INSERT OR REPLACE INTO documents (site, key, size, etag, body) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (self.site, key, size, etag, body),
                    )
            for key, row in self._verified_pending.items():
                if row is None:
                    self._db.execute(
                        "DELETE FROM verified WHERE site = ? AND key = ?", (self.site, key)
                    )
                else:
                    self._db.execute(
                        "INSERT OR REPLACE INTO verified "
                        "(site, key, size, identity, expectation) VALUES (?, ?, ?, ?, ?)",
                        (self.site, key, *row),
                    )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            self._failed(exc)
            return
        self._pending.clear()
        self._verified_pending.clear()


def open_cache(state_directory: Path, site: str) -> SiteCache:
    """The cache of ``site`` (a store's ``describe()``) in ``state_directory``."""
    return SiteCache(state_directory / FILE_NAME, site)
