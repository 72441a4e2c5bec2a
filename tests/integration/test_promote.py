"""Promotion with real MariaDB: a replica seeded by its daemon from the primary's backup
is promoted after the primary dies with transactions it never archived. The daemon
writes the promotion record, goes active and archives the stream on from inside its own
binlog (it logged what it replicated); a point-in-time restore of that stream to its
latest point on a third node gives exactly the new primary's data."""

from __future__ import annotations

import json

from binhoard.ops.catalog import read_site
from tests.integration.test_seed import (
    archived_primary,
    caught_up,
    daemon_backups,
    new_node,
    seeded_config,
)
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.daemon_process import DaemonProcess
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import checksums, write_rows


def test_a_seeded_replica_promoted_by_its_daemon_continues_the_stream(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    archived = archived_primary(sandboxes)
    primary, site, identity, store = archived.box, archived.site, archived.identity, archived.store
    address = archived.address

    node = new_node(sandboxes, "replica")
    daemon = DaemonProcess(node.directory / "daemon", seeded_config(node, site, identity))
    daemons.append(daemon)
    daemon.start()
    (stream_id,) = daemon_backups(daemon)
    request = {"mode": "restore", "site": "default", "stream_id": stream_id}
    assert daemon.send("PUT", "/status", {**request, "replicate_from": address}) == {
        "mode": "restore"
    }
    daemon.wait_mode("observe", timeout=120)
    write_rows(primary, 200, seed=3)  # the primary never archives these
    caught_up(node, primary)
    primary.stop()  # it dies

    assert daemon.send("PUT", "/status", {"mode": "promote"}) == {"mode": "promote"}
    daemon.wait_mode("active", timeout=120)
    (stream,) = (s for s in read_site(store).streams if s.stream_id == stream_id)
    assert stream.owner == node.server_id
    write_rows(node, 200, seed=4)  # the new primary's own writes
    node.query("FLUSH BINARY LOGS")
    end = str(node.query("SELECT @@gtid_binlog_pos")[0][0])

    def archived() -> bool:
        (taken,) = (s for s in read_site(store).streams if s.stream_id == stream_id)
        return taken.end_position.format() == end and not taken.problems()

    wait_for("the new owner archives the stream to its end", archived, timeout=120)
    handed = next(s for s in read_site(store).streams if s.stream_id == stream_id).records
    assert any(r.server_id == node.server_id and r.start_offset > 4 for r in handed)

    third = new_node(sandboxes, "third")
    config_file = third.directory / "binhoard.json"
    config_file.write_text(json.dumps(config_for(third, site, identity=identity)))
    done = run_binhoard(
        "restore", "--config", str(config_file), "--to-latest", "--backup", stream_id
    )
    assert done.returncode == 0, done.stderr[-3000:]
    third.start()
    assert checksums(third) == checksums(node)
