"""Point-in-time restore end to end: a workload with markers (writes paused, GTID and
CHECKSUM TABLE captured, time aligned to a second), a full and an incremental backup
taken mid-workload, rotations and DDL, the binlogs archived; then restores to markers
picked at random by time and by GTID and to the latest transaction, each compared table
by table with the source at that marker. Also: the binlog disk budget is never exceeded,
and a restore killed in the middle of binlog apply continues exactly with --resume."""

from __future__ import annotations

import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from binhoard.app import open_site
from binhoard.config import Settings, parse_settings
from binhoard.domain.errors import DiskFullError, IntegrityError, UsageError
from binhoard.ops.catalog import read_streams
from binhoard.ops.pitr import PitrProgress, PitrRequest
from binhoard.ops.restore_backup import empty_directory
from binhoard.server.sandbox import Sandbox
from binhoard.storage.store import ObjectStore
from tests.support import ops
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.mounts import resize, tmpfs
from tests.support.sandboxes import SandboxFactory, sandbox_factory
from tests.support.workload import Marker, checksums, create_schema, mark, write_rows

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Archive:
    factory: SandboxFactory
    source: Sandbox
    config: dict[str, Any]  # the source's binhoard configuration (keys, site)
    markers: list[Marker] = field(default_factory=list)
    final: Marker | None = None
    largest_binlog: int = 0
    full_backup_id: str = ""


def small_transactions(box: Sandbox, count: int, *, table: str = "app.ticks") -> None:
    """``count`` single-row transactions: what an apply rate is measured in."""
    conn = box.connect()
    try:
        with conn.cursor() as cursor:
            for i in range(count):
                cursor.execute(f"INSERT INTO {table} (v) VALUES (%s)", (i,))
    finally:
        conn.close()


@pytest.fixture(scope="module")
def archive() -> Iterator[Archive]:
    with sandbox_factory() as factory:
        source = factory.new("source", server_id=1)
        source.query("SET GLOBAL innodb_flush_log_at_trx_commit = 2")  # a faster workload
        create_schema(source)
        source.query("CREATE TABLE app.ticks (id INT AUTO_INCREMENT PRIMARY KEY, v INT)")
        config = config_for(source, factory.root / "site")
        settings = parse_settings(config, source="test")
        store = open_site(settings)
        result = Archive(factory, source, config)
        write_rows(source, 500, seed=1)
        result.full_backup_id = ops.backup(settings, store).backup_id
        for step in range(12):
            write_rows(source, 150, seed=10 + step, payload=1500)
            small_transactions(source, 400)
            if step == 4:
                source.query("ALTER TABLE app.accounts ADD COLUMN extra INT DEFAULT 7")
            if step == 6:
                ops.backup(settings, store, backup_type="incremental")
            if step == 8:
                source.query("CREATE TABLE app.late (id INT PRIMARY KEY) ENGINE=InnoDB")
                source.query("INSERT INTO app.late VALUES (1), (2), (3)")
            if step % 2:
                source.query("FLUSH BINARY LOGS")
            result.markers.append(mark(source))
        small_transactions(source, 6000)  # enough apply work to be killed in the middle
        source.query("FLUSH BINARY LOGS")
        result.final = mark(source)
        report = ops.archiver(settings, store).archive_once()
        assert report.problems == []
        streams = read_streams(store)
        assert len(streams) == 2 and all(s.problems() == [] for s in streams)
        result.largest_binlog = max(r.size for s in streams for r in s.records)
        yield result


def target_config(archive: Archive, box: Sandbox, **overrides: Any) -> dict[str, Any]:
    keys = archive.config["backup_sites"]["default"]["encryption_keys"]
    data = box.binhoard_config(
        site_directory=Path(
            archive.config["backup_sites"]["default"]["object_storage"]["directory"]
        ),
        public_key=keys["public"],
        private_key=keys["private"],
        work_dir=box.directory / "binhoard",
    )
    data.update(overrides)
    return data


def new_target(archive: Archive) -> Sandbox:
    box = archive.factory.new("restored", start=False)
    box.create(initialize=False)
    return box


def restore(
    archive: Archive, box: Sandbox, target_args: dict[str, Any], **overrides: Any
) -> tuple[Settings, PitrProgress]:
    settings = parse_settings(target_config(archive, box, **overrides), source="test")
    request = PitrRequest("default", target_args)
    return settings, ops.point_in_time(settings, open_site(settings)).start(request)


def assert_restored_to(box: Sandbox, marker: Marker) -> None:
    assert checksums(box) == marker.sums
    row = box.query("SELECT @@gtid_binlog_pos, @@gtid_slave_pos, @@gtid_current_pos, @@read_only")
    assert row[0][:3] == (marker.gtid,) * 3
    assert row[0][3] == 1


def test_restores_to_random_markers_by_time_and_gtid_and_to_latest(archive: Archive) -> None:
    rng = random.Random(7)
    picks = rng.sample(range(len(archive.markers)), 10)
    for number, index in enumerate(picks):
        marker = archive.markers[index]
        box = new_target(archive)
        if number % 2:
            args: dict[str, Any] = {"to_gtid": marker.gtid}
        else:
            args = {"to_time": f"@{marker.time}"}
        _, progress = restore(archive, box, args)
        assert progress.phase == "completed"
        assert_restored_to(box, marker)
        box.stop()
    box = new_target(archive)
    assert archive.final is not None
    restore(archive, box, {"to_latest": True})
    assert_restored_to(box, archive.final)
    box.stop()


def _disk_use(paths: list[Path]) -> int:
    total = 0
    for path in paths:
        for entry in path.rglob("*") if path.exists() else ():
            try:
                if entry.is_file():
                    total += entry.stat().st_size
            except FileNotFoundError:
                continue
    return total


def test_binlog_disk_budget_of_two_files_is_never_exceeded(archive: Archive) -> None:
    box = new_target(archive)
    budget = max(2 * archive.largest_binlog, 1024 * 1024)
    watched = [box.directory / "binhoard" / "tmp" / "restore-binlogs", box.relay_dir]
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _disk_use(watched))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        _, progress = restore(archive, box, {"to_latest": True}, restore_max_binlog_bytes=budget)
    finally:
        done.set()
        sampler.join()
    assert progress.binlogs_restored >= 3  # more files than the budget holds
    assert archive.final is not None
    assert_restored_to(box, archive.final)
    # The server's own small files in the relay directory (index, info) come on top.
    assert 0 < peak <= budget + 64 * 1024, (peak, budget)
    box.stop()


@pytest.mark.parametrize("batches_done", [0, 1, 3])
def test_a_restore_killed_during_binlog_apply_resumes_exactly(
    archive: Archive, batches_done: int
) -> None:
    box = new_target(archive)
    config_path = box.directory / "binhoard.json"
    budget = max(2 * archive.largest_binlog, 1024 * 1024)
    config_path.write_text(json.dumps(target_config(archive, box, restore_max_binlog_bytes=budget)))
    state_path = box.directory / "binhoard" / "state" / "restore.json"
    command = [sys.executable, "-m", "binhoard", "-v", "restore", "--config", str(config_path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # From the full backup: the most binlog files to apply, in several batches.
    proc = subprocess.Popen(
        [*command, "--to-latest", "--backup", archive.full_backup_id],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(box.directory / "killed.log").open("w"),
    )
    deadline = time.monotonic() + 120
    phase = None
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            state = json.loads(state_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            state = {}
        phase = state.get("phase")
        if phase == "applying_binlogs" and state.get("applied_records", 0) > batches_done:
            break
        time.sleep(0.005)
    # Most likely inside the next batch (they take ~0.1-0.3 s each here).
    assert proc.poll() is None, "the restore ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert phase == "applying_binlogs", (box.directory / "killed.log").read_text()[-3000:]
    resumed = subprocess.run(
        [*command, "--resume"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    killed_log = (box.directory / "killed.log").read_text()
    assert resumed.returncode == 0, killed_log[-3000:] + resumed.stderr[-5000:]
    final_state = json.loads(state_path.read_text())
    assert final_state["phase"] == "completed"
    assert "resuming the restore at phase applying_binlogs" in resumed.stderr
    assert archive.final is not None
    assert_restored_to(box, archive.final)
    box.stop()


def test_restores_into_a_datadir_that_is_a_mount_point(archive: Archive) -> None:
    box = new_target(archive)
    marker = archive.markers[7]
    with tmpfs(box.datadir, 1024**3):
        try:
            _, progress = restore(archive, box, {"to_gtid": marker.gtid})
            assert progress.phase == "completed"
            assert os.path.ismount(box.datadir)  # emptied and filled, never removed
            assert_restored_to(box, marker)
        finally:
            box.stop()


def test_a_target_running_as_mysql_gets_its_files(archive: Archive) -> None:
    mysql = pwd.getpwnam("mysql")
    archive.factory.root.chmod(0o755)  # lets the mysql user reach its sandbox
    box = archive.factory.new("restored", start=False, options={"user": "mysql"})
    box.create(initialize=False)
    for path in (box.directory, *box.directory.rglob("*")):
        os.chown(path, mysql.pw_uid, mysql.pw_gid)
    marker = archive.markers[8]
    _, progress = restore(archive, box, {"to_time": f"@{marker.time}"})
    assert progress.phase == "completed"
    assert_restored_to(box, marker)
    pid = box.pid()
    assert pid is not None and Path(f"/proc/{pid}").stat().st_uid == mysql.pw_uid
    not_mysql = [p for p in box.datadir.rglob("*") if p.lstat().st_uid != mysql.pw_uid]
    assert not_mysql == []
    box.stop()


def test_a_target_described_by_its_my_cnf_and_a_key_file(archive: Archive) -> None:
    box = new_target(archive)
    key_file = box.directory / "restore.key"
    private = archive.config["backup_sites"]["default"]["encryption_keys"]["private"]
    key_file.write_text(f"# created by the test\n{private}\n")
    config = target_config(archive, box)
    # No relay settings (the server's own are used) and the key from its file.
    del config["mysql"]["relay_log_prefix"], config["mysql"]["relay_log_index_file"]
    keys = config["backup_sites"]["default"]["encryption_keys"]
    del keys["private"]
    keys["private_key_files"] = [str(key_file)]
    settings = parse_settings(config, source="test")
    marker = archive.markers[9]
    progress = ops.point_in_time(settings, open_site(settings)).start(
        PitrRequest("default", {"to_gtid": marker.gtid})
    )
    assert progress.phase == "completed"
    assert_restored_to(box, marker)
    box.stop()


def test_an_unfit_target_is_refused_before_anything_is_downloaded(archive: Archive) -> None:
    # The source's server_id, and no skip-slave-start.
    box = archive.factory.new(
        "restored", server_id=1, start=False, options={"skip-slave-start": "0"}
    )
    box.create(initialize=False)
    with pytest.raises(UsageError) as info:
        restore(archive, box, {"to_latest": True})
    message = str(info.value)
    assert f"point-in-time restore into the server of {box.cnf} cannot work" in message
    assert f"skip-slave-start is not set in {box.cnf}" in message
    assert f"server_id is 1 in {box.cnf}, the source's" in message
    assert list(box.datadir.iterdir()) == []
    temporary = box.directory / "binhoard" / "tmp"
    assert not temporary.exists() or list(temporary.iterdir()) == []
    # Nothing was changed, so a corrected target starts afresh (no --resume asked for).
    state = json.loads((box.directory / "binhoard" / "state" / "restore.json").read_text())
    assert state["phase"] == "failed"


def test_a_full_relay_directory_is_one_clear_error_and_resume_continues(
    archive: Archive,
) -> None:
    box = new_target(archive)
    with tmpfs(box.relay_dir, 256 * 1024):
        try:
            settings = parse_settings(target_config(archive, box), source="test")
            with pytest.raises(DiskFullError) as info:
                ops.point_in_time(settings, open_site(settings)).start(
                    PitrRequest("default", {"to_latest": True})
                )
            message = str(info.value)
            assert "\n" not in message
            assert message.startswith(f"no space left on device in {box.relay_dir} (relay logs)")
            assert info.value.needed is not None and info.value.needed > 256 * 1024
            assert message.endswith("free space, then run `binhoard restore --resume`")
            resize(box.relay_dir, 256 * 1024**2)
            progress = ops.point_in_time(settings, open_site(settings)).resume()
            assert progress.phase == "completed"
            assert archive.final is not None
            assert_restored_to(box, archive.final)
        finally:
            box.stop()


def test_a_full_temporary_directory_is_one_clear_line_and_resume_continues(
    archive: Archive,
) -> None:
    box = new_target(archive)
    config_path = box.directory / "binhoard.json"
    config_path.write_text(json.dumps(target_config(archive, box)))
    temporary = box.directory / "binhoard" / "tmp"
    command = ("restore", "--config", str(config_path))
    marker = archive.markers[10]
    with tmpfs(temporary, 4 * 1024**2):
        try:
            failed = run_binhoard(*command, "--to-gtid", marker.gtid)
            assert failed.returncode == 10, failed.stderr[-3000:]
            # Besides the phases it went through, one line, no traceback.
            assert "Traceback" not in failed.stderr
            [line] = [x for x in failed.stderr.splitlines() if not x.startswith("restore: ")]
            assert line.startswith(
                f"binhoard: error: no space left on device in {temporary} (temporary_directory, "
                "extracting backup "
            ), line
            assert "MiB needed there, " in line and " free; free space, then run" in line
            resize(temporary, 1024**3)
            resumed = run_binhoard(*command, "--resume")
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            assert_restored_to(box, marker)
        finally:
            box.stop()


class _KilledWhilePlanning(BaseException):
    """Stands for SIGKILL: nothing after it runs, no handler sees it."""


class _DiesOnList:
    """The site, until the restore lists it: the moment a restore is planning."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        if name == "list":
            raise _KilledWhilePlanning
        return getattr(self._store, name)


def test_a_restore_killed_while_planning_resumes_or_starts_again(archive: Archive) -> None:
    """Nothing is changed before the plan exists: --resume plans again, and a new start
    is not told to resume (it was: "delete restore.json first")."""
    marker = archive.markers[3]
    for how in ("resume", "start"):
        box = new_target(archive)
        settings = parse_settings(target_config(archive, box), source="test")
        request = PitrRequest("default", {"to_gtid": marker.gtid})
        dying = cast(ObjectStore, _DiesOnList(open_site(settings)))
        with pytest.raises(_KilledWhilePlanning):
            ops.point_in_time(settings, dying).start(request)
        state = json.loads((settings.state_directory / "restore.json").read_text())
        assert state["phase"] == "getting_backup_info"
        again = ops.point_in_time(settings, open_site(settings))
        progress = again.resume() if how == "resume" else again.start(request)
        assert progress.phase == "completed"
        assert_restored_to(box, marker)
        box.stop()


def test_a_corrupt_binlog_object_says_how_to_start_over_and_an_earlier_target_then_works(
    archive: Archive,
) -> None:
    """The restore stops on the object, naming it; --resume cannot get past an immutable
    corrupt object, so the message says how to start over, and following it works."""
    site = archive.factory.root / "corrupt-site"
    shutil.copytree(archive.config["backup_sites"]["default"]["object_storage"]["directory"], site)
    source = parse_settings(archive.config, source="test")
    records = read_streams(open_site(source))[0].records  # the full backup's stream
    victim = records[-1].object.key  # the last file: read to resolve the exact stop
    data = bytearray((site / victim).read_bytes())
    data[len(data) // 2] ^= 1
    (site / victim).write_bytes(bytes(data))
    box = new_target(archive)
    overrides = {
        "backup_sites": {
            "default": {
                **archive.config["backup_sites"]["default"],
                "object_storage": {"storage_type": "local", "directory": str(site)},
            }
        }
    }
    settings = parse_settings(target_config(archive, box, **overrides), source="test")
    with pytest.raises(IntegrityError) as info:
        ops.point_in_time(settings, open_site(settings)).start(
            PitrRequest("default", {"to_latest": True}, archive.full_backup_id)
        )
    message = str(info.value)
    state = settings.state_directory / "restore.json"
    assert message.startswith(f"object {victim} failed verification: ")
    assert "`binhoard restore --resume` cannot get past this" in message
    assert message.endswith(
        f"stop the server of {box.cnf} if it runs, empty {box.datadir}, delete {state}, "
        "then start a new restore"
    )
    box.stop()
    empty_directory(box.datadir)
    state.unlink()
    marker = archive.markers[5]
    progress = ops.point_in_time(settings, open_site(settings)).start(
        PitrRequest("default", {"to_gtid": marker.gtid})
    )
    assert progress.phase == "completed"
    assert_restored_to(box, marker)
    box.stop()
