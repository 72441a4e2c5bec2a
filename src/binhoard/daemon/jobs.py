"""The seam between the controller and the work it starts.

The controller decides; work that takes time (a backup, an archive pass, a restore, a
listing of the sites) runs in worker threads. A job is a function of a :class:`Work`
(its cancel signal and its progress channel) returning a result; the executor runs it
on the thread of its *slot* (one thread per slot: a slot's objects, such as an SQLite
cache, stay on one thread) and posts :class:`JobProgress` and :class:`JobDone` into the
controller's inbox. What the jobs do is behind :class:`Doers` (``workers.py`` is the
real one, the only module that calls ``ops``; tests give a fake with behaviour).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from binhoard.config import Settings
from binhoard.daemon.port import StreamWindow
from binhoard.daemon.state import (
    BrokenRequest,
    PreservationRequest,
    RestoreRecord,
    RestoreTestResult,
)
from binhoard.domain.errors import BinhoardError, CancelledError
from binhoard.domain.history import History
from binhoard.domain.manifest import BackupManifest, BackupType

log = logging.getLogger("binhoard.daemon")

# Slots: what may run at the same time. Archiving goes on while a backup runs.
SITE, ARCHIVE, BACKUP, RESTORE = "site", "archive", "backup", "restore"
PURGE = "purge"  # binlog purge: its PURGE may take a while, nothing else waits for it
# Restore tests (ops/restore_test.py): a scratch server, long; backups and archiving go on.
RESTORE_TEST = "restore_test"
# At most this many progress reports a second per job reach the controller.
PROGRESS_INTERVAL = 0.5


# --- what jobs return ------------------------------------------------------------------
@dataclass(frozen=True)
class StreamInfo:
    """One stream (a backup and its binlogs) of one site, as the listing found it."""

    site: str
    stream_id: str
    manifest: BackupManifest | None  # None: the manifest cannot be read (broken)
    completed_at: datetime | None  # the backup's completion
    closed_at: datetime | None  # a newer stream took over
    caught_up_at: datetime | None  # the archive first caught up with the server
    broken_reason: str | None
    broken_at: datetime | None  # when it was marked broken (else: found broken)
    preserve_until: datetime | None
    recovery_site: bool
    window: StreamWindow | None
    basebackup_info: Mapping[str, object]

    @property
    def server_id(self) -> int | None:
        return None if self.manifest is None else self.manifest.server_id

    @property
    def history_id(self) -> str | None:
        return None if self.manifest is None else self.manifest.history_id


@dataclass(frozen=True)
class SiteView:
    """Every configured site's streams, oldest first per site. ``failures`` names the
    sites that could not be listed (their streams are not in ``streams``)."""

    listed_at: datetime
    streams: tuple[StreamInfo, ...]
    failures: Mapping[str, str]
    # This node's history when the sites were listed (domain/history.py): which of its
    # server_id's streams and backups are its own. None: not known (all of them are).
    history: History | None = None


@dataclass(frozen=True)
class BackupDone:
    backup_id: str
    backup_type: BackupType
    started_at: datetime
    completed_at: datetime


@dataclass(frozen=True)
class OpenStream:
    stream_id: str
    last_file: str | None  # the newest binlog archived into it


@dataclass(frozen=True)
class ArchiveDone:
    """One archive pass (with the rotation asked for, if any)."""

    closed_file: str | None  # the file the requested rotation closed
    open_streams: tuple[OpenStream, ...]  # this server's open streams after the pass
    newest_commit_time: int | None
    stall_reasons: tuple[str, ...]
    wrote: bool = False  # records or markers were written: the listing is out of date
    deposed: tuple[str, ...] = ()  # this server's streams another node took over, as sentences


@dataclass(frozen=True)
class RetentionDone:
    deleted: tuple[str, ...]  # backup ids, with their streams


@dataclass(frozen=True)
class PurgeDone:
    """One binlog purge pass (``ops/purge.py``)."""

    purged: tuple[str, ...]
    next_kept: str | None
    blocked_by: str | None
    stale_nodes: tuple[str, ...]
    more: bool  # the per-pass cap left files that may go: the next pass comes soon


@dataclass(frozen=True)
class RestoreStatus:
    """A restore's progress (MyHoard's ``GET /status/restore`` counters)."""

    phase: str
    basebackup_compressed_bytes_downloaded: int = 0
    basebackup_compressed_bytes_total: int = 0
    binlogs_being_restored: int = 0
    binlogs_pending: int = 0
    binlogs_restored: int = 0


@dataclass(frozen=True)
class RestoreDone:
    final_gtid: str


@dataclass(frozen=True)
class PromoteStatus:
    """A promotion's progress (``GET /status`` ``promotion``): ``phase`` is
    ``stopping_replication``, ``reading_archive``, then while the node applies what the
    old primary archived and it lacks (``ops/catchup.py``) ``applying_binlogs`` and
    ``finishing_apply``, and ``reading_archive`` again before the record is written."""

    phase: str
    binlogs_total: int = 0
    binlogs_applied: int = 0
    transactions_applied: int = 0
    target_gtid: str = ""


@dataclass(frozen=True)
class PromoteDone:
    """How a promotion went: the node took over ``stream_id`` (or owned it already),
    or cannot continue it (``new_stream_needed`` says why: a full backup at once)."""

    stream_id: str | None
    new_stream_needed: str | None = None


@dataclass(frozen=True)
class RestoreTestDone:
    """How a restore test went (``ops/restore_test.py``), as the state keeps it."""

    result: RestoreTestResult


@dataclass(frozen=True)
class RepointDone:
    """This replica now replicates from ``primary`` (``HOST:PORT``), from ``position``."""

    primary: str
    position: str


@dataclass(frozen=True)
class ReconcileDone:
    """Replication as found at the daemon's start (``ops/seed.py`` ``reconcile``):
    ``primary``, what the node replicates from; ``problem``, what differs from the
    state, else None."""

    primary: str | None
    problem: str | None


@dataclass(frozen=True)
class BackupStatus:
    backup_id: str
    phase: str
    bytes_read: int
    estimated_total: int


class Doers(Protocol):
    """What jobs do. Each method runs on a worker thread; ``work.cancel`` asks it to stop
    soon, leaving only resumable state (``CancelledError``)."""

    def list_sites(self, work: Work) -> SiteView: ...

    def take_backup(self, backup_type: BackupType, work: Work) -> BackupDone: ...

    def archive(self, rotate: bool, work: Work) -> ArchiveDone: ...

    def restore(self, request: RestoreRecord, work: Work) -> RestoreDone: ...

    def promote(self, restore: RestoreRecord | None, force: bool, work: Work) -> PromoteDone:
        """Takes over the stream the node was restored from (``restore``), if any;
        raises ``ConflictError`` when it must not (another node won the race, or it
        has not applied the whole archive and ``force`` is not given)."""
        ...

    def repoint(self, primary: str, work: Work) -> RepointDone:
        """Points this replica at ``primary`` (a new primary after a failover); raises
        ``ConflictError`` when the node has transactions that primary lacks."""
        ...

    def reconcile_replication(
        self, expected: str | None, interrupted: str | None, work: Work
    ) -> ReconcileDone:
        """At the start: finishes (or rolls back) the re-point at ``interrupted`` a crash
        cut short, else compares replication with ``expected``."""
        ...

    def write_mark(self, request: PreservationRequest | BrokenRequest, work: Work) -> None:
        """Records a preservation or a broken mark on the request's site."""
        ...

    def retention(self, work: Work) -> RetentionDone:
        """Deletes what the retention settings no longer keep in the upload site."""
        ...

    def purge(
        self,
        observing: bool,
        replication_state: Mapping[str, Mapping[str, str]],
        reported_at: Mapping[str, float],
        work: Work,
    ) -> PurgeDone:
        """One binlog purge pass; ``reported_at``: each node's last report, Unix seconds."""
        ...

    def restore_test(self, site: str, stream_id: str | None, work: Work) -> RestoreTestDone:
        """Tests ``stream_id``'s backup (else the newest) of ``site`` in a scratch server;
        ``NotFoundError`` if there is none."""
        ...

    def remove_restore_test_leftovers(self, work: Work) -> None:
        """Removes the scratch server a killed restore test left, if any."""
        ...

    def configure(self, settings: Settings) -> None:
        """Settings reloaded (SIGHUP): jobs started from now on use them."""
        ...


# --- running them ----------------------------------------------------------------------
class Work:
    """What a job gets: the cancel signal, and a channel for its progress."""

    def __init__(self, cancel: threading.Event, report: Callable[[object], None]) -> None:
        self.cancel = cancel
        self._report = report
        self._last = 0.0

    def report(self, progress: object, *, force: bool = False) -> None:
        """Posts ``progress``; a report sooner than ``PROGRESS_INTERVAL`` after the last
        one is dropped unless ``force`` (a change of phase must not be lost)."""
        now = time.monotonic()
        if force or now - self._last >= PROGRESS_INTERVAL:
            self._last = now
            self._report(progress)

    def check(self) -> None:
        if self.cancel.is_set():
            raise CancelledError()


Job = Callable[[Work], object]


@dataclass(frozen=True)
class JobProgress:
    slot: str
    progress: object


@dataclass(frozen=True)
class JobDone:
    slot: str
    result: object = None
    error: BinhoardError | None = None


class Executor(Protocol):
    def start(self, slot: str, job: Job) -> None: ...

    def stop(self, timeout: float) -> bool:
        """Cancels every job and waits up to ``timeout`` s; whether all ended."""
        ...


class Inbox:
    """The controller's queue: commands, and the workers' reports. ``wait`` is how the
    controller's loop idles: it returns when something arrives or the time is up."""

    def __init__(self) -> None:
        self._items: deque[object] = deque()
        self._cond = threading.Condition()

    def put(self, item: object) -> None:
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._items), timeout=max(0.0, timeout))

    def drain(self) -> list[object]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            return items


def run_job(slot: str, job: Job, work: Work) -> JobDone:
    """Runs ``job``; any failure becomes a ``JobDone`` with the error. An unexpected
    exception (a bug, a local OS error) is logged with its traceback and reported as a
    retryable ``BinhoardError``: the daemon must keep going, loudly."""
    try:
        return JobDone(slot, job(work))
    except BinhoardError as exc:
        return JobDone(slot, error=exc)
    except Exception as exc:  # reported, logged, retried: the daemon keeps going
        log.exception("unexpected error in the %s worker", slot)
        error = BinhoardError(f"unexpected error in the {slot} worker: {exc!r}")
        error.retryable = True
        return JobDone(slot, error=error)


class ThreadExecutor:
    """One long-lived thread per slot, each running its jobs in order."""

    def __init__(self, post: Callable[[object], None]) -> None:
        self._post = post
        self._cancel = threading.Event()
        self._queues: dict[str, queue.SimpleQueue[Job | None]] = {}
        self._threads: list[threading.Thread] = []

    def start(self, slot: str, job: Job) -> None:
        if slot not in self._queues:
            jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
            thread = threading.Thread(
                target=self._run, args=(slot, jobs), name=f"binhoard-{slot}", daemon=True
            )
            self._queues[slot] = jobs
            self._threads.append(thread)
            thread.start()
        self._queues[slot].put(job)

    def _run(self, slot: str, jobs: queue.SimpleQueue[Job | None]) -> None:
        while (job := jobs.get()) is not None:
            work = Work(self._cancel, lambda p: self._post(JobProgress(slot, p)))
            self._post(run_job(slot, job, work))

    def stop(self, timeout: float) -> bool:
        self._cancel.set()
        for jobs in self._queues.values():
            jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)
