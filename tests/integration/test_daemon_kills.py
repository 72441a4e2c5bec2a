"""``kill -9`` of the daemon at random moments, in every mode, each time restarted: what
it was asked for is done once (no backup lost or taken twice, no binlog record
duplicated or missing, no object left that nothing names), and a restore killed
repeatedly still ends exactly at its target. The seed is printed; BINHOARD_KILL_SEED
replays a run."""

from __future__ import annotations

import os
import random
import time

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.crypto.age import Identity
from tests.support.chaos import assert_site_whole, kill_and_restart
from tests.support.configs import config_for
from tests.support.daemon_process import DaemonProcess
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import checksums, create_schema, mark, write_rows

ROUNDS = 12


def test_kill_9_at_random_moments_in_every_mode(
    sandboxes: SandboxFactory, daemons: list[DaemonProcess]
) -> None:
    seed = int(os.environ.get("BINHOARD_KILL_SEED", random.randrange(1 << 32)))
    print(f"BINHOARD_KILL_SEED={seed}")
    rng = random.Random(seed)
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 200, seed=1)
    identity = Identity.generate()
    site = sandboxes.root / "site"
    config = config_for(source, site, identity=identity)
    # The schedule's own backup stays out of the way: only the first and the requested.
    config["backup_settings"] = {"backup_hour": (time.gmtime().tm_hour + 12) % 24}
    primary = DaemonProcess(source.directory / "daemon", config)
    daemons.append(primary)
    primary.start()
    kill_and_restart(primary, rng, 0.5)  # idle
    wait_for("the first listing", lambda: primary.get("/backup")["backups"] is not None)
    primary.send("PUT", "/status", {"mode": "active"})
    expected = 1  # the first backup, taken at once
    for round_ in range(ROUNDS):
        write_rows(source, 150, seed=10 + round_)
        if rng.random() < 0.6:
            incremental = rng.random() < 0.5
            primary.send(
                "POST", "/backup", {"backup_type": "basebackup", "incremental": incremental}
            )
            expected += 1
        else:
            primary.send("POST", "/backup", {"backup_type": "binlog"})
        kill_and_restart(primary, rng, 2.5)  # active: a backup, a rotation, a pass
        # Each accepted request is carried out, once, before the next one.
        wait_for(
            f"{expected} backups (round {round_})",
            lambda n=expected: len(primary.backups()) >= n,
            timeout=90,
        )
        assert len(primary.backups()) == expected, primary.tail()
    write_rows(source, 200, seed=99)
    marker = mark(source)
    write_rows(source, 100, seed=100)  # the target lies between transactions
    answer = primary.send("POST", "/backup", {"backup_type": "binlog", "wait_for_upload": 60})
    assert answer == {"success": True}, primary.tail()
    assert primary.terminate() == 0

    # The site: whole streams, no duplicate records, nothing unnamed left behind.
    assert_site_whole(open_site(parse_settings(config, source="test")), expected)

    # A second node restores to the marker, killed during the restore and after it.
    box = sandboxes.new("restored", start=False)
    box.create(initialize=False)
    replica = DaemonProcess(box.directory / "daemon", config_for(box, site, identity=identity))
    daemons.append(replica)
    replica.start()
    wait_for("the listing", lambda: len(replica.backups()) == expected)
    newest = replica.backups()[-1]["stream_id"]
    request = {
        "mode": "restore",
        "site": "default",
        "stream_id": newest,
        "target_time": marker.time,
    }
    replica.send("PUT", "/status", request)
    for _ in range(5):
        kill_and_restart(replica, rng, 3.0)  # restore, wherever it got to
    replica.wait_mode("observe", timeout=180)
    kill_and_restart(replica, rng, 0.5)  # observe
    assert replica.mode() == "observe"
    assert checksums(box) == marker.sums
    assert str(box.query("SELECT @@gtid_current_pos")[0][0]) == marker.gtid
    assert replica.terminate() == 0
