"""Point-in-time apply through the SQL thread: a backup restored, then the source's
binlogs applied in batches to a GTID in the middle and to the end, compared table by
table with the source at those moments."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from binhoard.app import open_server, open_site
from binhoard.config import Settings
from binhoard.crypto.age import Identity
from binhoard.domain.errors import ApplyError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import BackupManifest
from binhoard.domain.relay_plan import ApplyProgress, BatchFile, applied_prefix
from binhoard.ops.backup import BackupProgress
from binhoard.ops.restore_backup import start_restored_server
from binhoard.server.binlog_reader import read_binlog
from binhoard.server.relay_apply import RelayApplier
from binhoard.server.sandbox import Sandbox
from binhoard.storage.store import ObjectStore
from tests.support import ops
from tests.support.configs import settings_for
from tests.support.sandboxes import SandboxFactory, sandbox_factory
from tests.support.workload import checksums, create_schema, write_rows


@dataclass
class Scenario:
    factory: SandboxFactory
    source: Sandbox
    identity: Identity
    site: Path
    store: ObjectStore
    backup: BackupManifest
    all_files: list[BatchFile]  # copies of all the source's binlogs
    files: list[BatchFile]  # those from the snapshot's file on
    mid_gtid: Gtid
    mid_sums: dict[str, int]
    final_gtid: GtidPosition
    final_sums: dict[str, int]


def gtid_current_pos(box: Sandbox) -> str:
    return str(box.query("SELECT @@gtid_current_pos")[0][0])


@pytest.fixture(scope="module")
def scenario() -> Iterator[Scenario]:
    """One source with a history of rotations, DDL and a backup taken mid-workload."""
    with sandbox_factory() as factory:
        source = factory.new("source", server_id=1)
        create_schema(source)
        write_rows(source, 300, seed=1)
        source.query("FLUSH BINARY LOGS")
        write_rows(source, 200, seed=2)
        identity = Identity.generate()
        site = factory.root / "site"
        settings = settings_for(source, site, identity=identity)
        store = open_site(settings)
        # Writes go on while the backup runs: the snapshot lands between transactions of
        # a file that keeps growing after it.
        # (Only once mariabackup streams: it waits for InnoDB to have no dirty page first.)
        streaming, stop = threading.Event(), threading.Event()

        def keep_writing() -> None:
            streaming.wait()
            for seed in range(100, 1000):
                if stop.is_set():
                    break
                write_rows(source, 20, seed=seed, payload=50)

        def on_progress(progress: BackupProgress) -> None:
            if progress.phase == "streaming":
                streaming.set()

        writer = threading.Thread(target=keep_writing)
        writer.start()
        try:
            backup = ops.backup(settings, store, progress=on_progress)
        finally:
            streaming.set()
            stop.set()
            writer.join()
        source.query("FLUSH BINARY LOGS")
        source.query("ALTER TABLE app.accounts ADD COLUMN extra INT NOT NULL DEFAULT 7")
        write_rows(source, 300, seed=4)
        source.query("UPDATE app.accounts SET extra = id % 13 WHERE id % 3 = 0")
        source.query("FLUSH BINARY LOGS")
        write_rows(source, 200, seed=5)
        mid_sums, mid_gtid = checksums(source), Gtid.parse(gtid_current_pos(source))
        write_rows(source, 200, seed=6)
        source.query("FLUSH BINARY LOGS")
        source.execute_script(
            "CREATE TABLE app.later (id INT PRIMARY KEY, v VARCHAR(10));"
            "INSERT INTO app.later VALUES (1, 'x'), (2, 'y');"
            "ALTER TABLE app.events DROP COLUMN payload;"
        )
        write_rows_without_payload(source, 150, seed=7)
        source.query("FLUSH BINARY LOGS")
        write_rows_without_payload(source, 100, seed=8)
        # No rotation at the end: the last copy is of the open binlog, whose last
        # transaction ends at the end of the file (UNTIL cannot stop there).
        final_sums, final_gtid = checksums(source), GtidPosition.parse(gtid_current_pos(source))

        names = [Path(p).name for p in (source.binlog_dir / "binlog.index").read_text().split()]
        copies = factory.root / "copies"
        copies.mkdir()
        for name in names:
            shutil.copyfile(source.binlog_dir / name, copies / name)
        all_files = [BatchFile(copies / n, read_binlog(copies / n)) for n in names]
        files = all_files[names.index(backup.snapshot.binlog_file) :]
        assert len(files) >= 5
        snapshot_file = files[0].transactions
        assert snapshot_file[-1].end_offset > backup.snapshot.binlog_pos  # mid-file
        assert files[-1].transactions[-1].end_offset == files[-1].size  # the open file
        yield Scenario(
            factory,
            source,
            identity,
            site,
            store,
            backup,
            all_files,
            files,
            mid_gtid,
            mid_sums,
            final_gtid,
            final_sums,
        )


def write_rows_without_payload(box: Sandbox, count: int, *, seed: int) -> None:
    conn = box.connect()
    try:
        with conn.cursor() as cursor:
            for start in range(0, count, 25):
                cursor.execute("BEGIN")
                for i in range(min(25, count - start)):
                    account = (seed * 7919 + start + i) % 1000
                    cursor.execute(
                        "INSERT INTO app.events (account, amount) VALUES (%s, %s)", (account, i)
                    )
                    cursor.execute(
                        "UPDATE app.accounts SET balance = balance + 1 WHERE id = %s", (account,)
                    )
                cursor.execute("COMMIT")
    finally:
        conn.close()


def restored(scenario: Scenario, name: str) -> Sandbox:
    return restored_with_settings(scenario, name)[0]


def restored_with_settings(scenario: Scenario, name: str) -> tuple[Sandbox, Settings]:
    target = scenario.factory.new(name, start=False, server_id=2)
    target.create(initialize=False)
    settings = settings_for(target, scenario.site, identity=scenario.identity)
    manifest = ops.restore(settings, scenario.store, scenario.backup.backup_id, target.datadir)
    start_restored_server(open_server(settings), manifest)
    return target, settings


def applier_for(box: Sandbox, parallel_threads: int = 0) -> RelayApplier:
    return RelayApplier(
        box.connect, box.relay_dir, box.relay_dir / "relay.index", "relay", parallel_threads
    )


def apply_in_batches(
    applier: RelayApplier,
    files: Sequence[BatchFile],
    start_offset: int,
    stop_offset: int | None = None,
    size: int = 2,
) -> list[ApplyProgress]:
    reports: list[ApplyProgress] = []
    offset = start_offset
    for i in range(0, len(files), size):
        chunk = files[i : i + size]
        last = i + size >= len(files)
        result = applier.apply_batch(
            chunk,
            start_offset=offset,
            stop_offset=stop_offset if last else None,
            progress=reports.append,
        )
        assert result.transactions == (result.plan.transactions if result.plan else 0)
        offset = 4
    return reports


def slave_pos(box: Sandbox) -> GtidPosition:
    return GtidPosition.parse(str(box.query("SELECT @@gtid_slave_pos")[0][0]))


def locate(files: Sequence[BatchFile], gtid: Gtid) -> tuple[int, int]:
    """(file index, end offset) of transaction ``gtid``."""
    for i, file in enumerate(files):
        for entry in file.transactions:
            if entry.gtid == gtid:
                return i, entry.end_offset
    raise AssertionError(f"{gtid} is in no file")


def test_apply_to_a_gtid_in_the_middle_then_to_the_end(scenario: Scenario) -> None:
    target, settings = restored_with_settings(scenario, "pitr")
    files = scenario.files
    snapshot = scenario.backup.snapshot
    assert slave_pos(target) == GtidPosition.parse(snapshot.gtid_position)
    serial = settings.model_copy(update={"restore_parallel_threads": 0})
    applier = open_server(serial).relay_applier()
    assert applier.parallel_threads == 0

    mid_file, mid_end = locate(files, scenario.mid_gtid)
    reports = apply_in_batches(applier, files[: mid_file + 1], snapshot.binlog_pos, mid_end)
    assert checksums(target) == scenario.mid_sums
    assert slave_pos(target) == GtidPosition([scenario.mid_gtid])
    assert reports[-1].transactions_applied == reports[-1].transactions_total > 0
    assert reports[-1].files_applied == reports[-1].files_total

    # Continue from where the server is, as a caller would.
    point = applied_prefix(files, slave_pos(target))
    assert (point.file_index, point.offset) == (mid_file, mid_end)
    apply_in_batches(applier, files[point.file_index :], point.offset)
    position = applier.finish(log_slave_updates_was_off=False, expected=scenario.final_gtid)

    assert position == scenario.final_gtid
    assert checksums(target) == scenario.final_sums
    final = scenario.final_gtid.format()
    row = target.query(
        "SELECT @@gtid_binlog_pos, @@gtid_slave_pos, @@gtid_current_pos, @@read_only, "
        "@@sync_binlog, @@innodb_flush_log_at_trx_commit"
    )[0]
    assert row == (final, final, final, 1, 0, 1)  # sandbox defaults: sync_binlog=0
    assert target.query("SHOW SLAVE STATUS") == []
    assert not list(target.relay_dir.glob("relay.0*"))


def test_resume_after_the_applier_died_mid_batch(scenario: Scenario) -> None:
    target = restored(scenario, "resume")
    files = scenario.files
    applier = applier_for(target, parallel_threads=2)
    applier.apply_batch(files[:2], start_offset=scenario.backup.snapshot.binlog_pos)
    del applier

    # The next "binhoard" dies while the server applies: the progress callback raises
    # after the SQL thread started, leaving it running towards its UNTIL.
    class DiedError(Exception):
        pass

    def die(report: ApplyProgress) -> None:
        raise DiedError

    with pytest.raises(DiedError):
        applier_for(target, parallel_threads=2).apply_batch(files[2:4], progress=die)

    applier = applier_for(target, parallel_threads=2)
    point = applier.resume_point(files)
    assert point.server_error == ""
    assert point.applied == sum(len(f.transactions) for f in files[:4])
    assert (point.file_index, point.offset) == (4, 4)
    assert point.next_gtid == files[4].transactions[0].gtid
    apply_in_batches(applier, files[point.file_index :], point.offset, size=3)
    applier.finish(log_slave_updates_was_off=False, expected=scenario.final_gtid)
    assert checksums(target) == scenario.final_sums
    final = scenario.final_gtid.format()
    assert target.query("SELECT @@gtid_binlog_pos, @@gtid_slave_pos, @@gtid_current_pos") == [
        (final, final, final)
    ]


def test_a_failing_transaction_is_named(scenario: Scenario) -> None:
    target = restored(scenario, "fails")
    files = scenario.files
    applier = applier_for(target)
    applier.apply_batch(files[:1], start_offset=scenario.backup.snapshot.binlog_pos)
    before = slave_pos(target)
    # Rows the next transactions update disappear behind the applier's back.
    target.execute_script("SET sql_log_bin=0; DELETE FROM app.accounts")
    with pytest.raises(ApplyError) as info:
        applier.apply_batch(files[1:3])
    error = info.value
    assert error.server_errno == 1032  # ER_KEY_NOT_FOUND of a row event
    # Transactions before it (the ALTER TABLE of files[1]) were applied; it was not.
    after = slave_pos(target)
    assert after.covers(before) and after != before
    assert error.gtid == str(applied_prefix(files, after).next_gtid)
    assert Gtid.parse(error.gtid).seq_no == after[0].seq_no + 1
    assert error.gtid in error.message
    # Nothing moves on: the same batch is refused the same way, and resume says where.
    point = applier_for(target).resume_point(files)
    assert "1032" in point.server_error
    assert point.next_gtid is not None and str(point.next_gtid) == error.gtid


def test_parallel_apply_without_log_slave_updates(scenario: Scenario) -> None:
    # A fresh server (no backup) replays the whole history from the first binlog, with
    # four optimistic parallel workers and no binlogging of what it applies.
    target = scenario.factory.new("fresh", server_id=3, options={"log_slave_updates": "OFF"})
    durability = target.query("SELECT @@sync_binlog, @@innodb_flush_log_at_trx_commit")
    applier = applier_for(target, parallel_threads=4)
    reports = apply_in_batches(applier, scenario.all_files, 4, size=3)
    # Parallel workers and relaxed durability stay between batches, until finish().
    assert target.query("SELECT @@slave_parallel_threads, @@innodb_flush_log_at_trx_commit") == [
        (4, 2)
    ]
    assert reports[-1].transactions_applied == reports[-1].transactions_total > 0
    assert target.query("SELECT @@gtid_binlog_pos")[0][0] == ""
    position = applier.finish(expected=scenario.final_gtid)  # log_slave_updates read: OFF
    assert position == scenario.final_gtid
    final = scenario.final_gtid.format()
    assert target.query("SELECT @@gtid_binlog_pos, @@gtid_slave_pos, @@gtid_current_pos") == [
        (final, final, final)
    ]
    assert target.query("SELECT @@sync_binlog, @@innodb_flush_log_at_trx_commit") == durability
    assert target.query("SELECT @@slave_parallel_threads, @@read_only") == [(0, 1)]
    assert checksums(target) == scenario.final_sums
