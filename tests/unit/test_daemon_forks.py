"""The daemon and histories (docs/format.md, "Histories and forks"), stepped with the
controller harness (tests/support/daemon.py): a node restored to an earlier point that
is promoted starts a new stream at once and leaves the old one as it is; a deposed
primary that restarts writes nothing before its first archive pass finds it deposed
again."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.daemon.api_models import StatusOut
from binhoard.daemon.jobs import ARCHIVE, BACKUP, RESTORE
from binhoard.daemon.port import RequestBackup, SetMode
from binhoard.domain.history import History
from binhoard.ops.catalog import StreamState, read_site
from tests.support.daemon import Harness

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 01:00 UTC
FORK = History("fedcba9876543210", True, "restored to GTID position 0-101-2 of stream S")


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path, START)


def _active(h: Harness) -> str:
    h.settle()
    h.submit(SetMode("active"))
    h.settle()
    (backup_id,) = h.doers.backup_ids()
    return backup_id


def _stream(h: Harness, stream_id: str) -> StreamState:
    return next(s for s in read_site(h.doers.store).streams if s.stream_id == stream_id)


def _deposed(h: Harness) -> str:
    """An active primary (purge enabled) whose stream a node of server_id 999 took over."""
    backup_id = _active(h)
    h.depose(backup_id)
    h.step(seconds=6)
    h.settle()
    assert h.controller.snapshot().status.deposed
    return backup_id


def test_a_restarted_deposed_primary_writes_nothing_before_its_first_pass(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, START, binlog_purge_settings__purge_interval=60)
    backup_id = _deposed(h)
    h.submit(RequestBackup())  # kept in the state, never started while deposed
    h.restart()
    h.doers.retention_runs, h.doers.purge_calls = 0, []  # those before it was deposed
    # Everything is due at once: a backup (requested, and the schedule's), retention,
    # binlog purge. Only what reads runs until the first archive pass.
    h.step(hours=25)
    status = StatusOut.model_validate(h.controller.snapshot().status)
    assert status.deposed and "taken over by server_id 999" in status.deposed[0]
    assert not h.executor.busy(BACKUP)
    for slot, _ in list(h.executor.pending):
        if slot != ARCHIVE:
            h.run(slot)
    assert h.doers.backup_ids() == [backup_id]
    assert h.doers.retention_runs == 0 and h.doers.purge_calls == []
    h.run(ARCHIVE)  # finds it deposed again: still nothing
    h.step(hours=1)
    h.settle()
    assert h.doers.backup_ids() == [backup_id]
    assert h.doers.retention_runs == 0 and h.doers.purge_calls == []


def test_the_deposed_fact_survives_a_restart_and_a_pass_that_finds_none_clears_it(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, START)
    backup_id = _deposed(h)
    h.restart()
    assert h.controller.snapshot().status.deposed
    # Taken over again (it is promoted back): the next pass says it owns the stream.
    h.take_over(backup_id, h.doers.server_id)
    h.step(seconds=6)
    h.settle()
    assert h.controller.snapshot().status.deposed == ()
    h.restart()
    assert h.controller.snapshot().status.deposed == ()


def test_a_node_restored_to_an_earlier_point_starts_a_new_stream_when_promoted(
    h: Harness,
) -> None:
    """The same server_id as the stream's backup (restored in place): without history ids
    it would own the stream already and append its new writes to it."""
    h.settle()
    old = h.doers.put_backup()  # this server's, of the history it is forked from
    h.doers.rotate()
    h.doers.rotate()
    h.doers.build.archive(old.backup_id, 2)
    h.step(minutes=2)
    h.settle()
    h.submit(SetMode("restore", site="default", stream_id=old.backup_id, target_gtid="0-101-1"))
    h.run(RESTORE)
    assert h.mode == "observe"
    h.doers.history = FORK  # what the restore to an earlier point wrote (ops/history.py)
    h.step(minutes=2)
    h.settle()
    records = len(_stream(h, old.backup_id).records)

    h.submit(SetMode("active"))
    assert h.mode == "promote"
    h.run(RESTORE)
    assert h.mode == "active"
    status = StatusOut.model_validate(h.controller.snapshot().status)
    assert status.history is not None and status.history.startswith(FORK.history_id)
    h.settle()  # the full backup, at once
    new = [b for b in h.doers.backup_ids() if b != old.backup_id]
    assert len(new) == 1
    h.doers.rotate()
    h.step(seconds=6)
    h.settle()
    stream = _stream(h, old.backup_id)
    # Left as it was: no promotion, no record of the fork's, not closed, not broken.
    assert stream.promotions == () and len(stream.records) == records
    assert stream.closed is None and stream.broken is None
    fork = _stream(h, new[0])
    assert fork.backup.history_id == FORK.history_id and fork.records


def test_the_history_a_restore_sets_is_shown_once_it_completes(h: Harness) -> None:
    """Not a minute later, at the next periodic listing: the operator checks GET /status
    right after the restore (docs/failover.md)."""
    h.settle()
    old = h.doers.put_backup()
    h.doers.rotate()
    h.doers.build.archive(old.backup_id, 2)
    h.step(minutes=2)
    h.settle()
    h.submit(SetMode("restore", site="default", stream_id=old.backup_id, target_gtid="0-101-1"))
    h.doers.history = FORK  # written by the restore before it touches the datadir
    h.run(RESTORE)
    assert h.mode == "observe"
    h.settle()  # no time passes
    status = StatusOut.model_validate(h.controller.snapshot().status)
    assert status.history is not None and status.history.startswith(FORK.history_id)
