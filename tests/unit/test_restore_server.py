"""Restoring through the server port, against fake servers (``tests/support/fakeserver.py``):
a backup chain into an empty datadir, and point-in-time restore's orchestration (the
phases, the server started and given the snapshot's state, batches applied up to the
target, a run killed mid-apply resumed exactly, refusals before anything is changed).

The source takes a full backup after 3 transactions, writes 4 and 2 more in two binlog
files, takes an incremental backup, writes 3 more in a third file, and the archiver
stores all three; the target is another fake server (server_id 9,
stopped, empty datadir) whose rows after the restore are compared with the source's."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.app import pitr_config
from binhoard.config import Settings
from binhoard.crypto.age import Identity
from binhoard.domain.errors import ConflictError, ServerError, UsageError
from binhoard.domain.manifest import BackupManifest
from binhoard.ops.pitr import PitrRequest, PointInTimeRestore
from binhoard.ops.restore_backup import RestoreProgress, restore_backup, start_restored_server
from binhoard.storage.store import MemoryStore
from tests.support.fakeserver import FakeServer, Killed, backed_up_source, fake_host

IDENTITY = Identity.generate()
LATEST = PitrRequest("default", {"to_latest": True})
START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


@dataclass
class Source:
    server: FakeServer
    store: MemoryStore
    full: BackupManifest
    incremental: BackupManifest


@pytest.fixture
def source(tmp_path: Path) -> Source:
    settings, server = fake_host(tmp_path / "source", IDENTITY)
    store = MemoryStore()
    full, incremental = backed_up_source(settings, server, store, START)
    return Source(server, store, full, incremental)


def target_in(directory: Path) -> tuple[Settings, FakeServer]:
    return fake_host(directory, IDENTITY, server_id=9, running=False)


# --- a backup chain ---------------------------------------------------------------------
def restore_into(
    target: FakeServer,
    settings: Settings,
    source: Source,
    backup_id: str = "latest",
    progress: Callable[[RestoreProgress], None] | None = None,
) -> BackupManifest:
    return restore_backup(
        target,
        source.store,
        backup_id,
        target.datadir,
        site=settings.upload_site,
        temporary_directory=settings.temporary_directory,
        progress=progress,
    )


def test_a_chain_is_extracted_prepared_and_moved_into_the_datadir(
    source: Source, tmp_path: Path
) -> None:
    settings, target = target_in(tmp_path / "target")
    phases: list[str] = []
    manifest = restore_into(
        target,
        settings,
        source,
        source.incremental.backup_id,
        progress=lambda p: phases.append(p.phase),
    )
    assert manifest == source.incremental
    assert target.rows() == source.server.rows()[:9]  # the incremental's snapshot
    assert target.backup_tool.owner.given == [target.datadir]  # the server's user's
    assert len(target.backup_tool.extracted) == 2  # the full backup, then the incremental
    assert list(settings.temporary_directory.iterdir()) == []  # nothing left behind
    assert phases[0] == "getting_backup_info" and phases[-1] == "basebackup_restored"
    assert "preparing_basebackup" in phases and "moving_basebackup" in phases

    start_restored_server(target, manifest)
    assert target.process.starts == 1
    assert target.slave_position.format() == manifest.snapshot.gtid_position == "0-7-9"


def test_a_datadir_that_is_not_empty_is_refused(source: Source, tmp_path: Path) -> None:
    settings, target = target_in(tmp_path / "target")
    (target.datadir / "ibdata1").write_bytes(b"x")
    with pytest.raises(UsageError, match="is not empty"):
        restore_into(target, settings, source)
    assert target.calls == []


def test_files_that_cannot_be_given_to_the_server_are_refused_before_any_download(
    source: Source, tmp_path: Path
) -> None:
    settings, target = target_in(tmp_path / "target")
    target.backup_tool.owner.refuse = True
    progress: list[RestoreProgress] = []
    with pytest.raises(UsageError, match="must belong to mysql"):
        restore_into(target, settings, source, progress=progress.append)
    assert target.backup_tool.extracted == [] and progress[-1].backup_id == ""


# --- point-in-time restore ------------------------------------------------------------------
def restore_of(settings: Settings, target: FakeServer, store: MemoryStore) -> PointInTimeRestore:
    return PointInTimeRestore(target, store, pitr_config(settings), use_cache=False)


def test_to_latest_restores_the_newest_backup_and_applies_every_archived_file(
    source: Source, tmp_path: Path
) -> None:
    settings, target = target_in(tmp_path / "target")
    progress = restore_of(settings, target, source.store).start(LATEST)
    assert progress.phase == "completed"
    assert progress.backup_id == source.incremental.backup_id
    assert target.rows() == source.server.rows()
    assert progress.transactions_applied == 3  # the third file's, after the snapshot
    assert target.slave_position == source.server.binlog_position
    assert target.read_only and target.process.starts == 1
    assert target.calls.index("set_gtid_state") < target.calls.index("apply")
    state = json.loads((settings.state_directory / "restore.json").read_text())
    assert state["phase"] == "completed" and state["final_gtid_position"] == "0-7-12"


def test_to_a_gtid_stops_exactly_after_it(source: Source, tmp_path: Path) -> None:
    settings, target = target_in(tmp_path / "target")
    progress = restore_of(settings, target, source.store).start(
        PitrRequest("default", {"to_gtid": "0-7-6"}, backup_id=source.full.backup_id)
    )
    assert progress.phase == "completed" and progress.backup_id == source.full.backup_id
    assert target.rows() == [f"0-7-{n}" for n in range(1, 7)]
    assert progress.transactions_applied == 3  # 4, 5 and 6, after the snapshot's 3


def test_a_restore_killed_while_applying_resumes_where_the_server_is(
    source: Source, tmp_path: Path
) -> None:
    settings, target = target_in(tmp_path / "target")
    target.crash_after = 2  # binhoard dies after the SQL thread applied two
    request = PitrRequest("default", {"to_latest": True}, backup_id=source.full.backup_id)
    with pytest.raises(Killed):
        restore_of(settings, target, source.store).start(request)
    state = json.loads((settings.state_directory / "restore.json").read_text())
    assert state["phase"] == "applying_binlogs"
    assert target.rows() == [f"0-7-{n}" for n in range(1, 6)]

    with pytest.raises(ConflictError, match="binhoard restore --resume"):
        restore_of(settings, target, source.store).start(request)
    progress = restore_of(settings, target, source.store).resume()
    assert progress.phase == "completed"
    assert target.rows() == source.server.rows()  # nothing applied twice, nothing skipped
    assert target.calls.count("relay.resume_point") == 2


def test_a_server_that_does_not_start_fails_the_restore_and_resume_continues(
    source: Source, tmp_path: Path
) -> None:
    settings, target = target_in(tmp_path / "target")
    target.fail("start", ServerError("mariadbd exited with 1 while starting"))
    with pytest.raises(ServerError, match="exited with 1"):
        restore_of(settings, target, source.store).start(
            PitrRequest("default", {"to_latest": True})
        )
    state = json.loads((settings.state_directory / "restore.json").read_text())
    assert state["phase"] == "basebackup_restored" and "exited with 1" in state["error"]
    assert restore_of(settings, target, source.store).resume().phase == "completed"
    assert target.rows() == source.server.rows()


def test_a_target_with_the_source_server_id_is_refused_before_anything_changes(
    source: Source, tmp_path: Path
) -> None:
    settings, target = fake_host(tmp_path / "target", IDENTITY, server_id=7, running=False)
    with pytest.raises(UsageError) as caught:
        restore_of(settings, target, source.store).start(
            PitrRequest("default", {"to_latest": True})
        )
    assert "cannot work" in caught.value.message and "the source's" in caught.value.message
    assert list(target.datadir.iterdir()) == [] and target.process.starts == 0
    state = json.loads((settings.state_directory / "restore.json").read_text())
    assert state["phase"] == "failed"


def test_a_running_server_is_not_restored_under(source: Source, tmp_path: Path) -> None:
    settings, target = target_in(tmp_path / "target")
    target.process.up = True  # started by someone else on the empty datadir
    with pytest.raises(ConflictError, match="stop it first"):
        restore_of(settings, target, source.store).start(
            PitrRequest("default", {"to_latest": True})
        )
    assert list(target.datadir.iterdir()) == []
