"""Promotion with real MariaDB: a replica seeded by its daemon from the primary's backup
is promoted after the primary dies with transactions it never archived. The daemon
writes the promotion record, goes active and archives the stream on from inside its own
binlog (it logged what it replicated); a point-in-time restore of that stream to its
latest point on a third node gives exactly the new primary's data. And the other way
round: a primary SIGKILLed after archiving transactions its replica never received;
the promotion applies them from the archive first."""

from __future__ import annotations

import json

from binhoard.config import parse_settings
from binhoard.ops.catalog import read_site
from binhoard.server.sandbox import Sandbox
from tests.integration.test_seed import (
    ArchivedPrimary,
    archived_primary,
    caught_up,
    daemon_backups,
    new_node,
    seeded_config,
)
from tests.support import ops
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.daemon_process import DaemonProcess
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import checksums, write_rows


def seeded_node(
    sandboxes: SandboxFactory, archived: ArchivedPrimary, daemons: list[DaemonProcess], name: str
) -> tuple[Sandbox, DaemonProcess, str]:
    """A node seeded by its daemon from the primary's stream, observing: its server, its
    daemon and the stream's id."""
    node = new_node(sandboxes, name)
    config = seeded_config(node, archived.site, archived.identity)
    daemon = DaemonProcess(node.directory / "daemon", config)
    daemons.append(daemon)
    daemon.start()
    (stream_id,) = daemon_backups(daemon)
    request = {"mode": "restore", "site": "default", "stream_id": stream_id}
    assert daemon.send("PUT", "/status", {**request, "replicate_from": archived.address}) == {
        "mode": "restore"
    }
    daemon.wait_mode("observe", timeout=120)
    return node, daemon, stream_id


def test_a_seeded_replica_promoted_by_its_daemon_continues_the_stream(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    archived = archived_primary(sandboxes)
    primary, store = archived.box, archived.store
    node, daemon, stream_id = seeded_node(sandboxes, archived, daemons, "replica")
    write_rows(primary, 200, seed=3)  # the primary never archives these
    caught_up(node, primary)
    primary.stop()  # it dies

    assert daemon.send("PUT", "/status", {"mode": "promote"}) == {"mode": "promote"}
    daemon.wait_mode("active", timeout=120)
    (stream,) = (s for s in read_site(store).streams if s.stream_id == stream_id)
    assert stream.owner == node.server_id
    write_rows(node, 200, seed=4)  # the new primary's own writes
    archived_and_restored(archived, node, stream_id, sandboxes)
    handed = next(s for s in read_site(store).streams if s.stream_id == stream_id).records
    assert any(r.server_id == node.server_id and r.start_offset > 4 for r in handed)


def archived_and_restored(
    archived: ArchivedPrimary, node: Sandbox, stream_id: str, sandboxes: SandboxFactory
) -> None:
    """The new owner ``node`` archives ``stream_id`` to its end; a restore of it to its
    latest point on a third node gives ``node``'s checksums."""
    node.query("FLUSH BINARY LOGS")
    end = str(node.query("SELECT @@gtid_binlog_pos")[0][0])

    def to_the_end() -> bool:
        (taken,) = (s for s in read_site(archived.store).streams if s.stream_id == stream_id)
        return taken.end_position.format() == end and not taken.problems()

    wait_for("the new owner archives the stream to its end", to_the_end, timeout=120)
    third = new_node(sandboxes, "third")
    config_file = third.directory / "binhoard.json"
    config = config_for(third, archived.site, identity=archived.identity)
    config_file.write_text(json.dumps(config))
    done = run_binhoard(
        "restore", "--config", str(config_file), "--to-latest", "--backup", stream_id
    )
    assert done.returncode == 0, done.stderr[-3000:]
    third.start()
    assert checksums(third) == checksums(node)


def test_a_replica_promoted_after_its_primary_died_first_applies_what_it_archived(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    """The primary archives transactions its replica never received (the replica's IO
    thread was stopped), then is SIGKILLed: the promotion applies them from the archive
    before it writes the record, and the stream continues gap-free from there."""
    archived = archived_primary(sandboxes)
    primary, site, identity, store = archived.box, archived.site, archived.identity, archived.store
    node, daemon, stream_id = seeded_node(sandboxes, archived, daemons, "replica")
    write_rows(primary, 50, seed=3)
    caught_up(node, primary)  # the node's position is inside the primary's active file
    node.query("STOP SLAVE IO_THREAD")  # from now on it receives nothing
    write_rows(primary, 200, seed=5)
    primary.query("FLUSH BINARY LOGS")
    write_rows(primary, 100, seed=6)
    primary.query("FLUSH BINARY LOGS")
    settings = parse_settings(config_for(primary, site, identity=identity), source="test")
    assert ops.archiver(settings, store).archive_once().problems == []
    archived_end = str(primary.query("SELECT @@gtid_binlog_pos")[0][0])
    expected = checksums(primary)
    primary.kill()  # SIGKILL: what it archived is all that is left of it
    assert checksums(node) != expected

    assert daemon.send("PUT", "/status", {"mode": "promote"}) == {"mode": "promote"}
    daemon.wait_mode("active", timeout=120)
    assert checksums(node) == expected
    assert str(node.query("SELECT @@gtid_current_pos")[0][0]) == archived_end
    # The apply's replication configuration is gone: nothing points at the old primary.
    assert node.query("SHOW SLAVE STATUS") == []
    (stream,) = (s for s in read_site(store).streams if s.stream_id == stream_id)
    (promotion,) = stream.promotions
    assert promotion.server_id == node.server_id and not promotion.forced
    assert promotion.gtid_position.format() == archived_end

    write_rows(node, 100, seed=7)  # the new primary's own writes
    archived_and_restored(archived, node, stream_id, sandboxes)
