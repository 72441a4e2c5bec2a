"""What the use cases did, as metrics: backups, restore progress, object storage calls.

The use cases report progress through callbacks and return what they made (a
manifest, a ``PitrProgress``); these functions turn that into the catalogue's metrics
(``binhoard.metric_names``), so that the daemon and the CLI report alike. The archive
pass sets its own (``ops/archive.py``, ``publish``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from binhoard.domain.errors import NotFoundError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.manifest import BackupManifest
from binhoard.domain.pitr import PHASES
from binhoard.metric_names import (
    BACKUP_BYTES_READ,
    BACKUP_COMPLETED,
    BACKUP_DURATION,
    BACKUP_ESTIMATED_BYTES,
    BACKUP_LAST_COMPLETED_TIME,
    BACKUP_LAST_STORED_BYTES,
    RESTORE_BASEBACKUP_BYTES_DOWNLOADED,
    RESTORE_BASEBACKUP_BYTES_TOTAL,
    RESTORE_BINLOGS_PENDING,
    RESTORE_BINLOGS_RESTORED,
    RESTORE_BINLOGS_TOTAL,
    RESTORE_PHASE,
    RESTORE_TEST_COMPLETED,
    RESTORE_TEST_GTID_SEQUENCE,
    RESTORE_TEST_LAST_RTO,
    RESTORE_TEST_LAST_TIME,
    RESTORE_TEST_PASSED,
    RESTORE_TEST_RTO,
    RESTORE_TEST_TABLES_CHECKED,
    RESTORE_TRANSACTIONS_APPLIED,
    RESTORE_TRANSACTIONS_PER_SECOND,
    STORAGE_BYTES,
    STORAGE_RATE,
    STORAGE_REQUESTS,
)
from binhoard.metrics import Metrics
from binhoard.ops.backup import BackupProgress
from binhoard.ops.pitr import PitrProgress
from binhoard.ops.restore_test import RestoreTestReport

# Smaller transfers are dominated by request latency: their rate says nothing of the
# bandwidth.
RATE_MIN_BYTES = 1024 * 1024


def record_backup(metrics: Metrics, manifest: BackupManifest) -> None:
    """A backup this process has just taken."""
    kind = {"type": manifest.backup_type}
    metrics.set_time(BACKUP_LAST_COMPLETED_TIME, manifest.completed_at)
    metrics.increment(BACKUP_COMPLETED, tags=kind)
    metrics.timing(BACKUP_DURATION, manifest.duration_seconds, tags=kind)
    stored = manifest.data.stored_size + manifest.my_cnf.stored_size
    metrics.gauge(BACKUP_LAST_STORED_BYTES, stored, tags=kind)
    metrics.gauge(BACKUP_BYTES_READ, 0)
    metrics.gauge(BACKUP_ESTIMATED_BYTES, 0)


def record_restore_test(metrics: Metrics, report: RestoreTestReport) -> None:
    """A restore test this process ran (``ops/restore_test.py``)."""
    metrics.set_time(RESTORE_TEST_LAST_TIME, report.finished_at)
    metrics.increment(RESTORE_TEST_COMPLETED, tags={"result": report.outcome})
    metrics.gauge(RESTORE_TEST_PASSED, 1 if report.outcome == "passed" else 0)
    metrics.gauge(RESTORE_TEST_TABLES_CHECKED, report.tables_checked)
    if report.rto_seconds is not None:
        metrics.timing(RESTORE_TEST_RTO, report.rto_seconds)
        metrics.gauge(RESTORE_TEST_LAST_RTO, report.rto_seconds)
    if report.gtid:
        for gtid in GtidPosition.parse(report.gtid).values():
            metrics.gauge(
                RESTORE_TEST_GTID_SEQUENCE, gtid.seq_no, tags={"domain": str(gtid.domain_id)}
            )


def record_backup_progress(metrics: Metrics, progress: BackupProgress) -> None:
    """The running backup's progress (what its progress callback reports)."""
    metrics.gauge(BACKUP_BYTES_READ, progress.bytes_read)
    metrics.gauge(BACKUP_ESTIMATED_BYTES, progress.estimated_total)


def record_restore_progress(metrics: Metrics, progress: PitrProgress) -> None:
    """A point-in-time restore's progress (what its callback reports, or its result)."""
    if progress.phase in PHASES:
        metrics.gauge(RESTORE_PHASE, PHASES.index(progress.phase))
    metrics.gauge(
        RESTORE_BASEBACKUP_BYTES_DOWNLOADED, progress.basebackup_compressed_bytes_downloaded
    )
    metrics.gauge(RESTORE_BASEBACKUP_BYTES_TOTAL, progress.basebackup_compressed_bytes_total)
    metrics.gauge(RESTORE_BINLOGS_RESTORED, progress.binlogs_restored)
    metrics.gauge(RESTORE_BINLOGS_PENDING, progress.binlogs_pending)
    metrics.gauge(RESTORE_BINLOGS_TOTAL, progress.binlogs_total)
    metrics.gauge(RESTORE_TRANSACTIONS_APPLIED, progress.transactions_applied)
    metrics.gauge(RESTORE_TRANSACTIONS_PER_SECOND, progress.transactions_per_second)


class Throttle:
    """Lets a progress callback (called for every MiB) report at most every
    ``interval`` seconds, and at once when the phase changes."""

    def __init__(self, interval: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: tuple[str, float] | None = None

    def due(self, phase: str) -> bool:
        now = self.clock()
        last = self._last
        if last is not None and last[0] == phase and now - last[1] < self.interval:
            return False
        self._last = (phase, now)
        return True


def data_kind(key: str) -> str:
    """What an object holds, by its key (docs/format.md): ``backup`` (a backup's data
    stream), ``binlog`` (a binlog's data) or ``document`` (manifests, records, the
    rest)."""
    if key.startswith("binlogs/"):
        return "binlog"
    if key.startswith("backups/") and "/data." in key:
        return "backup"
    return "document"


class StorageMetrics:
    """A ``StoreObserver`` (``storage/wrappers.py``'s ``MetricsStore``): counts calls by
    operation and outcome, bytes by operation and data, and keeps the rate of the last
    large transfer of each (the upload and download rates)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_call(
        self, operation: str, key: str, seconds: float, nbytes: int, error: BaseException | None, /
    ) -> None:
        if error is None:
            outcome = "ok"
        elif isinstance(error, NotFoundError):
            outcome = "not_found"  # routine: a status document not written yet
        else:
            outcome = "error"
        self.metrics.increment(STORAGE_REQUESTS, tags={"operation": operation, "outcome": outcome})
        if operation not in ("put", "get") or nbytes <= 0:
            return
        tags = {"operation": operation, "data": data_kind(key)}
        self.metrics.increment(STORAGE_BYTES, nbytes, tags=tags)
        if error is None and nbytes >= RATE_MIN_BYTES and seconds > 0:
            self.metrics.gauge(STORAGE_RATE, nbytes / seconds, tags=tags)
