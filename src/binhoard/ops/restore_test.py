"""A restore test: a backup and its binlogs restored into a scratch server, checked,
then removed.

The newest usable backup of the site (or the stream asked for) is restored to the
newest archived transaction of its stream by the point-in-time restore itself
(``ops/pitr.py``), into a scratch server binhoard starts in its own directory on
127.0.0.1 (``ports.server.ScratchServer``): never the configured server or its datadir.
Then ``CHECK TABLE`` runs on every table and the marker row the source wrote before the
backup (``ops/backup.py``) is looked for. The time from the start to the restored server
at its final GTID is the RTO measured.

Bounds (``restore_test``): a backup whose restore would need more scratch space than
``max_disk_bytes`` or the file system's free space is refused before anything is
downloaded; a test over ``time_limit`` has its scratch server killed and ends failed.
The scratch directory is removed at the end whatever happened, and at the next test
(or daemon start) if a crash left it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from binhoard.config import BackupSite
from binhoard.disk import free_bytes
from binhoard.domain.errors import BinhoardError, CancelledError, NotFoundError
from binhoard.domain.manifest import BackupManifest
from binhoard.domain.restore_plan import BrokenBackupError
from binhoard.domain.restore_test import (
    Verdict,
    disk_needed,
    disk_problem,
    judge,
    marker_missing_reason,
    scratch_server_id,
)
from binhoard.localstate import exclusive
from binhoard.ops.catalog import SiteState, read_site
from binhoard.ops.pitr import PitrConfig, PitrProgress, PitrRequest, PointInTimeRestore
from binhoard.ops.restore_backup import backup_chain
from binhoard.ports.server import ScratchServer, ScratchServers
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.restore_test")

# The scratch server's directory, under restore_test.scratch_directory (short: a unix
# socket path must fit in 108 bytes).
SCRATCH_NAME = "rt"

Outcome = Literal["passed", "failed", "refused"]


@dataclass(frozen=True)
class RestoreTestConfig:
    """What a restore test needs besides its ports (``app.restore_test_config``)."""

    site_name: str
    sites: Mapping[str, BackupSite]  # the site's keys decrypt the backup
    scratch_directory: Path
    max_disk_bytes: int | None
    time_limit: float  # seconds
    max_binlog_bytes: int  # restore_max_binlog_bytes

    @property
    def scratch(self) -> Path:
        return self.scratch_directory / SCRATCH_NAME


@dataclass(frozen=True)
class RestoreTestReport:
    """How a test went. ``refused``: not started (the bounds); ``failed``: the backup
    did not restore, a check failed, or the time limit was reached. ``rto_seconds``:
    from the start to the restored server at ``gtid`` (None unless it got there)."""

    site: str
    stream_id: str
    started_at: datetime
    finished_at: datetime
    outcome: Outcome
    reason: str
    rto_seconds: float | None = None
    gtid: str | None = None
    tables_checked: int = 0

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def as_dict(self) -> dict[str, object]:
        return {
            "site": self.site,
            "stream_id": self.stream_id,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "result": self.outcome,
            "reason": self.reason,
            "rto_seconds": self.rto_seconds,
            "gtid": self.gtid,
            "tables_checked": self.tables_checked,
        }


def remove_leftovers(config: RestoreTestConfig, servers: ScratchServers) -> bool:
    """Removes a scratch server a killed test left (its process killed); whether one
    was there. ``ConflictError`` while another process runs a test."""
    with _lock(config):
        return _remove_leftovers(config, servers)


def _lock(config: RestoreTestConfig) -> AbstractContextManager[None]:
    # One test at a time per scratch directory: the daemon's and the command line's.
    return exclusive(config.scratch_directory / "restore-test.lock", "a restore test")


def _remove_leftovers(config: RestoreTestConfig, servers: ScratchServers) -> bool:
    if not config.scratch.exists():
        return False
    log.warning("removing the scratch server a restore test left: %s", config.scratch)
    servers.remove(config.scratch)
    return True


def choose_backup(site: SiteState, stream_id: str | None) -> BackupManifest:
    """The backup to test: ``stream_id``'s, else the newest usable one."""
    usable = site.backups.usable
    if stream_id is None:
        if not usable:
            raise NotFoundError("no usable backup to test")
        return max(usable, key=lambda b: (b.completed_at, b.backup_id))
    broken = site.backups.broken.get(stream_id)
    if broken is not None:
        raise BrokenBackupError(f"backup {stream_id} cannot be tested: {broken.reason}")
    for backup in usable:
        if backup.backup_id == stream_id:
            return backup
    raise NotFoundError(f"no backup {stream_id!r} in the site")


def run_restore_test(
    store: ObjectStore,
    config: RestoreTestConfig,
    servers: ScratchServers,
    *,
    stream_id: str | None = None,
    cancel: threading.Event | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RestoreTestReport:
    """Tests ``stream_id``'s backup (else the newest usable one) of ``store``. Returns
    the report, whatever the outcome; ``CancelledError`` when ``cancel`` is set first
    (nothing is learnt), ``NotFoundError`` when there is no such backup,
    ``ConflictError`` while another process runs a test."""
    with _lock(config):
        _remove_leftovers(config, servers)
        return _test(store, config, servers, stream_id, cancel, now)


def _test(  # noqa: PLR0917 - run_restore_test's body, under its lock
    store: ObjectStore,
    config: RestoreTestConfig,
    servers: ScratchServers,
    stream_id: str | None,
    cancel: threading.Event | None,
    now: Callable[[], datetime],
) -> RestoreTestReport:
    started_at = now()
    site = read_site(store)
    backup = choose_backup(site, stream_id)
    stream = next(s for s in site.streams if s.stream_id == backup.backup_id)

    def report(
        outcome: Outcome,
        reason: str,
        rto_seconds: float | None = None,
        gtid: str | None = None,
        tables_checked: int = 0,
    ) -> RestoreTestReport:
        return RestoreTestReport(
            config.site_name,
            backup.backup_id,
            started_at,
            now(),
            outcome,
            reason,
            rto_seconds=rto_seconds,
            gtid=gtid,
            tables_checked=tables_checked,
        )

    chain_bytes = sum(m.data.plain_size for m in backup_chain(store, backup))
    needed = disk_needed(chain_bytes, sum(r.size for r in stream.records), config.max_binlog_bytes)
    config.scratch_directory.mkdir(parents=True, exist_ok=True)
    free = free_bytes(config.scratch_directory)
    why_not = disk_problem(needed, needed if free is None else free, config.max_disk_bytes)
    if why_not is not None:
        log.error("restore test of %s refused: %s", backup.backup_id, why_not)
        return report("refused", f"not started: {why_not}")
    known_ids = {b.server_id for b in site.backups.usable}
    known_ids |= {r.server_id for s in site.streams for r in s.records}
    scratch = servers.create(config.scratch, scratch_server_id(known_ids))
    log.info(
        "restore test of backup %s into a scratch server on 127.0.0.1:%d (%s)",
        backup.backup_id,
        scratch.port,
        scratch.directory,
    )
    run = _Run(scratch, config, cancel)
    try:
        verdict, rto, gtid, tables = run.execute(store, backup)
    except CancelledError:
        if run.timed_out.is_set():
            return report("failed", run.over_time())
        raise
    except BinhoardError as exc:
        if run.timed_out.is_set():
            return report("failed", run.over_time())
        log.error("restore test of %s failed: %s", backup.backup_id, exc.message)
        return report("failed", f"the backup did not restore: {exc.message}")
    finally:
        run.end()
    outcome: Outcome = "passed" if verdict.passed else "failed"
    (log.info if verdict.passed else log.error)(
        "restore test of %s %s in %.1f s (RTO), GTID %s: %s",
        backup.backup_id,
        outcome,
        rto,
        gtid or "(empty)",
        verdict.reason,
    )
    return report(outcome, verdict.reason, rto_seconds=rto, gtid=gtid, tables_checked=tables)


class _Run:
    """One test's restore and checks on ``scratch``, under the time limit: when it is
    reached the scratch server is killed (from the timer's thread) and the restore stops
    at its next step."""

    def __init__(
        self, scratch: ScratchServer, config: RestoreTestConfig, cancel: threading.Event | None
    ) -> None:
        self.scratch = scratch
        self.config = config
        self.cancel = cancel
        self.stop = threading.Event()  # the restore's cancel: time out, or ``cancel``
        self.timed_out = threading.Event()
        self.timer = threading.Timer(config.time_limit, self._expire)
        self.timer.daemon = True

    def _expire(self) -> None:
        self.timed_out.set()
        self.stop.set()
        self.scratch.kill()

    def over_time(self) -> str:
        return f"over restore_test.time_limit ({self.config.time_limit:g} s): stopped"

    def _check_cancel(self, _progress: PitrProgress | None = None) -> None:
        if self.cancel is not None and self.cancel.is_set():
            self.stop.set()
        if self.stop.is_set():
            raise CancelledError("the restore test was stopped")

    def execute(
        self, store: ObjectStore, backup: BackupManifest
    ) -> tuple[Verdict, float, str, int]:
        self.timer.start()
        began = time.monotonic()
        server = self.scratch.server
        directory = self.scratch.directory
        pitr_config = PitrConfig(
            sites=self.config.sites,
            state_directory=directory / "state",
            temporary_directory=directory / "tmp",
            data_directory=self.scratch.datadir,
            server_config_file=self.scratch.config_file,
            max_binlog_bytes=self.config.max_binlog_bytes,
        )
        restore = PointInTimeRestore(
            server,
            store,
            pitr_config,
            progress=self._check_cancel,
            use_cache=False,
            cancel=self.stop,
        )
        try:
            restore.start(PitrRequest(self.config.site_name, {"to_latest": True}, backup.backup_id))
        finally:
            restore.close()
        rto = time.monotonic() - began
        gtid = str(restore.state.get("final_gtid_position") or "")
        self._check_cancel()
        tables = server.checks.check_tables()
        skipped = marker_missing_reason(backup.extra)
        found = skipped is None and server.checks.has_marker(backup.backup_id)
        self._check_cancel()
        verdict = judge(backup.backup_id, tables, marker_skipped=skipped, marker_found=found)
        return verdict, rto, gtid, len(tables)

    def end(self) -> None:
        self.timer.cancel()
        self.scratch.destroy()
