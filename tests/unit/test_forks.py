"""Histories and forks (docs/format.md, "Histories and forks"), against fake servers
and a memory site: a node restored to an earlier point keeps the same server_id and
writes the same GTIDs again (0-7-6.. twice); it never appends to, closes, fences or
takes over a stream of the history it was forked from, and starts its own. Restores of
both histories stay possible, each named."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.app import archive_config, backup_config, pitr_config
from binhoard.config import Settings
from binhoard.crypto.age import Identity
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.history import History
from binhoard.domain.manifest import BackupManifest, manifest_key
from binhoard.domain.promotion import Promotion
from binhoard.domain.restore_plan import GtidTarget, Latest, plan_restore
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.backup import create_backup
from binhoard.ops.catalog import StreamState, read_site
from binhoard.ops.history import (
    fork_history,
    local_history,
    other_histories,
    without_other_histories,
)
from binhoard.ops.pitr import PitrRequest, PointInTimeRestore
from binhoard.ops.promote import promote_stream
from binhoard.storage.store import MemoryStore, read_all
from tests.support.fakeserver import FakeServer, ScriptedClock, fake_host

IDENTITY = Identity.generate()
START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


@dataclass
class Node:
    settings: Settings
    server: FakeServer

    def archiver(self, store: MemoryStore) -> BinlogArchiver:
        return BinlogArchiver(self.server, store, archive_config(self.settings), use_cache=False)


def _stream(store: MemoryStore, stream_id: str) -> StreamState:
    return next(s for s in read_site(store).streams if s.stream_id == stream_id)


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def primary(tmp_path: Path, store: MemoryStore) -> tuple[Node, BackupManifest]:
    """Server 7: a backup after 0-7-3, then 0-7-4..10 archived in binlog.000001..2."""
    node = Node(*fake_host(tmp_path / "a", IDENTITY))
    node.server.commit(3)
    full = create_backup(node.server, store, backup_config(node.settings), now=ScriptedClock(START))
    for count in (4, 3):
        node.server.commit(count)
        node.server.binlogs.flush()
    assert node.archiver(store).archive_once().records_written == 2
    assert _stream(store, full.backup_id).end_position == GtidPosition.parse("0-7-10")
    return node, full


def _forked(tmp_path: Path) -> Node:
    """Server 7 again (restored in place, or on another host with the same server_id) at
    0-7-5, an earlier point of the primary's history, then written to: 0-7-6..10, an
    empty binlog.000002 and 0-7-11..12 in binlog.000003, whose Gtid_list (0-7-10) is
    exactly where the primary's stream ends, after its binlog.000002. GTIDs and file
    names alone would let it continue that stream."""
    node = Node(*fake_host(tmp_path / "b", IDENTITY))
    fork_history(node.settings.state_directory, "restored to GTID 0-7-5 of the primary's stream")
    node.server.set_gtid_state("0-7-5")
    node.server.commit(5)
    node.server.binlogs.flush()
    node.server.binlogs.flush()
    node.server.commit(2)
    node.server.binlogs.flush()
    return node


def test_a_history_id_is_written_in_promotions_and_read_back() -> None:
    history = History("00112233445566aa", False, "test")
    promotion = Promotion(
        "S", 0, 2, 1, 3, GtidPosition.parse("0-1-3"), START, history_id=history.history_id
    )
    assert Promotion.from_bytes(promotion.to_bytes(), key=promotion.key) == promotion
    legacy = replace(promotion, history_id=None)
    assert b"history_id" not in legacy.to_bytes()  # an older document reads as it was
    assert Promotion.from_bytes(legacy.to_bytes(), key=legacy.key).history_id is None
    bad = promotion.to_bytes().replace(b"00112233445566aa", b"not-a-history-id")
    with pytest.raises(CorruptDocumentError):
        Promotion.from_bytes(bad, key=promotion.key)


def test_histories_hold_what_was_written_before_them_unless_they_are_forks() -> None:
    unforked = History("00112233445566aa", False, "first run")
    fork = History("ffeeddccbbaa9988", True, "restored to an earlier point")
    assert unforked.holds(None) and unforked.holds("00112233445566aa")
    assert not unforked.holds("ffeeddccbbaa9988")
    assert not fork.holds(None) and fork.holds("ffeeddccbbaa9988")


def test_a_nodes_first_run_mints_its_history_once(tmp_path: Path) -> None:
    first = local_history(tmp_path)
    assert not first.forked and local_history(tmp_path) == first
    (tmp_path / "history.json").write_text("{not json")
    damaged = local_history(tmp_path)  # the safe side: a fork, continuing nothing
    assert damaged.forked and damaged.history_id != first.history_id


def test_a_fork_with_the_same_server_id_never_appends_to_the_old_stream(
    tmp_path: Path, store: MemoryStore, primary: tuple[Node, BackupManifest]
) -> None:
    old_primary, full = primary
    manifest = BackupManifest.from_bytes(
        read_all(store, manifest_key(full.backup_id)), key=manifest_key(full.backup_id)
    )
    assert manifest.history_id == local_history(old_primary.settings.state_directory).history_id
    fork = _forked(tmp_path)
    report = fork.archiver(store).archive_once()
    assert report.records_written == 0
    old = _stream(store, full.backup_id)
    assert [r.name for r in old.records] == ["binlog.000001", "binlog.000002"]
    (other,) = report.other_histories
    assert f"stream {full.backup_id}" in other and "not archived into" in other
    (why,) = report.stall_reasons
    assert "no open backup stream of this server's history" in why
    assert "restored to GTID 0-7-5" in why

    # Promoted, it starts a new stream instead of taking the old one over.
    taken = promote_stream(
        store,
        full.backup_id,
        server_id=7,
        position=GtidPosition.parse("0-7-12"),
        now=START,
        history=local_history(fork.settings.state_directory),
        force=True,
    )
    assert taken.promotion is None and taken.new_stream_needed is not None
    assert "is not the history of stream" in taken.new_stream_needed

    # Its own backup opens its stream; the old one stays open, unfenced, unbroken.
    clock = ScriptedClock(START)
    clock.advance(hours=1)
    own = create_backup(fork.server, store, backup_config(fork.settings), now=clock)
    assert own.history_id == local_history(fork.settings.state_directory).history_id
    fork.server.commit(2)
    fork.server.binlogs.flush()
    report = fork.archiver(store).archive_once()
    assert report.records_written == 1 and not report.problems
    old = _stream(store, full.backup_id)
    assert old.closed is None and old.broken is None and old.promotions == ()
    assert old.fenced == () and len(old.records) == 2
    assert _stream(store, own.backup_id).completed is not None
    # Binlog purge asks whether its files are stored: in its own streams only (the old
    # one has files of the same names and server_id, not its files).
    ours = without_other_histories(
        read_site(store), 7, local_history(fork.settings.state_directory)
    )
    assert [s.stream_id for s in ours.streams] == [own.backup_id]

    # The old primary goes on with its history, untouched by the fork's stream.
    old_primary.server.commit(2)
    old_primary.server.binlogs.flush()
    report = old_primary.archiver(store).archive_once()
    assert report.records_written == 1 and not report.problems and not report.deposed
    assert _stream(store, full.backup_id).end_position == GtidPosition.parse("0-7-12")


def test_restores_of_two_histories_are_each_named(
    tmp_path: Path, store: MemoryStore, primary: tuple[Node, BackupManifest]
) -> None:
    old_primary, full = primary
    fork = _forked(tmp_path)
    clock = ScriptedClock(START)
    clock.advance(hours=1)
    own = create_backup(fork.server, store, backup_config(fork.settings), now=clock)
    fork.server.commit(2)  # 0-7-13..14
    fork.server.binlogs.flush()
    fork.archiver(store).archive_once()
    old_primary.server.commit(4)  # 0-7-11..14 of the other history
    old_primary.server.binlogs.flush()
    old_primary.archiver(store).archive_once()
    site = read_site(store)
    backups = site.backups.usable
    catalog = {s.stream_id: s.records for s in site.streams}

    # The same GTID in both histories: the newest backup preceding it is taken, and
    # the other history is named, with the way to ask for it.
    target = GtidTarget(GtidPosition.parse("0-7-14"))
    plan = plan_restore(backups, catalog, target)
    assert plan.backup.backup_id == own.backup_id
    (note,) = other_histories(site, plan, approximate_ok=False)
    assert f"stream {full.backup_id} of another history" in note
    assert f"--backup {full.backup_id}" in note
    old = plan_restore(backups, catalog, target, backup_id=full.backup_id)
    assert old.records[-1].server_id == 7 and old.backup.history_id == full.history_id
    assert plan_restore(backups, catalog, Latest()).backup.backup_id == own.backup_id


def test_a_restore_to_an_earlier_point_forks_and_one_to_the_end_continues(
    tmp_path: Path, store: MemoryStore, primary: tuple[Node, BackupManifest]
) -> None:
    _, full = primary
    for name, args, forked in (
        ("earlier", {"to_gtid": "0-7-6"}, True),
        ("latest", {"to_latest": True}, False),
    ):
        settings, target = fake_host(tmp_path / name, IDENTITY, server_id=9, running=False)
        restore = PointInTimeRestore(target, store, pitr_config(settings), use_cache=False)
        restore.start(PitrRequest("default", args))
        history = local_history(settings.state_directory)
        assert history.forked is forked
        assert (history.history_id == full.history_id) is not forked
        assert str(restore.state["history"]).startswith(history.history_id)
