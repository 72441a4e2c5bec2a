"""Retention by a ``binhoard daemon`` in active mode, seen only through its HTTP API:
the first (scheduled) backup on entering active, more streams through requested
backups with small ``backup_count_*``, one stream preserved, and after each backup
exactly the streams retention must delete gone from ``GET /backup``; the preserved one
stays until its preservation is cleared."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from binhoard.crypto.age import Identity
from tests.integration.test_daemon import new_daemon, written_source
from tests.support.daemon_process import DaemonProcess
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import write_rows


def stream_ids(daemon: DaemonProcess) -> list[str]:
    return [b["stream_id"] for b in daemon.backups()]


def closed(daemon: DaemonProcess, stream_id: str) -> bool:
    return any(b["stream_id"] == stream_id and b["closed_at"] for b in daemon.backups())


def test_retention_over_http_deletes_exactly_the_expired_streams(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    source = written_source(sandboxes, 50)
    daemon = new_daemon(
        daemons,
        source,
        sandboxes.root / "site",
        Identity.generate(),
        backup_settings={"backup_count_max": 2, "backup_count_min": 1},
    )
    wait_for("the first listing", lambda: daemon.get("/backup")["backups"] is not None)
    assert daemon.send("PUT", "/status", {"mode": "active"}) == {"mode": "active"}
    # Nothing asked for: the schedule takes the first backup (no open stream of ours).
    wait_for("the scheduled first backup", lambda: len(daemon.backups()) == 1)
    [a] = stream_ids(daemon)

    def next_backup(seed: int) -> str:
        """A requested backup; its predecessor closed once the new snapshot is
        archived (a rotation waited for makes sure it is). Returns its stream id."""
        before = stream_ids(daemon)
        write_rows(source, 50, seed=seed)
        assert daemon.send("POST", "/backup", {"backup_type": "basebackup"}) == {"success": True}
        wait_for(f"backup {seed}", lambda: stream_ids(daemon)[-1] not in before)
        new = stream_ids(daemon)[-1]
        write_rows(source, 10, seed=seed + 100)
        answer = daemon.send("POST", "/backup", {"backup_type": "binlog", "wait_for_upload": 30})
        assert answer == {"success": True}
        wait_for(f"{before[-1]} closed", lambda: closed(daemon, before[-1]))
        return new

    b = next_backup(2)
    until = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    preserve = {"preserve_until": until, "wait_for_applied_preservation": 30}
    assert daemon.send("PUT", f"/backup/{a}/preserve", preserve) == {"success": True}
    [listed_a] = [x for x in daemon.backups() if x["stream_id"] == a]
    assert listed_a["preserve_until"] is not None

    # max 2: a stream with two newer usable ones goes, unless it is preserved.
    c = next_backup(3)
    assert stream_ids(daemon) == [a, b, c]  # a preserved; b has only one newer
    d = next_backup(4)
    wait_for("b deleted by retention", lambda: b not in stream_ids(daemon))
    assert stream_ids(daemon) == [a, c, d]

    # The preservation cleared: retention runs again and a goes; c (one newer) stays.
    cleared = {"preserve_until": None, "wait_for_applied_preservation": 30}
    assert daemon.send("PUT", f"/backup/{a}/preserve", cleared) == {"success": True}
    wait_for("a deleted by retention", lambda: a not in stream_ids(daemon))
    assert stream_ids(daemon) == [c, d]
    status = daemon.get("/status")
    assert status["mode"] == "active" and status["last_error"] is None
    assert daemon.terminate(timeout=10) == 0
