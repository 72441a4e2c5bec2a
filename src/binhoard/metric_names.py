"""Every metric binhoard emits: its name, kind, unit, tags and meaning, in one place.

Code names a metric only through the constants below, and the registry
(``binhoard.metrics.Metrics``) refuses a name or a set of tags that is not declared
here, so nothing undocumented can be sent. ``docs/metrics.md`` holds the same table;
``tests/unit/test_metric_catalogue.py`` checks that the two agree row by row and that
every name declared here is used somewhere in ``src``. ``python -m binhoard.metric_names``
prints the table for the documentation.

Kinds:

* ``counter``: only goes up (statsd ``c``; Prometheus ``<name>_total``).
* ``gauge``: a value that is set (statsd ``g``).
* ``timing``: durations (statsd ``ms``, in milliseconds; Prometheus a summary of
  seconds, ``<name>_seconds_count`` and ``<name>_seconds_sum``).
* ``time``: a moment, as Unix seconds (a gauge), declared with an ``age`` right after
  it: a gauge of the seconds from that moment to the time of the export (the
  Prometheus scrape, or the ``Metrics.refresh`` that sends statsd). Ages are derived
  from their time, never set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "timing", "time", "age"]

_NAME = re.compile(r"binhoard(\.[a-z][a-z0-9_]*)+")
_TAG = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Kind
    unit: str
    help: str  # one line: Prometheus HELP and the meaning column of docs/metrics.md
    tags: tuple[str, ...] = ()
    age: str | None = None  # for a ``time``: the name of its age gauge

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"metric name {self.name!r} is not binhoard.<lowercase words>")
        if any(not _TAG.fullmatch(t) for t in self.tags) or len(set(self.tags)) != len(self.tags):
            raise ValueError(f"metric {self.name}: tags must be distinct lowercase words")
        if (self.kind == "time") != (self.age is not None):
            raise ValueError(f"metric {self.name}: a time (and only a time) names its age")

    @property
    def prometheus_name(self) -> str:
        base = self.name.replace(".", "_")
        if self.kind == "counter":
            return base + "_total"
        if self.kind == "timing":
            return base + "_seconds"
        return base

    @property
    def prometheus_type(self) -> str:
        return {"counter": "counter", "timing": "summary"}.get(self.kind, "gauge")


# --- binlog archiving (ops/archive.py) -------------------------------------------------
BINLOG_NEWEST_STORED_COMMIT_TIME = "binhoard.binlog.newest_stored_commit_time"
BINLOG_NEWEST_STORED_COMMIT_AGE = "binhoard.binlog.newest_stored_commit_age"
BINLOG_LAST_PASS_TIME = "binhoard.binlog.last_pass_time"
BINLOG_LAST_PASS_AGE = "binhoard.binlog.last_pass_age"
BINLOG_ARCHIVE_PROBLEMS = "binhoard.binlog.archive_problems"
BINLOG_ARCHIVE_STALLED = "binhoard.binlog.archive_stalled"
BINLOG_DEPOSED_STREAMS = "binhoard.binlog.deposed_streams"
BINLOG_ARCHIVE_PASS_FAILURES = "binhoard.binlog.archive_pass_failures"
BINLOG_FILES_UPLOADED = "binhoard.binlog.files_uploaded"
BINLOG_FORCED_ROTATIONS = "binhoard.binlog.forced_rotations"
BINLOG_PENDING_FILES = "binhoard.binlog.pending_files"
BINLOG_PENDING_BYTES = "binhoard.binlog.pending_bytes"
BINLOG_PURGED_FILES = "binhoard.binlog.purged_files"
BINLOG_PURGED_BYTES = "binhoard.binlog.purged_bytes"
BINLOG_PURGE_BLOCKED = "binhoard.binlog.purge_blocked"
BINLOG_PURGE_STALE_NODES = "binhoard.binlog.purge_stale_nodes"

# --- backups (ops/backup.py) ------------------------------------------------------------
BACKUP_LAST_COMPLETED_TIME = "binhoard.backup.last_completed_time"
BACKUP_LAST_COMPLETED_AGE = "binhoard.backup.last_completed_age"
BACKUP_COMPLETED = "binhoard.backup.completed"
BACKUP_DURATION = "binhoard.backup.duration"
BACKUP_LAST_STORED_BYTES = "binhoard.backup.last_stored_bytes"
BACKUP_BYTES_READ = "binhoard.backup.bytes_read"
BACKUP_ESTIMATED_BYTES = "binhoard.backup.estimated_bytes"

# --- object storage (every call, app.open_site with metrics) ------------------------------
STORAGE_REQUESTS = "binhoard.storage.requests"
STORAGE_BYTES = "binhoard.storage.bytes"
STORAGE_RATE = "binhoard.storage.rate"

# --- point-in-time restore (ops/pitr.py) -------------------------------------------------
RESTORE_PHASE = "binhoard.restore.phase"
RESTORE_BASEBACKUP_BYTES_DOWNLOADED = "binhoard.restore.basebackup_bytes_downloaded"
RESTORE_BASEBACKUP_BYTES_TOTAL = "binhoard.restore.basebackup_bytes_total"
RESTORE_BINLOGS_RESTORED = "binhoard.restore.binlogs_restored"
RESTORE_BINLOGS_PENDING = "binhoard.restore.binlogs_pending"
RESTORE_BINLOGS_TOTAL = "binhoard.restore.binlogs_total"
RESTORE_TRANSACTIONS_APPLIED = "binhoard.restore.transactions_applied"
RESTORE_TRANSACTIONS_PER_SECOND = "binhoard.restore.transactions_per_second"

# --- restore tests (ops/restore_test.py) --------------------------------------------------
RESTORE_TEST_LAST_TIME = "binhoard.restore_test.last_time"
RESTORE_TEST_LAST_AGE = "binhoard.restore_test.last_age"
RESTORE_TEST_COMPLETED = "binhoard.restore_test.completed"
RESTORE_TEST_PASSED = "binhoard.restore_test.passed"
RESTORE_TEST_RTO = "binhoard.restore_test.rto"
RESTORE_TEST_LAST_RTO = "binhoard.restore_test.last_rto"
RESTORE_TEST_GTID_SEQUENCE = "binhoard.restore_test.gtid_sequence"
RESTORE_TEST_TABLES_CHECKED = "binhoard.restore_test.tables_checked"

# --- errors (telemetry.report_error) ----------------------------------------------------
ERRORS = "binhoard.errors"

_DECLARED = (
    MetricSpec(
        BINLOG_NEWEST_STORED_COMMIT_TIME,
        "time",
        "Unix seconds",
        "Commit time of the newest transaction stored in an open stream of this server.",
        age=BINLOG_NEWEST_STORED_COMMIT_AGE,
    ),
    MetricSpec(
        BINLOG_NEWEST_STORED_COMMIT_AGE,
        "age",
        "seconds",
        "Seconds since the newest transaction stored in an open stream committed: "
        "the RPO as the site sees it.",
    ),
    MetricSpec(
        BINLOG_LAST_PASS_TIME,
        "time",
        "Unix seconds",
        "When the last archive pass that could read the server and the site ended.",
        age=BINLOG_LAST_PASS_AGE,
    ),
    MetricSpec(
        BINLOG_LAST_PASS_AGE,
        "age",
        "seconds",
        "Seconds since the last archive pass that could read the server and the site.",
    ),
    MetricSpec(
        BINLOG_ARCHIVE_PROBLEMS,
        "gauge",
        "count",
        "Gaps and broken or blocked streams found by the last archive pass; "
        "anything but 0 needs a person.",
    ),
    MetricSpec(
        BINLOG_ARCHIVE_STALLED,
        "gauge",
        "0 or 1",
        "1 while binlog archiving cannot advance (failed pass, gap, unstorable file, "
        "no open stream).",
    ),
    MetricSpec(
        BINLOG_DEPOSED_STREAMS,
        "gauge",
        "count",
        "This server's open streams that another node took over (a promotion): anything "
        "but 0 means this server was deposed and must stop taking writes.",
    ),
    MetricSpec(
        BINLOG_ARCHIVE_PASS_FAILURES,
        "counter",
        "passes",
        "Archive passes that failed, or left a stream unable to store a file.",
    ),
    MetricSpec(BINLOG_FILES_UPLOADED, "counter", "files", "Binlog files uploaded."),
    MetricSpec(
        BINLOG_FORCED_ROTATIONS,
        "counter",
        "rotations",
        "FLUSH BINARY LOGS issued because transactions waited forced_binlog_rotation_interval.",
    ),
    MetricSpec(
        BINLOG_PENDING_FILES,
        "gauge",
        "files",
        "Closed binlogs on the server that an open stream still needs archived.",
    ),
    MetricSpec(
        BINLOG_PENDING_BYTES,
        "gauge",
        "bytes",
        "Size of the closed binlogs that an open stream still needs archived.",
    ),
    MetricSpec(
        BINLOG_PURGED_FILES,
        "counter",
        "files",
        "Local binlogs removed by binlog purge (PURGE BINARY LOGS).",
    ),
    MetricSpec(
        BINLOG_PURGED_BYTES,
        "counter",
        "bytes",
        "Size of the local binlogs removed by binlog purge.",
    ),
    MetricSpec(
        BINLOG_PURGE_BLOCKED,
        "gauge",
        "0 or 1",
        "1 for the reason the oldest closed binlog is kept by the last purge pass "
        "(age, stream, unknown, replica, stale_replica, cap); 0 for the others.",
        tags=("reason",),
    ),
    MetricSpec(
        BINLOG_PURGE_STALE_NODES,
        "gauge",
        "nodes",
        "Nodes whose PUT /replication_state report is older than max_replication_state_age.",
    ),
    MetricSpec(
        BACKUP_LAST_COMPLETED_TIME,
        "time",
        "Unix seconds",
        "When the newest complete backup of this server finished.",
        age=BACKUP_LAST_COMPLETED_AGE,
    ),
    MetricSpec(
        BACKUP_LAST_COMPLETED_AGE,
        "age",
        "seconds",
        "Seconds since the newest complete backup of this server finished.",
    ),
    MetricSpec(
        BACKUP_COMPLETED,
        "counter",
        "backups",
        "Backups taken by this process.",
        tags=("type",),
    ),
    MetricSpec(
        BACKUP_DURATION,
        "timing",
        "seconds",
        "Time from the start of a backup to its manifest being stored.",
        tags=("type",),
    ),
    MetricSpec(
        BACKUP_LAST_STORED_BYTES,
        "gauge",
        "bytes",
        "Stored (compressed, encrypted) size of the last backup of each type.",
        tags=("type",),
    ),
    MetricSpec(
        BACKUP_BYTES_READ,
        "gauge",
        "bytes",
        "Bytes the running backup has read from mariabackup so far (0 when none runs).",
    ),
    MetricSpec(
        BACKUP_ESTIMATED_BYTES,
        "gauge",
        "bytes",
        "Estimated size of the running backup's stream (the datadir's size).",
    ),
    MetricSpec(
        STORAGE_REQUESTS,
        "counter",
        "requests",
        "Object storage calls, each counted once however many retries it took.",
        tags=("operation", "outcome"),
    ),
    MetricSpec(
        STORAGE_BYTES,
        "counter",
        "bytes",
        "Bytes moved by object storage calls, counted when the call ends.",
        tags=("operation", "data"),
    ),
    MetricSpec(
        STORAGE_RATE,
        "gauge",
        "bytes per second",
        "Transfer rate of the last put or get of at least 1 MiB: the upload and download rates.",
        tags=("operation", "data"),
    ),
    MetricSpec(
        RESTORE_PHASE,
        "gauge",
        "phase number",
        "Phase of the point-in-time restore: 0 getting_backup_info, 1 "
        "restoring_basebackup, 2 basebackup_restored, 3 applying_binlogs, "
        "4 finalizing, 5 completed, 6 failed, 7 replicating.",
    ),
    MetricSpec(
        RESTORE_BASEBACKUP_BYTES_DOWNLOADED,
        "gauge",
        "bytes",
        "Stored bytes of the backup chain downloaded so far.",
    ),
    MetricSpec(
        RESTORE_BASEBACKUP_BYTES_TOTAL,
        "gauge",
        "bytes",
        "Stored bytes of the backup chain being restored.",
    ),
    MetricSpec(RESTORE_BINLOGS_RESTORED, "gauge", "files", "Binlog files the server has applied."),
    MetricSpec(
        RESTORE_BINLOGS_PENDING,
        "gauge",
        "files",
        "Binlog files downloaded and waiting to be applied.",
    ),
    MetricSpec(RESTORE_BINLOGS_TOTAL, "gauge", "files", "Binlog files the restore applies in all."),
    MetricSpec(
        RESTORE_TRANSACTIONS_APPLIED,
        "gauge",
        "transactions",
        "Transactions the server has applied from the archived binlogs.",
    ),
    MetricSpec(
        RESTORE_TRANSACTIONS_PER_SECOND,
        "gauge",
        "transactions per second",
        "Recent rate of the binlog apply.",
    ),
    MetricSpec(
        RESTORE_TEST_LAST_TIME,
        "time",
        "Unix seconds",
        "When the last restore test ended, whatever its result.",
        age=RESTORE_TEST_LAST_AGE,
    ),
    MetricSpec(
        RESTORE_TEST_LAST_AGE,
        "age",
        "seconds",
        "Seconds since the last restore test ended.",
    ),
    MetricSpec(
        RESTORE_TEST_COMPLETED,
        "counter",
        "tests",
        "Restore tests, by result: passed, failed, refused (not started: the disk bounds).",
        tags=("result",),
    ),
    MetricSpec(
        RESTORE_TEST_PASSED,
        "gauge",
        "boolean",
        "1 when the last restore test passed, 0 when it failed or was refused.",
    ),
    MetricSpec(
        RESTORE_TEST_RTO,
        "timing",
        "seconds",
        "Restore tests' RTO: from the start to the scratch server at its final GTID.",
    ),
    MetricSpec(
        RESTORE_TEST_LAST_RTO,
        "gauge",
        "seconds",
        "RTO of the last restore test that restored its backup.",
    ),
    MetricSpec(
        RESTORE_TEST_GTID_SEQUENCE,
        "gauge",
        "sequence number",
        "GTID the last restore test restored to: its sequence number in each domain.",
        tags=("domain",),
    ),
    MetricSpec(
        RESTORE_TEST_TABLES_CHECKED,
        "gauge",
        "tables",
        "Tables the last restore test ran CHECK TABLE on.",
    ),
    MetricSpec(
        ERRORS,
        "counter",
        "errors",
        "Errors, by kind (the error's class) and where (the command or daemon task).",
        tags=("kind", "where"),
    ),
)


def _checked(specs: tuple[MetricSpec, ...]) -> tuple[MetricSpec, ...]:
    """Names are unique, and each time has its age, with the same tags, right after it."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError("a metric name is declared twice")
    ages = {spec.name: spec for spec in specs if spec.kind == "age"}
    for index, spec in enumerate(specs):
        if spec.kind != "time":
            continue
        age = ages.pop(spec.age or "", None)
        if age is None or specs[index + 1] is not age or age.tags != spec.tags:
            raise ValueError(f"metric {spec.name}: its age {spec.age} must follow it")
    if ages:
        raise ValueError(f"ages of no time: {sorted(ages)}")
    return specs


CATALOGUE: tuple[MetricSpec, ...] = _checked(_DECLARED)
SPECS: dict[str, MetricSpec] = {spec.name: spec for spec in CATALOGUE}


def markdown_table(specs: tuple[MetricSpec, ...] = CATALOGUE) -> str:
    """The catalogue as the table in docs/metrics.md."""
    lines = [
        "| name | kind | unit | tags | Prometheus | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in specs:
        tags = ", ".join(f"`{t}`" for t in spec.tags) or "-"
        lines.append(
            f"| `{spec.name}` | {spec.kind} | {spec.unit} | {tags} | "
            f"`{spec.prometheus_name}` | {spec.help} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
