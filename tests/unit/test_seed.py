"""Seeding a replica (``ops/seed.py``, the ``replicating`` phase of ``ops/pitr.py``)
against fake servers: the restored server becomes a replica of the primary it was
restored from and catches up; a primary that cannot be reached, a divergent history and
replication errors are refused by name; a run killed at any step resumes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from binhoard.app import archive_config, backup_config, pitr_config
from binhoard.config import Settings, is_loopback_address
from binhoard.crypto.age import Identity
from binhoard.domain.errors import ReplicationError, ServerError, UsageError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.replica import PrimaryAddress, divergence, parse_primary_address
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.backup import create_backup
from binhoard.ops.pitr import PitrRequest, PointInTimeRestore
from binhoard.ops.seed import SeedSettings, check_primary
from binhoard.ports.server import ReplicaCredentials
from binhoard.storage.store import MemoryStore
from tests.support.fakeserver import FakeServer, Killed, ScriptedClock, fake_host
from tests.unit.test_restore_server import START

IDENTITY = Identity.generate()
PRIMARY = "127.0.0.1:3307"
REPLICATION = {"user": "repl", "password": "repl-secret"}


# --- the domain -----------------------------------------------------------------------
def state(text: str) -> tuple[Gtid, ...]:
    return tuple(Gtid.parse(t) for t in text.split(",") if t)


@pytest.mark.parametrize(
    ("restored", "primary", "why"),
    [
        ("0-1-10", "0-1-20", None),
        ("0-1-20", "0-1-20", None),
        ("", "0-1-20", None),
        ("0-1-10", "0-1-50,0-2-80", None),  # restored before a failover the primary saw
        ("0-1-25", "0-1-20", "the primary is behind"),
        # The deposed primary's late writes: 0-1-75 is not 0-2-75.
        ("0-1-75", "0-1-72,0-2-80", "divergent"),
        ("0-3-5", "0-1-20", "divergent"),
        ("1-1-5", "0-1-20", "no transaction of domain 1"),
    ],
)
def test_a_restored_position_must_be_in_the_primary_s_history(
    restored: str, primary: str, why: str | None
) -> None:
    found = divergence(GtidPosition.parse(restored), state(primary))
    assert (found is None) if why is None else (found is not None and why in found)


def test_a_primary_address_is_loopback_or_listed() -> None:
    assert parse_primary_address(PRIMARY, allowed=(), is_loopback=is_loopback_address).port == 3307
    assert (
        parse_primary_address("[::1]:3307", allowed=(), is_loopback=is_loopback_address).host
        == "::1"
    )
    listed = parse_primary_address(
        "db1.example:3306", allowed=("db1.example:3306",), is_loopback=is_loopback_address
    )
    assert listed.host == "db1.example"
    for bad, message in [
        ("db1.example:3306", "neither a loopback"),
        ("127.0.0.1", "not HOST:PORT"),
        ("127.0.0.1:0", "not 1-65535"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_primary_address(bad, allowed=(), is_loopback=is_loopback_address)


# --- seeding ---------------------------------------------------------------------------
@dataclass
class Cluster:
    primary: FakeServer
    store: MemoryStore
    settings: Settings
    replica: FakeServer

    def restore(self) -> PointInTimeRestore:
        return PointInTimeRestore(
            self.replica, self.store, pitr_config(self.settings), use_cache=False
        )


SEED = PitrRequest("default", {"to_latest": True}, replicate_from=PRIMARY)


def archiving_primary(directory: Path) -> tuple[FakeServer, MemoryStore, BinlogArchiver]:
    """A primary (server_id 7) with a backup after 3 transactions and 4 more archived."""
    settings, primary = fake_host(directory, IDENTITY)
    store = MemoryStore()
    primary.commit(3)
    create_backup(primary, store, backup_config(settings), now=ScriptedClock(START))
    primary.commit(4)
    primary.binlogs.flush()
    archiver = BinlogArchiver(primary, store, archive_config(settings), use_cache=False)
    assert archiver.archive_once().problems == []
    return primary, store, archiver


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    """A primary (server_id 7) with a backup and archived binlogs, which then commits 5
    transactions that are not archived; a replica host (server_id 9) that can reach it."""
    primary, store, _ = archiving_primary(tmp_path / "primary")
    primary.commit(5)  # only the primary has these: the replica gets them from it
    replica_settings, replica = fake_host(
        tmp_path / "replica", IDENTITY, server_id=9, running=False, replication=REPLICATION
    )
    replica.replication.network[PRIMARY] = primary
    return Cluster(primary, store, replica_settings, replica)


def recorded(settings: Settings) -> dict[str, object]:
    return dict(json.loads((settings.state_directory / "restore.json").read_text()))


def test_a_seeded_replica_catches_up_with_its_primary(cluster: Cluster) -> None:
    progress = cluster.restore().start(SEED)
    assert progress.phase == "completed"
    assert cluster.replica.rows() == cluster.primary.rows()  # 7 restored, 5 replicated
    replication = cluster.replica.replication
    assert replication.running and replication.primary is not None
    assert replication.primary.format() == PRIMARY
    state = recorded(cluster.settings)
    assert state["final_gtid_position"] == "0-7-7" and state["replicated_to"] == "0-7-12"
    calls = cluster.replica.calls
    assert calls.index("relay.finish") < calls.index("replication.change_primary")

    cluster.primary.commit(2)  # it keeps following the primary
    assert replication.wait_for_gtid(cluster.primary.binlog_position, 1)


STEPS = [
    "replication.status",
    "replication.primary_state",
    "replication.change_primary",
    "replication.start",
    "replication.wait_for_gtid",
]


@pytest.mark.parametrize("step", STEPS)
def test_a_seed_killed_at_any_step_resumes_to_the_same_end(cluster: Cluster, step: str) -> None:
    # The primary's state is read once before the restore too (is it this server?).
    after = 1 if step == "replication.primary_state" else 0
    cluster.replica.fail(step, Killed(f"killed at {step}"), after=after)
    with pytest.raises(Killed):
        cluster.restore().start(SEED)
    assert recorded(cluster.settings)["phase"] == "replicating"
    progress = cluster.restore().resume()
    assert progress.phase == "completed"
    assert cluster.replica.rows() == cluster.primary.rows()  # nothing applied twice
    # A resumed run after the primary was set does not set it again.
    changes = cluster.replica.calls.count("replication.change_primary")
    assert changes == (2 if step == "replication.change_primary" else 1)


def test_an_unreachable_primary_is_named_and_resume_continues(cluster: Cluster) -> None:
    cluster.primary.process.up = False
    with pytest.raises(ReplicationError, match=f"{PRIMARY} does not answer") as caught:
        cluster.restore().start(SEED)
    assert caught.value.kind == "unreachable" and caught.value.retryable
    state = recorded(cluster.settings)
    assert state["phase"] == "replicating" and "does not answer" in str(state["error"])
    cluster.primary.process.up = True
    assert cluster.restore().resume().phase == "completed"
    assert "error" not in recorded(cluster.settings)


def test_a_seed_from_this_node_s_own_server_is_refused_before_anything_changes(
    cluster: Cluster, tmp_path: Path
) -> None:
    # HOST:PORT answers with this node's server_id (9): its own server, under an
    # address other than mysql.client_params'.
    _, itself = fake_host(tmp_path / "itself", IDENTITY, server_id=9)
    cluster.replica.replication.network[PRIMARY] = itself
    with pytest.raises(UsageError, match="has this server's server_id 9"):
        cluster.restore().start(SEED)
    assert recorded(cluster.settings)["phase"] == "failed"
    assert cluster.replica.calls == ["replication.primary_state"]  # nothing restored
    assert cluster.replica.rows() == []


def test_the_own_address_is_refused_without_a_connection() -> None:
    seed = SeedSettings(
        ReplicaCredentials("repl", "secret"),
        catch_up_timeout=1,
        own_address=PrimaryAddress("127.0.0.1", 3306),
    )
    for text in ("127.0.0.1:3306", "localhost:3306"):
        with pytest.raises(UsageError, match="this node's own server"):
            check_primary(text, seed=seed, allowed=())
    # Another port, or another loopback address (maybe another server): the connection
    # before the restore decides.
    for text in ("127.0.0.1:3307", "127.0.0.2:3306"):
        assert check_primary(text, seed=seed, allowed=()).format() == text


def test_refused_replication_credentials_are_named(cluster: Cluster) -> None:
    cluster.primary.replication_accounts = {"repl": "another"}
    with pytest.raises(ReplicationError, match="access denied for repl"):
        cluster.restore().start(SEED)


def test_an_account_without_replication_slave_is_named(cluster: Cluster) -> None:
    cluster.primary.replication_slave_users = set()
    with pytest.raises(ReplicationError, match=r"error 1597: .*Access denied") as caught:
        cluster.restore().start(SEED)
    assert caught.value.kind == "unreachable"


def test_a_divergent_primary_is_refused_and_replication_not_started(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Another server (id 8) took over at 0-7-5 and wrote its own 0-8-6..: the replica's
    # restored 0-7-7 has the same sequence numbers as the new primary's, not its data.
    _, other = fake_host(tmp_path / "other", IDENTITY, server_id=8)
    for gtid in map(Gtid.parse, cluster.primary.rows()[:5]):
        other.apply(gtid)
    other.commit(10)
    cluster.replica.replication.network[PRIMARY] = other
    with pytest.raises(ReplicationError, match=r"divergent: .* 0-7-7") as caught:
        cluster.restore().start(SEED)
    assert caught.value.kind == "divergent" and not caught.value.retryable
    assert "replication.change_primary" not in cluster.replica.calls
    assert not cluster.replica.replication.running


def test_a_replication_error_stops_the_wait_and_is_named(cluster: Cluster) -> None:
    # The primary's history changes under the replica after the check (a RESET MASTER):
    # its IO thread then meets error 1236.
    replication = cluster.replica.replication
    cluster.replica.fail("replication.start", ServerError("connection lost"))
    with pytest.raises(ServerError):
        cluster.restore().start(SEED)
    rows = cluster.primary.rows()
    (cluster.primary.datadir / "rows.txt").write_text("".join(f"{r}\n" for r in rows[7:]))
    replication.apply_per_wait = 0
    with pytest.raises(ReplicationError, match=r"error 1236: .*not in the master's binlog"):
        cluster.restore().resume()
    assert recorded(cluster.settings)["phase"] == "replicating"


def test_a_replica_that_does_not_catch_up_in_time_says_how_far_it_got(
    cluster: Cluster, tmp_path: Path
) -> None:
    settings, replica = fake_host(
        tmp_path / "slow",
        IDENTITY,
        server_id=9,
        running=False,
        replication={**REPLICATION, "catch_up_timeout": 0.001},
    )
    replica.replication.network[PRIMARY] = cluster.primary
    replica.replication.apply_per_wait = 0  # a stalled SQL thread
    restore = PointInTimeRestore(replica, cluster.store, pitr_config(settings), use_cache=False)
    with pytest.raises(ReplicationError, match=r"did not catch up to 0-7-12 within .* \(at 0-7-7"):
        restore.start(SEED)
    replica.replication.apply_per_wait = None
    restore = PointInTimeRestore(replica, cluster.store, pitr_config(settings), use_cache=False)
    assert restore.resume().phase == "completed"


@pytest.mark.parametrize(
    ("request_", "settings_extra", "message"),
    [
        (SEED, {}, "needs replication.user"),
        (
            PitrRequest("default", {"to_gtid": "0-7-5"}, replicate_from=PRIMARY),
            {"replication": REPLICATION},
            "needs a restore to the latest",
        ),
        (
            PitrRequest("default", {"to_latest": True}, replicate_from="10.1.2.3:3306"),
            {"replication": REPLICATION},
            "neither a loopback address nor listed",
        ),
    ],
)
def test_a_seed_that_cannot_work_is_refused_before_anything_changes(
    cluster: Cluster,
    tmp_path: Path,
    request_: PitrRequest,
    settings_extra: dict[str, object],
    message: str,
) -> None:
    settings, replica = fake_host(
        tmp_path / "bad", IDENTITY, server_id=9, running=False, **settings_extra
    )
    restore = PointInTimeRestore(replica, cluster.store, pitr_config(settings), use_cache=False)
    with pytest.raises(UsageError, match=message):
        restore.start(request_)
    assert replica.calls == [] and recorded(settings)["phase"] == "failed"
