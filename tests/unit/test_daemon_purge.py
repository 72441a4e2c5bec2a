"""Binlog purge in the controller, stepped with a scripted clock and fake doers: when a
pass runs (active and observe, every purge_interval, sooner while a capped backlog
drains), what it is given (the replication state and when each node was reported), and
what GET /status shows of it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from binhoard.daemon.api_models import StatusOut
from binhoard.daemon.controller import PURGE_FOLLOW_UP
from binhoard.daemon.jobs import PURGE
from binhoard.daemon.port import SetMode, SetReplicationState
from binhoard.domain.errors import ServerError
from tests.support.daemon import Harness

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def harness(tmp_path: Path, **overrides: object) -> Harness:
    settings = {"binlog_purge_settings__purge_interval": 60, **overrides}
    return Harness(tmp_path, START, **settings)


def active(h: Harness) -> None:
    h.settle()
    h.submit(SetMode("active"))
    h.settle()


def test_idle_never_purges(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.settle()
    h.step(seconds=600)
    assert not h.executor.busy(PURGE) and h.doers.purge_calls == []


def test_active_purges_every_interval_with_the_reported_state(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.submit(SetReplicationState({"n1": {"gtid_current_pos": "0-1-5"}}))
    active(h)
    ((observing, state, reported),) = h.doers.purge_calls
    assert not observing
    assert state == {"n1": {"gtid_current_pos": "0-1-5"}}
    assert reported == {"n1": START.timestamp()}
    h.step(seconds=59)
    assert not h.executor.busy(PURGE)
    h.step(seconds=1)
    assert h.executor.busy(PURGE)


def test_status_shows_the_last_pass_and_what_blocks(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.doers.build.files = 3
    h.doers.stale_nodes = ("n2",)
    active(h)
    status = StatusOut.model_validate(h.controller.snapshot().status)
    assert status.binlog_purge is not None
    purge = status.binlog_purge
    assert purge.last_purge_at == START and purge.purged_files == 3
    assert purge.stale_nodes == ["n2"] and purge.next_kept == "binlog.000004"
    # A later pass that removes nothing keeps the last purge's time, with its reason.
    h.doers.purge_blocked_by = "binlog.000004 is not applied on node n2"
    h.step(seconds=60)
    h.settle()
    view = h.controller.snapshot().status.binlog_purge
    assert view is not None
    assert view.last_purge_at == START and view.purged_files == 3
    assert view.blocked_by == "binlog.000004 is not applied on node n2"
    assert view.checked_at > START


def test_a_capped_backlog_drains_in_steps(tmp_path: Path) -> None:
    h = harness(tmp_path, binlog_purge_settings__max_files_per_cycle=2)
    h.doers.build.files = 5
    active(h)
    assert h.doers.purged == 2
    h.step(seconds=PURGE_FOLLOW_UP.total_seconds())
    h.settle()
    assert h.doers.purged == 4
    h.step(seconds=PURGE_FOLLOW_UP.total_seconds())
    h.settle()
    assert h.doers.purged == 5
    # Drained: back to the interval.
    h.step(seconds=PURGE_FOLLOW_UP.total_seconds())
    assert not h.executor.busy(PURGE)


def test_observe_purges_as_an_observer(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.settle()
    h.submit(SetMode("observe"))
    h.settle()
    assert [call[0] for call in h.doers.purge_calls] == [True]


def test_disabled_purges_nothing(tmp_path: Path) -> None:
    h = harness(tmp_path, binlog_purge_settings__enabled=False)
    active(h)
    h.step(seconds=600)
    assert not h.executor.busy(PURGE) and h.doers.purge_calls == []


def test_a_failed_pass_is_retried_and_reported(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.doers.failures["purge"] = [ServerError("PURGE BINARY LOGS: lost connection")]
    active(h)
    assert "lost connection" in (h.controller.snapshot().status.last_error or "")
    h.step(seconds=60)
    h.settle()
    assert len(h.doers.purge_calls) == 1  # the failed call raised before recording
    assert h.controller.snapshot().status.last_error is None


def test_report_times_survive_a_restart(tmp_path: Path) -> None:
    h = harness(tmp_path)
    h.submit(SetReplicationState({"n1": {"gtid_slave_pos": "0-1-5"}}))
    h.restart()
    assert h.controller.state.control.replication_reported_at == {"n1": START.timestamp()}
