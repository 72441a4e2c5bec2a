"""Re-pointing replicas with real MariaDB: a primary and two replicas seeded by their
daemons; the primary dies, one replica is promoted, and the other is re-pointed at it
through its daemon (``PUT /status {"mode": "observe", "replicate_from": ...}``). Writes on
the new primary reach it (``MASTER_GTID_WAIT``, checksums). A replica that received
transactions the new primary never got is refused (409) and left as it was."""

from __future__ import annotations

from binhoard.server.sandbox import Sandbox
from tests.integration.test_promote import seeded_node
from tests.integration.test_seed import ArchivedPrimary, archived_primary, caught_up
from tests.support.daemon_process import DaemonProcess
from tests.support.sandboxes import SandboxFactory
from tests.support.workload import checksums, write_rows


def three_nodes(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> tuple[ArchivedPrimary, tuple[Sandbox, DaemonProcess], tuple[Sandbox, DaemonProcess]]:
    """The primary and two replicas seeded by their daemons from its stream, observing:
    the one to promote, and the other one."""
    archived = archived_primary(sandboxes)
    new, new_daemon, _ = seeded_node(sandboxes, archived, daemons, "new")
    other, other_daemon, _ = seeded_node(sandboxes, archived, daemons, "other")
    return archived, (new, new_daemon), (other, other_daemon)


def test_the_other_replica_follows_the_promoted_one(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    archived, (new, new_daemon), (other, other_daemon) = three_nodes(sandboxes, daemons)
    primary = archived.box
    assert other_daemon.get("/status")["replicating_from"] == archived.address
    write_rows(primary, 100, seed=3)
    caught_up(new, primary)
    caught_up(other, primary)
    primary.kill()

    assert new_daemon.send("PUT", "/status", {"mode": "promote"}) == {"mode": "promote"}
    new_daemon.wait_mode("active", timeout=120)
    address = f"127.0.0.1:{new.port}"
    repoint = {"mode": "observe", "replicate_from": address}
    assert other_daemon.send("PUT", "/status", repoint) == {"mode": "observe"}
    status = other_daemon.get("/status")
    assert (status["mode"], status["replicating_from"]) == ("observe", address)
    write_rows(new, 200, seed=4)  # the new primary's own writes reach the other replica
    caught_up(other, new)
    # Asked again: it replicates from there already, nothing changes.
    assert other_daemon.send("PUT", "/status", repoint) == {"mode": "observe"}
    write_rows(new, 50, seed=5)
    caught_up(other, new)


def test_a_replica_ahead_of_the_promoted_one_is_refused(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    archived, (new, new_daemon), (other, other_daemon) = three_nodes(sandboxes, daemons)
    primary = archived.box
    new.query("STOP SLAVE IO_THREAD")  # the new primary-to-be gets nothing more
    write_rows(primary, 100, seed=3)  # never archived: only the other replica has them
    caught_up(other, primary)
    expected = checksums(other)
    primary.kill()
    assert new_daemon.send("PUT", "/status", {"mode": "promote"}) == {"mode": "promote"}
    new_daemon.wait_mode("active", timeout=120)

    address = f"127.0.0.1:{new.port}"
    repoint = {"mode": "observe", "replicate_from": address}
    refusal = other_daemon.send("PUT", "/status", repoint, status=409)["message"]
    assert f"has transactions {address} lacks" in refusal
    assert "Re-seed it from the new primary's stream" in refusal
    status = other_daemon.get("/status")
    assert status["replicating_from"] == archived.address  # left as it was
    write_rows(new, 20, seed=4)
    assert checksums(other) == expected  # nothing of the new primary's reached it
