"""A controller with behaviour, for tests of the HTTP side (``daemon/port.py``).

It holds a mode and a list of streams, takes commands off a queue in its own thread and
decides them as a simplified MyHoard controller would, so that tickets resolve
asynchronously, as they do in the daemon. Each step holds the fake's own lock; ``stall``
makes one step hold it until ``release``, as a controller stuck in slow work would, and
``hold_uploads`` keeps binlog uploads (and preservations) unfinished until released.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from binhoard.daemon.port import (
    BackupView,
    Command,
    MarkBroken,
    PauseBackups,
    Preserve,
    RequestBackup,
    RestoreView,
    RotateBinlog,
    RunRestoreTest,
    SetMode,
    SetReplicationState,
    Snapshot,
    StatusView,
    StreamWindow,
    Ticket,
)
from binhoard.domain.errors import BinhoardError, ConflictError, NotFoundError

T0 = datetime(2026, 11, 20, 3, 0, tzinfo=UTC)

# MyHoard's mode transitions a request may ask for (promote is left for active by the
# controller itself, and active is left only by stopping the daemon).
_ALLOWED = {
    "idle": {"active", "restore"},
    "observe": {"promote", "restore"},
    "restore": {"active"},  # with force: promote without applying the rest
    "promote": set(),
    "active": set(),
}


def stream(stream_id: str, *, closed: bool = False, site: str = "default") -> BackupView:
    started = datetime.strptime(stream_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return BackupView(
        stream_id=stream_id,
        site=site,
        basebackup_info={"backup_type": "full", "gtid": "0-1-10", "start_ts": started.timestamp()},
        completed_at=started + timedelta(minutes=5),
        closed_at=started + timedelta(days=1) if closed else None,
        broken_at=None,
        preserve_until=None,
        recovery_site=False,
        resumable=True,
        window=StreamWindow(
            first_time=started + timedelta(minutes=5),
            first_gtid="0-1-10",
            last_time=started + timedelta(hours=1),
            last_gtid="0-1-99",
        ),
    )


class FakeDaemon:
    def __init__(self, *, mode: str = "idle", backups: tuple[BackupView, ...] | None = ()) -> None:
        self.lock = threading.Lock()  # held by every step, as a controller's own state lock
        self.commands: list[Command] = []
        self.requested_backups: list[bool] = []  # incremental?
        self._queue: queue.Queue[Ticket | None] = queue.Queue()
        self._held: list[Ticket] = []
        self._hold_uploads = False
        self._stall = False
        self._stalled = threading.Event()
        self._released = threading.Event()
        status = StatusView(mode=mode)  # type: ignore[arg-type]
        self._snapshot = Snapshot(taken_at=T0, status=status, backups=backups, restore=None)
        self._thread = threading.Thread(target=self._run, name="fake-controller", daemon=True)
        self._thread.start()

    # --- port.Daemon ---------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return self._snapshot  # one reference, replaced whole: no lock

    def submit(self, command: Command) -> Ticket:
        ticket = Ticket(command)
        self._queue.put(ticket)
        return ticket

    def metrics_text(self) -> str:
        return (
            f"# TYPE binhoard_fake_commands counter\nbinhoard_fake_commands {len(self.commands)}\n"
        )

    # --- test controls -------------------------------------------------------------
    def stop(self) -> None:
        self.release()
        self._queue.put(None)
        self._thread.join(10)

    def stall(self) -> threading.Event:
        """The next step holds the lock until ``release()``; the event returned is set
        once it does."""
        self._stalled.clear()
        self._released.clear()
        self._stall = True
        self._queue.put(Ticket(PauseBackups(until=None)))  # something to step on
        return self._stalled

    def release(self) -> None:
        self._released.set()

    def hold_uploads(self, hold: bool = True) -> None:
        with self.lock:
            self._hold_uploads = hold
            if not hold:
                for ticket in self._held:
                    ticket.finish()
                self._held.clear()

    def publish(self, **changes: object) -> None:
        with self.lock:
            self._snapshot = replace(self._snapshot, **changes)  # type: ignore[arg-type]

    # --- the controller ------------------------------------------------------------
    def _run(self) -> None:
        while (ticket := self._queue.get()) is not None:
            with self.lock:
                if self._stall:
                    self._stall = False
                    self._stalled.set()
                    self._released.wait(60)  # stuck in slow work, lock held
                self.commands.append(ticket.command)
                self._decide(ticket)

    def _decide(self, ticket: Ticket) -> None:
        command = ticket.command
        snapshot = self._snapshot
        by_id = {view.stream_id: view for view in snapshot.backups or ()}
        error = self._refusal(command, snapshot.status.mode, by_id)
        if error is not None:
            ticket.refuse(error)
            return
        status = self._apply(command, snapshot.status, by_id)
        restore = snapshot.restore
        if isinstance(command, SetMode) and command.mode == "restore":
            restore = RestoreView(
                phase="getting_backup_info",
                basebackup_compressed_bytes_downloaded=0,
                basebackup_compressed_bytes_total=1000,
                binlogs_being_restored=0,
                binlogs_pending=3,
                binlogs_restored=0,
                stream_id=command.stream_id or "",
                site=command.site or "",
                target="latest",
            )
        self._snapshot = Snapshot(
            taken_at=snapshot.taken_at,
            status=status,
            backups=None if snapshot.backups is None else tuple(by_id.values()),
            restore=restore,
        )
        # As the port asks: the snapshot shows a decision before its ticket resolves, so
        # a read right after a write sees it.
        if isinstance(command, RotateBinlog | Preserve) and self._hold_uploads:
            ticket.accept()  # the upload (or retention's pass) is still to come
            self._held.append(ticket)
        else:
            ticket.finish()

    def _refusal(
        self, command: Command, mode: str, by_id: dict[str, BackupView]
    ) -> BinhoardError | None:
        stream_commands = MarkBroken | Preserve | RunRestoreTest
        if isinstance(command, stream_commands) and command.stream_id not in by_id:
            return NotFoundError(f"no stream {command.stream_id!r}")
        if isinstance(command, RequestBackup) and mode != "active":
            return ConflictError(f"mode is {mode}: backups need active")
        if isinstance(command, RotateBinlog) and mode != "active":
            return ConflictError(f"mode is {mode}: nothing is archived")
        if isinstance(command, SetMode):
            return self._switch(mode, command, by_id)
        return None

    def _apply(
        self, command: Command, status: StatusView, by_id: dict[str, BackupView]
    ) -> StatusView:
        match command:
            case RequestBackup():
                self.requested_backups.append(command.incremental)
            case PauseBackups():
                return replace(status, backups_paused_until=command.until)
            case MarkBroken():
                broken_at = T0 if command.broken else None
                by_id[command.stream_id] = replace(by_id[command.stream_id], broken_at=broken_at)
            case Preserve():
                view = replace(by_id[command.stream_id], preserve_until=command.until)
                by_id[command.stream_id] = view
            case RunRestoreTest():
                view = replace(by_id[command.stream_id], restore_test_pending=True)
                by_id[command.stream_id] = view
            case SetReplicationState():
                return replace(status, replication_state=command.state)
            case SetMode():
                return replace(status, mode=command.mode)
        return status

    def _switch(
        self, mode: str, command: SetMode, by_id: dict[str, BackupView]
    ) -> ConflictError | NotFoundError | None:
        if command.mode == mode:
            return None
        if command.mode not in _ALLOWED[mode] or (mode == "restore" and not command.force):
            return ConflictError(f"cannot switch from mode {mode} to {command.mode}")
        if command.mode == "restore" and command.stream_id not in by_id:
            return NotFoundError(f"no stream {command.stream_id!r}")
        return None
