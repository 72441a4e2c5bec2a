"""The controller: the one owner of the daemon's state, and the only one who decides.

Everything reaches it through its inbox: commands from the HTTP side (as ``Ticket``s)
and the workers' progress and results. :meth:`Controller.step` takes what arrived,
decides with an explicit ``now`` (the mode's handler: what to list, archive, back up,
restore), saves the state if it changed, and only then resolves the tickets and
starts the work decided, so that nothing is acknowledged or begun that a crash could
forget. Then it publishes a new immutable ``Snapshot`` for the HTTP side. Tests drive
``step`` tick by tick with a scripted clock; :meth:`Controller.run` is the real loop,
which waits on the inbox until something arrives or the next thing is due.

What each piece of work does is in ``workers.py`` (behind ``jobs.Doers``); which mode
changes are allowed is in ``modes.py``; the backup schedule is ``domain/schedule.py``.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from binhoard.app import seed_settings
from binhoard.config import Settings
from binhoard.daemon import modes
from binhoard.daemon.jobs import (
    ARCHIVE,
    BACKUP,
    PURGE,
    RESTORE,
    RESTORE_TEST,
    SITE,
    ArchiveDone,
    BackupDone,
    Doers,
    Executor,
    Inbox,
    Job,
    JobDone,
    JobProgress,
    PromoteDone,
    PromoteStatus,
    PurgeDone,
    ReconcileDone,
    RepointDone,
    RestoreDone,
    RestoreStatus,
    RestoreTestDone,
    RetentionDone,
    SiteView,
    StreamInfo,
    ThreadExecutor,
)
from binhoard.daemon.port import (
    BackupView,
    Command,
    MarkBroken,
    PauseBackups,
    Preserve,
    PurgeView,
    RequestBackup,
    RotateBinlog,
    RunRestoreTest,
    SetMode,
    SetReplicationState,
    Snapshot,
    Ticket,
)
from binhoard.daemon.state import (
    BackupRequest,
    BrokenRequest,
    PreservationRequest,
    RestoreTestRequest,
    RestoreTestResult,
    RotationRequest,
    StateStore,
)
from binhoard.daemon.views import backup_views, restore_view, status_view
from binhoard.domain.binlog import binlog_sort_key
from binhoard.domain.errors import (
    ArchiveStalledError,
    BinhoardError,
    CancelledError,
    ConflictError,
    NotFoundError,
    UsageError,
)
from binhoard.domain.manifest import BackupManifest, BackupType
from binhoard.domain.restore_plan import BrokenBackupError
from binhoard.domain.restore_test import restore_test_due
from binhoard.domain.schedule import (
    backup_due,
    choose_backup_type,
    incremental_parent,
    next_slot,
)
from binhoard.metric_names import BACKUP_LAST_COMPLETED_TIME
from binhoard.metrics import Metrics
from binhoard.ops.seed import check_primary
from binhoard.telemetry import report_error

log = logging.getLogger("binhoard.daemon")

# How often the sites are listed (GET /backup) when nothing else asks for it.
LIST_INTERVAL = timedelta(seconds=60)
# How often an archive pass runs in active mode (a rotation request runs one at once).
ARCHIVE_INTERVAL = timedelta(seconds=5)
# A failed job is retried after RETRY_FIRST, doubling up to RETRY_MAX.
RETRY_FIRST = timedelta(seconds=5)
RETRY_MAX = timedelta(minutes=5)
# How often retention runs in active mode (and after each backup).
RETENTION_INTERVAL = timedelta(minutes=10)
# The loop steps at least this often, whatever it expects.
MAX_IDLE = timedelta(seconds=60)
# After a binlog purge pass that stopped at its cap, the next one comes this soon: the
# server's commits get the binlog index lock in between.
PURGE_FOLLOW_UP = timedelta(seconds=5)
# How often statsd is sent the ages of the metrics' times.
METRICS_REFRESH = timedelta(seconds=30)
# The last restore test of this many streams is kept (GET /backup shows them).
RESTORE_TEST_RESULTS = 50


@dataclass(frozen=True)
class Reload:
    """What SIGHUP found (``service.reload_config``): new ``settings``, already checked
    to need no restart, and the keys that ``changed``; or why the file was ``refused``."""

    settings: Settings | None
    changed: tuple[str, ...] = ()
    refused: str | None = None


@dataclass
class _Running:
    on_done: Callable[[JobDone], None]
    on_progress: Callable[[object], None] | None
    # ``on_done`` logs the job's failures itself, saying what follows (once, not twice).
    logs_failures: bool = False


def utc_now() -> datetime:
    return datetime.now(UTC)


class Controller:
    """Implements ``port.Daemon`` for the HTTP side."""

    def __init__(
        self,
        settings: Settings,
        store: StateStore,
        doers: Doers,
        *,
        metrics: Metrics | None = None,
        make_executor: Callable[[Callable[[object], None]], Executor] = ThreadExecutor,
    ) -> None:
        self.settings = settings
        self.store = store
        self.doers = doers
        self.metrics = metrics or Metrics()
        self.inbox = Inbox()
        self.executor = make_executor(self.inbox.put)
        self.state = store.load()
        self.view: SiteView | None = None
        self._now = utc_now()
        self._running: dict[str, _Running] = {}
        self._failures: dict[str, int] = {}
        self._promote_force = False  # PUT /status {"mode": "promote", "force": true}
        self._repointing: Ticket | None = None  # a re-point under way, answered when done
        # Replication compared with the state once after the start (observe mode): as
        # the state was then, before this daemon changed anything.
        control = self.state.control
        self._reconciled = not (control.replicating_from or control.repointing_to)
        self._retry_at: dict[str, datetime] = {}
        self._next_list_at: datetime | None = None
        self._next_archive_at: datetime | None = None
        # Changes to the site made by this daemon (backups taken), and how many of them
        # the last listing saw: decisions about backups wait for a listing that did.
        self._site_changes = 0
        self._listed_changes = 0
        self._after_commit: list[Callable[[], None]] = []
        self._to_start: list[tuple[str, Job, _Running]] = []
        self._rotation_tickets: dict[int, list[Ticket]] = {}
        self._mark_tickets: dict[tuple[str, str, str], list[Ticket]] = {}
        self._after_listing: list[tuple[int, Callable[[], None]]] = []
        self._next_retention_at: datetime | None = None
        # This server's streams that another node took over, from the last archive pass
        # (the site is the truth). While any, no backup, retention or purge: a deposed
        # primary writes nothing that counts. Kept in the state: until its first pass
        # finds them again, a restarted daemon goes by what the last one knew.
        deposed = self.state.facts.deposed
        self._deposed: tuple[str, ...] = tuple(deposed.splitlines()) if deposed else ()
        self.restore_progress: RestoreStatus | None = None
        self.promote_progress: PromoteStatus | None = None  # of the promotion under way
        # Why the last SIGHUP applied nothing, until one does (GET /status shows it).
        self.reload_refused: str | None = None
        self._next_purge_at: datetime | None = None
        self.purge_view: PurgeView | None = None
        self._views_of: tuple[object, tuple[BackupView, ...] | None] = (None, None)
        self._leftovers_removed = False  # a killed restore test's scratch server
        self._stopping = threading.Event()
        self._metrics_refreshed: datetime | None = None
        self.crashed: str | None = None  # why run() ended, if not asked to
        log.info("daemon state %s: mode %s", store.path, self.state.mode)
        if self._deposed:
            log.error(
                "DEPOSED at the last archive pass before this start: %s. No backups or "
                "deletions until a pass says otherwise",
                "; ".join(self._deposed),
            )
        self._snapshot = self._build_snapshot()

    # --- port.Daemon --------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        return self._snapshot  # replaced whole by the controller thread: no lock needed

    def submit(self, command: Command) -> Ticket:
        ticket = Ticket(command)
        self.inbox.put(ticket)
        return ticket

    def metrics_text(self) -> str:
        return self.metrics.prometheus_text()

    # --- the loop -----------------------------------------------------------------------
    def run(self, clock: Callable[[], datetime] = utc_now) -> None:
        """Steps until :meth:`stop`; between steps waits on the inbox until the next
        thing is due (never a blind sleep). An unexpected error ends it (``crashed``):
        the daemon exits, its state as of the last step, and its supervisor restarts it."""
        try:
            while not self._stopping.is_set():
                wake_at = self.step(clock())
                self.inbox.wait((wake_at - clock()).total_seconds())
        except Exception as exc:  # a bug, or the state cannot be saved: stop, loudly
            log.exception("the controller failed")
            self.crashed = repr(exc)

    def stop(self) -> None:
        """Asks :meth:`run` to return after its current step (any thread)."""
        self._stopping.set()
        self.inbox.put(None)

    def shutdown(self, timeout: float) -> bool:
        """Cancels the workers and waits up to ``timeout`` s; the state is saved at every
        step, so what a worker leaves is resumable. Returns whether all ended."""
        return self.executor.stop(timeout)

    def reload(self, outcome: Reload) -> None:
        """SIGHUP's outcome (any thread): applied, or shown, at the next step."""
        self.inbox.put(outcome)

    # --- one step -----------------------------------------------------------------------
    def step(self, now: datetime) -> datetime:
        """Takes what arrived, decides, saves, then acts and publishes. Returns when the
        next step is wanted at the latest."""
        self._now = now
        for item in self.inbox.drain():
            if isinstance(item, JobDone):
                self._job_done(item)
            elif isinstance(item, JobProgress):
                handler = self._running.get(item.slot)
                if handler is not None and handler.on_progress is not None:
                    handler.on_progress(item.progress)
            elif isinstance(item, Ticket):
                self._command(item)
            elif isinstance(item, Reload):
                self._reload(item)
        if not self._stopping.is_set():
            self._decide()
        self.store.save(self.state)
        # Published before the tickets are resolved: a client that got its answer
        # reads a snapshot that already shows what it asked for.
        self._snapshot = self._build_snapshot()
        if (
            self._metrics_refreshed is None
            or self._now >= self._metrics_refreshed + METRICS_REFRESH
        ):
            self.metrics.refresh()  # statsd gets the ages ("seconds since") again
            self._metrics_refreshed = self._now
        callbacks, self._after_commit = self._after_commit, []
        for callback in callbacks:
            callback()
        for slot, job, running in self._to_start:
            self._running[slot] = running
            self.executor.start(slot, job)
        self._to_start.clear()
        return self._next_wake()

    def _reload(self, outcome: Reload) -> None:
        if outcome.settings is None:
            self.reload_refused = outcome.refused
            log.error("configuration not reloaded: %s", outcome.refused)
            return
        self.reload_refused = None
        if not outcome.changed:
            log.info("configuration reloaded: nothing changed")
            return
        self.settings = outcome.settings
        self.doers.configure(outcome.settings)
        log.info("configuration reloaded: %s", ", ".join(outcome.changed))

    def _decide(self) -> None:
        control = self.state.control
        paused = control.backups_paused_until
        if paused is not None and paused <= self._now:
            self._update(control=replace(control, backups_paused_until=None))
            log.info("backups resume: the pause ended at %s", paused.isoformat())
        self._keep_listed()
        mode = self.state.mode
        if mode == "active":
            self._archive()
            self._backup()
            self._site_work()
        if mode in ("active", "observe"):
            self._purge()
        if mode == "observe":
            self._reconcile()
        if mode == "restore":
            self._restore()
        elif mode == "promote":
            self._promote()
        else:
            self._restore_test()

    def _update(self, **changes: object) -> None:
        self.state = replace(self.state, **changes)  # type: ignore[arg-type]

    def _facts(self, **changes: object) -> None:
        self._update(facts=replace(self.state.facts, **changes))  # type: ignore[arg-type]

    # --- jobs ---------------------------------------------------------------------------
    def _free(self, slot: str) -> bool:
        """Whether ``slot`` can take a job now (none running, not waiting to retry)."""
        if slot in self._running or any(s == slot for s, _, _ in self._to_start):
            return False
        retry = self._retry_at.get(slot)
        return retry is None or self._now >= retry

    def _start(
        self,
        slot: str,
        job: Job,
        on_done: Callable[[JobDone], None],
        on_progress: Callable[[object], None] | None = None,
        *,
        logs_failures: bool = False,
    ) -> None:
        """Starts ``job`` once this step's state is saved (what it acts on is durable)."""
        self._to_start.append((slot, job, _Running(on_done, on_progress, logs_failures)))

    def _job_done(self, done: JobDone) -> None:
        running = self._running.pop(done.slot, None)
        if running is None:
            return
        if done.error is None:
            self._failures.pop(done.slot, None)
            self._retry_at.pop(done.slot, None)
            if self.state.facts.last_error_job == done.slot:
                self._facts(last_error=None, last_error_at=None, last_error_job=None)
        elif not isinstance(done.error, CancelledError):
            failures = self._failures.get(done.slot, 0) + 1
            self._failures[done.slot] = failures
            delay = min(RETRY_FIRST * 2 ** (failures - 1), RETRY_MAX)
            self._retry_at[done.slot] = self._now + delay
            if not running.logs_failures:
                log.error("%s failed: %s", done.slot, done.error.message)
            # Sentry hears of a failure once, not on every retry of it.
            repeated = done.error.message == self.state.facts.last_error
            report_error(done.error, self.metrics, f"daemon {done.slot}", to_sentry=not repeated)
            self._facts(
                last_error=done.error.message, last_error_at=self._now, last_error_job=done.slot
            )
        running.on_done(done)

    # --- commands -----------------------------------------------------------------------
    def _command(self, ticket: Ticket) -> None:
        command = ticket.command
        try:
            if isinstance(command, SetMode):
                if self._set_mode(command, ticket):
                    return  # answered once the node is re-pointed
            elif isinstance(command, RequestBackup):
                self._request_backup(command)
            elif isinstance(command, RotateBinlog):
                self._request_rotation(ticket)
                return  # done once the file is stored
            elif isinstance(command, PauseBackups):
                if command.until is not None and command.until <= self._now:
                    raise UsageError("paused_until is in the past")
                control = replace(self.state.control, backups_paused_until=command.until)
                self._update(control=control)
            elif isinstance(command, SetReplicationState):
                at = self._now.timestamp()
                control = replace(
                    self.state.control,
                    replication_state=command.state,
                    replication_reported_at={node: at for node in command.state},
                )
                self._update(control=control)
            elif isinstance(command, RunRestoreTest):
                self._request_restore_test(command)
            elif isinstance(command, (Preserve, MarkBroken)):
                self._mark_request(ticket, command)
                return  # done once recorded on the site (and listed)
        except BinhoardError as exc:
            ticket.refuse(exc)
            return
        self._after_commit.append(ticket.finish)

    def _set_mode(self, command: SetMode, ticket: Ticket) -> bool:
        """Decides ``command``; True when the ticket is answered later (a re-point)."""
        streams = None if self.view is None else self.view.streams
        if command.replicate_from is not None:
            # Refused now, not once the restore has run for an hour.
            check_primary(
                command.replicate_from,
                seed=seed_settings(self.settings),
                allowed=self.settings.replication.primaries,
            )
        decision = modes.decide(
            self.state.mode,
            self.state.restore,
            command,
            streams,
            list(self.settings.backup_sites),
            self._now,
        )
        if isinstance(decision, modes.Stay):
            return False
        if isinstance(decision, modes.Repoint):
            self._repoint(decision.primary, ticket)
            return True
        log.info("mode %s -> %s", self.state.mode, decision.mode)
        # Not kept across a restart: a promotion resumed after one is not forced, so it
        # refuses rather than give up archived transactions nobody asked to give up.
        self._promote_force = decision.mode == "promote" and command.force
        self.state = self.state.with_mode(decision.mode)
        if decision.restore is not None:
            self._update(restore=decision.restore)
            self.restore_progress = None
        if decision.restore is not None or decision.mode == "promote":
            # The operator's new request: not held back by the last one's failure.
            self._retry_at.pop(RESTORE, None)
            self._failures.pop(RESTORE, None)
        return False

    def _repoint(self, primary: str, ticket: Ticket) -> None:
        """Re-points this replica at ``primary`` on the restore worker (it talks to both
        servers); ``ticket`` is answered when that is done, or refused with its reason."""
        if self._repointing is not None or RESTORE in self._running:
            raise ConflictError("a re-point of this node is under way: ask again when it is done")
        self._repointing = ticket
        # Saved before the job stops replication: a crash meanwhile is reconciled.
        self._update(control=replace(self.state.control, repointing_to=primary))

        def done(result: JobDone) -> None:
            self._repointing = None
            self._update(control=replace(self.state.control, repointing_to=None))
            error = result.error
            if error is None and isinstance(result.result, RepointDone):
                log.info("re-pointed: replicating from %s", result.result.primary)
                control = replace(self.state.control, replicating_from=result.result.primary)
                self._update(control=control)
                self._after_commit.append(ticket.finish)
                return
            refusal = error or ConflictError(f"re-pointing at {primary} did not complete")
            log.error("not re-pointed at %s: %s", primary, refusal.message)
            self._after_commit.append(lambda: ticket.refuse(refusal))

        self._start(
            RESTORE, lambda work: self.doers.repoint(primary, work), done, logs_failures=True
        )

    def _reconcile(self) -> None:
        """Once after the start, on the restore worker: a re-point a crash cut short
        (``repointing_to``) is finished or rolled back; else replication is compared with
        ``replicating_from``. What differs is the last error of ``GET /status``."""
        control = self.state.control
        if self._reconciled or not self._free(RESTORE) or self._repointing is not None:
            return
        self._reconciled = True
        expected, interrupted = control.replicating_from, control.repointing_to

        def done(result: JobDone) -> None:
            found = result.result
            if result.error is not None and result.error.retryable:
                self._reconciled = False  # again after the slot's retry delay
                return
            if result.error is not None:
                # Said as the restore worker's last error; the next start compares
                # replication with replicating_from.
                self._update(control=replace(self.state.control, repointing_to=None))
                return
            assert isinstance(found, ReconcileDone)
            control = replace(self.state.control, repointing_to=None)
            if interrupted is not None and found.problem is None:
                control = replace(control, replicating_from=found.primary)
            self._update(control=control)
            if found.problem is not None:
                log.error("%s", found.problem)
                self._facts(
                    last_error=found.problem, last_error_at=self._now, last_error_job=RESTORE
                )

        self._start(
            RESTORE,
            lambda work: self.doers.reconcile_replication(expected, interrupted, work),
            done,
        )

    def _request_backup(self, command: RequestBackup) -> None:
        if self.state.mode not in ("active", "promote"):
            raise ConflictError(f"backups are taken in active mode; the mode is {self.state.mode}")
        request = BackupRequest(command.incremental, "requested", self._now)
        queued = self.state.backups
        if queued and queued[-1].started_at is None:
            # Not started yet: one backup serves both; full if either asked for full.
            last = queued[-1]
            merged = replace(last, incremental=last.incremental and command.incremental)
            self._update(backups=(*queued[:-1], replace(merged, reason="requested")))
        else:
            self._update(backups=(*queued, request))

    def _request_rotation(self, ticket: Ticket) -> None:
        if self.state.mode != "active":
            raise ConflictError(
                f"binlogs are archived in active mode; the mode is {self.state.mode}"
            )
        waiting = [r for r in self.state.rotations if r.closed_file is None]
        if waiting:
            request = waiting[0]  # not rotated yet: that rotation serves this one too
        else:
            number = max((r.request_id for r in self.state.rotations), default=0) + 1
            request = RotationRequest(number, self._now)
            self._update(rotations=(*self.state.rotations, request))
        self._rotation_tickets.setdefault(request.request_id, []).append(ticket)
        self._after_commit.append(ticket.accept)

    def _mark_request(self, ticket: Ticket, command: Preserve | MarkBroken) -> None:
        """Recorded now, written to the site by the site worker in active mode (as
        MyHoard applies them); retention does not run while a preservation waits."""
        stream = self._find_stream(command.stream_id)
        if isinstance(command, Preserve):
            if command.until is not None and command.until <= self._now:
                raise UsageError("preserve_until is in the past")
            request: PreservationRequest | BrokenRequest = PreservationRequest(
                stream.site, stream.stream_id, command.until, self._now
            )
            kept = [p for p in self.state.preservations if p.stream_id != stream.stream_id]
            self._update(preservations=(*kept, request))
        else:
            if self.state.mode != "active":
                raise ConflictError(
                    f"streams are marked broken in active mode; the mode is {self.state.mode}"
                )
            request = BrokenRequest(stream.site, stream.stream_id, self._now, command.broken)
            kept_marks = [b for b in self.state.broken_marks if b.stream_id != stream.stream_id]
            self._update(broken_marks=(*kept_marks, request))
        self._mark_tickets.setdefault(_mark_key(request), []).append(ticket)
        self._after_commit.append(ticket.accept)

    def _find_stream(self, stream_id: str) -> StreamInfo:
        if self.view is None:
            raise ConflictError("the backups have not been listed yet: try again in a moment")
        for stream in self.view.streams:
            if stream.stream_id == stream_id:
                return stream
        raise NotFoundError(f"no stream {stream_id}: GET /backup lists them")

    # --- active: the operator's marks, and retention ------------------------------------
    def _site_work(self) -> None:
        """One job at a time on the site worker: listing first (``_keep_listed``), then
        a mark to write, then retention when it is due."""
        if not self._free(SITE):
            return
        pending: list[PreservationRequest | BrokenRequest] = [
            *self.state.preservations,
            *self.state.broken_marks,
        ]
        if pending:
            request = pending[0]
            self._start(
                SITE,
                lambda work: self.doers.write_mark(request, work),
                lambda done: self._marked(done, request),
            )
            return
        due = self._next_retention_at is None or self._now >= self._next_retention_at
        if due and not self._list_stale and not self._deposed:
            self._start(SITE, self.doers.retention, self._retained)

    def _marked(self, done: JobDone, request: PreservationRequest | BrokenRequest) -> None:
        tickets = self._mark_tickets.pop(_mark_key(request), [])
        if done.error is not None and (
            done.error.retryable or isinstance(done.error, CancelledError)
        ):
            self._mark_tickets.setdefault(_mark_key(request), []).extend(tickets)
            return  # tried again later
        self._update(
            preservations=tuple(p for p in self.state.preservations if p != request),
            broken_marks=tuple(b for b in self.state.broken_marks if b != request),
        )
        if done.error is not None:
            for ticket in tickets:
                self._after_commit.append(functools.partial(ticket.finish, done.error))
            return
        self._site_changes += 1
        # A preservation ended or a stream marked broken can make a backup expire: not
        # in RETENTION_INTERVAL, but now.
        self._next_retention_at = self._now
        # Done once a listing shows it: GET /backup then has it, and retention sees it.
        self._after_listing.extend((self._site_changes, t.finish) for t in tickets)

    def _retained(self, done: JobDone) -> None:
        self._next_retention_at = self._now + RETENTION_INTERVAL
        if isinstance(done.result, RetentionDone) and done.result.deleted:
            log.info("retention deleted %s", ", ".join(done.result.deleted))
            self._site_changes += 1

    # --- listing ------------------------------------------------------------------------
    @property
    def _list_stale(self) -> bool:
        return self._listed_changes < self._site_changes

    def _keep_listed(self) -> None:
        due = self.view is None or self._list_stale
        due = due or (self._next_list_at is not None and self._now >= self._next_list_at)
        if due and self._free(SITE):
            changes = self._site_changes
            self._start(SITE, self.doers.list_sites, lambda done: self._listed(done, changes))

    def _listed(self, done: JobDone, changes: int) -> None:
        self._next_list_at = self._now + LIST_INTERVAL
        if done.error is not None or not isinstance(done.result, SiteView):
            return
        self._listed_changes = changes
        waiting, self._after_listing = self._after_listing, []
        for needed, finish in waiting:
            if needed <= changes:
                self._after_commit.append(finish)
            else:
                self._after_listing.append((needed, finish))
        fresh = done.result
        if self.view is not None and fresh.failures:
            # A site that could not be listed keeps what was known of it.
            kept = tuple(s for s in self.view.streams if s.site in fresh.failures)
            fresh = replace(fresh, streams=kept + fresh.streams)
        for site, why in fresh.failures.items():
            log.error("cannot list site %s: %s", site, why)
        self.view = fresh
        mine = self._own_backups()
        newest = max(mine, key=lambda m: m.completed_at) if mine else None
        # After a restart too, the age of the last backup is known (and none: no age).
        self.metrics.set_time(BACKUP_LAST_COMPLETED_TIME, newest.completed_at if newest else None)
        if newest is not None and self.state.facts.last_backup_id != newest.backup_id:
            self._facts(last_backup_id=newest.backup_id, last_backup_at=newest.completed_at)

    def _upload_streams(self) -> list[StreamInfo]:
        site = self.settings.backup_settings.upload_site
        return [s for s in (self.view.streams if self.view else ()) if s.site == site]

    def _of_history(self, stream: StreamInfo) -> bool:
        """Whether ``stream`` is of this node's history: a node restored to an earlier
        point keeps its server_id, but the streams of the history it was forked from
        are not its own (domain/history.py)."""
        history = self.view.history if self.view is not None else None
        return history is None or history.holds(stream.history_id)

    def _own_backups(self) -> list[BackupManifest]:
        return [
            s.manifest
            for s in self._upload_streams()
            if s.manifest is not None
            and s.manifest.server_id == self.settings.server_id
            and self._of_history(s)
        ]

    # --- active: archiving ----------------------------------------------------------------
    def _archive(self) -> None:
        rotate = [r.request_id for r in self.state.rotations if r.closed_file is None]
        due = self._next_archive_at is None or self._now >= self._next_archive_at
        if not (due or rotate) or not self._free(ARCHIVE):
            return

        def done(result: JobDone) -> None:
            self._archived(result, rotate)

        self._start(ARCHIVE, lambda work: self.doers.archive(bool(rotate), work), done)

    def _archived(self, done: JobDone, rotated: list[int]) -> None:
        self._next_archive_at = self._now + ARCHIVE_INTERVAL
        if done.error is not None or not isinstance(done.result, ArchiveDone):
            error = done.error or BinhoardError("the archive pass returned nothing")
            for request_id in rotated:
                self._end_rotation(request_id, error)
            return
        result = done.result
        if result.deposed and not self._deposed:
            log.error(
                "DEPOSED: %s. No more backups or deletions here; stop writes to this server",
                "; ".join(result.deposed),
            )
        if not result.deposed and self._deposed:
            log.warning("no longer deposed: this server owns the streams it archives")
        self._deposed = result.deposed
        self._facts(deposed="\n".join(result.deposed) or None)
        if result.wrote:
            self._site_changes += 1  # GET /backup shows the new windows and closed streams
        if result.closed_file is not None:
            self._update(
                rotations=tuple(
                    replace(r, closed_file=result.closed_file) if r.request_id in rotated else r
                    for r in self.state.rotations
                )
            )
        for request in self.state.rotations:
            if request.closed_file is None:
                continue
            if _stored(request.closed_file, result):
                self._end_rotation(request.request_id, None)
            elif result.stall_reasons or not result.open_streams:
                reasons = "; ".join(result.stall_reasons) or "no open backup stream"
                why = f"{request.closed_file} cannot be stored now: {reasons}"
                self._end_rotation(request.request_id, ArchiveStalledError(why))
        facts = self.state.facts
        stalled = bool(result.stall_reasons)
        newest = facts.newest_archived_commit_at
        if result.newest_commit_time is not None:
            newest = datetime.fromtimestamp(result.newest_commit_time, UTC)
        self._facts(
            newest_archived_commit_at=newest,
            archive_stalled_since=(facts.archive_stalled_since or self._now) if stalled else None,
            archive_stall_reason="; ".join(result.stall_reasons) or None,
        )

    def _end_rotation(self, request_id: int, error: BinhoardError | None) -> None:
        self._update(rotations=tuple(r for r in self.state.rotations if r.request_id != request_id))
        for ticket in self._rotation_tickets.pop(request_id, []):
            self._after_commit.append(functools.partial(ticket.finish, error))

    # --- active: backups ------------------------------------------------------------------
    def _backup(self) -> None:
        if self.view is None or self._list_stale or self._deposed or not self._free(BACKUP):
            return
        queued = self.state.backups
        if queued and queued[0].started_at is not None:
            # Started before the daemon stopped: if it completed, it is on the site.
            started = queued[0].started_at
            taken = [b for b in self._own_backups() if b.started_at >= started]
            if taken:
                log.info("backup %s was completed before the restart", taken[0].backup_id)
                self._update(backups=queued[1:])
            else:
                self._update(backups=(replace(queued[0], started_at=None), *queued[1:]))
            queued = self.state.backups
        if not queued:
            scheduled = self._scheduled()
            if scheduled is None:
                return
            queued = (scheduled,)
        request = replace(queued[0], started_at=self._now)
        self._update(backups=(request, *queued[1:]))
        backup_type = self._backup_type(request)
        log.info("taking a %s backup (%s)", backup_type, request.reason)
        self._start(
            BACKUP,
            lambda work: self.doers.take_backup(backup_type, work),
            lambda done: self._backed_up(done, request),
        )

    def _scheduled(self) -> BackupRequest | None:
        paused = self.state.control.backups_paused_until
        if paused is not None and self._now < paused:
            return None
        streams = self._upload_streams()
        # As `binhoard backup create --if-due` counts them: backups of this history.
        usable = [
            s.manifest
            for s in streams
            if s.manifest is not None and not s.broken_reason and self._of_history(s)
        ]
        own_open = [
            s
            for s in streams
            if s.server_id == self.settings.server_id
            and s.closed_at is None
            and s.broken_reason is None
            and self._of_history(s)
        ]
        bs = self.settings.backup_settings
        due = backup_due(
            self._now, usable, bs.backup_hour, bs.backup_minute, bs.backup_interval_minutes
        )
        if not own_open or due.due:
            # No open stream of this server: nothing archives its binlogs (first
            # backup, a node that took over, or one restored to an earlier point).
            history = self.view.history if self.view is not None else None
            mine = f" of its history ({history.reason})" if history is not None else ""
            why = due.reason if own_open else f"no open backup stream of this server{mine}"
            log.info("scheduled backup due: %s", why)
            return BackupRequest(False, "scheduled", self._now)
        return None

    def _backup_type(self, request: BackupRequest) -> BackupType:
        # An incremental builds on a backup of this history only (same server_id, but
        # LSNs of another database otherwise).
        usable = [
            s.manifest
            for s in self._upload_streams()
            if s.manifest is not None and s.broken_reason is None and self._of_history(s)
        ]
        server_id = self.settings.server_id
        if request.reason == "requested":
            if request.incremental and incremental_parent(usable, server_id) is None:
                log.warning("incremental backup requested with nothing to build on: full")
                return "full"
            return "incremental" if request.incremental else "full"
        incremental = self.settings.backup_settings.incremental
        choice = choose_backup_type(
            self._now, usable, server_id, incremental.enabled, incremental.full_backup_days
        )
        return choice.backup_type

    def _backed_up(self, done: JobDone, request: BackupRequest) -> None:
        queued = self.state.backups
        rest = queued[1:] if queued and queued[0] == request else queued
        if isinstance(done.result, BackupDone):
            result = done.result
            log.info("backup %s (%s) completed", result.backup_id, result.backup_type)
            self._update(backups=rest)
            self._facts(last_backup_id=result.backup_id, last_backup_at=result.completed_at)
            self._site_changes += 1  # listed at once: for GET /backup, and the schedule
            self._next_archive_at = self._now  # its stream starts archiving now
            self._next_retention_at = self._now  # a backup more may be one too many
            return
        error = done.error
        if error is not None and not error.retryable and request.reason == "requested":
            self._update(backups=rest)  # retrying cannot help; the error is in the status
        elif queued and queued[0] == request:
            self._update(backups=(replace(request, started_at=None), *rest))

    # --- restore and promote ----------------------------------------------------------------
    def _restore(self) -> None:
        record = self.state.restore
        if record is None:
            log.error("mode restore, but no restore is recorded: PUT /status to restore")
            return
        if record.phase in ("completed", "failed") or not self._free(RESTORE):
            return
        self._start(
            RESTORE,
            lambda work: self.doers.restore(record, work),
            self._restored,
            self._restore_moved,
            logs_failures=True,
        )

    def _restore_moved(self, progress: object) -> None:
        record = self.state.restore
        if not isinstance(progress, RestoreStatus) or record is None:
            return
        self.restore_progress = progress
        if progress.phase != record.phase and progress.phase not in ("completed", "failed"):
            log.info("restore phase %s", progress.phase)
            self._update(restore=replace(record, phase=progress.phase, updated_at=self._now))

    def _restored(self, done: JobDone) -> None:
        record = self.state.restore
        if record is None:
            return
        if isinstance(done.result, RestoreDone):
            final = done.result.final_gtid or "(empty)"
            log.info("restore completed at GTID %s: mode observe", final)
            completed = replace(
                record,
                phase="completed",
                error=None,
                final_gtid=done.result.final_gtid,
                updated_at=self._now,
            )
            self._update(restore=completed)
            # The restore set this node's history (ops/history.py): list again now, so
            # that GET /status and what counts as its own streams follow at once.
            self._site_changes += 1
            if record.replicate_from is not None:
                control = replace(self.state.control, replicating_from=record.replicate_from)
                self._update(control=control)
            self.state = self.state.with_mode("observe")
            return
        error = done.error
        if error is None or isinstance(error, CancelledError):
            return
        phase = record.phase if error.retryable else "failed"
        self._update(
            restore=replace(record, phase=phase, error=error.message, updated_at=self._now)
        )
        if phase == "failed":
            log.error("restore failed, not retried: %s", error.message)
        else:
            delay = (self._retry_at[RESTORE] - self._now).total_seconds()
            log.error("restore failed, tried again in %g s: %s", delay, error.message)

    def _promote(self) -> None:
        if self._free(RESTORE):
            restore, force = self.state.restore, self._promote_force
            self._start(
                RESTORE,
                lambda work: self.doers.promote(restore, force, work),
                self._promoted,
                self._promote_moved,
                logs_failures=True,  # as a promotion's, not the restore slot's (_promoted)
            )

    def _promote_moved(self, progress: object) -> None:
        if isinstance(progress, PromoteStatus) and self.state.mode == "promote":
            if self.promote_progress is None or progress.phase != self.promote_progress.phase:
                log.info("promotion phase %s", progress.phase)
            self.promote_progress = progress

    def _promoted(self, done: JobDone) -> None:
        error = done.error
        if isinstance(error, ConflictError) or (
            error is not None and not error.retryable and not isinstance(error, CancelledError)
        ):
            # Another node took the stream over first, or this one lacks part of the
            # archive and cannot apply it (retrying would not help): it stays a replica,
            # the reason the last error in GET /status; the operator may ask again,
            # with force to give up what it could not apply.
            log.error("not promoted, mode observe: %s", error.message)
            self._promote_force = False
            self.promote_progress = None
            self.state = self.state.with_mode("observe")
            return
        result = done.result
        if error is not None and not isinstance(error, CancelledError):
            delay = (self._retry_at[RESTORE] - self._now).total_seconds()
            log.error("promotion failed, tried again in %g s: %s", delay, error.message)
        if done.error is not None or not isinstance(result, PromoteDone):
            return  # retried
        self._promote_force = False
        if result.new_stream_needed is not None:
            log.error(
                "promoted, but this node cannot continue stream %s: %s; a full backup "
                "starts a new stream now",
                result.stream_id,
                result.new_stream_needed,
            )
            self._update(
                backups=(*self.state.backups, BackupRequest(False, "requested", self._now))
            )
        log.info("promoted: mode active")
        self.promote_progress = None
        # Its replication configuration was removed (workers.promote): it replicates from none.
        self._update(control=replace(self.state.control, replicating_from=None))
        self.state = self.state.with_mode("active")

    # --- active and observe: binlog purge --------------------------------------------------
    def _purge(self) -> None:
        """Every ``purge_interval`` (sooner while a backlog is purged in steps), one
        pass of ``ops/purge.py`` on its own worker; observe mode purges as MyHoard does
        (``purge_when_observe_no_streams``), the decision knows the mode."""
        if not self.settings.binlog_purge_settings.enabled or not self._free(PURGE):
            return
        if self._deposed:
            # A deposed primary deletes nothing, its local binlogs included: they hold
            # what it committed after the takeover, for the operator (docs/failover.md).
            return
        if self._next_purge_at is not None and self._now < self._next_purge_at:
            return
        observing = self.state.mode == "observe"
        control = self.state.control
        state, reported = control.replication_state, control.replication_reported_at
        self._start(
            PURGE, lambda work: self.doers.purge(observing, state, reported, work), self._purged
        )

    def _purged(self, done: JobDone) -> None:
        interval = timedelta(seconds=self.settings.binlog_purge_settings.purge_interval)
        self._next_purge_at = self._now + interval
        result = done.result
        if not isinstance(result, PurgeDone):
            return
        if result.more:
            self._next_purge_at = self._now + min(interval, PURGE_FOLLOW_UP)
        last_at, count = None, 0
        if result.purged:
            log.info("binlog purge removed %s", ", ".join(result.purged))
            last_at, count = self._now, len(result.purged)
        elif self.purge_view is not None:
            last_at, count = self.purge_view.last_purge_at, self.purge_view.purged_files
        self.purge_view = PurgeView(
            checked_at=self._now,
            last_purge_at=last_at,
            purged_files=count,
            next_kept=result.next_kept,
            blocked_by=result.blocked_by,
            stale_nodes=result.stale_nodes,
        )

    # --- restore tests (not in restore or promote mode) -------------------------------------
    def _request_restore_test(self, command: RunRestoreTest) -> None:
        if self.state.mode in ("restore", "promote"):
            raise ConflictError(f"restore tests do not run in {self.state.mode} mode")
        stream = self._find_stream(command.stream_id)
        if stream.manifest is None or stream.broken_reason is not None:
            raise ConflictError(f"stream {stream.stream_id} is broken: {stream.broken_reason}")
        if any(b.stream_id == stream.stream_id and b.broken for b in self.state.broken_marks):
            raise ConflictError(f"stream {stream.stream_id} is being marked broken")
        queued = self.state.restore_tests
        if any(
            (r.site, r.stream_id) == (stream.site, stream.stream_id) and r.started_at is None
            for r in queued
        ):
            return  # already waiting: that test answers this request too
        request = RestoreTestRequest(stream.site, stream.stream_id, "requested", self._now)
        self._update(restore_tests=(*queued, request))

    def _restore_test(self) -> None:
        """One test at a time on its own worker (``ops/restore_test.py``): what was asked
        for first, else the scheduled one when due (active mode, ``restore_test``)."""
        if not self._free(RESTORE_TEST):
            return
        if not self._leftovers_removed and self.settings.restore_test.enabled:
            # What a test killed with the daemon left (its scratch server still running):
            # removed at the start, not at the next slot. A requested test interrupted
            # by the restart is still queued: it removes them first itself.
            self._leftovers_removed = True
            self._start(RESTORE_TEST, self.doers.remove_restore_test_leftovers, lambda _: None)
            return
        queued = self.state.restore_tests
        if queued and queued[0].started_at is not None:
            log.info("restore test of %s interrupted by a restart: run again", queued[0].stream_id)
        if not queued:
            scheduled = self._scheduled_test()
            if scheduled is None:
                return
            queued = (scheduled,)
            self._facts(last_restore_test_at=self._now)
        request = replace(queued[0], started_at=self._now)
        self._update(restore_tests=(request, *queued[1:]))
        log.info(
            "restore test of %s (%s)", request.stream_id or "the newest backup", request.reason
        )
        self._start(
            RESTORE_TEST,
            lambda work: self.doers.restore_test(request.site, request.stream_id, work),
            lambda done: self._restore_tested(done, request),
        )

    def _scheduled_test(self) -> RestoreTestRequest | None:
        rt = self.settings.restore_test
        if not rt.enabled or self.state.mode != "active" or self._deposed:
            return None
        if not any(s.manifest is not None and not s.broken_reason for s in self._upload_streams()):
            return None  # nothing to test yet
        due = restore_test_due(
            self._now,
            self.state.facts.last_restore_test_at,
            rt.hour,
            rt.minute,
            rt.interval_minutes,
        )
        if not due.due:
            return None
        log.info("scheduled restore test due: %s", due.reason)
        site = self.settings.backup_settings.upload_site
        return RestoreTestRequest(site, None, "scheduled", self._now)

    def _restore_tested(self, done: JobDone, request: RestoreTestRequest) -> None:
        rest = tuple(r for r in self.state.restore_tests if r != request)
        result = done.result
        if isinstance(result, RestoreTestDone):
            tested = result.result
            kept = [
                r
                for r in self.state.restore_test_results
                if (r.site, r.stream_id) != (tested.site, tested.stream_id)
            ]
            results = (*kept, tested)[-RESTORE_TEST_RESULTS:]
            self._update(restore_tests=rest, restore_test_results=results)
            return
        error = done.error
        if isinstance(error, BrokenBackupError) and request.stream_id is not None:
            # Marked broken (by another node, or the command line) after the last
            # listing: the request was taken, so its answer is the stream's result, as
            # a test refused for its bounds; and the listing is read again at once.
            refusal = RestoreTestResult(
                result="refused",
                reason=f"not started: {error.message}",
                started_at=request.started_at or self._now,
                finished_at=self._now,
                rto_seconds=None,
                gtid=None,
                tables_checked=0,
                site=request.site,
                stream_id=request.stream_id,
            )
            kept = [
                r
                for r in self.state.restore_test_results
                if (r.site, r.stream_id) != (request.site, request.stream_id)
            ]
            results = (*kept, refusal)[-RESTORE_TEST_RESULTS:]
            self._update(restore_tests=rest, restore_test_results=results)
            self._site_changes += 1
            return
        if error is not None and (error.retryable or isinstance(error, CancelledError)):
            # Tried again (after the slot's retry delay, or at the next start).
            self._update(restore_tests=(replace(request, started_at=None), *rest))
        else:
            self._update(restore_tests=rest)  # the error is GET /status's last_error

    # --- publishing -----------------------------------------------------------------------
    def _build_snapshot(self) -> Snapshot:
        key = (self.view, self.state.restore_test_results, self.state.restore_tests)
        cached, backups = self._views_of
        if cached != key or backups is None:
            pending = {(r.site, r.stream_id or "") for r in self.state.restore_tests}
            backups = backup_views(self.view, self.state.restore_test_results, pending)
            self._views_of = (key, backups)
        return Snapshot(
            taken_at=self._now,
            status=status_view(
                self.state,
                self._deposed,
                self.purge_view,
                reload_refused=self.reload_refused,
                promotion=self.promote_progress,
                history=self.view.history if self.view is not None else None,
            ),
            backups=backups,
            restore=restore_view(self.state.restore, self.restore_progress),
        )

    def _next_wake(self) -> datetime:
        """When the loop must step again at the latest, with nothing arriving."""
        times = [self._now + MAX_IDLE, *self._retry_at.values()]
        if self._metrics_refreshed is not None:
            times.append(self._metrics_refreshed + METRICS_REFRESH)
        if self._next_list_at is not None:
            times.append(self._next_list_at)
        if self.state.mode == "active":
            times += [t for t in (self._next_archive_at, self._next_retention_at) if t is not None]
        paused = self.state.control.backups_paused_until
        if paused is not None:
            times.append(paused)
        if self._next_purge_at is not None and self.state.mode in ("active", "observe"):
            times.append(self._next_purge_at)
        if self.state.mode == "active":
            bs = self.settings.backup_settings
            times.append(
                next_slot(self._now, bs.backup_hour, bs.backup_minute, bs.backup_interval_minutes)
            )
            rt = self.settings.restore_test
            if rt.enabled:
                times.append(next_slot(self._now, rt.hour, rt.minute, rt.interval_minutes))
        # Only what lies ahead: what was due now and could start has started in this
        # step; what could not waits for a running job, whose end wakes the loop (a time
        # already past would make it spin).
        return min(t for t in times if t > self._now)


def _mark_key(request: PreservationRequest | BrokenRequest) -> tuple[str, str, str]:
    kind = "preserve" if isinstance(request, PreservationRequest) else "broken"
    return (request.site, request.stream_id, kind)


def _stored(name: str, result: ArchiveDone) -> bool:
    """Whether binlog ``name`` is archived in every open stream of this server."""
    if not result.open_streams:
        return False
    key = binlog_sort_key(name)
    return all(
        s.last_file is not None and binlog_sort_key(s.last_file) >= key for s in result.open_streams
    )
