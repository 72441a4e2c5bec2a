"""Point-in-time restore across a failover whose new owner continues the stream from
inside one of its own binlogs (docs/format.md, "Promotions and fencing"), against fake
servers and a MemoryStore: restores to points before, at and after the takeover give
exactly what was committed, and nothing is applied twice (the rows would show it).

Server 7 takes a full backup after 3 transactions and archives 0-7-1..9 in two files,
then dies after 0-7-11, which only its replica, server 202, got. The replica logged
what it replicated (log_slave_updates), was promoted at the archive's end (0-7-9), and
wrote 0-202-12..13 in the same binlog and 0-202-14..15 in the next: its first record
starts inside that binlog, right after 0-7-9."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.app import archive_config, backup_config, pitr_config
from binhoard.domain.catalog import starts_inside
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.backup import create_backup
from binhoard.ops.catalog import read_streams
from binhoard.ops.history import adopt_history
from binhoard.ops.pitr import PitrProgress, PitrRequest, PointInTimeRestore
from binhoard.ops.promote import promote_stream
from binhoard.ports.server import ServerBinlogs
from binhoard.storage.store import MemoryStore
from tests.support.binlogs import BinlogWriter
from tests.support.fakeserver import T0, Killed, ScriptedClock, fake_host
from tests.unit.test_restore_server import IDENTITY, restore_of, target_in

START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
NEW = 202


@dataclass
class Site:
    store: MemoryStore
    backup_id: str


def _replica_binlogs(directory: Path) -> ServerBinlogs:
    """Server 202's binlogs: what it replicated from server 7 (0-7-1..11, with their
    origin's server_id and commit times), then its own."""
    directory.mkdir(parents=True)
    first = BinlogWriter(NEW, T0)
    for seq in range(1, 12):
        first.server_id = 7  # a replicated event keeps its origin's server_id
        first.transaction(Gtid(0, 7, seq), T0 + seq, [bytes(100)])
    first.server_id = NEW
    for seq in (12, 13):
        first.transaction(Gtid(0, NEW, seq), T0 + seq, [bytes(100)])
    first.close(directory / "binlog.000001")
    second = BinlogWriter(NEW, T0 + 13, (Gtid(0, NEW, 13),))
    for seq in (14, 15):
        second.transaction(Gtid(0, NEW, seq), T0 + seq, [bytes(100)])
    second.close(directory / "binlog.000002")
    names = ("binlog.000001", "binlog.000002", "binlog.000003")
    return ServerBinlogs(directory, names, names[-1])


@pytest.fixture
def site(tmp_path: Path) -> Site:
    settings, primary = fake_host(tmp_path / "primary", IDENTITY)
    store = MemoryStore()
    primary.commit(3)
    full = create_backup(primary, store, backup_config(settings), now=ScriptedClock(START))
    for count in (4, 2):
        primary.commit(count)
        primary.binlogs.flush()
    archiver = BinlogArchiver(primary, store, archive_config(settings), use_cache=False)
    assert archiver.archive_once().problems == []
    new_settings, new_server = fake_host(tmp_path / "replica", IDENTITY, server_id=NEW)
    # Seeded from the stream, the replica continues its history.
    seeded = adopt_history(new_settings.state_directory, full.history_id, "seeded")
    taken = promote_stream(
        store,
        full.backup_id,
        server_id=NEW,
        position=GtidPosition.parse("0-7-11"),
        now=START,
        history=seeded,
    )
    assert taken.promotion is not None
    assert taken.promotion.gtid_position == GtidPosition.parse("0-7-9")
    new_archiver = BinlogArchiver(new_server, store, archive_config(new_settings), use_cache=False)
    report = new_archiver.archive_files(_replica_binlogs(tmp_path / "replica-binlogs"))
    assert report.records_written == 2 and not report.problems
    (stream,) = read_streams(store)
    assert [(r.server_id, r.name) for r in stream.records] == [
        (7, "binlog.000001"),
        (7, "binlog.000002"),
        (NEW, "binlog.000001"),
        (NEW, "binlog.000002"),
    ]
    assert starts_inside(stream.records, 2) and stream.problems() == []
    return Site(store, full.backup_id)


HISTORY = [*(f"0-7-{n}" for n in range(1, 12)), *(f"0-202-{n}" for n in range(12, 16))]


@pytest.mark.parametrize(
    ("target", "rows"),
    [
        ({"to_gtid": "0-7-8"}, 8),  # before the takeover
        ({"to_gtid": "0-7-9"}, 9),  # at it: the old owner's archive's end
        ({"to_gtid": "0-7-10"}, 10),  # after it: replicated, archived by the new owner
        ({"to_gtid": "0-202-13"}, 13),  # the new owner's first file, to its end
        ({"to_gtid": "0-202-14"}, 14),  # in its next file
        ({"to_latest": True}, 15),
    ],
)
def test_a_restore_across_a_takeover_inside_a_file_applies_each_transaction_once(
    site: Site, tmp_path: Path, target: dict[str, object], rows: int
) -> None:
    settings, server = target_in(tmp_path / "target")
    progress = restore_of(settings, server, site.store).start(PitrRequest("default", target))
    assert progress.phase == "completed"
    assert server.rows() == HISTORY[:rows]  # in order, none twice
    assert server.slave_position == GtidPosition.parse(HISTORY[rows - 1])
    assert progress.transactions_applied == rows - 3  # after the snapshot's three


@pytest.mark.parametrize("crash_after", [1, 2, 3])
def test_a_restore_killed_in_the_new_owners_files_resumes_where_the_server_is(
    site: Site, tmp_path: Path, crash_after: int
) -> None:
    # The old owner's files apply 0-7-4..9 in one batch; the new owner's batch starts at
    # 0-7-10 inside its file. binhoard is killed ``crash_after`` transactions into that
    # batch, and the resumed run goes on from where the server is.
    settings, server = target_in(tmp_path / "target")

    def kill_in_the_second_batch(progress: PitrProgress) -> None:
        if progress.binlogs_restored == 2 and server.crash_after is None and not killed:
            server.crash_after = crash_after
            killed.append(True)

    killed: list[bool] = []
    restore = PointInTimeRestore(
        server,
        site.store,
        pitr_config(settings),
        progress=kill_in_the_second_batch,
        use_cache=False,
    )
    with pytest.raises(Killed):
        restore.start(PitrRequest("default", {"to_latest": True}))
    assert server.rows() == HISTORY[: 9 + crash_after]
    progress = restore_of(settings, server, site.store).resume()
    assert progress.phase == "completed"
    assert server.rows() == HISTORY
    assert server.slave_position == GtidPosition.parse("0-202-15")
