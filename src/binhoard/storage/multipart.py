"""S3 multipart uploads a killed process left incomplete: recorded before they start,
aborted by the next process that writes to the same site.

An incomplete multipart upload is invisible to listings of objects but its parts are
stored (and billed) until someone aborts it. obstore aborts an upload that fails inside
the process, but a process killed mid-upload leaves it behind, and obstore offers no way
to list or abort uploads: botocore does both, here and nowhere else.

Before a multipart upload starts, its key is recorded in this process's journal,
``<state_directory>/multipart-uploads/<pid>-<start>.json``, and removed when the upload
ends. A journal whose process is gone (``ProcessId.alive``) lists the keys it may have
left uploads for; the first write of a later process to that site aborts every
incomplete upload of those keys. That is exact because a key binhoard uploads in parts
is only ever uploaded by one host (data keys are unique per backup or per upload); a key
that a live process of this host is uploading at that moment is left for a later run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from binhoard.config import S3Storage
from binhoard.domain.errors import PermanentStorageError, StorageError, TransientStorageError
from binhoard.localstate import ProcessId, StateFile

if TYPE_CHECKING:
    import botocore.exceptions

log = logging.getLogger("binhoard.storage")

_LOCK = ".lock"
# Error codes after which asking again cannot help.
_PERMANENT_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}
)


class MultipartJournal:
    """Which keys the processes of this host have multipart uploads in flight for.

    One file per process, each entry ``{"store": ..., "key": ...}``; every change is made
    under an exclusive ``flock`` of the directory's lock file, so that cleaning never
    reads a journal half written and never aborts a key that a live process registered.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The journal's lock; a failure of the local disk becomes a ``StorageError``:
        an upload that cannot be recorded does not start."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.directory / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _state_error(self.directory, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for milliseconds, or one cleaning
            yield
        except OSError as exc:
            raise _state_error(self.directory, exc) from None
        finally:
            os.close(fd)

    def _file(self, process: ProcessId) -> StateFile:
        return StateFile(self.directory / f"{process.tag()}.json")

    def begin(self, store: str, key: str) -> None:
        """Records ``key`` as in flight; call before the upload is created."""
        with self._locked():
            journal = self._file(ProcessId.current())
            entries = _entries(journal)
            entries.append({"store": store, "key": key})
            journal.write({"uploads": entries})

    def end(self, store: str, key: str) -> None:
        """The upload of ``key`` completed or was aborted: forget it."""
        with self._locked():
            journal = self._file(ProcessId.current())
            entries = _entries(journal)
            with contextlib.suppress(ValueError):
                entries.remove({"store": store, "key": key})
            _save(journal, entries)

    def clean(self, store: str, abort: Callable[[str], int]) -> list[str]:
        """Calls ``abort(key)`` for each key of ``store`` that a dead process recorded;
        returns those keys. A key whose abort fails stays recorded for a later run."""
        cleaned: list[str] = []
        with self._locked():
            journals: list[tuple[ProcessId, StateFile]] = []
            for path in sorted(self.directory.glob("*.json")):
                process = ProcessId.from_tag(path.stem)
                if process is not None:
                    journals.append((process, StateFile(path)))
            live = {
                entry["key"]
                for process, journal in journals
                if process.alive()
                for entry in _entries(journal)
                if entry["store"] == store
            }
            for leftover in self.directory.glob(".*.json.tmp"):  # a write cut short
                process = ProcessId.from_tag(leftover.name[1 : -len(".json.tmp")])
                if process is not None and not process.alive():
                    leftover.unlink(missing_ok=True)
            for process, journal in journals:
                if process.alive():
                    continue
                kept = []
                for entry in _entries(journal):
                    if entry["store"] != store or entry["key"] in live:
                        kept.append(entry)
                        continue
                    try:
                        aborted = abort(entry["key"])
                    except StorageError as exc:
                        log.warning(
                            "could not abort the multipart uploads a killed process left for"
                            " %s (trying again on the next run): %s",
                            entry["key"],
                            exc,
                        )
                        kept.append(entry)
                        continue
                    if aborted:
                        log.info(
                            "aborted %d incomplete multipart upload(s) of %s left by a killed"
                            " process",
                            aborted,
                            entry["key"],
                        )
                    cleaned.append(entry["key"])
                _save(journal, kept)
        return cleaned


def _state_error(directory: Path, exc: OSError) -> StorageError:
    detail = f"multipart upload journal in {directory}: {exc.strerror or exc}"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermanentStorageError(detail)
    return TransientStorageError(detail)


def _entries(journal: StateFile) -> list[dict[str, str]]:
    data = journal.read() or {}
    uploads = data.get("uploads")
    if not isinstance(uploads, list):
        return []
    return [
        {"store": str(e["store"]), "key": str(e["key"])}
        for e in uploads
        if isinstance(e, dict) and "store" in e and "key" in e
    ]


def _save(journal: StateFile, entries: list[dict[str, str]]) -> None:
    if entries:
        journal.write({"uploads": entries})
    else:
        journal.clear()


class S3Uploads:
    """Lists and aborts the incomplete multipart uploads of a key, through botocore.

    Reaches the bucket with the site's own settings (endpoint, region, addressing style,
    keys); without keys botocore looks for credentials where obstore does (environment,
    profile, instance metadata).
    """

    def __init__(self, config: S3Storage) -> None:
        self._config = config
        self._prefix = config.prefix.strip("/")
        self._client: Any = None
        self._lock = threading.Lock()

    def _s3(self) -> Any:
        # Imported here, not with the module: botocore costs ~20 MiB of memory, which
        # every upload would carry against its bound, and it is needed only to clean up
        # after a killed process (rare).
        import botocore.session  # noqa: PLC0415
        from botocore.config import Config  # noqa: PLC0415

        with self._lock:
            if self._client is None:
                c = self._config
                secret = c.aws_secret_access_key
                token = c.aws_session_token
                self._client = botocore.session.get_session().create_client(
                    "s3",
                    region_name=c.region,
                    endpoint_url=c.endpoint_url or None,
                    aws_access_key_id=c.aws_access_key_id or None,
                    aws_secret_access_key=secret.get_secret_value() if secret else None,
                    aws_session_token=token.get_secret_value() if token else None,
                    config=Config(
                        s3={
                            "addressing_style": "virtual"
                            if c.virtual_hosted_style_request
                            else "path"
                        },
                        connect_timeout=10,
                        read_timeout=60,
                        retries={"max_attempts": 5, "mode": "standard"},
                        user_agent_extra="binhoard",
                    ),
                )
            return self._client

    def abort(self, key: str) -> int:
        """Aborts every incomplete multipart upload of ``key``; returns how many."""
        import botocore.exceptions  # noqa: PLC0415 - lazily, see _s3

        full = f"{self._prefix}/{key}" if self._prefix else key
        bucket = self._config.bucket
        try:
            s3 = self._s3()
            uploads = [
                upload["UploadId"]
                for page in s3.get_paginator("list_multipart_uploads").paginate(
                    Bucket=bucket, Prefix=full
                )
                for upload in page.get("Uploads", [])
                if upload.get("Key") == full
            ]
            for upload_id in uploads:
                try:
                    s3.abort_multipart_upload(Bucket=bucket, Key=full, UploadId=upload_id)
                except botocore.exceptions.ClientError as exc:
                    if _code(exc) != "NoSuchUpload":  # completed or aborted meanwhile
                        raise
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise _mapped(exc, bucket, key) from None
        return len(uploads)


def _code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _mapped(exc: Exception, bucket: str, key: str) -> StorageError:
    # botocore's messages name the operation and the error code, never the credentials.
    import botocore.exceptions  # noqa: PLC0415 - lazily, see S3Uploads._s3

    detail = f"s3://{bucket}: abort multipart uploads of {key}: {str(exc)[:300]}"
    if isinstance(exc, botocore.exceptions.ClientError) and _code(exc) in _PERMANENT_CODES:
        return PermanentStorageError(detail)
    return TransientStorageError(detail)


class OwnUploads:
    """What ``ObstoreStore`` calls around its multipart uploads: one site's view of the
    journal, and the cleaning of dead processes' uploads, once, before its first write."""

    def __init__(self, journal: MultipartJournal, store: str, abort: Callable[[str], int]):
        self._journal = journal
        self._store = store
        self._abort = abort
        self._cleaned = False
        self._lock = threading.Lock()

    def clean_once(self) -> None:
        with self._lock:
            if self._cleaned:
                return
            self._cleaned = True
            self._journal.clean(self._store, self._abort)

    def started(self, key: str) -> None:
        self._journal.begin(self._store, key)

    def finished(self, key: str) -> None:
        self._journal.end(self._store, key)

    def failed(self, key: str) -> None:
        """obstore aborts a failed upload itself; this makes sure (the abort may have
        failed too) and keeps the record for a later run if it cannot."""
        try:
            self._abort(key)
        except StorageError as exc:
            log.warning("could not abort the multipart upload of %s: %s", key, exc)
            return
        self._journal.end(self._store, key)
