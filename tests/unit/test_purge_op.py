"""ops/purge.py against the fake server (real binlog files) and a memory site: one
bounded PURGE per pass, the index re-read after it (the server may stop early), what a
lagging node keeps, observe mode, the dry run, and the metrics."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from binhoard.app import archive_config, backup_config
from binhoard.config import BinlogPurgeSettings
from binhoard.crypto.age import Identity
from binhoard.metrics import Metrics
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.backup import create_backup
from binhoard.ops.catalog import read_site
from binhoard.ops.purge import BinlogPurger, PurgeReport
from binhoard.storage.store import MemoryStore
from tests.support.fakeserver import FakeServer, ScriptedClock, fake_host

IDENTITY = Identity.generate()
# The files' close times are their real modification times: an hour later, all are old.
LATER = datetime.now(UTC) + timedelta(hours=1)


def archived(tmp_path: Path, files: int = 6) -> tuple[FakeServer, MemoryStore]:
    """A backup, then ``files`` closed files of 2 transactions each, all archived."""
    config, server = fake_host(tmp_path, IDENTITY)
    store = MemoryStore()
    server.commit(1)
    create_backup(server, store, backup_config(config), now=ScriptedClock(LATER))
    for _ in range(files):
        server.commit(2)
        server.binlogs.flush()
    BinlogArchiver(server, store, archive_config(config), use_cache=False).archive_once()
    return server, store


def purger(server: FakeServer, metrics: Metrics | None = None, **settings: object) -> BinlogPurger:
    values: dict[str, object] = {"max_files_per_cycle": 4, **settings}
    return BinlogPurger(server, 7, BinlogPurgeSettings.model_validate(values), metrics)


def run(
    purge: BinlogPurger,
    store: MemoryStore,
    state: dict[str, dict[str, str]] | None = None,
    *,
    observing: bool = False,
    dry_run: bool = False,
) -> PurgeReport:
    state = state or {}
    at = {node: LATER.timestamp() for node in state}
    return purge.run(read_site(store), state, at, observing=observing, now=LATER, dry_run=dry_run)


def test_stored_and_applied_files_go_in_bounded_passes(tmp_path: Path) -> None:
    server, store = archived(tmp_path)
    metrics = Metrics()
    purge = purger(server, metrics)
    first = run(purge, store, {"replica": {"gtid_current_pos": "0-7-13"}})
    assert first.purged == ("binlog.000001", "binlog.000002", "binlog.000003", "binlog.000004")
    assert first.decision.kind == "cap"
    assert server.binlogs.list().names[0] == "binlog.000005"
    second = run(purge, store, {"replica": {"gtid_current_pos": "0-7-13"}})
    assert second.purged == ("binlog.000005", "binlog.000006"), second.blocked_by
    assert second.blocked_by == "binlog.000007 is the active file"
    text = metrics.prometheus_text()
    assert "binhoard_binlog_purged_files_total 6" in text
    assert 'binhoard_binlog_purge_blocked{reason="cap"} 0' in text


def test_a_lagging_node_keeps_what_it_has_not_applied(tmp_path: Path) -> None:
    server, store = archived(tmp_path)
    # Files end at 0-7-3, -5, -7, ...: the replica has applied the first two.
    report = run(purger(server), store, {"replica": {"gtid_slave_pos": "0-7-6"}})
    assert report.purged == ("binlog.000001", "binlog.000002")
    assert "binlog.000003 is not applied on node replica" in report.blocked_by
    assert server.binlogs.list().names[0] == "binlog.000003"


def test_files_not_stored_are_kept(tmp_path: Path) -> None:
    server, store = archived(tmp_path, files=2)
    server.commit(1)
    server.binlogs.flush()  # closed, not archived yet
    report = run(purger(server), store)
    assert report.purged == ("binlog.000001", "binlog.000002")
    assert report.decision.kind == "stream"
    assert "binlog.000003 is not stored in stream" in report.blocked_by


def test_the_index_is_read_again_when_the_server_stops_early(tmp_path: Path) -> None:
    server, store = archived(tmp_path)
    server.binlogs.purge_stops_at = "binlog.000002"
    metrics = Metrics()
    report = run(purger(server, metrics), store)
    assert report.decision.purge_to == "binlog.000005"
    assert report.purged == ("binlog.000001",)
    assert report.server_kept == "binlog.000002"
    assert "the server keeps binlog.000002" in report.blocked_by
    assert "binhoard_binlog_purged_files_total 1" in metrics.prometheus_text()


def test_a_dry_run_purges_nothing(tmp_path: Path) -> None:
    server, store = archived(tmp_path)
    report = run(purger(server), store, dry_run=True)
    assert len(report.decision.purge) == 4 and report.purged == ()
    assert server.binlogs.list().names[0] == "binlog.000001"


def test_young_files_are_kept(tmp_path: Path) -> None:
    server, store = archived(tmp_path)
    report = run(purger(server, min_binlog_age_before_purge=7200), store)
    assert report.purged == () and report.decision.kind == "age"


def test_observe_reads_its_own_files_and_checks_the_nodes(tmp_path: Path) -> None:
    """An observer's files are not in any record of its own: their end states are read
    from the files, and with no stream to protect (MyHoard's rule) only nodes count."""
    server, _ = archived(tmp_path)
    empty = MemoryStore()
    report = run(purger(server), empty, {"primary": {"gtid_current_pos": "0-7-9"}}, observing=True)
    assert report.purged == ("binlog.000001", "binlog.000002", "binlog.000003", "binlog.000004")
    refused = run(purger(server, purge_when_observe_no_streams=False), empty, observing=True)
    assert refused.purged == () and refused.decision.kind == "stream"


def test_after_a_reset_old_records_do_not_vouch_for_new_files(tmp_path: Path) -> None:
    """RESET MASTER: the names start again; the stream's record of the old
    binlog.000001 is not the new binlog.000001 (another size)."""
    server, store = archived(tmp_path, files=2)
    server.binlogs.reset(server.binlog_position)
    server.commit(5)
    server.binlogs.flush()
    report = run(purger(server), store)
    assert report.purged == ()
    assert report.blocked_by.startswith("binlog.000001 is not stored in stream")
