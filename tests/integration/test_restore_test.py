"""Restore tests against real MariaDB: a daemon in active mode tests its backup on
``POST /backup/{stream_id}/test`` and ``GET /backup`` shows the RTO and the GTID
restored; ``binhoard restore-test`` fails, naming them, on a backup holding a corrupt
table whose marker row a later transaction deleted. The source is never touched and
the scratch server is gone afterwards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from binhoard.app import archive_config, backup_config, open_server, open_site
from binhoard.config import parse_settings
from binhoard.crypto.age import Identity
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.backup import create_backup
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.daemon_process import DaemonProcess
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import checksums, create_schema, write_rows


def test_a_daemon_tests_a_backup_on_request_and_shows_rto_and_gtid(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 200, seed=1)
    config: dict[str, Any] = config_for(source, sandboxes.root / "site")
    daemon = DaemonProcess(source.directory / "daemon", config)
    daemons.append(daemon)
    daemon.start()
    assert daemon.send("PUT", "/status", {"mode": "active"}) == {"mode": "active"}
    wait_for("the first backup", lambda: len(daemon.backups()) == 1)
    (backup,) = daemon.backups()
    stream_id = backup["stream_id"]
    write_rows(source, 300, seed=2)  # after the backup: restored from the binlogs
    stored = daemon.send("POST", "/backup", {"backup_type": "binlog", "wait_for_upload": 60})
    assert stored == {"success": True}
    newest = str(source.query("SELECT @@gtid_binlog_pos")[0][0])
    before = checksums(source)

    answer = daemon.send("POST", f"/backup/{stream_id}/test", {})
    assert answer == {"success": True}
    daemon.send("POST", "/backup/nope/test", {}, status=404)

    def tested() -> bool:
        return daemon.backups()[0].get("restore_test") is not None

    wait_for("the restore test", tested, timeout=300)
    test = daemon.backups()[0]["restore_test"]
    assert test["result"] == "passed", test["reason"]
    assert test["rto_seconds"] > 0
    assert test["gtid"] == newest  # the backup and every binlog archived after it
    assert test["tables_checked"] >= 3  # app's tables and the system ones
    assert f"marker of {stream_id} found" in test["reason"]
    assert daemon.backups()[0]["restore_test_pending"] is False
    metrics = daemon.client.get("/metrics").text
    assert "binhoard_restore_test_passed 1" in metrics
    assert 'binhoard_restore_test_completed_total{result="passed"} 1' in metrics
    # The source was only read; the scratch server is gone.
    assert checksums(source) == before
    scratch = source.directory / "binhoard" / "tmp" / "restore-test"
    assert not (scratch / "rt").exists()


def test_restore_test_fails_naming_a_corrupt_table_and_a_missing_marker(
    sandboxes: SandboxFactory,
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 100, seed=1)
    source.execute_script(
        "USE app; CREATE TABLE plain (id INT PRIMARY KEY, v VARCHAR(200)) ENGINE=MyISAM;"
        "INSERT INTO plain SELECT seq, REPEAT('x', 200) FROM seq_1_to_500;"
        "FLUSH TABLES app.plain;"
    )
    # Its data file cut short on disk: the backup copies it as it is.
    data_file = source.datadir / "app" / "plain.MYD"
    with data_file.open("r+b") as f:
        f.truncate(data_file.stat().st_size // 2)
    identity = Identity.generate()
    data = config_for(source, sandboxes.root / "site", identity=identity)
    settings = parse_settings(data, source="test")
    backup = create_backup(open_server(settings), open_site(settings), backup_config(settings))
    assert backup.extra == {"marker": "written"}
    # Someone deletes binhoard's marker row: the restored copy (binlogs applied) lacks it.
    source.query("DELETE FROM binhoard.backup_marker")
    source.query("FLUSH BINARY LOGS")
    archiver = BinlogArchiver(open_server(settings), open_site(settings), archive_config(settings))
    assert archiver.archive_once().problems == []
    archiver.close()
    config_file = sandboxes.root / "binhoard.json"
    config_file.write_text(json.dumps(data))

    result = run_binhoard("restore-test", "--config", str(config_file), "--json")
    assert result.returncode == 12, result.stderr
    report = json.loads(result.stdout)
    assert report["result"] == "failed" and report["stream_id"] == backup.backup_id
    assert "CHECK TABLE failed for 1 of" in report["reason"]
    assert "`app`.`plain`" in report["reason"] or "app.plain" in report["reason"]
    assert f"the marker row of backup {backup.backup_id} is missing" in report["reason"]
    assert report["gtid"] == str(source.query("SELECT @@gtid_binlog_pos")[0][0])
    assert "restore test of" in result.stderr and "failed" in result.stderr
    assert not Path(settings.scratch_directory / "rt").exists()
