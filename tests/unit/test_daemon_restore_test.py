"""Restore tests in the daemon's controller, tick by tick (tests/support/daemon.py):
``POST /backup/{stream_id}/test`` queues one, the schedule of ``restore_test`` starts
one in active mode, the result shows in ``GET /backup``'s view of the stream, and the
test runs on its own worker without holding backups or archiving back."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.daemon.jobs import ARCHIVE, BACKUP, RESTORE_TEST, SITE
from binhoard.daemon.port import (
    BackupView,
    MarkBroken,
    RequestBackup,
    RunRestoreTest,
    SetMode,
    Ticket,
)
from binhoard.domain.errors import (
    BinhoardError,
    ConflictError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from binhoard.ops.marks import mark_broken
from tests.support.daemon import Harness

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 01:00 UTC


def refused(ticket: Ticket) -> BinhoardError:
    assert ticket.is_done and ticket.error is not None, "the command was not refused"
    return ticket.error


def accepted(ticket: Ticket) -> None:
    assert ticket.wait_decided(0) and ticket.error is None, ticket.error


def activate(h: Harness) -> str:
    h.settle()
    accepted(h.submit(SetMode("active")))
    h.settle()
    (backup_id,) = h.doers.backup_ids()
    return backup_id


def view_of(h: Harness, stream_id: str) -> BackupView:
    backups = h.controller.snapshot().backups
    assert backups is not None
    (view,) = (b for b in backups if b.stream_id == stream_id)
    return view


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path, START)


def test_a_requested_test_runs_on_its_worker_and_its_result_shows_with_the_stream(
    h: Harness,
) -> None:
    backup_id = activate(h)
    accepted(h.submit(RunRestoreTest(backup_id)))
    assert h.executor.busy(RESTORE_TEST)
    assert view_of(h, backup_id).restore_test_pending
    # Backups and archiving are not held back while it runs.
    accepted(h.submit(RequestBackup()))
    assert h.executor.busy(BACKUP)
    h.step(seconds=10)
    assert h.executor.busy(ARCHIVE)
    h.run(RESTORE_TEST)
    assert h.doers.restore_tests == [("default", backup_id)]
    view = view_of(h, backup_id)
    assert not view.restore_test_pending
    test = view.restore_test
    assert test is not None
    assert (test.result, test.rto_seconds, test.tables_checked) == ("passed", 12.5, 3)
    assert test.gtid == h.doers.build.backups[0].snapshot.gtid_position
    assert h.controller.state.restore_tests == ()


def test_a_request_for_an_unknown_stream_is_refused_and_one_twice_is_one_test(h: Harness) -> None:
    backup_id = activate(h)
    assert isinstance(refused(h.submit(RunRestoreTest("nope"))), NotFoundError)
    # Asked for while one runs: one more; asked for again while that one waits: merged.
    accepted(h.submit(RunRestoreTest(backup_id)))
    assert h.executor.busy(RESTORE_TEST)
    accepted(h.submit(RunRestoreTest(backup_id)))
    accepted(h.submit(RunRestoreTest(backup_id)))
    assert len(h.controller.state.restore_tests) == 2
    h.run(RESTORE_TEST)
    h.run(RESTORE_TEST)
    assert len(h.doers.restore_tests) == 2 and h.controller.state.restore_tests == ()


def test_no_test_in_restore_mode(h: Harness) -> None:
    h.doers.put_backup()
    h.settle()
    (backup_id,) = h.doers.backup_ids()
    accepted(h.submit(SetMode("restore", site="default", stream_id=backup_id)))
    error = refused(h.submit(RunRestoreTest(backup_id)))
    assert isinstance(error, ConflictError) and "restore mode" in error.message


def test_the_schedule_starts_a_test_of_the_newest_backup_once_per_slot(tmp_path: Path) -> None:
    h = Harness(tmp_path, START, restore_test={"enabled": True, "hour": 2, "minute": 0})
    activate(h)
    # Enabled: the scratch server a killed test may have left is removed first.
    assert h.doers.leftovers_removed == 1
    # Never tested: the last slot (yesterday's 02:00) is due at once, as a first backup.
    h.settle()
    assert h.doers.restore_tests == [("default", None)]  # None: the newest
    h.step(minutes=30)
    h.settle()
    assert len(h.doers.restore_tests) == 1  # not again before the next slot
    h.step(minutes=31)  # 02:01
    h.settle()
    assert len(h.doers.restore_tests) == 2
    h.step(hours=23)
    h.settle()
    assert len(h.doers.restore_tests) == 2
    assert h.controller.state.facts.last_restore_test_at is not None


def test_the_loop_wakes_for_the_next_test_slot(tmp_path: Path) -> None:
    h = Harness(tmp_path, START, restore_test={"enabled": True, "hour": 1, "minute": 30})
    activate(h)
    wake = h.controller.step(h.clock.now)
    assert wake <= datetime(2026, 3, 2, 1, 30, tzinfo=UTC)


def test_no_scheduled_test_unless_enabled_or_outside_active_mode(h: Harness) -> None:
    activate(h)
    h.step(hours=30)
    h.settle()
    assert h.doers.restore_tests == [] and h.doers.leftovers_removed == 0


def test_a_retryable_failure_keeps_the_request_a_final_one_drops_it(h: Harness) -> None:
    backup_id = activate(h)
    h.doers.failures["restore_test"] = [TransientStorageError("503"), StorageError("gone")]
    accepted(h.submit(RunRestoreTest(backup_id)))
    h.run(RESTORE_TEST)
    (request,) = h.controller.state.restore_tests
    assert request.started_at is None  # tried again after the slot's retry delay
    h.step(seconds=6)
    h.run(RESTORE_TEST)
    assert h.controller.state.restore_tests == ()
    assert h.controller.snapshot().status.last_error == "gone"
    assert view_of(h, backup_id).restore_test is None


def test_a_test_interrupted_by_a_restart_runs_again_and_results_survive(h: Harness) -> None:
    backup_id = activate(h)
    accepted(h.submit(RunRestoreTest(backup_id)))
    assert h.executor.busy(RESTORE_TEST)
    h.restart()  # the job is lost with the process
    h.settle()
    assert h.doers.restore_tests == [("default", backup_id)]
    h.restart()
    h.settle()
    test = view_of(h, backup_id).restore_test
    assert test is not None and test.result == "passed"
    assert not h.executor.busy(SITE)


def test_a_stream_marked_broken_since_the_last_listing_gets_a_refused_result(
    h: Harness,
) -> None:
    backup_id = activate(h)
    # Marked broken elsewhere (another node, the command line): the listing, read every
    # minute, does not show it yet, so the request is taken.
    mark_broken(h.doers.store, backup_id, broken=True, now=h.clock.now)
    accepted(h.submit(RunRestoreTest(backup_id)))
    h.run(RESTORE_TEST)
    assert h.controller.state.restore_tests == ()
    test = view_of(h, backup_id).restore_test
    assert test is not None and test.result == "refused"
    assert "cannot be tested" in test.reason
    h.step()  # listed again at once, not a minute later
    assert h.executor.busy(SITE)


def test_a_stream_being_marked_broken_is_not_tested(h: Harness) -> None:
    backup_id = activate(h)
    accepted(h.submit(MarkBroken(backup_id, broken=True)))
    error = refused(h.submit(RunRestoreTest(backup_id)))
    assert isinstance(error, ConflictError) and "being marked broken" in error.message
