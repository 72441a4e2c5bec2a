"""The pass's choice of files (``ServerFiles``, ``BinlogArchiver._walk``) decides exactly
what the index scan it replaced decided (``tests/support/archiving_reference.py``): per
step, for any index, and over whole passes against synthetic binlog files."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from binhoard.config import Settings, parse_settings
from binhoard.domain.archiving import ServerFiles
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import (
    ObjectRef,
    SnapshotPosition,
)
from binhoard.ops.archive import ArchiveReport, BinlogArchiver
from binhoard.ops.catalog import read_streams
from binhoard.ports.server import ServerBinlogs
from binhoard.storage.store import MemoryStore
from tests.support.archiving_reference import ReferenceArchiver, reference_next_step
from tests.support.binlogs import BinlogWriter
from tests.support.fakeserver import fake_archiver
from tests.support.sites import put_full_backup, site_config

SERVER_ID = 101
T0 = 1_767_225_600

# Names from two base names and numbers around the 999999 -> 1000000 step, so that
# string order and binlog order differ.
_numbers = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 999999, 1000000, 1000001])
_names = st.builds(
    lambda base, n: f"{base}.{n:06d}", st.sampled_from(["binlog", "mysql-bin"]), _numbers
)


@st.composite
def _indexes(draw: st.DrawFn) -> list[str]:
    names = draw(st.lists(_names, max_size=12))
    if draw(st.booleans()):  # the usual case: one base name, in binlog order, no repeats
        base = draw(st.sampled_from(["binlog", "mysql-bin"]))
        start = draw(st.sampled_from([1, 5, 999995]))
        names = [f"{base}.{n:06d}" for n in range(start, start + len(names))]
    return names


@given(
    index=_indexes(),
    active_choice=st.one_of(st.none(), st.integers(0, 20)),
    last=st.one_of(st.none(), _names, st.integers(0, 20)),
    snapshot=st.one_of(_names, st.integers(0, 20)),
    snapshot_pos=st.integers(4, 10_000),
)
def test_server_files_decide_as_the_index_scan(
    index: list[str],
    active_choice: int | None,
    last: str | int | None,
    snapshot: str | int,
    snapshot_pos: int,
) -> None:
    def pick(choice: str | int) -> str:
        # An int picks a name of the index (when it has one), to hit the present case.
        if isinstance(choice, str):
            return choice
        return index[choice % len(index)] if index else "binlog.000001"

    active = pick(active_choice) if active_choice is not None else "binlog.000012"
    last_archived = None if last is None else pick(last)
    snapshot_file = pick(snapshot)
    files = ServerFiles(index, active)
    expected = reference_next_step(last_archived, snapshot_file, snapshot_pos, index, active)
    assert files.next_step(last_archived, snapshot_file, snapshot_pos) == expected
    # Asked again (as a pass does for every stream), the prepared index answers the same.
    assert files.next_step(last_archived, snapshot_file, snapshot_pos) == expected


# --- whole passes ----------------------------------------------------------------------
def _ref(key: str) -> ObjectRef:
    return ObjectRef(key, "none", (), 1, "0" * 64, 1, "0" * 64)


class Binlogs:
    """Closed binlog files of one server, three transactions each; remembers the offset
    and GTID state after every transaction, for snapshots inside a file."""

    def __init__(self, directory: Path, files: int) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.boundaries: dict[int, list[tuple[int, GtidPosition]]] = {}
        seq = 0
        state: tuple[Gtid, ...] = ()
        for number in range(1, files + 1):
            writer = BinlogWriter(SERVER_ID, T0 + number, state)
            points = [(writer.offset, writer.gtid_list_at_start)]
            for _ in range(3):
                seq += 1
                writer.transaction(Gtid(0, SERVER_ID, seq), T0 + seq, [bytes(50)])
                points.append((writer.offset, GtidPosition([Gtid(0, SERVER_ID, seq)])))
            writer.close(directory / self.name(number))
            self.boundaries[number] = points
            state = (Gtid(0, SERVER_ID, seq),)

    @staticmethod
    def name(number: int) -> str:
        return f"binlog.{number:06d}"

    def index(self, first: int, active: int) -> ServerBinlogs:
        names = tuple(self.name(n) for n in range(first, active + 1))
        return ServerBinlogs(self.directory, names, names[-1])


def _put_backup(store: MemoryStore, backup_id: str, snapshot: SnapshotPosition) -> None:
    put_full_backup(
        store, backup_id, snapshot, server_id=SERVER_ID, when=datetime.fromtimestamp(T0, UTC)
    )


def _site(binlogs: Binlogs) -> MemoryStore:
    """Five streams: from file 2 (start), file 4 (after its first transaction), file 4
    again (after its second), file 1 (purged before it was archived), and file 9 with a
    GTID state that is not the file's (a snapshot the file does not hold)."""
    store = MemoryStore()
    for backup_id, number, point, state in [
        ("20260101T000000Z-0000000a", 2, 0, None),
        ("20260101T000000Z-0000000b", 4, 1, None),
        ("20260101T000000Z-0000000c", 4, 2, None),
        ("20260101T000000Z-0000000d", 1, 0, None),
        ("20260101T000000Z-0000000e", 9, 0, "0-101-1"),
    ]:
        offset, at = binlogs.boundaries[number][point]
        gtid = state if state is not None else at.format()
        _put_backup(store, backup_id, SnapshotPosition(binlogs.name(number), offset, gtid))
    return store


Outcome = tuple[dict[str, list[Any]], dict[str, tuple[bool, bool]], list[Any]]


def _outcome(store: MemoryStore, reports: list[ArchiveReport]) -> Outcome:
    """What the passes decided, without upload keys (random per upload)."""
    records = {
        s.stream_id: [replace(r, object=_ref("-")) for r in s.records] for s in read_streams(store)
    }
    markers = {
        s.stream_id: (s.completed is not None, s.closed is not None) for s in read_streams(store)
    }
    summary = [
        (
            len(r.uploaded),
            r.records_written,
            [
                (
                    s.stream_id,
                    s.records,
                    s.end_position,
                    s.completed,
                    s.closed,
                    s.caught_up,
                    s.problems,
                    s.error,
                )
                for s in r.streams
            ],
        )
        for r in reports
    ]
    return records, markers, summary


def _settings(directory: Path) -> Settings:
    return parse_settings(site_config(directory), source="test")


def test_passes_archive_what_the_index_scan_archived(tmp_path: Path) -> None:
    binlogs = Binlogs(tmp_path / "binlogs", 14)
    # The server keeps files from 2 on; passes as it rotates, then after it purged 2..5.
    servers = [binlogs.index(2, 6), binlogs.index(2, 11), binlogs.index(6, 15)]
    outcomes = []
    for archiver_class, name in ((BinlogArchiver, "fast"), (ReferenceArchiver, "reference")):
        store = _site(binlogs)
        archiver = fake_archiver(
            _settings(tmp_path / name),
            store,
            archiver_class=archiver_class,
            now=lambda: datetime(2026, 1, 2, tzinfo=UTC),
        )
        reports = [archiver.archive_files(server) for server in servers]
        outcomes.append(_outcome(store, reports))
    fast, reference = outcomes
    assert fast == reference
    records, _, summary = fast
    # The walk did archive (three streams shared files 4 and 5 in the first pass) until c,
    # the newest completed stream, closed a and b: not a comparison of two idle runs.
    assert [len(records[s]) for s in sorted(records)] == [4, 2, 11, 0, 0]
    problems = {stream: p for _, _, streams in summary for stream, *_, p, _ in streams if p}
    assert "20260101T000000Z-0000000d" in problems  # its snapshot file was purged
    assert "20260101T000000Z-0000000e" in problems  # its snapshot is not in its file
