"""Seeding replicas with real MariaDB: a primary under a write load, with a backup and
archived binlogs in a local site; one node seeded with ``binhoard restore --to-latest
--replicate-from`` and one through its daemon's ``PUT /status``. Both catch up with the
primary (``MASTER_GTID_WAIT`` with a deadline), their checksums equal the primary's, and
the daemon reaches ``observe``. A primary that cannot be named, or is unreachable, is
refused by name."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.crypto.age import Identity
from binhoard.server.sandbox import Sandbox
from binhoard.storage.store import ObjectStore
from tests.support import ops
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.daemon_process import DaemonProcess
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import checksums, create_schema, write_rows

REPLICATION = {"user": "repl", "password": "repl-secret"}


@contextmanager
def write_load(box: Sandbox) -> Iterator[None]:
    """Transactions on ``box`` until the block ends."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        seed = 100
        try:
            while not stop.is_set():
                write_rows(box, 50, seed=seed, payload=100)
                seed += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors


def grant_replication(primary: Sandbox) -> None:
    """The replicas' account on ``primary`` (docs/servers.md: what it must be granted)."""
    primary.execute_script(
        f"""
        CREATE USER '{REPLICATION["user"]}'@'127.0.0.1'
            IDENTIFIED BY '{REPLICATION["password"]}';
        GRANT REPLICATION SLAVE ON *.* TO '{REPLICATION["user"]}'@'127.0.0.1';
        """
    )


def seeded_config(box: Sandbox, site: Path, identity: Identity) -> dict[str, Any]:
    return {**config_for(box, site, identity=identity), "replication": REPLICATION}


def new_node(sandboxes: SandboxFactory, name: str) -> Sandbox:
    box = sandboxes.new(name, start=False)
    box.create(initialize=False)
    return box


def caught_up(replica: Sandbox, primary: Sandbox) -> None:
    position = str(primary.query("SELECT @@gtid_binlog_pos")[0][0])
    waited = replica.query("SELECT MASTER_GTID_WAIT(%s, 60)", (position,))
    assert waited[0][0] == 0, f"{replica.directory} did not reach {position} within 60 s"
    assert checksums(replica) == checksums(primary)
    assert replica.query("SELECT @@read_only")[0][0] == 1  # it never takes writes of its own


@dataclass
class ArchivedPrimary:
    box: Sandbox
    site: Path
    identity: Identity
    store: ObjectStore

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.box.port}"


def archived_primary(sandboxes: SandboxFactory) -> ArchivedPrimary:
    """A primary with the replicas' account, a full backup after 300 rows and 300 more
    archived in the site."""
    primary = sandboxes.new("primary")
    create_schema(primary)
    grant_replication(primary)
    write_rows(primary, 300, seed=1)
    site = sandboxes.root / "site"
    identity = Identity.generate()
    settings = parse_settings(config_for(primary, site, identity=identity), source="test")
    store = open_site(settings)
    ops.backup(settings, store)
    write_rows(primary, 300, seed=2)
    primary.query("FLUSH BINARY LOGS")
    assert ops.archiver(settings, store).archive_once().problems == []
    return ArchivedPrimary(primary, site, identity, store)


def test_replicas_seeded_by_the_cli_and_the_daemon_catch_up_with_the_primary(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    archived = archived_primary(sandboxes)
    primary, site, identity = archived.box, archived.site, archived.identity
    address = archived.address

    with write_load(primary):
        # One node through the CLI...
        cli_node = new_node(sandboxes, "cli")
        config_file = cli_node.directory / "binhoard.json"
        config_file.write_text(json.dumps(seeded_config(cli_node, site, identity)))
        done = run_binhoard(
            "restore", "--config", str(config_file), "--to-latest", "--replicate-from", address
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"it replicates from {address} and caught up with it" in done.stdout
        # ... and one through its daemon.
        daemon_node = new_node(sandboxes, "daemon")
        daemon = DaemonProcess(
            daemon_node.directory / "daemon", seeded_config(daemon_node, site, identity)
        )
        daemons.append(daemon)
        daemon.start()
        stream_id = next(iter(daemon_backups(daemon)))
        request = {
            "mode": "restore",
            "site": "default",
            "stream_id": stream_id,
            "replicate_from": address,
        }
        assert daemon.send("PUT", "/status", request) == {"mode": "restore"}
        daemon.wait_mode("observe", timeout=120)
    for node in (cli_node, daemon_node):
        caught_up(node, primary)
    state = json.loads((daemon_node.directory / "binhoard" / "state" / "restore.json").read_text())
    assert state["phase"] == "completed" and state["replicate_from"] == address
    assert daemon.get("/status")["mode"] == "observe"

    # Refused by name: a primary that is not loopback nor listed (before anything is
    # touched).
    lonely = new_node(sandboxes, "lonely")
    lonely_config = lonely.directory / "binhoard.json"
    lonely_config.write_text(json.dumps(seeded_config(lonely, site, identity)))
    refused = run_binhoard(
        "restore",
        "--config",
        str(lonely_config),
        "--to-latest",
        "--replicate-from",
        "10.9.9.9:3306",
    )
    assert refused.returncode == 2 and "neither a loopback address" in refused.stderr
    # The primary is down when the restore is done: named, and the restore, recorded at
    # replicating, resumes once it is back (without restoring again).
    primary.stop()
    failed = run_binhoard(
        "restore", "--config", str(lonely_config), "--to-latest", "--replicate-from", address
    )
    assert failed.returncode == 5, failed.stderr[-3000:]
    assert f"the primary {address} cannot be reached" in failed.stderr
    state = json.loads((lonely.directory / "binhoard" / "state" / "restore.json").read_text())
    assert state["phase"] == "replicating"
    primary.start()
    write_rows(primary, 100, seed=3)
    resumed = run_binhoard("-v", "restore", "--config", str(lonely_config), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the restore at phase replicating" in resumed.stderr
    caught_up(lonely, primary)

    # Another server, whose history is not the site's: divergent, refused by name before
    # replication is configured.
    stranger = sandboxes.new("stranger")
    create_schema(stranger)
    write_rows(stranger, 2000, seed=9)  # more transactions than the site's stream
    grant_replication(stranger)
    astray = new_node(sandboxes, "astray")
    astray_config = astray.directory / "binhoard.json"
    astray_config.write_text(json.dumps(seeded_config(astray, site, identity)))
    elsewhere = f"127.0.0.1:{stranger.port}"
    diverged = run_binhoard(
        "restore", "--config", str(astray_config), "--to-latest", "--replicate-from", elsewhere
    )
    assert diverged.returncode == 5, diverged.stderr[-3000:]
    assert f"cannot replicate from {elsewhere}: divergent" in diverged.stderr
    assert astray.query("SHOW SLAVE STATUS") == []


def daemon_backups(daemon: DaemonProcess) -> list[str]:
    wait_for("the listing", lambda: len(daemon.backups()) == 1)
    return [b["stream_id"] for b in daemon.backups()]
