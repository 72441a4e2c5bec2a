"""Re-pointing a replica at a new primary after a failover (``ops/seed.py``
``repoint``), against fake servers: the replica of the old primary replicates from the
promoted one; one that has transactions the new primary lacks, or other ones at the
same sequence numbers, is refused, its replication left as it was."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from binhoard.app import pitr_config, seed_settings
from binhoard.daemon.api import HttpServer
from binhoard.daemon.jobs import RESTORE
from binhoard.daemon.port import SetMode
from binhoard.domain.errors import ConflictError, ReplicationError, UsageError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.replica import PrimaryAddress
from binhoard.ops.pitr import PitrRequest, PointInTimeRestore
from binhoard.ops.seed import Reconciled, SeedSettings, reconcile, repoint
from binhoard.storage.store import MemoryStore
from tests.support.cli import run_main
from tests.support.daemon import Harness
from tests.support.fakeserver import FakeServer, fake_host
from tests.support.http_api import TOKEN
from tests.unit.test_daemon_service import START as DAEMON_START
from tests.unit.test_daemon_service import write_config as daemon_config
from tests.unit.test_restore_cli import write_config
from tests.unit.test_seed import IDENTITY, PRIMARY, REPLICATION, archiving_primary

NEW_PRIMARY = "127.0.0.1:3308"
NEW = PrimaryAddress("127.0.0.1", 3308)


@dataclass
class Cluster:
    """The old primary (7) and two replicas seeded from its stream, caught up: ``new``
    (9, promoted by the test) and ``other`` (11, to re-point)."""

    old: FakeServer
    new: FakeServer
    other: FakeServer
    seed: SeedSettings

    def promote_new(self, writes: int = 3) -> None:
        """``new`` becomes a primary: replication removed, then writes of its own."""
        self.new.replication.stop()
        self.new.replication.reset_all()
        self.new.read_only = False
        self.new.commit(writes)


def seeded(directory: Path, store: MemoryStore, server_id: int, old: FakeServer) -> FakeServer:
    settings, server = fake_host(
        directory, IDENTITY, server_id=server_id, running=False, replication=REPLICATION
    )
    server.replication.network[PRIMARY] = old
    seed = PitrRequest("default", {"to_latest": True}, replicate_from=PRIMARY)
    restore = PointInTimeRestore(server, store, pitr_config(settings), use_cache=False)
    assert restore.start(seed).phase == "completed"
    return server


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    old, store, _ = archiving_primary(tmp_path / "old")
    old.commit(2)
    new = seeded(tmp_path / "new", store, 9, old)
    settings, _ = fake_host(tmp_path / "settings", IDENTITY, replication=REPLICATION)
    other = seeded(tmp_path / "other", store, 11, old)
    other.replication.network[NEW_PRIMARY] = new
    seed = seed_settings(settings)
    assert seed is not None
    return Cluster(old, new, other, seed)


def test_a_replica_of_the_old_primary_replicates_from_the_new_one(cluster: Cluster) -> None:
    cluster.old.process.stop()  # the old primary dies
    cluster.promote_new()
    done = repoint(cluster.other, NEW, cluster.seed)
    assert done.changed and done.primary == NEW_PRIMARY
    assert done.position == GtidPosition.parse("0-7-9")
    replication = cluster.other.replication
    assert replication.running and replication.primary == NEW
    cluster.new.commit(2)
    assert replication.wait_for_gtid(cluster.new.binlog_position, 1)
    assert cluster.other.rows() == cluster.new.rows()
    # Asked again: nothing changes, replication is (still) started.
    again = repoint(cluster.other, NEW, cluster.seed)
    assert not again.changed and replication.running
    assert cluster.other.calls.count("replication.change_primary") == 2  # seed, re-point


def test_a_replica_ahead_of_the_new_primary_is_refused(cluster: Cluster) -> None:
    # The other replica received 0-7-10..11 from the old primary; the new one did not.
    cluster.new.replication.stop()
    cluster.old.commit(2)
    assert cluster.other.replication.wait_for_gtid(cluster.old.binlog_position, 1)
    cluster.promote_new()  # its writes get 0-9-10..: the same sequence numbers
    with pytest.raises(ConflictError) as refused:
        repoint(cluster.other, NEW, cluster.seed)
    message = refused.value.message
    assert "0-7-11, which the primary never logged" in message
    assert f"It has transactions {NEW_PRIMARY} lacks" in message
    assert "Re-seed it from the new primary's stream" in message
    # Left as it was: replicating from the old primary, nothing lost or applied.
    replication = cluster.other.replication
    assert replication.primary is not None and replication.primary.format() == PRIMARY
    assert replication.running
    assert cluster.other.slave_position == GtidPosition.parse("0-7-11")


def test_a_re_point_a_crash_cut_short_is_finished_or_rolled_back(cluster: Cluster) -> None:
    # Killed after the re-point stopped replication: started with the daemon again, it
    # is finished.
    cluster.promote_new()
    cluster.other.replication.stop()
    found = reconcile(cluster.other, PRIMARY, NEW, cluster.seed)
    assert found == Reconciled(NEW_PRIMARY, None)
    replication = cluster.other.replication
    assert replication.running and replication.primary == NEW


def test_a_re_point_a_crash_cut_short_and_now_refused_is_rolled_back(cluster: Cluster) -> None:
    cluster.new.replication.stop()
    cluster.old.commit(2)
    assert cluster.other.replication.wait_for_gtid(cluster.old.binlog_position, 1)
    cluster.promote_new()  # the other replica is ahead of it: refused
    cluster.other.replication.stop()  # where the killed re-point left it
    found = reconcile(cluster.other, PRIMARY, NEW, cluster.seed)
    assert found.primary == PRIMARY and found.problem is not None
    assert found.problem.startswith(f"the re-point at {NEW_PRIMARY}, interrupted by a restart")
    assert found.problem.endswith(f"replication from {PRIMARY} started again")
    replication = cluster.other.replication
    assert replication.running and replication.primary is not None
    assert replication.primary.format() == PRIMARY


def test_replication_not_as_expected_is_said(cluster: Cluster) -> None:
    assert reconcile(cluster.other, PRIMARY, None, cluster.seed) == Reconciled(PRIMARY, None)
    cluster.other.replication.stop()
    found = reconcile(cluster.other, PRIMARY, None, cluster.seed)
    assert found.problem is not None and f"replication from {PRIMARY} is stopped" in found.problem
    assert not cluster.other.replication.running  # said, not changed
    found = reconcile(cluster.other, NEW_PRIMARY, None, cluster.seed)
    assert found.problem == (
        f"this node should replicate from {NEW_PRIMARY}, but replicates from {PRIMARY}"
    )
    cluster.other.replication.reset_all()
    found = reconcile(cluster.other, PRIMARY, None, cluster.seed)
    assert found.problem is not None and "no replication is configured" in found.problem


def test_a_replica_with_writes_of_its_own_is_refused(cluster: Cluster) -> None:
    cluster.promote_new()
    cluster.other.replication.stop()  # stopped before: it stays stopped
    cluster.other.commit(1)  # 0-11-10, on the replica itself
    with pytest.raises(ConflictError, match="divergent: this server is at 0-11-10"):
        repoint(cluster.other, NEW, cluster.seed)
    assert not cluster.other.replication.running


def test_a_replica_pointed_at_itself_is_refused_and_nothing_changes(cluster: Cluster) -> None:
    """Its own address (a typo, a copied command): MariaDB would refuse the equal
    server_id only later, in the IO thread, after replication was re-pointed."""
    cluster.promote_new()
    own = "127.0.0.1:3311"
    cluster.other.replication.network[own] = cluster.other
    cluster.other.replication_accounts = dict(cluster.new.replication_accounts)
    with pytest.raises(UsageError, match=f"replicate_from {own} has this server's server_id 11"):
        repoint(cluster.other, PrimaryAddress("127.0.0.1", 3311), cluster.seed)
    replication = cluster.other.replication
    assert replication.primary is not None and replication.primary.format() == PRIMARY
    assert replication.running


def test_an_unreachable_new_primary_is_named_and_nothing_changes(cluster: Cluster) -> None:
    cluster.promote_new()
    cluster.new.process.stop()
    with pytest.raises(ReplicationError, match=f"{NEW_PRIMARY} does not answer"):
        repoint(cluster.other, NEW, cluster.seed)
    replication = cluster.other.replication
    assert replication.primary is not None and replication.primary.format() == PRIMARY
    assert replication.running


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--replicate-from", "127.0.0.1:3308"], "needs replication.user"),
        ([], "Missing option '--replicate-from'"),
    ],
)
def test_the_command_checks_the_primary_before_touching_the_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    config = write_config(tmp_path)
    code, _, err = run_main(["repoint", "--config", str(config), *options], capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_with_a_daemon_running_status_shows_its_primary_and_repoint_goes_through_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    h = Harness(tmp_path, DAEMON_START, replication=REPLICATION)
    h.doers.put_backup(server_id=7)
    h.settle()
    seed = SetMode(
        "restore", site="default", stream_id=h.doers.backup_ids()[0], replicate_from=PRIMARY
    )
    h.submit(seed)
    h.run(RESTORE)
    server = HttpServer(h.controller, address="127.0.0.1", port=0, auth_token=TOKEN)
    server.start()
    try:
        config = daemon_config(
            tmp_path / "bh.json",
            http_port=server.port,
            http_auth_token=TOKEN,
            replication=REPLICATION,
        )
        code, out, err = run_main(["status", "--config", str(config)], capsys)
        assert code == 0, err
        assert f"replicates  from {PRIMARY}" in out
        argv = ["repoint", "--config", str(config), "--replicate-from", NEW_PRIMARY]
        code, _, err = run_main(argv, capsys)
        assert code == 4 and "a daemon runs for this configuration" in err
        assert f'"replicate_from": "{NEW_PRIMARY}"' in err
    finally:
        server.stop()
