"""What the use cases report: an archive pass's pending files, RPO and last pass (with
their ages), a failed pass counted by kind; backups and restore progress; object
storage calls through ``app.open_site(..., metrics=)``."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.domain.errors import ObjectNotFoundError
from binhoard.metrics import Metrics
from binhoard.ops.archive import ArchiveLoop, publish
from binhoard.ops.observe import (
    StorageMetrics,
    Throttle,
    data_kind,
    record_restore_progress,
)
from binhoard.ops.pitr import PitrProgress
from binhoard.storage.store import MemoryStore, read_all
from binhoard.storage.wrappers import MetricsStore
from tests.support.fakeserver import FakeServer, fake_archiver
from tests.support.sites import site_config
from tests.unit.test_archive_ops import (
    SERVER_ID,
    T0,
    settings_for,
    two_files_records_refused,
)


def test_a_pass_reports_pending_binlogs_the_rpo_and_its_own_time(tmp_path: Path) -> None:
    server, store = two_files_records_refused(tmp_path)
    settings = settings_for(tmp_path / "host")
    now = datetime(2026, 1, 2, tzinfo=UTC)
    archiver = fake_archiver(settings, store, now=lambda: now)
    metrics = Metrics(clock=lambda: now.timestamp() + 30)

    stuck = archiver.archive_files(server.binlogs())  # the first file's record is refused
    publish(settings.state_directory, stuck, metrics)
    sizes = sum((server.directory / name).stat().st_size for name in server.names)
    assert (stuck.pending_files, stuck.pending_bytes) == (2, sizes)
    assert metrics.value("binhoard.binlog.pending_files") == 2
    assert metrics.value("binhoard.binlog.pending_bytes") == sizes
    assert metrics.value("binhoard.binlog.newest_stored_commit_time") is None
    assert metrics.age("binhoard.binlog.last_pass_time") == 30
    assert metrics.value("binhoard.binlog.archive_pass_failures") == 1

    store.fail = False
    done = archiver.archive_files(server.binlogs())
    publish(settings.state_directory, done, metrics)
    assert (done.pending_files, done.pending_bytes) == (0, 0)
    assert metrics.value("binhoard.binlog.pending_files") == 0
    # The newest transaction (seq 25) committed at T0 + 25: the RPO seen is its age.
    assert metrics.value("binhoard.binlog.newest_stored_commit_time") == T0 + 25
    assert metrics.age("binhoard.binlog.newest_stored_commit_time", now=T0 + 100) == 75
    text = metrics.prometheus_text(now=T0 + 100)
    assert "binhoard_binlog_newest_stored_commit_age 75\n" in text


def test_a_failed_pass_keeps_the_pending_gauges_and_is_counted_by_kind(tmp_path: Path) -> None:
    """A pass that cannot read the server learns nothing: the gauges keep the last
    known values; the failure is counted under ``where=archive``."""
    settings = settings_for(tmp_path / "host")
    stopped = FakeServer(tmp_path / "server", server_id=SERVER_ID, running=False)
    metrics = Metrics()
    metrics.gauge("binhoard.binlog.pending_files", 3)
    loop = ArchiveLoop(fake_archiver(settings, MemoryStore(), server=stopped), metrics)
    report = loop.tick()
    assert report.failure is not None and report.pending_files is None
    assert metrics.value("binhoard.binlog.pending_files") == 3
    assert metrics.value("binhoard.binlog.archive_stalled") == 1
    assert metrics.value("binhoard.binlog.last_pass_time") is None
    errors = [line for line in metrics.prometheus_text().splitlines() if "errors_total{" in line]
    assert len(errors) == 1 and 'where="archive"' in errors[0]


def test_restore_progress_as_gauges() -> None:
    metrics = Metrics()
    progress = PitrProgress(
        phase="applying_binlogs",
        basebackup_compressed_bytes_downloaded=10,
        basebackup_compressed_bytes_total=10,
        binlogs_total=5,
        binlogs_restored=2,
        binlogs_pending=1,
        transactions_applied=1000,
        transactions_per_second=250.5,
    )
    record_restore_progress(metrics, progress)
    assert metrics.value("binhoard.restore.phase") == 3
    assert metrics.value("binhoard.restore.binlogs_restored") == 2
    assert metrics.value("binhoard.restore.binlogs_pending") == 1
    assert metrics.value("binhoard.restore.transactions_per_second") == 250.5
    progress.phase = "failed"
    record_restore_progress(metrics, progress)
    assert metrics.value("binhoard.restore.phase") == 6


def test_a_throttle_lets_a_report_through_per_interval_and_per_phase() -> None:
    clock = {"now": 0.0}
    throttle = Throttle(5.0, clock=lambda: clock["now"])
    assert throttle.due("streaming")
    clock["now"] = 4.9
    assert not throttle.due("streaming")
    assert throttle.due("storing manifest")  # a new phase at once
    clock["now"] = 10.0
    assert throttle.due("storing manifest")


def test_object_keys_are_sorted_by_what_they_hold() -> None:
    assert data_kind("backups/20260101T000000Z-0000abcd/data.xbstream.zst.age") == "backup"
    assert data_kind("backups/20260101T000000Z-0000abcd/manifest.json") == "document"
    assert data_kind("binlogs/7/binlog.000001-1767225600-0123-ab.zst.age") == "binlog"
    assert data_kind("streams/x/binlogs/00000001.json") == "document"


def test_storage_calls_are_counted_with_bytes_outcome_and_rate() -> None:
    metrics = Metrics()
    ticks = iter([0.0, 2.0, 10.0, 10.5, 20.0, 20.1])
    store = MetricsStore(MemoryStore(), StorageMetrics(metrics), clock=lambda: next(ticks))
    big = b"x" * (4 * 1024 * 1024)
    store.put("binlogs/7/binlog.000001-1-ab.zst.age", [big])  # 4 MiB in 2 s
    assert read_all(store, "binlogs/7/binlog.000001-1-ab.zst.age") == big  # in 0.5 s
    with pytest.raises(ObjectNotFoundError):
        store.stat("streams/x/archive-status.json")
    put = {"operation": "put", "data": "binlog"}
    assert metrics.value("binhoard.storage.bytes", put) == len(big)
    assert metrics.value("binhoard.storage.rate", put) == len(big) / 2
    get = {"operation": "get", "data": "binlog"}
    assert metrics.value("binhoard.storage.rate", get) == len(big) / 0.5
    assert metrics.value("binhoard.storage.requests", {"operation": "put", "outcome": "ok"}) == 1
    missing = {"operation": "stat", "outcome": "not_found"}
    assert metrics.value("binhoard.storage.requests", missing) == 1


def test_open_site_with_metrics_counts_every_call(tmp_path: Path) -> None:
    settings = parse_settings(site_config(tmp_path), source="test")
    metrics = Metrics()
    store = open_site(settings, metrics=metrics)
    store.put("streams/x/closed.json", [b"{}"])
    list(store.list("streams/"))
    ok = {"operation": "put", "outcome": "ok"}
    assert metrics.value("binhoard.storage.requests", ok) == 1
    assert metrics.value("binhoard.storage.requests", {"operation": "list", "outcome": "ok"}) == 1
    assert metrics.value("binhoard.storage.bytes", {"operation": "put", "data": "document"}) == 2
