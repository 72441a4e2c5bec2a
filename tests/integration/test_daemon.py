"""``binhoard daemon`` end to end, driven only over its HTTP API: a sandbox backed up to
a local site by a daemon in active mode (first backup, a requested one, a binlog
rotation waited for), then a second sandbox restored to a time through ``PUT
/status`` by its own daemon, reaching observe with the source's checksums at that
time. And SIGTERM stops a daemon within 10 s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.gtid import GtidPosition
from binhoard.ops.site import find_leftovers
from binhoard.server.sandbox import Sandbox
from tests.support.configs import config_for
from tests.support.daemon_process import DaemonProcess
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import checksums, create_schema, mark, write_rows


def new_daemon(
    daemons: list[DaemonProcess], box: Sandbox, site: Path, identity: Identity, **keys: Any
) -> DaemonProcess:
    """Started on ``box``'s configuration, top-level ``keys`` replaced."""
    config: dict[str, Any] = {**config_for(box, site, identity=identity), **keys}
    daemon = DaemonProcess(box.directory / "daemon", config)
    daemons.append(daemon)
    daemon.start()
    return daemon


def written_source(sandboxes: SandboxFactory, rows: int) -> Sandbox:
    """A running sandbox with the workload's schema and ``rows`` rows in it."""
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, rows, seed=1)
    return source


def restore_target(sandboxes: SandboxFactory) -> Sandbox:
    """A sandbox with an empty datadir and no server running: what a restore needs."""
    box = sandboxes.new("restored", start=False)
    box.create(initialize=False)
    return box


def test_a_daemon_backs_up_over_http_and_another_restores_to_a_time(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    source = written_source(sandboxes, 200)
    site = sandboxes.root / "site"
    identity = Identity.generate()
    primary = new_daemon(daemons, source, site, identity)

    assert primary.mode() == "idle"
    wait_for("the first listing", lambda: primary.get("/backup")["backups"] is not None)
    assert primary.backups() == []
    assert primary.send("PUT", "/status", {"mode": "active"}) == {"mode": "active"}
    # No open stream of this server: the first backup is taken at once.
    wait_for("the first backup", lambda: len(primary.backups()) == 1)

    write_rows(source, 300, seed=2)
    assert primary.send("POST", "/backup", {"backup_type": "basebackup"}) == {"success": True}
    wait_for("the requested backup", lambda: len(primary.backups()) == 2)
    _, second = primary.backups()
    assert second["basebackup_info"]["backup_type"] == "full"

    write_rows(source, 300, seed=3)
    marker = mark(source)  # the time to restore to
    write_rows(source, 300, seed=4)
    answer = primary.send("POST", "/backup", {"backup_type": "binlog", "wait_for_upload": 30})
    assert answer == {"success": True}  # stored before the answer, not upload_pending
    source.query("FLUSH BINARY LOGS")

    wait_for("the first stream closed", lambda: primary.backups()[0]["closed_at"] is not None)
    # The second backup's snapshot sat in the binlog the first stream was writing, after
    # transactions: the first stream was closed only once it had them. No hole.
    old, new = (b["restorable_window"] for b in primary.backups()[:2])
    assert GtidPosition.parse(old["last_gtid"]).covers(GtidPosition.parse(new["first_gtid"]))
    assert old["last_gtid"] != old["first_gtid"]
    status = primary.get("/status")
    assert status["mode"] == "active" and status["archive_stalled_reason"] is None

    # A second node, restored to the marker's time through its own daemon.
    box = restore_target(sandboxes)
    replica = new_daemon(daemons, box, site, identity)
    wait_for("the listing", lambda: len(replica.backups()) == 2)
    request = {
        "mode": "restore",
        "site": "default",
        "stream_id": second["stream_id"],
        "target_time": marker.time,
    }
    assert replica.send("PUT", "/status", request) == {"mode": "restore"}
    restore = replica.get("/status/restore")
    assert restore["stream_id"] == second["stream_id"]
    replica.wait_mode("observe", timeout=180)
    assert checksums(box) == marker.sums
    assert str(box.query("SELECT @@gtid_current_pos")[0][0]) == marker.gtid
    # Observe never writes to the site; active cannot be left.
    answer = primary.client.put("/status", json={"mode": "observe"})
    assert answer.status_code == 409 and "message" in answer.json()

    assert replica.terminate(timeout=10) == 0

    # SIGTERM while a backup runs: the daemon stops within 10 s, and the accepted
    # request is carried out after a restart, leaving nothing behind.
    count = len(primary.backups())
    write_rows(source, 300, seed=5)
    primary.send("POST", "/backup", {"backup_type": "basebackup"})
    assert primary.terminate(timeout=10) == 0
    primary.start()
    wait_for("the backup asked for before the stop", lambda: len(primary.backups()) == count + 1)
    assert find_leftovers(open_site(parse_settings(primary.config, source="test"))) == []
    assert primary.terminate(timeout=10) == 0
