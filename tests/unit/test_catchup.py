"""A promotion first applies what the old primary archived and the node never received
(``ops/catchup.py`` through ``ops/promote.py``), against fake servers and a memory
store: from exactly the node's position, resumed after a kill mid-apply, again when the
old owner archives more meanwhile; a diverged node starts a new stream; ``force`` gives
up what cannot be read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.app import pitr_config
from binhoard.config import Settings
from binhoard.domain.errors import ConflictError, ObjectNotFoundError, TransientStorageError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.promotion import CannotContinue, divergence_in, lacking_records
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.catalog import StreamState, read_streams
from binhoard.ops.catchup import ArchiveCatchUp, CatchUpProgress
from binhoard.ops.history import local_history
from binhoard.ops.pitr import PitrRequest, PointInTimeRestore
from binhoard.ops.promote import CATCH_UP_ROUNDS, PromotionResult, promote_stream
from binhoard.storage.pipeline import decryption_identities
from binhoard.storage.store import MemoryStore
from tests.support.fakeserver import FakeServer, Killed, fake_host
from tests.support.sites import SiteBuilder, position
from tests.unit.test_seed import IDENTITY, PRIMARY, REPLICATION, archiving_primary

NOW = datetime(2026, 1, 2, tzinfo=UTC)
OLD, NEW = 7, 9


@dataclass
class Failover:
    """A primary (7) archiving a stream, and a replica (9) seeded from it and caught up;
    then the replica stops receiving, and the primary commits and archives more."""

    primary: FakeServer
    archiver: BinlogArchiver
    store: MemoryStore
    settings: Settings  # the replica's
    replica: FakeServer
    progress: list[CatchUpProgress] = field(default_factory=list)

    @property
    def stream_id(self) -> str:
        (stream,) = read_streams(self.store)
        return stream.stream_id

    def archive_more(self, commits: int) -> None:
        self.primary.commit(commits)
        self.primary.binlogs.flush()
        assert self.archiver.archive_once().problems == []

    def catch_up(self, *, force: bool = False) -> ArchiveCatchUp:
        return ArchiveCatchUp(
            self.replica,
            self.store,
            server_id=NEW,
            directory=self.settings.temporary_directory / "promote-binlogs",
            max_binlog_bytes=self.settings.restore_max_binlog_bytes,
            identities=decryption_identities(self.settings.backup_sites["default"].encryption_keys),
            progress=self.progress.append,
            give_up_unreadable=force,
        )

    def promote(
        self,
        *,
        force: bool = False,
        between: Callable[[], None] | None = None,
    ) -> PromotionResult:
        """As the daemon's promote: replication stopped, an interrupted apply finished,
        then the promotion with the catch-up (``between`` runs after each catch-up)."""
        self.replica.replication.stop()
        catch_up = self.catch_up(force=force)
        catch_up.finish_interrupted()

        def catching_up(stream: StreamState, at: GtidPosition) -> GtidPosition | CannotContinue:
            reached = catch_up(stream, at)
            if between is not None:
                between()
            return reached

        return promote_stream(
            self.store,
            self.stream_id,
            server_id=NEW,
            position=GtidPosition.parse(self.replica.facts().gtid_current_pos),
            now=NOW,
            history=local_history(self.settings.state_directory),
            force=force,
            catch_up=catching_up,
        )


@pytest.fixture
def failover(tmp_path: Path) -> Failover:
    primary, store, archiver = archiving_primary(tmp_path / "primary")
    settings, replica = fake_host(
        tmp_path / "replica", IDENTITY, server_id=NEW, running=False, replication=REPLICATION
    )
    replica.replication.network[PRIMARY] = primary
    seed = PitrRequest("default", {"to_latest": True}, replicate_from=PRIMARY)
    restore = PointInTimeRestore(replica, store, pitr_config(settings), use_cache=False)
    assert restore.start(seed).phase == "completed"
    primary.commit(2)  # replicated: the replica's position is inside the next file
    assert replica.replication.wait_for_gtid(primary.binlog_position, 1)
    cluster = Failover(primary, archiver, store, settings, replica)
    # The replica receives nothing more; the primary archives 0-7-10..18, then dies.
    cluster.archive_more(4)
    cluster.archive_more(3)
    primary.process.stop()
    replica.calls.clear()
    return cluster


def seqs(server: FakeServer) -> list[int]:
    return [Gtid.parse(row).seq_no for row in server.rows()]


def test_the_promotion_applies_what_the_old_primary_archived_first(failover: Failover) -> None:
    replica = failover.replica
    assert replica.binlog_position == GtidPosition.parse("0-7-9")
    result = failover.promote()
    assert result.promotion is not None and not result.promotion.forced
    assert result.promotion.gtid_position == GtidPosition.parse("0-7-16")
    assert replica.rows() == failover.primary.rows()  # each once, in order
    assert seqs(replica) == list(range(1, 17))
    # The apply's replication configuration is gone: nothing reconnects to the old
    # primary, nor anywhere else.
    assert replica.replication.primary is None and not replica.replication.running
    assert not replica.applying and replica.read_only
    phases = [p.phase for p in failover.progress]
    assert phases[0] == "applying_binlogs" and phases[-1] == "finishing_apply"
    assert failover.progress[-1].binlogs_applied == failover.progress[-1].binlogs_total == 2
    assert failover.progress[-1].transactions_applied == 7
    (stream,) = read_streams(failover.store)
    assert stream.owner == NEW and stream.end_position == GtidPosition.parse("0-7-16")


def test_a_node_at_the_archive_s_end_applies_nothing(failover: Failover) -> None:
    for gtid in map(Gtid.parse, failover.primary.rows()[9:]):
        failover.replica.apply(gtid)
    result = failover.promote()
    assert result.promotion is not None
    assert "apply" not in failover.replica.calls and failover.progress == []


@pytest.mark.parametrize("kill_after", [0, 1, 3])
def test_a_kill_mid_apply_resumes_from_the_node_s_position(
    failover: Failover, kill_after: int
) -> None:
    failover.replica.crash_after = kill_after
    with pytest.raises(Killed):
        failover.promote()
    assert failover.replica.applying  # the killed run's apply is still on the server
    assert read_streams(failover.store)[0].promotions == ()
    result = failover.promote()
    assert result.promotion is not None
    assert seqs(failover.replica) == list(range(1, 17))  # nothing twice, nothing skipped
    assert failover.replica.replication.primary is None


def test_what_the_old_owner_archives_during_the_catch_up_is_applied_too(
    failover: Failover,
) -> None:
    rounds = []

    def old_owner_uploads() -> None:
        rounds.append(1)
        if len(rounds) == 1:  # it was not dead after all: one more pass
            failover.primary.process.up = True
            failover.archive_more(2)
            failover.primary.process.stop()

    result = failover.promote(between=old_owner_uploads)
    assert len(rounds) == 2
    assert result.promotion is not None
    assert result.promotion.gtid_position == GtidPosition.parse("0-7-18")
    assert seqs(failover.replica) == list(range(1, 19))


def test_an_old_owner_that_keeps_uploading_is_given_up_on_after_a_bound(
    failover: Failover,
) -> None:
    def old_owner_uploads() -> None:
        failover.primary.process.up = True
        failover.archive_more(1)
        failover.primary.process.stop()

    with pytest.raises(ConflictError, match=f"after {CATCH_UP_ROUNDS} catch-up rounds"):
        failover.promote(between=old_owner_uploads)
    assert read_streams(failover.store)[0].promotions == ()
    # What it applied is the archive's history: a later promotion continues from it.
    assert seqs(failover.replica) == list(range(1, 16 + CATCH_UP_ROUNDS))
    assert failover.promote().promotion is not None


def test_a_diverged_node_cannot_continue_the_stream(failover: Failover) -> None:
    # The node applied 0-5-10 from some other server: the archive has 0-7-10.
    failover.replica.apply(Gtid(0, 5, 10))
    result = failover.promote()
    assert result.promotion is None and result.new_stream_needed is not None
    assert "has 0-5-10 where the archive has 0-7-10" in result.new_stream_needed
    assert seqs(failover.replica)[-1] == 10 and not failover.replica.applying


def test_a_node_with_writes_of_its_own_cannot_continue_the_stream(failover: Failover) -> None:
    failover.replica.commit(1)  # 0-9-10: written on the replica, not replicated
    result = failover.promote()
    assert result.new_stream_needed is not None
    assert "transactions of its own" in result.new_stream_needed
    assert "apply" not in failover.replica.calls


def test_an_unreadable_archive_fails_unless_forced(failover: Failover) -> None:
    (stream,) = read_streams(failover.store)
    failover.store.delete(stream.records[-1].object.key)  # 0-7-14..16
    with pytest.raises(ObjectNotFoundError):
        failover.promote()
    # Forced: it applies what it can read and gives the rest up.
    result = failover.promote(force=True)
    assert result.promotion is not None and result.promotion.forced
    assert result.promotion.gtid_position == GtidPosition.parse("0-7-13")
    assert seqs(failover.replica) == list(range(1, 14))
    assert not failover.replica.applying


class TimingOut(MemoryStore):
    """A copy of a store whose reads of ``key`` time out (object storage is there, but
    slow): retrying may cure that, so nothing is given up, even with force."""

    def __init__(self, store: MemoryStore, key: str) -> None:
        super().__init__()
        self.key = key
        for info in store.list():
            self.put(info.key, store.get(info.key))

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        if key == self.key:
            raise TransientStorageError(f"GET {key}: read timed out")
        return super().get(key, offset=offset, length=length)


def test_a_transient_storage_failure_gives_nothing_up_even_forced(failover: Failover) -> None:
    (stream,) = read_streams(failover.store)
    failover.store = TimingOut(failover.store, stream.records[-1].object.key)
    with pytest.raises(TransientStorageError):
        failover.promote(force=True)
    assert read_streams(failover.store)[0].promotions == ()


def test_the_records_a_node_lacks_and_divergence() -> None:
    store = MemoryStore()
    build = SiteBuilder(store)
    build.backup("A")
    records = build.archive("A", 3)  # 0-101-1..10, 11..20, 21..30
    assert lacking_records(records, position(15)) == tuple(records[1:])
    assert lacking_records(records, position(20)) == (records[2],)
    assert lacking_records(records, position(30)) == ()
    rows = [(0, 101, 11), (0, 101, 12)]
    assert divergence_in(rows, position(11)) is None
    assert divergence_in(rows, GtidPosition.parse("0-5-12")) == (
        Gtid(0, 5, 12),
        Gtid(0, 101, 12),
    )
