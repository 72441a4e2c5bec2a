"""Binlog archiving against a real MariaDB: byte-identical files, a gap-free GTID chain,
two open streams sharing objects, flush --wait, gap reports, and crash-safety."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from binhoard.app import open_site
from binhoard.config import Settings, load_settings, parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.catalog import BinlogRecord
from binhoard.domain.gtid import GtidPosition
from binhoard.metrics import Metrics
from binhoard.ops.archive import ArchiveLoop, flush_and_wait, publish
from binhoard.ops.catalog import StreamState, read_streams
from binhoard.ops.pitr import PitrRequest
from binhoard.ops.restore_backup import digest_of
from binhoard.server.sandbox import Sandbox
from binhoard.storage.pipeline import download, identities_from_site
from binhoard.storage.store import ObjectStore
from tests.support import ops
from tests.support.cli import cli_env, run_binhoard
from tests.support.configs import config_for, settings_for
from tests.support.s3server import S3Server
from tests.support.sandboxes import SandboxFactory
from tests.support.workload import checksums, create_schema, write_rows

ROOT = Path(__file__).resolve().parents[2]


def stored_bytes(settings: Settings, store: ObjectStore, record: BinlogRecord) -> bytes:
    identities = identities_from_site(settings.upload_site)
    return b"".join(
        download(store, record.object.key, expected=digest_of(record.object), identities=identities)
    )


def binlog_pos(box: Sandbox) -> GtidPosition:
    return GtidPosition.parse(str(box.query("SELECT @@gtid_binlog_pos")[0][0]))


def assert_exact_archive(
    box: Sandbox, settings: Settings, store: ObjectStore, stream: StreamState
) -> None:
    """Every archived file equals the server's byte for byte; names never repeat; the
    chain has no problem and reaches everything the server has written so far."""
    assert stream.problems() == []
    names = [r.name for r in stream.records]
    assert len(names) == len(set(names)), f"a file was archived twice: {names}"
    assert [r.seq for r in stream.records] == list(range(len(names)))
    assert stream.records[0].name == stream.backup.snapshot.binlog_file
    assert stream.records[0].start_offset == stream.backup.snapshot.binlog_pos
    for record in stream.records:
        on_server = (box.binlog_dir / record.name).read_bytes()
        assert stored_bytes(settings, store, record) == on_server, record.name
    assert stream.end_position == binlog_pos(box)


def test_archive_is_exact_gap_free_and_shared_between_open_streams(
    sandboxes: SandboxFactory,
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 300, seed=1)
    source.query("FLUSH BINARY LOGS")  # files before the snapshot must not be uploaded
    settings = settings_for(source, sandboxes.root / "site")
    store = open_site(settings)
    first = ops.backup(settings, store)
    archiver = ops.archiver(settings, store)

    for round_ in range(3):
        write_rows(source, 200, seed=10 + round_)
        source.query(f"ALTER TABLE app.accounts ADD COLUMN c{round_} INT")
        source.query("FLUSH BINARY LOGS")
    report = archiver.archive_once()
    assert report.problems == []
    (stream,) = read_streams(store)
    assert stream.completed is not None and stream.closed is None
    assert_exact_archive(source, settings, store, stream)
    uploaded_before = set(report.uploaded)
    assert first.snapshot.binlog_file in uploaded_before
    assert "binlog.000001" not in uploaded_before  # entirely before the snapshot

    # A second backup opens a second stream; the old one stays open until the new one
    # has caught up. Files both need are uploaded once and referenced twice.
    write_rows(source, 100, seed=20)
    second = ops.backup(settings, store)
    write_rows(source, 100, seed=21)
    source.query("FLUSH BINARY LOGS")
    report = archiver.archive_once()
    assert report.problems == []
    old, new = read_streams(store)
    assert new.stream_id == second.backup_id
    assert old.closed is not None and old.closed.successor == second.backup_id
    assert new.completed is not None and new.closed is None
    assert old.records[-1].object.key == new.records[0].object.key
    assert report.uploaded.count(new.records[0].name) == 1
    assert_exact_archive(source, settings, store, new)

    # Closed streams get no more files.
    write_rows(source, 50, seed=22)
    name, _ = flush_and_wait(archiver, timeout=30)
    old_after, new_after = read_streams(store)
    assert old_after.records == old.records
    assert new_after.records[-1].name == name  # stored before flush_and_wait returned
    assert_exact_archive(source, settings, store, new_after)


def test_a_binlog_purged_before_archiving_is_reported_as_a_gap(sandboxes: SandboxFactory) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    settings = settings_for(source, sandboxes.root / "site")
    store = open_site(settings)
    ops.backup(settings, store)
    archiver = ops.archiver(settings, store)
    write_rows(source, 100, seed=1)
    source.query("FLUSH BINARY LOGS")
    assert archiver.archive_once().problems == []
    archived_end = read_streams(store)[0].end_position

    write_rows(source, 100, seed=2)  # these transactions will be lost
    source.query("FLUSH BINARY LOGS")
    lost_end = binlog_pos(source)
    write_rows(source, 100, seed=3)
    source.query("FLUSH BINARY LOGS")
    active = str(source.query("SHOW MASTER STATUS")[0][0])
    previous = str(source.query("SHOW BINARY LOGS")[-2][0])
    source.query(f"PURGE BINARY LOGS TO '{previous}'")

    report = archiver.archive_once()
    (problem,) = report.problems
    first_missing = archived_end[0].seq_no + 1
    assert f"0-*-{first_missing}..0-*-{lost_end[0].seq_no}" in problem
    assert "gap" in problem and previous in problem
    # Nothing was skipped over: the stream stays where it was, and says so every pass.
    assert read_streams(store)[0].end_position == archived_end
    again = archiver.archive_once()
    assert again.problems == [problem]
    metrics = Metrics()
    publish(settings.state_directory, again, metrics)
    assert metrics.value("binhoard.binlog.archive_problems") == 1
    assert "binhoard_binlog_archive_problems 1" in metrics.prometheus_text()
    status = json.loads((settings.state_directory / "binlog-archive.json").read_text())
    assert status["problems"] == [problem]
    assert active  # the server itself is unaffected


def test_killing_the_archiver_at_random_moments_loses_and_repeats_nothing(
    sandboxes: SandboxFactory,
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    # A slow upload makes kills land inside uploads, between upload and record, and
    # between records of a pass.
    config = config_for(source, sandboxes.root / "site", upload_rate_limit=4 * 1024 * 1024)
    config.setdefault("backup_settings", {})["forced_binlog_rotation_interval"] = 0.5
    config_path = sandboxes.root / "binhoard.json"
    config_path.write_text(json.dumps(config))
    settings = load_settings(config_path)
    store = open_site(settings)
    ops.backup(settings, store)

    stop = threading.Event()

    def load() -> None:
        seed = 100
        while not stop.is_set():
            write_rows(source, 100, seed=seed, payload=2000)
            seed += 1
            if seed % 3 == 0:
                source.query("FLUSH BINARY LOGS")

    writer = threading.Thread(target=load, daemon=True)
    writer.start()
    rng = random.Random(5)
    command = [sys.executable, "-m", "binhoard", "binlog", "archive", "--follow", "--interval"]
    env = {**os.environ, "BINHOARD_CONFIG": str(config_path)}
    logs = sandboxes.root / "archiver.log"
    try:
        with logs.open("w") as log_file:
            for _ in range(20):
                proc = subprocess.Popen(
                    [*command, "0.05"],
                    cwd=ROOT,
                    env=env,
                    stdout=log_file,
                    stderr=log_file,
                )
                time.sleep(rng.uniform(0.8, 2.0))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
    finally:
        stop.set()
        writer.join()
    # The killed archivers did work (so the kills interrupted something).
    assert "archived binlog." in logs.read_text()
    source.query("FLUSH BINARY LOGS")
    report = ops.archiver(settings, store).archive_once()
    assert report.problems == []
    (stream,) = read_streams(store)
    assert len(stream.records) >= 5
    assert_exact_archive(source, settings, store, stream)
    # No object is left that no record names, except possibly none at all.
    named = {r.object.key for r in stream.records}
    stored = {info.key for info in store.list("binlogs/")}
    assert stored == named


def test_forced_rotation_brings_a_waiting_transaction_to_storage(
    sandboxes: SandboxFactory,
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    config = config_for(source, sandboxes.root / "site")
    config.setdefault("backup_settings", {})["forced_binlog_rotation_interval"] = 1.0
    settings = parse_settings(config, source="test")
    store = open_site(settings)
    ops.backup(settings, store)
    source.query("FLUSH BINARY LOGS")  # the snapshot's file is closed: the stream is caught up
    metrics = Metrics()
    loop = ArchiveLoop(ops.archiver(settings, store), metrics)
    assert loop.tick().problems == []
    write_rows(source, 50, seed=1)  # one transaction, waiting in the active binlog
    committed = binlog_pos(source)
    started = time.monotonic()
    while read_streams(store)[0].end_position != committed:
        assert time.monotonic() - started < 10, "the waiting transaction never got stored"
        loop.tick()
        time.sleep(0.1)
    # Not before the interval (the transaction waited at least that long), and only once.
    assert time.monotonic() - started >= 1.0
    assert metrics.value("binhoard.binlog.forced_rotations") == 1
    newest = metrics.value("binhoard.binlog.newest_stored_commit_time")
    assert newest is not None and abs(newest - time.time()) < 30
    age = metrics.age("binhoard.binlog.newest_stored_commit_time")
    assert age is not None and 0 <= age < 30  # the RPO seen
    assert metrics.value("binhoard.binlog.pending_files") == 0
    for _ in range(3):
        loop.tick()  # nothing waits any more: no further rotation
    assert metrics.value("binhoard.binlog.forced_rotations") == 1


def _s3_site(s3_server: S3Server, prefix: str) -> dict[str, Any]:
    return s3_server.storage_section(prefix)


def _one_large_transaction(box: Sandbox, rows: int, row_bytes: int, *, seed: int) -> None:
    rng = random.Random(seed)
    conn = box.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("BEGIN")
            for _ in range(rows):
                cursor.execute(
                    "INSERT INTO app.events (account, amount, payload) VALUES (1, 1, %s)",
                    (rng.randbytes(row_bytes),),
                )
            cursor.execute("COMMIT")
    finally:
        conn.close()


def test_binlogs_larger_than_one_upload_round_are_archived_to_s3_and_restored_exactly(
    sandboxes: SandboxFactory, s3_server: S3Server
) -> None:
    """A stored object bigger than part_size x upload_concurrency (5 MiB here) could
    never be archived while the data object was a conditional (single, in-memory) PUT."""
    mib = 1024 * 1024
    source = sandboxes.new("source", options={"max_binlog_size": str(8 * mib)})
    create_schema(source)
    identity = Identity.generate()
    site = _s3_site(s3_server, f"big-binlogs-{secrets.token_hex(4)}")
    config = config_for(source, sandboxes.root / "unused", identity=identity)
    config["backup_sites"]["default"].update(
        object_storage=site, part_size=5 * mib, upload_concurrency=1
    )
    settings = parse_settings(config, source="test")
    store = open_site(settings)
    ops.backup(settings, store)
    # Incompressible rows: files rotate at max_binlog_size (8 MiB), and one transaction
    # of 20 MiB makes a file larger than max_binlog_size.
    write_rows(source, 400, seed=1, payload=40_000)
    _one_large_transaction(source, 400, 50_000, seed=2)
    write_rows(source, 100, seed=3, payload=20_000)
    source.query("FLUSH BINARY LOGS")
    final = str(source.query("SELECT @@gtid_current_pos")[0][0])
    expected = checksums(source)

    report = ops.archiver(settings, store).archive_once()
    assert report.problems == []
    (stream,) = read_streams(store)
    assert_exact_archive(source, settings, store, stream)
    stored = [r.object.stored_size for r in stream.records]
    assert sum(size > 5 * mib for size in stored) >= 2, stored
    assert max(r.size for r in stream.records) > 8 * mib + 12 * mib  # the large transaction
    assert {i.key for i in store.list("binlogs/")} == {r.object.key for r in stream.records}

    target = sandboxes.new("restored", start=False)
    target.create(initialize=False)
    target_config = target.binhoard_config(
        site_directory=sandboxes.root / "unused",
        public_key=str(identity.recipient),
        private_key=identity.secret_text(),
        work_dir=target.directory / "binhoard",
    )
    target_config["backup_sites"]["default"].update(
        object_storage=site, part_size=5 * mib, upload_concurrency=1
    )
    target_settings = parse_settings(target_config, source="test")
    progress = ops.point_in_time(target_settings, open_site(target_settings)).start(
        PitrRequest("default", {"to_latest": True})
    )
    assert progress.phase == "completed"
    assert checksums(target) == expected
    assert str(target.query("SELECT @@gtid_current_pos")[0][0]) == final
    target.stop()


def test_an_archive_that_cannot_advance_fails_the_command_and_status(
    sandboxes: SandboxFactory,
) -> None:
    """No backup yet: binlogs are written and nothing archives them. Both the archive
    command and status say so and exit non-zero; status does not say "ready yes"."""
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 100, seed=1)
    source.query("FLUSH BINARY LOGS")
    config_path = sandboxes.root / "binhoard.json"
    config_path.write_text(json.dumps(config_for(source, sandboxes.root / "site")))
    env = cli_env()

    def binhoard(*args: str) -> subprocess.CompletedProcess[str]:
        return run_binhoard(*args, "--config", str(config_path), timeout=120)

    archived = binhoard("binlog", "archive")
    assert archived.returncode == 9, archived.stderr
    assert "no open backup stream" in archived.stderr
    status = binhoard("status")
    assert status.returncode == 9, status.stderr
    assert "ready       NO" in status.stdout
    assert "archive     STALLED since" in status.stdout
    assert "no open backup stream" in status.stdout

    # The service keeps running through stalled passes and, stopped, says how it ended.
    state = source.directory / "binhoard" / "state" / "binlog-archive.json"
    state.unlink()
    follow = subprocess.Popen(
        [sys.executable, "-m", "binhoard", "binlog", "archive", "--follow", "--interval", "0.2"],
        cwd=ROOT,
        env={**env, "BINHOARD_CONFIG": str(config_path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (state.exists() and json.loads(state.read_text()).get("stalled")):
        assert follow.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    follow.send_signal(signal.SIGTERM)
    _, stderr = follow.communicate(timeout=60)
    assert follow.returncode == 9, stderr
    assert "ERROR binhoard.archive: binlog archive stalled since" in stderr


def test_a_stalled_stream_is_loud_in_status_and_in_a_restore_to_latest(
    sandboxes: SandboxFactory,
) -> None:
    """A gap stalls the stream: `binlog archive` and `status` exit 9, status says since
    when, why and how far behind; a restore --to-latest on another server names the
    transaction the archive ends at and warns that the archiver's last pass failed."""
    source = sandboxes.new("source")
    create_schema(source)
    identity = Identity.generate()
    site = sandboxes.root / "site"
    source_config = sandboxes.root / "source.json"
    source_config.write_text(json.dumps(config_for(source, site, identity=identity)))
    settings = load_settings(source_config)
    ops.backup(settings, open_site(settings))

    def binhoard(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return run_binhoard(*args, "--config", str(config))

    write_rows(source, 50, seed=1)
    source.query("FLUSH BINARY LOGS")
    archived = binhoard(source_config, "binlog", "archive")
    assert archived.returncode == 0, archived.stderr
    archived_end = binlog_pos(source)
    expected = checksums(source)

    write_rows(source, 50, seed=2)  # lost: purged before it is archived
    source.query("FLUSH BINARY LOGS")
    write_rows(source, 50, seed=3)
    source.query("FLUSH BINARY LOGS")
    previous = str(source.query("SHOW BINARY LOGS")[-2][0])
    source.query(f"PURGE BINARY LOGS TO '{previous}'")
    stalled = binhoard(source_config, "binlog", "archive")
    assert stalled.returncode == 9, stalled.stderr
    status = binhoard(source_config, "status")
    assert status.returncode == 9, status.stderr
    assert "ready       NO" in status.stdout
    assert "archive     STALLED since" in status.stdout and "gap" in status.stdout
    behind = next(line for line in status.stdout.splitlines() if line.startswith("behind"))
    domain, server_id, seq = (int(x) for x in archived_end.format().split("-"))
    assert f"{domain}-{server_id}-{seq + 1}.." in behind, behind
    assert f"archive ends at {archived_end.format()}" in behind, behind

    target = sandboxes.new("restored", start=False)
    target.create(initialize=False)
    target_config = sandboxes.root / "target.json"
    target_config.write_text(
        json.dumps(
            target.binhoard_config(
                site_directory=site,
                public_key=str(identity.recipient),
                private_key=identity.secret_text(),
                work_dir=target.directory / "binhoard",
            )
        )
    )
    restored = binhoard(target_config, "restore", "--to-latest")
    assert restored.returncode == 0, restored.stderr
    assert f"ends at transaction {archived_end.format()}" in restored.stdout, restored.stdout
    warning = "WARNING: the archiver's last pass over stream"
    assert warning in restored.stderr, restored.stderr
    # Said once the stream is known, before the binlogs are applied, and again at the end.
    assert restored.stderr.index(warning) < restored.stderr.index("applying_binlogs")
    assert checksums(target) == expected
    target.stop()
