"""The real ``ObjectStore`` backends: a local directory, and S3 / GCS / Azure through obstore.

Both keep the port's promises (``store.py``) with the primitives each medium offers:

* ``LocalStore`` makes writes atomic with a temp file, ``fsync`` and ``rename``, and
  makes create-if-absent atomic with ``link(2)``, which fails if the name exists.
* ``ObstoreStore`` uploads streams of unknown length as multipart uploads whose parts go
  up concurrently, so memory stays near ``part_size x concurrency`` however large the
  object; create-if-absent is one conditional PUT (``If-None-Match: *`` on S3), which
  the server decides atomically.

``open_store`` builds the right one from a site's ``object_storage`` configuration.
Policy (retry, rate limits, metrics) is not here: it wraps these (``wrappers.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, NoReturn
from urllib.parse import urlsplit, urlunsplit

import obstore.exceptions as obe
from obstore.store import AzureStore, GCSStore, S3Store

from binhoard import __version__
from binhoard.config import AzureStorage, GCSStorage, LocalStorage, S3Storage
from binhoard.domain.errors import (
    ObjectNotFoundError,
    PermanentStorageError,
    PreconditionFailedError,
    StorageError,
    TransientStorageError,
)
from binhoard.localstate import ProcessId, host_name
from binhoard.storage.multipart import MultipartJournal, OwnUploads, S3Uploads
from binhoard.storage.store import DEFAULT_CHUNK, ObjectInfo, ObjectStore, validate_key

if TYPE_CHECKING:
    from obstore import BytesStream, GetOptions
    from obstore.store import AzureConfig, ClientConfig, RetryConfig, S3Config
    from obstore.store import ObjectStore as NativeStore

__all__ = ["LocalStore", "ObstoreStore", "open_store"]

DEFAULT_PART_SIZE = 16 * 1024 * 1024
DEFAULT_CONCURRENCY = 4


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise ValueError(f"invalid range: offset={offset} length={length}")


def _check_prefix(prefix: str) -> None:
    """A listing prefix must start some valid key (``a/``, ``a/b``; not ``/a``, ``../``)."""
    if not prefix:
        return
    try:
        validate_key(prefix + "x")
    except PermanentStorageError:
        raise PermanentStorageError(f"invalid key prefix: {prefix!r}") from None


def _nbytes(chunk: bytes) -> int:
    # Callers may hand over memoryviews of non-byte formats; count bytes, not items.
    return chunk.nbytes if isinstance(chunk, memoryview) else len(chunk)


# --------------------------------------------------------------------------- local


_TEMP_DIR = ".binhoard-tmp"
_STALE_TEMP_SECONDS = 24 * 3600
# errno values that retrying cannot cure; anything else (EIO, ENOSPC, EMFILE...) may pass.
_PERMANENT_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENAMETOOLONG,
        errno.EISDIR,
        errno.ENOTDIR,
        errno.EINVAL,
        errno.ELOOP,
        errno.EEXIST,
    }
)


def _local_error(exc: OSError, operation: str, key: str) -> StorageError:
    detail = f"local storage: {operation} {key}: {exc.strerror or exc}"
    if exc.errno in _PERMANENT_ERRNOS:
        return PermanentStorageError(detail)
    return TransientStorageError(detail)


def _fsync_dir(path: Path) -> None:
    """Makes a directory entry (a created, renamed or removed name) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix() -> str:
    """``put-<pid>-<start>-<host>~``: names the writer of a temp file (``_temp_writer``)."""
    return f"put-{ProcessId.current().tag()}-{host_name()}~"


def _temp_writer(name: str) -> tuple[str, ProcessId] | None:
    """The host and process that wrote a temp file, from its name; None if not named."""
    if not name.startswith("put-"):
        return None
    writer, sep, _random = name[len("put-") :].rpartition("~")
    pid, _, rest = writer.partition("-")
    start, _, host = rest.partition("-")
    process = ProcessId.from_tag(f"{pid}-{start}")
    if not sep or not host or process is None:
        return None
    return host, process


# Keys and stats of the files a local listing found (an alias: ``list`` is a method below).
_Found = list[tuple[str, os.stat_result]]


class _FileChunks:
    """Reads an already opened file in chunks and closes it at the end (or when dropped).

    A class rather than a generator so that the file is closed even if the caller never
    starts iterating: ``get`` opens the file eagerly to report a missing key at once.
    """

    def __init__(self, file: BinaryIO, remaining: int | None, key: str) -> None:
        self._file: BinaryIO | None = file
        self._remaining = remaining
        self._key = key

    def __iter__(self) -> _FileChunks:
        return self

    def __next__(self) -> bytes:
        if self._file is None:
            raise StopIteration
        want = DEFAULT_CHUNK if self._remaining is None else min(DEFAULT_CHUNK, self._remaining)
        try:
            chunk = self._file.read(want) if want else b""
        except OSError as exc:
            self.close()
            raise _local_error(exc, "get", self._key) from None
        if not chunk:
            self.close()
            raise StopIteration
        if self._remaining is not None:
            self._remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __del__(self) -> None:
        self.close()


class LocalStore:
    """Objects as files under one directory; keys are relative paths.

    Writes go to a temp file in ``<directory>/.binhoard-tmp`` (same file system, so the
    final ``rename`` is atomic), which is fsynced before it is renamed into place and the
    directory is fsynced after: after a crash an object is there whole or not at all.
    ``if_absent`` publishes with ``link(2)`` instead of ``rename``, because ``link`` fails
    when the name exists, atomically, where rename would silently replace it.

    The key ``.binhoard-tmp/...`` is reserved. A key cannot be both an object and a
    "directory" of other keys (``a`` and ``a/b``), a limit of file systems that object
    stores do not share; binhoard's key layout never needs it.
    """

    def __init__(self, directory: Path | str) -> None:
        self.root = Path(directory).absolute()
        self._tmp = self.root / _TEMP_DIR
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _local_error(exc, "create", str(self._tmp)) from None
        self._remove_stale_temp_files()

    def describe(self) -> str:
        return f"local:{self.root}"

    # -- helpers

    def _path(self, key: str) -> Path:
        validate_key(key)
        if key.split("/", 1)[0] == _TEMP_DIR:
            raise PermanentStorageError(f"invalid object key: {key!r} (reserved for temp files)")
        return self.root / key

    def _remove_stale_temp_files(self) -> None:
        """Temp files of writers that were killed.

        A temp file is named after its writer (``_temp_prefix``): this host's own are
        removed as soon as their writer is gone; those of other hosts (a site on a shared
        file system), whose writers cannot be checked from here, and unnamed ones once
        untouched for ``_STALE_TEMP_SECONDS``.
        """
        cutoff = time.time() - _STALE_TEMP_SECONDS
        host = host_name()
        with contextlib.suppress(OSError), os.scandir(self._tmp) as entries:
            for entry in entries:
                writer = _temp_writer(entry.name)
                with contextlib.suppress(OSError):
                    if writer is not None and writer[0] == host:
                        if not writer[1].alive():
                            Path(entry.path).unlink()
                    elif entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        Path(entry.path).unlink()

    def _make_parents(self, directory: Path, key: str) -> None:
        """Creates missing directories down to ``directory``, each made durable in its parent."""
        missing: list[Path] = []
        current = directory
        while current != self.root and not current.is_dir():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                if not path.is_dir():
                    raise PermanentStorageError(
                        f"local storage: put {key}: {path.relative_to(self.root)} is an object,"
                        " so it cannot also be a key prefix"
                    ) from None
                continue  # a concurrent writer made it
            except OSError as exc:
                raise _local_error(exc, "put", key) from None
            _fsync_dir(path.parent)

    def _info(self, key: str, st: os.stat_result) -> ObjectInfo:
        # mtime can be set back by hand (touch -d), ctime cannot, and a file replaced
        # by another gets another inode: together they change with every write.
        return ObjectInfo(
            key=key,
            size=st.st_size,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
            change_id=f"{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}",
        )

    # -- the port

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        final = self._path(key)
        try:
            fd, temp_name = tempfile.mkstemp(dir=self._tmp, prefix=_temp_prefix())
        except OSError as exc:
            raise _local_error(exc, "put", key) from None
        temp = Path(temp_name)
        try:
            with os.fdopen(fd, "wb") as file:
                # Errors raised by ``data`` itself are the caller's and pass unchanged.
                for chunk in data:
                    try:
                        file.write(chunk)
                    except OSError as exc:
                        raise _local_error(exc, "put", key) from None
                try:
                    file.flush()
                    os.fsync(file.fileno())
                except OSError as exc:
                    raise _local_error(exc, "put", key) from None
            self._publish(temp, final, key, if_absent=if_absent)
            # Before the stat: unlinking the temp name of a linked file changes its
            # ctime, which would make the change_id returned here stale at once.
            temp.unlink(missing_ok=True)
            try:
                return self._info(key, final.stat())
            except OSError as exc:
                raise _local_error(exc, "put", key) from None
        finally:
            temp.unlink(missing_ok=True)

    def _publish(self, temp: Path, final: Path, key: str, *, if_absent: bool) -> None:
        # A concurrent delete may prune the parent directory between mkdir and link: retry.
        for attempt in range(5):
            self._make_parents(final.parent, key)
            try:
                if if_absent:
                    os.link(temp, final)
                else:
                    temp.replace(final)
            except FileExistsError:
                if final.is_dir():
                    raise PermanentStorageError(
                        f"local storage: put {key}: the key is already a prefix of other keys"
                    ) from None
                raise PreconditionFailedError(key) from None
            except FileNotFoundError as exc:
                if attempt == 4:
                    raise _local_error(exc, "put", key) from None
                continue
            except IsADirectoryError:
                raise PermanentStorageError(
                    f"local storage: put {key}: the key is already a prefix of other keys"
                ) from None
            except OSError as exc:
                raise _local_error(exc, "put", key) from None
            try:
                _fsync_dir(final.parent)
            except OSError as exc:
                raise _local_error(exc, "put", key) from None
            return

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        path = self._path(key)
        _check_range(offset, length)
        try:
            file = path.open("rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFoundError(key) from None
        except OSError as exc:
            raise _local_error(exc, "get", key) from None
        try:
            if offset:
                file.seek(offset)
        except OSError as exc:
            file.close()
            raise _local_error(exc, "get", key) from None
        return _FileChunks(file, length, key)

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFoundError(key) from None
        except OSError as exc:
            raise _local_error(exc, "stat", key) from None
        if not path.is_file():
            raise ObjectNotFoundError(key)
        return self._info(key, st)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Walks only the directory the prefix names, then sorts: file systems do not sort.
        (``start_after`` saves the ``stat`` of every file it skips, not the walk.)"""
        _check_prefix(prefix)
        directory = prefix.rpartition("/")[0]
        if directory.split("/", 1)[0] == _TEMP_DIR:
            return
        found: _Found = []
        start = self.root / directory if directory else self.root
        self._walk(start, f"{directory}/" if directory else "", prefix, found, start_after)
        found.sort(key=lambda item: item[0])
        for key, st in found:
            yield self._info(key, st)

    def _walk(
        self,
        directory: Path,
        relative: str,
        prefix: str,
        found: _Found,
        start_after: str | None = None,
    ) -> None:
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise _local_error(exc, "list", prefix) from None
        for entry in entries:
            key = relative + entry.name
            if not relative and entry.name == _TEMP_DIR:
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    sub = key + "/"
                    if sub.startswith(prefix) or prefix.startswith(sub):
                        self._walk(Path(entry.path), sub, prefix, found, start_after)
                elif (
                    key.startswith(prefix)
                    and (start_after is None or key > start_after)
                    and entry.is_file()
                ):
                    found.append((key, entry.stat()))
            except FileNotFoundError:
                continue  # deleted while we looked
            except OSError as exc:
                raise _local_error(exc, "list", prefix) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        except OSError as exc:
            raise _local_error(exc, "delete", key) from None
        with contextlib.suppress(OSError):
            _fsync_dir(path.parent)
        # Prune directories left empty, so that e.g. ``a`` can later be an object again.
        # rmdir refuses non-empty directories, so this never removes a concurrent write.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent


# --------------------------------------------------------------------------- obstore


_STATUS_RE = re.compile(r"status code: (\d{3})([^:\n]*)|\bstatus: (\d{3})\b")
_CODE_RE = re.compile(r"<Code>([^<]{1,100})</Code>")
_MESSAGE_RE = re.compile(r"<Message>([^<]{1,300})</Message>|\"message\":\s*\"([^\"]{1,300})\"")
_OS_MESSAGE_RE = re.compile(r'message: "([^"]{1,200})"')
_URL_QUERY_RE = re.compile(r"(https?://[^\s?\"'<>]*)\?[^\s\"'<>]*")
_URL_USERINFO_RE = re.compile(r"(https?://)[^/\s@\"'<>]*@")
_RETRIES_RE = re.compile(r"\bretries: (\d+)")
_MISSING_CONTAINER = ("NoSuchBucket", "ContainerNotFound", "bucket does not exist")
# Errors obstore raises: its own hierarchy, plus builtins for "not found" and bad arguments.
_NATIVE_ERRORS = (obe.BaseError, OSError, ValueError)


def _status(text: str) -> int | None:
    match = _STATUS_RE.search(text)
    if match is None:
        return None
    return int(match.group(1) or match.group(3))


class _Scrubber:
    """Turns obstore's long, URL-laden error text into a short message without secrets.

    Secrets can reach an error text through a URL (an Azure SAS token is a query string;
    an endpoint may carry ``user:password@``); query strings and user info are dropped
    and every configured secret is masked, whatever route it took.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def clean(self, text: str) -> str:
        text = _URL_USERINFO_RE.sub(r"\1", text)
        text = _URL_QUERY_RE.sub(r"\1?...", text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def summary(self, exc: BaseException) -> str:
        text = str(exc)
        head = text.split("\n\nDebug source:", 1)[0]
        first = head.splitlines()[0] if head else type(exc).__name__
        parts: list[str] = []
        match = _STATUS_RE.search(text)
        if match is not None and match.group(1):
            parts.append(f"HTTP {match.group(1)}{match.group(2).rstrip()}")
        elif match is not None:
            parts.append(f"HTTP {match.group(3)}")
        code = _CODE_RE.search(head)
        if code is not None:
            parts.append(code.group(1))
        message = _MESSAGE_RE.search(head)
        if message is not None:
            parts.append(message.group(1) or message.group(2))
        if not parts:
            # No HTTP answer: say what failed ("error sending request") and the OS reason.
            parts.append(first.rsplit(" - ", 1)[-1])
            reason = _OS_MESSAGE_RE.search(text)
            if reason is not None:
                parts.append(f"({reason.group(1)})")
        summary = " ".join(parts)
        if len(summary) > 400:
            summary = summary[:400] + "..."
        return self.clean(summary)


class _Source:
    """The caller's data on its way into obstore: counts bytes, remembers the caller's error.

    obstore lets an exception from the iterator propagate; keeping it lets ``put`` tell
    "the producer failed" (raised unchanged) from "storage failed" (mapped).
    """

    def __init__(self, head: Iterable[bytes], rest: Iterator[bytes]) -> None:
        self._head = deque(head)
        self._rest = rest
        self.size = 0
        self.error: BaseException | None = None

    def __iter__(self) -> _Source:
        return self

    def __next__(self) -> bytes:
        if self._head:
            chunk = self._head.popleft()
        else:
            try:
                chunk = next(self._rest)
            except StopIteration:
                raise
            except BaseException as exc:
                self.error = exc
                raise
        self.size += _nbytes(chunk)
        return chunk


class _MappedStream:
    """A get body whose failures mid-stream become our typed errors, like the first byte's."""

    def __init__(self, stream: BytesStream, store: ObstoreStore, key: str) -> None:
        self._stream = stream
        self._store = store
        self._key = key

    def __iter__(self) -> _MappedStream:
        return self

    def __next__(self) -> bytes:
        try:
            return next(self._stream)
        except StopIteration:
            raise
        except _NATIVE_ERRORS as exc:
            self._store.raise_mapped(exc, "get", self._key)


def _server_start_after(native_prefix: str | None, start_after: str) -> str | None:
    """The ``start-after`` to send for a listing that must start after ``start_after``.

    obstore's ``offset`` is S3's ``start-after``, so the server skips whole pages. But
    servers that keep a directory tree (SeaweedFS) sort a directory ``b`` (keys
    ``b/...``) before ``b c`` and skip it after a marker ``b c``, where S3's byte order
    puts ``b/`` after it. So the marker sent is cut before the first character sorting
    below ``/`` and one character shorter (it then precedes every such directory in both
    orders); the caller's filter removes what it lets through twice.
    """
    directory = f"{native_prefix}/" if native_prefix else ""
    relative = start_after[len(directory) :] if start_after.startswith(directory) else ""
    cut = next((i for i, char in enumerate(relative) if char < "/"), None)
    if cut is None:
        return start_after if relative else None
    return directory + relative[: cut - 1] if cut > 1 else None


class ObstoreStore:
    """S3 (and S3-compatible), GCS or Azure Blob storage through obstore's Rust clients.

    ``put`` reads the stream up to one part: if it ends there, the object goes up in one
    PUT (cheapest, and the only form a conditional write can take); otherwise it becomes
    a multipart upload of ``part_size`` parts, ``concurrency`` of them in flight, so a
    stream of any length needs about ``part_size x (concurrency + 1)`` bytes of memory.
    obstore retries failed part uploads (5xx, resets, even a reset after the part was
    sent: parts are idempotent) itself, which is what makes a long one-shot stream
    survivable: the layer above could not replay it.

    ``put(if_absent=True)`` is one PUT with ``If-None-Match: *`` (S3; the equivalents on
    GCS and Azure), decided atomically by the server, so its body is held in memory and
    limited to ``conditional_put_limit`` bytes: it is meant for small records. A lost
    answer (connection dropped after sending) is a ``TransientStorageError``, never a
    guess: obstore does not retry it, ``RetryingStore`` does and compares. If obstore's
    own retry (after a 5xx) met the write of its first attempt, the stored bytes decide.

    ``list`` collects the whole listing and sorts it before yielding: S3-compatible
    servers do not all sort as S3 does (SeaweedFS lists ``a/b/c`` before ``a/b c``).
    That costs memory proportional to the number of keys under the prefix.
    """

    def __init__(
        self,
        native: NativeStore,
        *,
        description: str,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        conditional_put_limit: int | None = None,
        secrets: Sequence[str] = (),
        own_uploads: OwnUploads | None = None,
        multipart_native: NativeStore | None = None,
    ) -> None:
        if part_size < 1 or concurrency < 1:
            raise ValueError("part_size and concurrency must be positive")
        self.native = native
        # Multipart uploads cannot be replayed by the layer above: their parts get the
        # client's own long retries (``open_store``), everything else short ones.
        self.multipart_native = multipart_native or native
        self.part_size = part_size
        self.concurrency = concurrency
        self.conditional_put_limit = (
            conditional_put_limit if conditional_put_limit is not None else part_size * concurrency
        )
        self._description = description
        self._scrubber = _Scrubber(secrets)
        # S3 only: multipart uploads recorded in local state, so that those of a killed
        # process are aborted by the next one (``multipart.py``).
        self._own_uploads = own_uploads

    def describe(self) -> str:
        return self._description

    # -- errors

    def raise_mapped(self, exc: BaseException, operation: str, key: str) -> NoReturn:
        """Raises the typed error for a native obstore failure; never with secrets or URLs."""
        text = str(exc)
        summary = self._scrubber.summary(exc)
        where = f"{self._description}: {operation} {key}: {summary}"
        if isinstance(exc, obe.AlreadyExistsError | obe.PreconditionError):
            raise PreconditionFailedError(key) from None
        if isinstance(exc, FileNotFoundError | obe.NotFoundError):
            if any(marker in text for marker in _MISSING_CONTAINER):
                raise PermanentStorageError(
                    f"{where} (the bucket or container does not exist)"
                ) from None
            raise ObjectNotFoundError(key) from None
        if isinstance(
            exc,
            obe.PermissionDeniedError
            | obe.UnauthenticatedError
            | obe.InvalidPathError
            | obe.NotSupportedError
            | obe.UnknownConfigurationKeyError
            | ValueError,
        ):
            raise PermanentStorageError(where) from None
        status = _status(text)
        if status is None or status in (408, 409, 429) or status >= 500:
            # No status: the request never got an answer (refused, reset, timed out).
            raise TransientStorageError(where) from None
        raise PermanentStorageError(where) from None

    # -- the port

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        validate_key(key)
        if self._own_uploads is not None:
            self._own_uploads.clean_once()
        rest = iter(data)
        limit = self.conditional_put_limit if if_absent else self.part_size
        head: list[bytes] = []
        size = 0
        for chunk in rest:  # errors of the caller's iterator propagate unchanged
            head.append(chunk)
            size += _nbytes(chunk)
            if size > limit:
                break
        else:
            body = head[0] if len(head) == 1 else b"".join(head)
            try:
                result = self.native.put(
                    key, body, mode="create" if if_absent else "overwrite", use_multipart=False
                )
            except _NATIVE_ERRORS as exc:
                if if_absent and self._own_lost_answer(exc, key, body):
                    return self.stat(key)
                self.raise_mapped(exc, "put", key)
            return ObjectInfo(key=key, size=size, etag=result["e_tag"])
        if if_absent:
            raise PermanentStorageError(
                f"{self._description}: put {key}: a conditional write holds its body in memory"
                f" and is limited to {limit} bytes"
            )
        return self._put_multipart(key, _Source(head, rest))

    def _put_multipart(self, key: str, source: _Source) -> ObjectInfo:
        if self._own_uploads is not None:
            self._own_uploads.started(key)
        try:
            result = self.multipart_native.put(
                key,
                source,
                use_multipart=True,
                chunk_size=self.part_size,
                max_concurrency=self.concurrency,
            )
        except BaseException as exc:
            if self._own_uploads is not None:
                self._own_uploads.failed(key)
            if source.error is not None and exc is source.error:
                raise
            if isinstance(exc, _NATIVE_ERRORS):
                self.raise_mapped(exc, "put", key)
            raise
        if self._own_uploads is not None:
            self._own_uploads.finished(key)
        return ObjectInfo(key=key, size=source.size, etag=result["e_tag"])

    def _own_lost_answer(self, exc: BaseException, key: str, body: bytes) -> bool:
        """True if a conditional PUT failed only because obstore's retry met our own write.

        obstore does not retry a conditional PUT after a transport error (it is not
        idempotent), but does after a 5xx answer; if the first attempt was stored anyway
        (a gateway that answered 502 after its backend stored it), the retry meets 412.
        Only then (obstore says how many retries it made) is the stored object compared
        with ours: identical bytes mean the write was ours. A first attempt that meets
        412 is never second-guessed, so two writers of the same bytes see one winner.
        """
        if not isinstance(exc, obe.AlreadyExistsError | obe.PreconditionError):
            return False
        retries = _RETRIES_RE.search(str(exc))
        if retries is None or int(retries.group(1)) == 0:
            return False
        try:
            stored = self.native.get(key).bytes()
        except _NATIVE_ERRORS as check:
            self.raise_mapped(check, "put", key)
        return bytes(stored) == bytes(body)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        validate_key(key)
        _check_range(offset, length)
        if length == 0:
            self.stat(key)  # a missing key must still raise
            return iter(())
        options: GetOptions = {}
        if length is not None:
            options["range"] = (offset, offset + length)
        elif offset:
            options["range"] = {"offset": offset}
        try:
            result = self.native.get(key, options=options)
        except _NATIVE_ERRORS as exc:
            if _status(str(exc)) == 416:
                # The range starts at or after the end: an empty read, as from a file.
                info = self.stat(key)
                if offset >= info.size:
                    return iter(())
            self.raise_mapped(exc, "get", key)
        return _MappedStream(result.stream(min_chunk_size=DEFAULT_CHUNK), self, key)

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        try:
            meta = self.native.head(key)
        except _NATIVE_ERRORS as exc:
            self.raise_mapped(exc, "stat", key)
        return ObjectInfo(
            key=key, size=meta["size"], last_modified=meta["last_modified"], etag=meta["e_tag"]
        )

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        _check_prefix(prefix)
        # obstore's prefix matches whole path segments ("a/b" finds "a/b/c", never "a/bc"),
        # ours is a plain string prefix: list the enclosing "directory" and filter. Starting
        # after prefix[:-1] skips what sorts before the prefix, and cannot skip a match.
        if not prefix or prefix.endswith("/"):
            native_prefix, offset = prefix.rstrip("/") or None, None
        else:
            native_prefix = prefix.rpartition("/")[0] or None
            offset = prefix[:-1] or None
        if start_after is not None:
            server_side = _server_start_after(native_prefix, start_after)
            if server_side is not None and (offset is None or server_side > offset):
                offset = server_side
        items: list[ObjectInfo] = []
        try:
            for batch in self.native.list(native_prefix, offset=offset, chunk_size=1000):
                for meta in batch:
                    path = meta["path"]
                    if path.startswith(prefix) and (start_after is None or path > start_after):
                        items.append(
                            ObjectInfo(
                                key=path,
                                size=meta["size"],
                                last_modified=meta["last_modified"],
                                etag=meta["e_tag"],
                            )
                        )
        except _NATIVE_ERRORS as exc:
            self.raise_mapped(exc, "list", prefix)
        items.sort(key=lambda info: info.key)
        yield from items

    def delete(self, key: str) -> None:
        validate_key(key)
        try:
            self.native.delete(key)
        except FileNotFoundError:
            return  # GCS and Azure answer 404 where S3 answers 204
        except _NATIVE_ERRORS as exc:
            self.raise_mapped(exc, "delete", key)


# --------------------------------------------------------------------------- factory


# One overall deadline per request would cut off a long download (one GET streams the
# whole object): make it generous, and detect stalls with the read timeout instead (30 s
# without a byte is a stall, not a slow network). An hour still bounds a part upload the
# server stopped reading; a download that takes longer fails as transient and
# ``RetryingStore`` resumes it from the byte it reached.
_CLIENT_OPTIONS: ClientConfig = {
    "connect_timeout": "10s",
    "read_timeout": "30s",
    "timeout": "1h",
    "user_agent": f"binhoard/{__version__}",
}


def _normalize_prefix(prefix: str) -> str | None:
    prefix = prefix.strip("/")
    if not prefix:
        return None
    try:
        validate_key(prefix)
    except PermanentStorageError:
        raise PermanentStorageError(f"invalid storage prefix: {prefix!r}") from None
    return prefix


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _location(scheme: str, container: str, prefix: str | None, endpoint: str | None) -> str:
    where = f"{scheme}://{container}/{prefix + '/' if prefix else ''}"
    return f"{where} at {_without_userinfo(endpoint)}" if endpoint else where


def _virtual_hosted_endpoint(endpoint: str, bucket: str) -> str:
    """obstore wants the bucket in a virtual-hosted endpoint; users give the service's."""
    parts = urlsplit(endpoint)
    if not parts.hostname or parts.hostname.startswith(f"{bucket}."):
        return endpoint
    userinfo, at, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{bucket}.{hostport}"))


def _open_s3(config: S3Storage, retry: RetryConfig | None) -> tuple[NativeStore, str, list[str]]:
    prefix = _normalize_prefix(config.prefix)
    options: S3Config = {
        "region": config.region,
        "virtual_hosted_style_request": config.virtual_hosted_style_request,
    }
    secrets: list[str] = []
    if config.endpoint_url:
        endpoint = config.endpoint_url
        if config.virtual_hosted_style_request:
            endpoint = _virtual_hosted_endpoint(endpoint, config.bucket)
        options["endpoint"] = endpoint
    if config.aws_access_key_id:
        options["access_key_id"] = config.aws_access_key_id
    if config.aws_secret_access_key is not None:
        options["secret_access_key"] = config.aws_secret_access_key.get_secret_value()
        secrets.append(options["secret_access_key"])
    if config.aws_session_token is not None:
        options["session_token"] = config.aws_session_token.get_secret_value()
        secrets.append(options["session_token"])
    native = S3Store(
        config.bucket,
        prefix=prefix,
        config=options,
        client_options={**_CLIENT_OPTIONS, "allow_http": config.allow_http},
        retry_config=retry,
    )
    return native, _location("s3", config.bucket, prefix, config.endpoint_url), secrets


def _open_gcs(config: GCSStorage, retry: RetryConfig | None) -> tuple[NativeStore, str, list[str]]:
    prefix = _normalize_prefix(config.prefix)
    # Without a file, obstore falls back to application default credentials (metadata
    # server, GOOGLE_APPLICATION_CREDENTIALS), fetched lazily on the first request.
    native = (
        GCSStore(
            config.bucket,
            prefix=prefix,
            service_account=str(config.credentials_file),
            client_options=_CLIENT_OPTIONS,
            retry_config=retry,
        )
        if config.credentials_file is not None
        else GCSStore(
            config.bucket, prefix=prefix, client_options=_CLIENT_OPTIONS, retry_config=retry
        )
    )
    return native, _location("gs", config.bucket, prefix, None), []


def _open_azure(
    config: AzureStorage, retry: RetryConfig | None
) -> tuple[NativeStore, str, list[str]]:
    prefix = _normalize_prefix(config.prefix)
    options: AzureConfig = {"account_name": config.account_name}
    secrets: list[str] = []
    if config.account_key is not None:
        options["account_key"] = config.account_key.get_secret_value()
        secrets.append(options["account_key"])
    if config.sas_token is not None:
        # Portals show the token with its leading "?"; obstore wants the query alone.
        options["sas_key"] = config.sas_token.get_secret_value().lstrip("?")
        secrets.append(options["sas_key"])
        # Each signed field could be echoed alone (the signature above all).
        secrets.extend(part.partition("=")[2] for part in options["sas_key"].split("&"))
    if config.endpoint_url:
        options["endpoint"] = config.endpoint_url
    allow_http = bool(config.endpoint_url and config.endpoint_url.startswith("http://"))
    native = AzureStore(
        config.container,
        prefix=prefix,
        config=options,
        client_options={**_CLIENT_OPTIONS, "allow_http": allow_http},
        retry_config=retry,
    )
    where = _location("azure", f"{config.account_name}/{config.container}", prefix, None)
    if config.endpoint_url:
        where += f" at {_without_userinfo(config.endpoint_url)}"
    return native, where, secrets


def _open_native(
    config: S3Storage | GCSStorage | AzureStorage, retry: RetryConfig | None
) -> tuple[NativeStore, str, list[str]]:
    if isinstance(config, S3Storage):
        return _open_s3(config, retry)
    if isinstance(config, GCSStorage):
        return _open_gcs(config, retry)
    return _open_azure(config, retry)


def open_store(
    config: LocalStorage | S3Storage | GCSStorage | AzureStorage,
    *,
    part_size: int,
    concurrency: int,
    retry: RetryConfig | None = None,
    state_directory: Path | None = None,
) -> ObjectStore:
    """The backend a site's ``object_storage`` section describes.

    ``part_size`` and ``concurrency`` come from the site (``BackupSite.part_size``,
    ``upload_concurrency``); ``retry`` tunes obstore's per-request retries (its default:
    up to 10 retries within 3 minutes). Nothing is contacted here: a wrong credential
    shows up as ``PermanentStorageError`` on the first operation.

    With ``state_directory``, an S3 store records its multipart uploads there before
    they start and, before its first write, aborts those that killed processes of this
    host left incomplete (``multipart.py``). GCS and Azure offer no such listing through
    obstore: docs/format.md says what cleans up there.
    """
    if isinstance(config, LocalStorage):
        return LocalStore(config.directory)
    try:
        # ``retry`` (tests) applies to both; by default multipart uploads keep the
        # client's long retries and everything else gets ``_SHORT_RETRY``.
        native, where, secrets = _open_native(config, retry or _SHORT_RETRY)
        multipart_native, _, _ = _open_native(config, retry)
    except _NATIVE_ERRORS as exc:
        scrubber = _Scrubber(_config_secrets(config))
        raise PermanentStorageError(
            f"{config.storage_type} storage configuration: {scrubber.summary(exc)}"
        ) from None
    own_uploads = None
    if isinstance(config, S3Storage) and state_directory is not None:
        journal = MultipartJournal(state_directory / "multipart-uploads")
        own_uploads = OwnUploads(journal, where, S3Uploads(config).abort)
    return ObstoreStore(
        native,
        description=where,
        part_size=part_size,
        concurrency=concurrency,
        secrets=secrets,
        own_uploads=own_uploads,
        multipart_native=multipart_native,
    )


# Requests ``RetryingStore`` can repeat (everything but a multipart upload) get short
# retries inside the client: its own 3-minute default, times the 5 attempts above it,
# kept an operator waiting ~20 minutes in silence on a stalled endpoint. Now each
# attempt ends within about 30 s and every retry above is logged.
_SHORT_RETRY: RetryConfig = {"max_retries": 3, "retry_timeout": timedelta(seconds=30)}


def _config_secrets(config: S3Storage | GCSStorage | AzureStorage) -> list[str]:
    values = [
        getattr(config, name, None)
        for name in ("aws_secret_access_key", "aws_session_token", "account_key", "sas_token")
    ]
    return [v.get_secret_value() for v in values if v is not None]
