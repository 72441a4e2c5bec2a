"""The controller driven tick by tick: a scripted clock, a manual executor and doers
with behaviour over a memory site (tests/support/daemon.py). Mode changes and
refusals, the schedule, requested backups and rotations, restore -> observe, promote,
and what survives a restart."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from binhoard.daemon.api_models import StatusOut
from binhoard.daemon.jobs import ARCHIVE, BACKUP, RESTORE, SITE
from binhoard.daemon.port import (
    MarkBroken,
    PauseBackups,
    Preserve,
    RequestBackup,
    RotateBinlog,
    SetMode,
    SetReplicationState,
    Ticket,
)
from binhoard.daemon.state import StateStore
from binhoard.domain.errors import (
    ArchiveStalledError,
    BinhoardError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    ServerError,
    UsageError,
)
from binhoard.domain.gtid import GtidPosition
from binhoard.ops.catalog import StreamState, read_site
from tests.support.daemon import Harness
from tests.support.sites import SiteBuilder, position

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 01:00 UTC


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path, START)


def refused(ticket: Ticket) -> BinhoardError:
    assert ticket.is_done and ticket.error is not None, "the command was not refused"
    return ticket.error


def accepted(ticket: Ticket) -> None:
    assert ticket.wait_decided(0), "the command was not decided"
    assert ticket.error is None, ticket.error.message


def activate(h: Harness) -> str:
    """idle -> active; the first backup (no open stream of this server) is taken at once."""
    h.settle()
    accepted(h.submit(SetMode("active")))
    h.settle()
    (backup_id,) = h.doers.backup_ids()
    return backup_id


def test_starts_idle_and_lists_the_backups(h: Harness) -> None:
    assert h.mode == "idle"
    assert h.controller.snapshot().backups is None  # MyHoard's "backups": null
    h.step()
    assert h.executor.busy(SITE) and not h.executor.busy(BACKUP)
    h.run(SITE)
    assert h.controller.snapshot().backups == ()
    # idle does nothing else, and lists again a minute later.
    h.step(seconds=30)
    assert not h.executor.pending
    h.step(seconds=31)
    assert h.executor.busy(SITE)


def test_active_takes_the_first_backup_archives_and_shows_it(h: Harness) -> None:
    backup_id = activate(h)
    assert h.mode == "active"
    backups = h.controller.snapshot().backups
    assert backups is not None and [b.stream_id for b in backups] == [backup_id]
    status = h.controller.snapshot().status
    assert status.last_backup_at == START
    # Archive passes run every few seconds in active mode.
    h.step(seconds=6)
    assert h.executor.busy(ARCHIVE)


@pytest.mark.parametrize("target", ["observe", "idle", "restore"])
def test_active_is_never_left(h: Harness, target: str) -> None:
    activate(h)
    ticket = h.submit(SetMode(target, site="default", stream_id=h.doers.backup_ids()[0]))  # type: ignore[arg-type]
    assert isinstance(refused(ticket), ConflictError)
    assert h.mode == "active"
    accepted(h.submit(SetMode("active")))  # what it is already: accepted, nothing changes


def test_restore_requests_are_checked_before_anything_starts(h: Harness) -> None:
    h.doers.put_backup()
    h.doers.archive(rotate=True, work=None)  # type: ignore[arg-type]
    stream_id = h.doers.backup_ids()[0]
    # Before the first listing the stream cannot be checked.
    assert isinstance(
        refused(h.submit(SetMode("restore", site="default", stream_id=stream_id))), ConflictError
    )
    h.settle()
    cases = [
        (SetMode("restore"), UsageError),
        (SetMode("restore", site="nowhere", stream_id=stream_id), UsageError),
        (SetMode("restore", site="default", stream_id="20260101T000000Z-00000000"), NotFoundError),
        (
            SetMode(
                "restore",
                site="default",
                stream_id=stream_id,
                target_time=START - timedelta(days=1),
            ),
            UsageError,
        ),
        (  # after the newest archived transaction: refused now, not failed later
            SetMode(
                "restore",
                site="default",
                stream_id=stream_id,
                target_time=START + timedelta(days=365),
            ),
            UsageError,
        ),
        (SetMode("restore", site="default", stream_id=stream_id, target_gtid="x-y"), UsageError),
        (
            SetMode(
                "restore", site="default", stream_id=stream_id, target_gtid="0-1-1", force=True
            ),
            UsageError,
        ),
        (SetMode("idle"), None),  # already idle
    ]
    for command, error in cases:
        ticket = h.submit(command)
        if error is None:
            accepted(ticket)
        else:
            assert isinstance(refused(ticket), error), command
    assert h.mode == "idle" and not h.executor.busy(RESTORE)


def test_restore_runs_then_observe_then_promote_to_active(h: Harness) -> None:
    h.doers.put_backup(server_id=7)  # the node this one is restored from
    stream_id = h.doers.backup_ids()[0]
    h.settle()
    accepted(h.submit(SetMode("restore", site="default", stream_id=stream_id)))
    assert h.mode == "restore"
    view = h.controller.snapshot().restore
    assert view is not None and view.phase == "getting_backup_info"  # accepted, not started
    assert h.executor.busy(RESTORE)
    # Nothing else is accepted while it runs.
    assert isinstance(refused(h.submit(SetMode("observe"))), ConflictError)
    assert isinstance(refused(h.submit(SetMode("active"))), ConflictError)
    assert isinstance(refused(h.submit(RequestBackup())), ConflictError)
    h.run(RESTORE)
    assert h.mode == "observe"
    view = h.controller.snapshot().restore
    assert view is not None and view.phase == "completed"
    (request,) = h.doers.restores
    assert (request.stream_id, request.target_kind) == (stream_id, "latest")
    # observe only lists; active goes through promote, which then switches by itself.
    accepted(h.submit(SetMode("active")))
    assert h.mode == "promote"
    h.run(RESTORE)
    assert h.mode == "active"
    # This node has no open stream of its own: its first backup is taken at once.
    h.settle()
    assert len(h.doers.backup_ids()) == 2


def test_a_restore_to_before_any_transaction_says_so(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="binhoard.daemon")
    h.doers.put_backup()
    h.doers.restore_reaches = ""  # the empty GTID position: no transaction at all
    h.settle()
    stream_id = h.doers.backup_ids()[0]
    accepted(h.submit(SetMode("restore", site="default", stream_id=stream_id)))
    h.run(RESTORE)
    assert h.mode == "observe"
    assert "restore completed at GTID (empty): mode observe" in caplog.messages


def test_a_restore_that_cannot_go_on_is_failed_and_may_be_replaced(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h.doers.put_backup()
    stream_id = h.doers.backup_ids()[0]
    h.settle()
    h.doers.failures["restore"] = [
        ServerError("the server went away"),  # retryable: tried again
        UsageError("the datadir is not empty"),  # not: failed
    ]
    h.doers.restore_stops_after = "restoring_basebackup"
    accepted(h.submit(SetMode("restore", site="default", stream_id=stream_id)))
    h.run(RESTORE)
    record = h.controller.state.restore
    assert record is not None and record.phase == "restoring_basebackup"
    assert record.error == "the server went away"
    h.step(seconds=1)
    assert not h.executor.busy(RESTORE)  # waits before trying again
    h.step(seconds=5)
    h.run(RESTORE)
    record = h.controller.state.restore
    assert record is not None and (record.phase, record.error) == (
        "failed",
        "the datadir is not empty",
    )
    h.step(seconds=600)
    assert not h.executor.busy(RESTORE)  # failed is final
    # Each failure logged once, saying what follows.
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        "restore failed, tried again in 5 s: the server went away",
        "restore failed, not retried: the datadir is not empty",
    ]
    # Written durably: a restart shows the same.
    h.restart()
    h.step()
    assert h.mode == "restore" and not h.executor.busy(RESTORE)
    view = h.controller.snapshot().restore
    assert view is not None and view.phase == "failed" and view.error == "the datadir is not empty"
    h.settle()
    accepted(h.submit(SetMode("restore", site="default", stream_id=stream_id)))
    h.doers.restore_stops_after = None
    h.run(RESTORE)
    assert h.mode == "observe"


def test_the_schedule_takes_a_backup_when_the_clock_crosses_backup_hour(h: Harness) -> None:
    activate(h)  # at 01:00; backup_hour is 3 (UTC)
    for _ in range(5):  # until 02:59:30
        h.clock.advance(minutes=23, seconds=54)
        h.settle()
    assert h.clock.now < START.replace(hour=3) and len(h.doers.backup_ids()) == 1
    h.clock.now = START.replace(hour=3, second=1)
    h.settle()
    assert len(h.doers.backup_ids()) == 2
    h.step(hours=1)
    h.settle()
    assert len(h.doers.backup_ids()) == 2  # one a day


def test_a_pause_holds_scheduled_backups_but_not_requested_ones(h: Harness) -> None:
    activate(h)
    assert isinstance(refused(h.submit(PauseBackups(START - timedelta(hours=1)))), UsageError)
    accepted(h.submit(PauseBackups(START.replace(hour=5))))
    h.clock.now = START.replace(hour=2)
    ticket = h.submit(RequestBackup(incremental=True))
    assert ticket.is_done and ticket.error is None
    h.settle()
    assert len(h.doers.backup_ids()) == 2
    assert h.doers.build.backups[-1].backup_type == "incremental"
    h.clock.now = START.replace(hour=3, second=1)
    h.settle()
    assert len(h.doers.backup_ids()) == 2  # the 03:00 backup waits for the pause to end
    h.clock.now = START.replace(hour=5, second=1)
    h.settle()
    assert len(h.doers.backup_ids()) == 3
    assert h.controller.snapshot().status.backups_paused_until is None


def test_binlog_rotation_tickets_end_when_the_file_is_stored(h: Harness) -> None:
    h.settle()
    assert isinstance(refused(h.submit(RotateBinlog())), ConflictError)  # not active
    activate(h)
    first = h.submit(RotateBinlog())
    second = h.submit(RotateBinlog())  # before the rotation: one rotation serves both
    assert first.wait_decided(0) and not first.is_done
    h.run(ARCHIVE)
    assert first.is_done and first.error is None
    assert second.is_done and second.error is None
    assert h.doers.rotations == 1
    assert h.controller.state.rotations == ()


def test_a_rotation_with_no_stream_to_store_into_fails(h: Harness) -> None:
    h.settle()
    accepted(h.submit(SetMode("active")))
    h.doers.failures["take_backup"] = [ServerError("mariabackup failed")]
    h.settle()
    assert h.doers.backup_ids() == []
    ticket = h.submit(RotateBinlog())
    h.run(ARCHIVE)
    assert isinstance(refused(ticket), ArchiveStalledError)
    assert "no open backup stream" in refused(ticket).message
    assert h.controller.snapshot().status.last_error == "mariabackup failed"


def test_state_survives_a_restart(h: Harness) -> None:
    activate(h)
    accepted(h.submit(SetReplicationState({"node-b": {"gtid_current_pos": "0-1-5"}})))
    accepted(h.submit(PauseBackups(START + timedelta(days=1))))
    h.clock.advance(minutes=1)
    h.submit(RequestBackup())
    h.restart()
    h.step()
    snapshot = h.controller.snapshot()
    assert snapshot.status.mode == "active"
    assert snapshot.status.replication_state == {"node-b": {"gtid_current_pos": "0-1-5"}}
    assert snapshot.status.backups_paused_until == START + timedelta(days=1)
    assert len(h.controller.state.backups) == 1  # the requested backup is still to take
    h.settle()
    assert len(h.doers.backup_ids()) == 2


def test_a_backup_that_completed_before_a_crash_is_not_taken_again(h: Harness) -> None:
    activate(h)
    h.clock.advance(minutes=1)
    h.submit(RequestBackup())
    assert h.executor.busy(BACKUP)
    h.executor.run(BACKUP)  # the backup completes on the site...
    h.restart()  # ...but the daemon dies before it hears of it
    h.settle()
    assert len(h.doers.backup_ids()) == 2
    assert h.controller.state.backups == ()
    # One that did not complete is taken again.
    h.clock.advance(minutes=1)
    h.submit(RequestBackup())
    h.restart()
    h.settle()
    assert len(h.doers.backup_ids()) == 3


def test_a_failed_backup_is_retried_later(h: Harness) -> None:
    h.settle()
    accepted(h.submit(SetMode("active")))
    h.doers.failures["take_backup"] = [ServerError("server not ready")]
    h.settle()
    assert h.doers.backup_ids() == []
    assert h.controller.snapshot().status.last_error == "server not ready"
    h.step(seconds=2)
    assert not h.executor.busy(BACKUP)
    h.clock.advance(seconds=5)
    h.settle()
    assert len(h.doers.backup_ids()) == 1
    assert h.controller.snapshot().status.last_error is None  # that job works again


def test_the_state_file_is_only_written_when_something_changed(h: Harness) -> None:
    activate(h)
    path = h.controller.store.path
    wal = path.with_name(path.name + "-wal")
    size = wal.stat().st_size
    for _ in range(3):
        h.step(seconds=1)
    assert wal.stat().st_size == size
    assert StateStore(path).load().mode == "active"


def test_a_preservation_is_written_in_active_mode_and_listed_before_it_is_done(
    h: Harness,
) -> None:
    h.doers.put_backup()
    stream_id = h.doers.backup_ids()[0]
    until = START + timedelta(days=30)
    # Before the first listing the stream is unknown; an unknown stream is not found.
    assert isinstance(refused(h.submit(Preserve(stream_id, until))), ConflictError)
    h.settle()
    assert isinstance(
        refused(h.submit(Preserve("20200101T000000Z-00000000", until))), NotFoundError
    )
    assert isinstance(refused(h.submit(Preserve(stream_id, START - timedelta(days=1)))), UsageError)
    ticket = h.submit(Preserve(stream_id, until))
    accepted(ticket)
    h.settle()
    assert not ticket.is_done  # idle: recorded, applied once active (as MyHoard)
    assert isinstance(refused(h.submit(MarkBroken(stream_id))), ConflictError)  # not active
    accepted(h.submit(SetMode("active")))
    h.settle()
    assert ticket.is_done and ticket.error is None
    backups = h.controller.snapshot().backups
    assert backups is not None
    assert {b.stream_id: b.preserve_until for b in backups}[stream_id] == until


def test_a_stream_marked_broken_is_shown_broken_then_replaced(h: Harness) -> None:
    first = activate(h)
    h.clock.advance(minutes=5)
    ticket = h.submit(MarkBroken(first))
    for _ in range(3):  # the listing that was due, the mark, and a listing showing it
        assert not ticket.is_done
        h.run(SITE)
    assert ticket.is_done and ticket.error is None
    backups = {b.stream_id: b for b in h.controller.snapshot().backups or ()}
    assert backups[first].broken_at == START + timedelta(minutes=5)
    # Nothing archives into a broken stream: a new backup is taken at once, and then
    # retention deletes the broken one, since a newer one can be restored.
    h.settle()
    (second,) = h.controller.snapshot().backups or ()
    assert second.stream_id != first and second.broken_at is None


def test_retention_deletes_what_the_settings_no_longer_keep(tmp_path: Path) -> None:
    h = Harness(
        tmp_path, START, backup_settings__backup_count_max=2, backup_settings__backup_count_min=1
    )
    activate(h)
    for _ in range(3):
        h.clock.advance(minutes=10)
        h.submit(RequestBackup())
        h.settle()
        h.doers.rotate()  # the new stream archives a file: the older one is closed
        h.step(seconds=6)
        h.settle()
    backups = h.controller.snapshot().backups
    assert backups is not None and len(backups) == 2
    assert [b.stream_id for b in backups] == h.doers.backup_ids()[-2:]


def test_the_loop_waits_for_what_is_ahead_never_spins(h: Harness) -> None:
    """A job running past its due time, or a retry time gone by while the restore is
    failed, must not make the next wake-up 'now': the loop would spin."""
    activate(h)
    h.step(seconds=6)  # an archive pass is due and starts
    assert h.executor.busy(ARCHIVE)
    wake = h.controller.step(h.clock.advance(seconds=10))  # still running, due long ago
    assert wake > h.clock.now


def test_a_seeding_restore_is_checked_then_carries_its_primary(tmp_path: Path) -> None:
    plain = Harness(tmp_path / "plain", START)
    plain.doers.put_backup(server_id=7)
    stream_id = plain.doers.backup_ids()[0]
    plain.settle()
    seed = SetMode("restore", site="default", stream_id=stream_id, replicate_from="127.0.0.1:3307")
    assert "replication.user" in refused(plain.submit(seed)).message

    h = Harness(tmp_path / "seed", START, replication={"user": "repl", "password": "repl-secret"})
    h.doers.put_backup(server_id=7)
    h.settle()
    seed = replace(seed, stream_id=h.doers.backup_ids()[0])
    for bad, message in [
        (replace(seed, replicate_from="10.0.0.9:3306"), "neither a loopback"),
        # mysql.client_params: this node's own server, refused before the restore.
        (replace(seed, replicate_from="localhost:3306"), "this node's own server"),
        (replace(seed, target_gtid="0-7-1"), "needs the latest target"),
    ]:
        error = refused(h.submit(bad))
        assert isinstance(error, UsageError) and message in error.message
    assert h.mode == "idle"
    accepted(h.submit(seed))
    h.run(RESTORE)
    assert h.mode == "observe"
    (request,) = h.doers.restores
    assert request.replicate_from == "127.0.0.1:3307"
    h.restart()  # durable, as the rest of the request
    assert h.controller.state.restore is not None
    assert h.controller.state.restore.replicate_from == "127.0.0.1:3307"


REPLICATION = {"user": "repl", "password": "repl-secret"}


def test_a_replica_in_observe_is_re_pointed_at_the_new_primary(tmp_path: Path) -> None:
    h = Harness(tmp_path, START, replication=REPLICATION)
    h.doers.put_backup(server_id=7)
    h.settle()
    stream_id = h.doers.backup_ids()[0]
    accepted(
        h.submit(
            SetMode("restore", site="default", stream_id=stream_id, replicate_from="127.0.0.1:3307")
        )
    )
    h.run(RESTORE)
    assert h.controller.snapshot().status.replicating_from == "127.0.0.1:3307"

    repoint = SetMode("observe", replicate_from="127.0.0.1:3308")
    ticket = h.submit(repoint)
    assert not ticket.is_decided  # answered once the node is re-pointed
    again = h.submit(repoint)
    assert isinstance(refused(again), ConflictError)  # one at a time
    h.run(RESTORE)
    assert ticket.is_done and ticket.error is None
    assert h.doers.repoints == ["127.0.0.1:3308"] and h.mode == "observe"
    status = StatusOut.model_validate(h.controller.snapshot().status)
    assert status.replicating_from == "127.0.0.1:3308"
    h.restart()
    assert h.controller.snapshot().status.replicating_from == "127.0.0.1:3308"

    # Refused by the node's check: the answer is the refusal, nothing recorded.
    lacks = ConflictError("this node cannot be re-pointed at 127.0.0.1:3309: ...")
    h.doers.failures["repoint"] = [lacks]
    ticket = h.submit(SetMode("observe", replicate_from="127.0.0.1:3309"))
    h.run(RESTORE)
    assert refused(ticket) is lacks and lacks.http_status == 409
    assert h.controller.snapshot().status.replicating_from == "127.0.0.1:3308"
    assert h.mode == "observe"
    # A promotion afterwards is not held back by that refusal; active replicates from none.
    accepted(h.submit(SetMode("promote")))
    h.run(RESTORE)
    assert h.mode == "active" and h.controller.snapshot().status.replicating_from is None


def seeded_replica(tmp_path: Path) -> Harness:
    """A node in observe mode that a seeding restore made a replica of 127.0.0.1:3307."""
    h = Harness(tmp_path, START, replication=REPLICATION)
    h.doers.put_backup(server_id=7)
    h.settle()
    stream_id = h.doers.backup_ids()[0]
    seed = SetMode("restore", site="default", stream_id=stream_id, replicate_from="127.0.0.1:3307")
    accepted(h.submit(seed))
    h.run(RESTORE)
    assert h.controller.snapshot().status.replicating_from == "127.0.0.1:3307"
    return h


def test_a_re_point_cut_short_by_a_crash_is_finished_at_the_start(tmp_path: Path) -> None:
    h = seeded_replica(tmp_path)
    h.submit(SetMode("observe", replicate_from="127.0.0.1:3308"))
    assert h.executor.busy(RESTORE)
    # Recorded before the job (which stops replication) starts.
    assert h.controller.store.load().control.repointing_to == "127.0.0.1:3308"
    h.restart()  # kill -9: the job is lost
    h.step()
    h.run(RESTORE)
    assert h.doers.reconciled == [("127.0.0.1:3307", "127.0.0.1:3308")]
    assert h.doers.repoints == ["127.0.0.1:3308"]
    control = h.controller.state.control
    assert (control.replicating_from, control.repointing_to) == ("127.0.0.1:3308", None)
    assert h.controller.snapshot().status.last_error is None
    h.restart()  # once: the next start only compares
    h.step()
    h.run(RESTORE)
    assert h.doers.reconciled[-1] == ("127.0.0.1:3308", None)


def test_replication_not_as_the_state_says_is_the_last_error_after_a_start(
    tmp_path: Path,
) -> None:
    h = seeded_replica(tmp_path)
    h.step()
    assert not h.executor.busy(RESTORE)  # not compared until a start
    h.restart()
    problem = "replication from 127.0.0.1:3307 is stopped (IO thread No, SQL thread No)"
    h.doers.replication_problem = problem
    h.step()
    h.run(RESTORE)
    status = h.controller.snapshot().status
    assert status.last_error == problem and status.replicating_from == "127.0.0.1:3307"
    # Compared once after a start, not again.
    h.step(minutes=5)
    assert not h.executor.busy(RESTORE)


@pytest.mark.parametrize(
    ("mode", "replicate_from", "error", "message"),
    [
        ("idle", "127.0.0.1:3308", ConflictError, "only a node in observe mode is re-pointed"),
        ("observe", "10.0.0.9:3306", UsageError, "neither a loopback"),
    ],
)
def test_re_pointing_is_for_a_node_in_observe_at_an_allowed_primary(
    tmp_path: Path, mode: str, replicate_from: str, error: type, message: str
) -> None:
    h = Harness(tmp_path, START, replication=REPLICATION)
    h.settle()
    if mode == "observe":
        accepted(h.submit(SetMode("observe")))
    found = refused(h.submit(SetMode("observe", replicate_from=replicate_from)))
    assert isinstance(found, error) and message in found.message
    assert h.doers.repoints == [] and h.mode == mode


def test_a_deposed_primary_stops_backups_and_retention_and_says_so(h: Harness) -> None:
    backup_id = activate(h)
    h.depose(backup_id)
    h.doers.rotate()  # the old primary keeps taking writes
    h.step(seconds=6)
    h.settle()
    (deposed,) = h.controller.snapshot().status.deposed
    assert "taken over by server_id 999" in deposed
    records = len(read_site(h.doers.store).streams[0].records)
    # Neither a requested backup nor retention runs; nothing more is archived.
    h.submit(RequestBackup())
    h.step(minutes=61)
    h.settle()
    assert h.doers.backup_ids() == [backup_id]
    assert not h.executor.busy(BACKUP)
    (stream,) = read_site(h.doers.store).streams
    assert len(stream.records) == records and stream.owner == 999


# --- promote: taking over the stream the node was restored from ------------------------------
OTHER = 7  # the old primary


def _observing_a_stream_of_another_node(h: Harness) -> str:
    """This node restored from the old primary's stream (3 archived files) and observing."""
    other = SiteBuilder(h.doers.store, server_id=OTHER)
    stream_id = "20251119T000000Z-00000007"
    other.backup(stream_id)
    other.archive(stream_id, 3)
    h.settle()
    accepted(h.submit(SetMode("restore", site="default", stream_id=stream_id)))
    h.run(RESTORE)
    assert h.mode == "observe"
    return stream_id


def _stream(h: Harness, stream_id: str) -> StreamState:
    return next(s for s in read_site(h.doers.store).streams if s.stream_id == stream_id)


def test_promote_takes_over_the_restored_stream_then_active(h: Harness) -> None:
    stream_id = _observing_a_stream_of_another_node(h)
    accepted(h.submit(SetMode("promote")))
    assert h.mode == "promote"
    h.run(RESTORE)
    assert h.mode == "active"
    stream = _stream(h, stream_id)
    assert stream.owner == h.doers.server_id
    (promotion,) = stream.promotions
    assert (promotion.takes_over_at, promotion.forced) == (3, False)


def test_promote_that_loses_the_race_stays_in_observe_and_says_why(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="binhoard.daemon")
    _observing_a_stream_of_another_node(h)
    lost = ConflictError("another node promoted itself on stream ... at the same time")
    h.doers.failures["promote"] = [lost]
    accepted(h.submit(SetMode("promote")))
    h.run(RESTORE)
    assert h.mode == "observe"
    assert h.controller.state.facts.last_error == lost.message
    # Said as a promotion's refusal, not as a failed restore (it runs in that slot).
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"not promoted, mode observe: {lost.message}"]
    h.settle()
    assert h.mode == "observe" and not h.executor.busy(RESTORE)  # not retried


def test_promote_behind_the_archive_catches_up_first_and_shows_its_phase(h: Harness) -> None:
    stream_id = _observing_a_stream_of_another_node(h)
    h.doers.node_position = position(15)  # it lacks 0-x-16..30 of the archive
    # A first attempt fails mid-apply (the server went away): GET /status shows where.
    h.doers.catch_up_error = ServerError("lost the connection to the server")
    accepted(h.submit(SetMode("promote")))
    h.run(RESTORE)
    status = StatusOut.model_validate(h.controller.snapshot().status)
    assert status.mode == "promote" and status.promotion is not None
    assert (status.promotion.phase, status.promotion.binlogs_total) == ("applying_binlogs", 2)
    assert status.promotion.target_gtid == position(30).format()
    h.step(seconds=60)  # retried: the node applies the 2 records it lacks, then takes over
    h.run(RESTORE)
    assert h.mode == "active" and h.controller.snapshot().status.promotion is None
    stream = _stream(h, stream_id)
    (promotion,) = stream.promotions
    assert (promotion.takes_over_at, promotion.forced) == (3, False)
    assert promotion.gtid_position == position(30)


def test_promote_with_an_unreadable_archive_is_refused_unless_forced(h: Harness) -> None:
    stream_id = _observing_a_stream_of_another_node(h)
    h.doers.node_position = position(15)
    h.doers.catch_up_error = IntegrityError("streams/x/binlogs/1", "checksum mismatch")
    accepted(h.submit(SetMode("promote")))
    h.run(RESTORE)
    assert h.mode == "observe"  # retrying cannot help: the operator decides
    assert "checksum mismatch" in str(h.controller.state.facts.last_error)
    assert _stream(h, stream_id).promotions == ()
    # force: it takes over at the first record it lacks; that one and later are fenced.
    h.doers.catch_up_error = IntegrityError("streams/x/binlogs/1", "checksum mismatch")
    accepted(h.submit(SetMode("promote", force=True)))
    h.run(RESTORE)
    assert h.mode == "active"
    stream = _stream(h, stream_id)
    (promotion,) = stream.promotions
    assert (promotion.takes_over_at, promotion.forced) == (1, True)
    assert [r.seq for r in stream.records] == [0] and [r.seq for r in stream.fenced] == [1, 2]


def test_promote_on_another_history_starts_a_new_stream_at_once(h: Harness) -> None:
    stream_id = _observing_a_stream_of_another_node(h)
    h.doers.node_position = GtidPosition.parse("0-999-30")  # the same seq_no, another server
    accepted(h.submit(SetMode("promote")))
    h.run(RESTORE)
    assert h.mode == "active"
    assert _stream(h, stream_id).promotions == ()
    h.settle()
    (own,) = h.doers.backup_ids()  # a full backup of this node: its own stream
    assert own != stream_id


@pytest.mark.parametrize("mode", ["active", "idle", "observe"])
def test_force_is_only_for_promoting_a_node_in_observe(h: Harness, mode: str) -> None:
    h.settle()
    error = refused(h.submit(SetMode(mode, force=True)))  # type: ignore[arg-type]
    assert isinstance(error, UsageError) and "force is only for promoting" in error.message
    assert h.mode == "idle"
