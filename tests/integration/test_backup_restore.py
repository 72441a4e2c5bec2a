"""Full and incremental backups of a real MariaDB, restored and compared table by table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from binhoard.app import open_server, open_site
from binhoard.config import Settings, parse_settings
from binhoard.domain.errors import DiskFullError, IntegrityError, ServerError, UsageError
from binhoard.ops.site import find_leftovers, list_backups
from binhoard.server.sandbox import Sandbox
from binhoard.storage.store import ObjectStore
from tests.support import ops
from tests.support.configs import config_for, settings_for
from tests.support.mounts import resize, tmpfs
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import checksums, create_schema, write_rows


def restore_into_new_sandbox(
    sandboxes: SandboxFactory, settings: Settings, store: ObjectStore, backup_id: str
) -> Sandbox:
    target = sandboxes.new("restored", start=False)
    target.create(initialize=False)
    manifest = ops.restore(settings, store, backup_id, target.datadir)
    target.start()
    target_settings = settings_for(target, sandboxes.root / "site")
    open_server(target_settings).set_gtid_state(manifest.snapshot.gtid_position)
    return target


def gtid_current_pos(box: Sandbox) -> str:
    return str(box.query("SELECT @@gtid_current_pos")[0][0])


def test_full_and_incremental_backups_restore_exactly(sandboxes: SandboxFactory) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 2000, seed=1)
    settings = settings_for(source, sandboxes.root / "site")
    store = open_site(settings)

    # Writes are paused while each backup runs: the source's state at the snapshot is known,
    # the backup's own marker row (ops/backup.py) its one write in between.
    before = gtid_current_pos(source)
    full = ops.backup(settings, store)
    full_sums, full_gtid = checksums(source), gtid_current_pos(source)
    assert full.snapshot.gtid_position == full_gtid != before
    assert full.backup_type == "full" and full.chain == (full.backup_id,)

    write_rows(source, 500, seed=2)
    source.query("CREATE TABLE app.later (id INT PRIMARY KEY, v VARCHAR(10))")
    source.query("INSERT INTO app.later VALUES (1, 'x'), (2, 'y')")
    before = gtid_current_pos(source)
    inc = ops.backup(settings, store, backup_type="incremental")
    inc_sums, inc_gtid = checksums(source), gtid_current_pos(source)
    assert inc.snapshot.gtid_position == inc_gtid != before
    assert inc.parent_backup_id == full.backup_id
    assert inc.chain == (full.backup_id, inc.backup_id)
    assert inc.lsn.from_lsn == full.lsn.to_lsn
    # Dirty pages were flushed before the full backup, so the incremental is small.
    assert inc.data.plain_size < full.data.plain_size / 2

    assert [b.backup_id for b in list_backups(store)] == [full.backup_id, inc.backup_id]

    for backup, sums, gtid in ((full, full_sums, full_gtid), (inc, inc_sums, inc_gtid)):
        restored = restore_into_new_sandbox(sandboxes, settings, store, backup.backup_id)
        assert checksums(restored) == sums
        assert restored.query("SELECT @@gtid_binlog_pos, @@gtid_slave_pos") == [(gtid, gtid)]
        markers = restored.query("SELECT backup_id FROM binhoard.backup_marker")
        assert (backup.backup_id,) in markers
        restored.stop()


def test_restore_refuses_a_non_empty_datadir(sandboxes: SandboxFactory) -> None:
    source = sandboxes.new("source")
    settings = settings_for(source, sandboxes.root / "site")
    store = open_site(settings)
    backup = ops.backup(settings, store)
    with pytest.raises(UsageError, match="not empty"):
        ops.restore(settings, store, backup.backup_id, source.datadir)


def test_corrupt_object_fails_the_restore_naming_it(sandboxes: SandboxFactory) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 200, seed=3)
    site = sandboxes.root / "site"
    settings = settings_for(source, site)
    store = open_site(settings)
    backup = ops.backup(settings, store)
    stored = site / backup.data.key
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    stored.write_bytes(bytes(raw))

    target = sandboxes.new("restored", start=False)
    target.create(initialize=False)
    with pytest.raises(IntegrityError) as info:
        ops.restore(settings, store, backup.backup_id, target.datadir)
    assert backup.data.key in str(info.value)
    # Nothing was handed over as a datadir.
    assert not any(target.datadir.iterdir())


PASSWORD = "Kill-Test-Secret-7f3a"


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and needle in path.read_bytes():
                found.append(path)
        except OSError:
            continue  # removed while we looked
    return found


def test_killed_backup_leaves_no_password_and_the_next_run_removes_its_leftovers(
    sandboxes: SandboxFactory, tmp_path: Path
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 3000, seed=4, payload=2000)
    conn = source.connect()
    try:
        with conn.cursor() as cursor:
            # Not binlogged: the binlog would hold the statement, password included.
            cursor.execute("SET SESSION sql_log_bin = 0")
            cursor.execute(f"CREATE USER 'backup'@'localhost' IDENTIFIED BY '{PASSWORD}'")
            cursor.execute("GRANT ALL PRIVILEGES ON *.* TO 'backup'@'localhost'")
    finally:
        conn.close()
    site = sandboxes.root / "site"
    # Slow uploads so that the kill lands mid-upload.
    data = config_for(source, site, upload_rate_limit=2_000_000)
    data["mysql"]["client_params"].update(user="backup", password=PASSWORD)
    config = tmp_path / "binhoard.json"  # the operator's file: the one place it may be
    config.write_text(json.dumps(data))
    settings = parse_settings(data, source="test")
    temp = settings.temporary_directory
    site_temp = site / ".binhoard-tmp"

    def uploading() -> bool:
        return any(p.stat().st_size >= 1024 * 1024 for p in site_temp.glob("put-*"))

    process = subprocess.Popen(
        [sys.executable, "-m", "binhoard", "backup", "create", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        # Ready when a MiB of mariabackup's stream has reached the site: mariabackup runs
        # with its credentials, and the upload is under way.
        wait_for("the backup's upload", lambda: uploading() or process.poll() is not None)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        assert _files_containing(settings.state_directory.parent, PASSWORD.encode()) == []
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    # What the killed run left: its work directory, its partial upload, its record.
    assert [p.name for p in temp.glob("backup-*")] != []
    partial = list(site_temp.glob("put-*"))
    assert partial != []
    assert (settings.state_directory / "backup-in-progress.json").exists()
    # and no password anywhere binhoard writes.
    for root in (settings.state_directory.parent, site):
        assert _files_containing(root, PASSWORD.encode()) == [], root

    # The next run removes this host's partial upload at once, not a day later.
    store = open_site(settings)
    assert [p for p in partial if p.exists()] == []
    assert list_backups(store) == []
    data["backup_sites"]["default"]["upload_rate_limit"] = None
    fast = parse_settings(data, source="test")
    backup = ops.backup(fast, open_site(fast))
    assert [b.backup_id for b in list_backups(store)] == [backup.backup_id]
    assert find_leftovers(store) == []
    assert list(temp.glob("backup-*")) == []
    assert list(site_temp.iterdir()) == []
    assert not (settings.state_directory / "backup-in-progress.json").exists()
    for root in (settings.state_directory.parent, site):
        assert _files_containing(root, PASSWORD.encode()) == [], root


def test_a_server_that_cannot_start_shows_the_end_of_its_error_log(
    sandboxes: SandboxFactory,
) -> None:
    box = sandboxes.new("broken", start=False)
    box.create(initialize=False)  # no privilege tables: mariadbd aborts
    settings = settings_for(box, sandboxes.root / "site")
    with pytest.raises(ServerError) as info:
        open_server(settings).process.ensure_running()
    message = str(info.value)
    assert "exited with 1" in message
    # Found from log-error in its my.cnf, and the reason is in what is shown.
    assert f"last lines of its error log {box.error_log}:" in message
    assert "Can't open and lock privilege tables" in message
    assert message.rstrip().endswith("[ERROR] Aborting")


def test_a_full_temporary_directory_is_one_clear_line_and_the_next_backup_works(
    sandboxes: SandboxFactory, tmp_path: Path
) -> None:
    """mariabackup's log (where it reports the snapshot position) lands in the temporary
    directory: full, it was "did not report a binlog position: is log_bin ON?"."""
    box = sandboxes.new()
    create_schema(box)
    write_rows(box, 100, seed=3)
    settings = settings_for(box, tmp_path / "site")
    store = open_site(settings)
    with tmpfs(settings.temporary_directory, 16 * 1024):
        with pytest.raises(DiskFullError) as info:
            ops.backup(settings, store)
        message = str(info.value)
        assert message.startswith(
            f"no space left on device in {settings.temporary_directory} (temporary_directory, "
            "mariabackup's log and LSN files)"
        ), message
        assert message.endswith("free space, then take the backup again")
        resize(settings.temporary_directory, 64 * 1024**2)
        manifest = ops.backup(settings, store)
    assert [b.backup_id for b in list_backups(store)] == [manifest.backup_id]
    assert find_leftovers(store) == []  # the failed backup's data object is gone
