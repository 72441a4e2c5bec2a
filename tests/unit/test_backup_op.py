"""``ops.backup`` against a fake server with behaviour (``tests/support/fakeserver.py``)
and a memory store: what is decided, what is written and in which order, what a
refusal or a failure leaves."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.app import backup_config
from binhoard.crypto.age import Identity
from binhoard.domain.backup_decision import BackupDecision
from binhoard.domain.errors import ServerError, ServerNotReadyError, UsageError
from binhoard.domain.manifest import BackupManifest, manifest_key
from binhoard.ops.backup import FlushSettingsJournal, create_backup, take_backup
from binhoard.ops.restore_backup import digest_of
from binhoard.ops.site import find_leftovers, list_backups
from binhoard.storage.pipeline import download
from binhoard.storage.store import MemoryStore, ObjectInfo
from tests.support.fakeserver import (
    FLUSH_DEFAULTS,
    FLUSH_FAST,
    FakeServer,
    Killed,
    ScriptedClock,
    fake_host,
    unpack,
)

IDENTITY = Identity.generate()
MONDAY = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


class RecordingStore(MemoryStore):
    """Remembers the order of writes; ``kill_at`` (part of a key) kills the writer there."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[str] = []
        self.kill_at: str | None = None

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        if self.kill_at is not None and self.kill_at in key:
            self.kill_at = None
            raise Killed(f"killed while writing {key}")
        info = super().put(key, data, if_absent=if_absent)
        self.written.append(key)
        return info


def plain(store: MemoryStore, manifest: BackupManifest) -> dict[str, bytes]:
    """The files of a backup's stream, decrypted and decompressed."""
    chunks = download(
        store, manifest.data.key, expected=digest_of(manifest.data), identities=[IDENTITY]
    )
    return unpack(b"".join(chunks))


def test_a_full_backup_streams_the_server_and_writes_its_manifest_last(tmp_path: Path) -> None:
    settings, server = fake_host(tmp_path, IDENTITY)
    server.commit(5)
    store = RecordingStore()
    progress: list[str] = []

    manifest = create_backup(
        server,
        store,
        backup_config(settings),
        progress=lambda state: progress.append(state.phase),
        now=ScriptedClock(MONDAY),
    )

    assert (manifest.backup_type, manifest.server_id, manifest.flavour) == ("full", 7, "mariadb")
    assert manifest.server_version == server.version
    snapshot = manifest.snapshot
    assert (snapshot.binlog_file, snapshot.gtid_position) == ("binlog.000001", "0-7-5")
    assert snapshot.binlog_pos == server.binlogs.writer.offset
    assert (manifest.lsn.from_lsn, manifest.lsn.to_lsn) == (0, 5)
    # The marker row was written first, so the backup holds it (ops/restore_test.py).
    assert plain(store, manifest) == {
        "rows.txt": b"".join(b"0-7-%d\n" % n for n in range(1, 6)),
        "markers.txt": f"{manifest.backup_id}\n".encode(),
    }
    assert manifest.extra == {"marker": "written"}
    # Data, then my.cnf, then the manifest: a backup exists only once it is complete.
    assert store.written == [
        manifest.data.key,
        manifest.my_cnf.key,
        manifest_key(manifest.backup_id),
    ]
    assert progress[0] == "advancing the InnoDB checkpoint" and progress[-1] == "done"
    # The server's facts were checked before anything touched the site.
    assert server.calls[:3] == ["facts", "write_marker", "facts"] and "backup" in server.calls
    assert not (settings.state_directory / "backup-in-progress.json").exists()
    assert list(settings.temporary_directory.glob("backup-*")) == []


def test_the_schedule_decides_full_then_incremental_on_the_newest(tmp_path: Path) -> None:
    settings, server = fake_host(
        tmp_path,
        IDENTITY,
        backup_settings={"incremental": {"enabled": True, "full_backup_week_schedule": "sun"}},
    )
    store = MemoryStore()
    config = backup_config(settings)
    clock = ScriptedClock(MONDAY)
    decisions: list[BackupDecision] = []
    server.commit(3)
    full = take_backup(server, store, config, on_decision=decisions.append, now=clock)
    server.commit(4)
    clock.advance(hours=1)
    incremental = take_backup(server, store, config, on_decision=decisions.append, now=clock)

    assert full is not None and incremental is not None
    assert [d.backup_type for d in decisions] == ["full", "incremental"]
    assert "no earlier backup of server_id 7" in decisions[0].reason
    assert incremental.parent_backup_id == full.backup_id
    assert incremental.chain == (full.backup_id, incremental.backup_id)
    assert incremental.lsn.from_lsn == full.lsn.to_lsn == 3
    # Only what changed since the parent is streamed.
    assert plain(store, incremental)["rows.delta"] == b"0-7-4\n0-7-5\n0-7-6\n0-7-7\n"


def test_if_due_takes_nothing_before_the_next_scheduled_time(tmp_path: Path) -> None:
    settings, server = fake_host(tmp_path, IDENTITY, backup_settings={"backup_hour": 3})
    store = MemoryStore()
    clock = ScriptedClock(MONDAY)  # 10:00, after today's 03:00 slot
    assert take_backup(server, store, backup_config(settings), if_due=True, now=clock)
    decisions: list[BackupDecision] = []
    clock.advance(hours=1)
    skipped = take_backup(
        server, store, backup_config(settings), if_due=True, on_decision=decisions.append, now=clock
    )
    assert skipped is None and decisions[0].backup_type is None
    assert decisions[0].schedule is not None and not decisions[0].schedule.due
    assert len(list_backups(store)) == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"server_id": 8}, "the server's server_id is 8 but the configuration says 7"),
        ({"log_bin": False}, "log_bin is OFF"),
        ({"binlog_format": "MIXED"}, "binlog_format is MIXED, ROW is required"),
    ],
)
def test_a_server_that_is_not_the_configured_one_is_refused_before_anything_is_written(
    tmp_path: Path, change: dict[str, object], expected: str
) -> None:
    settings, server = fake_host(tmp_path, IDENTITY, configured_server_id=7)
    for name, value in change.items():
        setattr(server, name, value)
    server.commit(2)
    store = MemoryStore()
    with pytest.raises(ServerNotReadyError) as caught:
        create_backup(server, store, backup_config(settings))
    assert "cannot back up" in caught.value.message and expected in caught.value.message
    assert list(store.list()) == []
    assert server.calls == ["facts"]  # no backup tool, no flushing
    assert not (settings.state_directory / "backup-in-progress.json").exists()


def test_a_recovery_only_site_takes_no_backup(tmp_path: Path) -> None:
    settings, server = fake_host(tmp_path, IDENTITY)
    config = backup_config(settings)
    config = replace(config, site=config.site.model_copy(update={"recovery_only": True}))
    with pytest.raises(UsageError, match="site default is recovery_only"):
        create_backup(server, MemoryStore(), config)
    assert server.calls == []


def test_a_failed_backup_leaves_nothing_on_the_site(tmp_path: Path) -> None:
    settings, server = fake_host(tmp_path, IDENTITY)
    server.commit(2)
    server.fail("backup.finish", ServerError("mariabackup failed (exit 1)"))
    store = MemoryStore()
    with pytest.raises(ServerError, match="mariabackup failed"):
        create_backup(server, store, backup_config(settings))
    assert list(store.list()) == []
    assert not (settings.state_directory / "backup-in-progress.json").exists()
    assert list(settings.temporary_directory.glob("backup-*")) == []


def test_a_killed_backup_is_removed_by_the_next_one(tmp_path: Path) -> None:
    settings, server = fake_host(tmp_path, IDENTITY)
    server.commit(2)
    store = RecordingStore()
    store.kill_at = "/my.cnf"
    with pytest.raises(Killed):
        create_backup(server, store, backup_config(settings), now=ScriptedClock(MONDAY))
    (left,) = find_leftovers(store)  # its data object, no manifest
    assert (settings.state_directory / "backup-in-progress.json").exists()

    manifest = create_backup(
        server, store, backup_config(settings), now=ScriptedClock(MONDAY.replace(hour=11))
    )
    assert find_leftovers(store) == [] and left.backup_id != manifest.backup_id
    assert [b.backup_id for b in list_backups(store)] == [manifest.backup_id]


def test_flushing_settings_left_changed_by_a_killed_backup_are_put_back_first(
    tmp_path: Path,
) -> None:
    settings, server = fake_host(tmp_path, IDENTITY)
    journal = FlushSettingsJournal(settings.state_directory)
    journal.save(dict(FLUSH_DEFAULTS))
    server.flushing.values = dict(FLUSH_FAST)  # as the killed backup left them
    create_backup(server, MemoryStore(), backup_config(settings))
    assert server.flushing.values == FLUSH_DEFAULTS
    assert server.calls.index("flushing.put_back") < server.calls.index("backup")
    assert not (settings.state_directory / "innodb-flush-settings.json").exists()


@pytest.mark.parametrize(
    "damage", [b"[]", b'{"settings": {"secure_file_priv": "/"}}', b'{"settings": {"innodb_io']
)
def test_a_damaged_flushing_journal_puts_back_the_startup_values(
    tmp_path: Path, damage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    settings, server = fake_host(tmp_path, IDENTITY)
    path = settings.state_directory / "innodb-flush-settings.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(damage)
    server.flushing.values = dict(FLUSH_FAST)
    FlushSettingsJournal(settings.state_directory).restore_left_over(server.flushing)
    assert server.flushing.values == FLUSH_DEFAULTS
    assert not path.exists()
    assert any(f"{path} is damaged" in r.getMessage() for r in caplog.records)


def test_a_saved_value_the_server_refuses_gives_way_to_the_startup_values(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings, server = fake_host(tmp_path, IDENTITY)
    journal = FlushSettingsJournal(settings.state_directory)
    journal.save({"innodb_io_capacity": "lots"})
    server.flushing.values = dict(FLUSH_FAST)
    journal.restore_left_over(server.flushing)
    assert server.flushing.values == FLUSH_DEFAULTS
    assert any("the server refused a value" in r.getMessage() for r in caplog.records)


def test_a_stopped_server_is_a_retryable_error_naming_it(tmp_path: Path) -> None:
    settings, server = fake_host(tmp_path, IDENTITY, running=False)
    with pytest.raises(ServerError) as caught:
        create_backup(server, MemoryStore(), backup_config(settings))
    assert caught.value.retryable and "not running" in caught.value.message


def test_the_fake_records_what_a_real_backup_records(tmp_path: Path) -> None:
    """The fake itself: a snapshot taken between commits is where the next one starts."""
    server = FakeServer(tmp_path)
    server.commit(2)
    with server.backup_tool.backup(tmp_path / "work") as stream:
        server.commit(1)  # after the snapshot: not in it
        chunks = list(stream)
        snapshot, lsn = stream.finish()
    assert unpack(b"".join(chunks)) == {"rows.txt": b"0-7-1\n0-7-2\n"}
    assert snapshot.gtid_position == "0-7-2" and lsn.to_lsn == 2
    assert server.calls == ["backup", "backup.finish"]
