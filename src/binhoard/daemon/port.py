"""The seam between the daemon's HTTP side and its controller.

The HTTP side only ever does two things with the controller: it reads the latest
immutable ``Snapshot`` the controller published, and it submits a ``Command`` and
waits (with a deadline) on the returned ``Ticket``. It never runs SQL, storage calls
or subprocesses and never takes a lock the controller's workers hold; the controller
takes commands off its queue at its next step, decides, and resolves the ticket.

Field names of the views follow MyHoard's HTTP API, so that its users' automation
reads them unchanged; what MyHoard does not have is marked as a binhoard extension.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from binhoard.domain.errors import BinhoardError

log = logging.getLogger("binhoard.daemon")

Mode = Literal["idle", "active", "observe", "restore", "promote"]
MODES: tuple[Mode, ...] = ("idle", "active", "observe", "restore", "promote")

# MyHoard's restore phase names, which ``RestoreView.phase`` uses so that its users'
# automation reads them unchanged (docs/http-api.md says what each means).
RESTORE_PHASES: tuple[str, ...] = (
    "getting_backup_info",
    "initiating_binlog_downloads",
    "restoring_basebackup",
    "preparing_backup",
    "rebuilding_tables",
    "refreshing_binlogs",
    "applying_binlogs",
    "waiting_for_apply_to_finish",
    "finalizing",
    "replicating",  # binhoard's: a restore with replicate_from, catching up
    "completed",
    "failed",
    "failed_basebackup",
)


# --- what the controller publishes ---------------------------------------------------


@dataclass(frozen=True)
class StreamWindow:
    """binhoard extension: the span a stream can restore to exactly, from its backup's
    snapshot to its newest archived transaction."""

    first_time: datetime
    first_gtid: str
    last_time: datetime
    last_gtid: str


@dataclass(frozen=True)
class RestoreTestView:
    """binhoard extension: the stream's last restore test (``ops/restore_test.py``)."""

    result: str  # passed, failed, refused
    reason: str
    started_at: datetime
    finished_at: datetime
    rto_seconds: float | None  # start to the restored server at ``gtid``
    gtid: str | None
    tables_checked: int


@dataclass(frozen=True)
class BackupView:
    """One stream (a backup and the binlogs that follow it), as ``GET /backup`` lists it."""

    stream_id: str
    site: str
    # MyHoard's ``basebackup_info``: what the backup holds (start/end times, GTID,
    # sizes, incremental parent). A plain JSON-able mapping.
    basebackup_info: Mapping[str, object]
    completed_at: datetime | None
    closed_at: datetime | None
    broken_at: datetime | None
    preserve_until: datetime | None
    recovery_site: bool
    resumable: bool
    window: StreamWindow | None = None  # extension
    restore_test: RestoreTestView | None = None  # extension
    restore_test_pending: bool = False  # extension: one is queued or running


@dataclass(frozen=True)
class RestoreView:
    """``GET /status/restore``: MyHoard's fields and phase names, plus extensions."""

    phase: str
    basebackup_compressed_bytes_downloaded: int
    basebackup_compressed_bytes_total: int
    binlogs_being_restored: int
    binlogs_pending: int
    binlogs_restored: int
    # MyHoard's (incremental restores walk a chain of backups, full one first).
    basebackup_prepare_progress: int | None = None  # percent, while preparing_backup
    current_backup_name: str = ""
    current_backup_incremental: bool = False
    restore_chain_index: int = 1  # 1-based
    restore_chain_total: int = 1
    # Extensions.
    stream_id: str = ""
    site: str = ""
    target: str = ""  # human-readable target ("latest", a time, a GTID, a position)
    error: str | None = None


@dataclass(frozen=True)
class PurgeView:
    """binhoard extension: binlog purge as its last pass left it."""

    checked_at: datetime  # the last pass
    last_purge_at: datetime | None  # the last pass that removed files
    purged_files: int  # by that pass
    next_kept: str | None  # the oldest local binlog kept
    blocked_by: str | None  # why it is kept
    stale_nodes: tuple[str, ...]  # reports older than max_replication_state_age


@dataclass(frozen=True)
class PromotionView:
    """binhoard extension: a promotion under way (mode ``promote``), its phase and, while
    it applies what the old primary archived and the node lacks, how far it got."""

    phase: str
    binlogs_total: int
    binlogs_applied: int
    transactions_applied: int
    target_gtid: str  # the archive's end it catches up to ("" before it is read)


@dataclass(frozen=True)
class StatusView:
    """``GET /status``: ``mode`` as MyHoard; the rest are binhoard extensions."""

    mode: Mode
    backups_paused_until: datetime | None = None
    last_backup_at: datetime | None = None
    newest_archived_commit_at: datetime | None = None
    archive_stalled_reason: str | None = None
    deposed: tuple[str, ...] = ()  # another node took this server's streams over
    last_error: str | None = None
    config_reload_error: str | None = None  # why the last SIGHUP applied nothing
    replication_state: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    binlog_purge: PurgeView | None = None
    promotion: PromotionView | None = None
    replicating_from: str | None = None  # HOST:PORT of this replica's primary
    history: str | None = None  # this node's history id and why it has it


@dataclass(frozen=True)
class Snapshot:
    """Everything the HTTP side may read, published whole by the controller after each
    step. ``backups`` is None until the site was listed once (MyHoard's
    ``"backups": null``)."""

    taken_at: datetime
    status: StatusView
    backups: tuple[BackupView, ...] | None
    restore: RestoreView | None


# --- what the HTTP side asks for -------------------------------------------------------


@dataclass(frozen=True)
class RequestBackup:
    """``POST /backup {"backup_type": "basebackup"}``: take a backup at the next chance."""

    incremental: bool = False


@dataclass(frozen=True)
class RotateBinlog:
    """``POST /backup {"backup_type": "binlog"}``: rotate the binlog now and archive the
    file it closed. The ticket is done once that file is stored in every open stream."""


@dataclass(frozen=True)
class PauseBackups:
    """``PATCH /backup/settings {"paused_until": ...}``; None resumes."""

    until: datetime | None


@dataclass(frozen=True)
class MarkBroken:
    """``PATCH /backup/{stream_id} {"broken": true}``; ``broken=False`` clears the mark."""

    stream_id: str
    broken: bool = True


@dataclass(frozen=True)
class Preserve:
    """``PUT /backup/{stream_id}/preserve``; None removes the preservation. The ticket is
    done once retention sees it (``wait_for_applied_preservation``)."""

    stream_id: str
    until: datetime | None


@dataclass(frozen=True)
class RunRestoreTest:
    """``POST /backup/{stream_id}/test`` (extension): restore the stream's backup and
    binlogs into a scratch server and check it; the result shows in ``GET /backup``."""

    stream_id: str


@dataclass(frozen=True)
class SetReplicationState:
    """``PUT /replication_state``: per node name, its reported positions (MariaDB: e.g.
    ``{"gtid_current_pos": "0-1-5", "gtid_slave_pos": ...}``). Stored for binlog purge."""

    state: Mapping[str, Mapping[str, str]]


RestoreTargetKind = Literal["latest", "time", "gtid", "position"]


@dataclass(frozen=True)
class SetMode:
    """``PUT /status``. ``restore`` needs ``site`` and ``stream_id``; its target is the
    newest transaction unless one of the target fields is given."""

    mode: Mode
    site: str | None = None
    stream_id: str | None = None
    target_time: datetime | None = None
    target_time_approximate_ok: bool = False
    target_gtid: str | None = None  # extension
    target_position: str | None = None  # extension: "<binlog file>:<offset>"
    force: bool = False
    # extension: then replicate from this primary, HOST:PORT (ops/seed.py)
    replicate_from: str | None = None


Command = (
    RequestBackup
    | RotateBinlog
    | PauseBackups
    | MarkBroken
    | Preserve
    | SetReplicationState
    | SetMode
    | RunRestoreTest
)


class Ticket:
    """The answer to one command, resolved by the controller thread.

    ``decided`` is set once the controller accepted or refused the command (``error``
    then says why, as a ``BinhoardError`` whose ``http_status`` the API answers with);
    ``done`` once the work it asked for finished (or failed: ``error``). Commands with
    nothing to wait for are done when decided. Waiting never holds a lock the
    controller needs. The controller publishes the snapshot that shows a decision
    before it resolves the ticket, so a read right after a write sees the write.

    A waiter that must not block a thread (the HTTP side's event loop) registers a
    wake-up call with ``add_callback`` instead and re-reads ``is_decided``/``is_done``
    when woken.
    """

    def __init__(self, command: Command) -> None:
        self.command = command
        self.error: BinhoardError | None = None
        self._decided = threading.Event()
        self._done = threading.Event()
        # Guards the list only; never held while a callback runs.
        self._callbacks_lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []

    def accept(self) -> None:
        self._decided.set()
        self._changed()

    def refuse(self, error: BinhoardError) -> None:
        self.error = error
        self._decided.set()
        self._done.set()
        self._changed()

    def finish(self, error: BinhoardError | None = None) -> None:
        if error is not None:
            self.error = error
        self._decided.set()
        self._done.set()
        self._changed()

    def wait_decided(self, timeout: float) -> bool:
        return self._decided.wait(timeout)

    def wait_done(self, timeout: float) -> bool:
        return self._done.wait(timeout)

    @property
    def is_decided(self) -> bool:
        return self._decided.is_set()

    @property
    def is_done(self) -> bool:
        return self._done.is_set()

    def add_callback(self, wake: Callable[[], None]) -> None:
        """Calls ``wake()`` now and after every change (decided, done), in the thread
        that made the change: it must return at once (e.g. schedule work on an event
        loop) and must not raise. Calling it once now means a change that happened
        before registering is never missed."""
        with self._callbacks_lock:
            self._callbacks.append(wake)
        wake()

    def _changed(self) -> None:
        with self._callbacks_lock:
            callbacks = list(self._callbacks)
        for wake in callbacks:
            try:
                wake()
            except Exception:
                # A waiter's bug must not stop the controller that resolved the ticket.
                log.exception("a ticket's wake-up callback failed")


class Daemon(Protocol):
    """What the HTTP side sees of the controller."""

    def snapshot(self) -> Snapshot:
        """The latest published snapshot; returns at once (no lock a worker holds)."""
        ...

    def submit(self, command: Command) -> Ticket:
        """Queues the command for the controller's next step; returns at once."""
        ...

    def metrics_text(self) -> str:
        """The metrics in the Prometheus text exposition format."""
        ...
