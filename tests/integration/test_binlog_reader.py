"""The binlog reader against real MariaDB binlogs, checked against ``mariadb-binlog``.

One sandbox runs a workload that exercises every kind of event group binhoard must
index (standalone DDL, InnoDB transactions ending in XID, non-transactional writes
ending in a COMMIT query, a statement-format ROLLBACK, SAVEPOINT / ROLLBACK TO inside
a transaction, XA PREPARE / COMMIT / ROLLBACK, CREATE ... SELECT, a second GTID
domain, a sequence-number jump, commit times going backwards, a 1 MB row) across
several rotations, with and without checksums. Every file is then indexed and
compared, transaction by transaction, with what ``mariadb-binlog`` prints.
"""

from __future__ import annotations

import calendar
import itertools
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from binhoard.domain.binlog import TransactionTable, check_chain
from binhoard.domain.binlog_file import BinlogIndex
from binhoard.domain.errors import CorruptBinlogError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.server.binlog_reader import read_binlog
from binhoard.server.process import find_executable
from binhoard.server.sandbox import Sandbox
from tests.support.sandboxes import sandbox_factory

BIG_ROW = 1_000_000  # bytes: larger than any block size used below

WORKLOAD = [
    """
    CREATE DATABASE d;
    CREATE TABLE d.t (id INT AUTO_INCREMENT PRIMARY KEY, v LONGTEXT) ENGINE=InnoDB;
    CREATE TABLE d.m (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100)) ENGINE=MyISAM;
    CREATE TABLE d.a (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(100)) ENGINE=Aria;
    INSERT INTO d.t (v) VALUES ('a1');
    INSERT INTO d.t (v) VALUES ('a2'), ('a3');
    BEGIN; INSERT INTO d.t (v) VALUES ('b1'); UPDATE d.t SET v = 'b2' WHERE id = 1;
      DELETE FROM d.t WHERE id = 2; COMMIT;
    INSERT INTO d.m (v) VALUES ('myisam');
    INSERT INTO d.a (v) VALUES ('aria');
    FLUSH BINARY LOGS;
    """,
    """
    BEGIN; INSERT INTO d.t (v) VALUES ('c1'); INSERT INTO d.m (v) VALUES ('c2'); ROLLBACK;
    SET SESSION binlog_format = STATEMENT;
    BEGIN; INSERT INTO d.t (v) VALUES ('s1'); INSERT INTO d.m (v) VALUES ('s2'); ROLLBACK;
    BEGIN; INSERT INTO d.t (v) VALUES ('s3'); SAVEPOINT sp; INSERT INTO d.m (v) VALUES ('s4');
      ROLLBACK TO SAVEPOINT sp; COMMIT;
    SET SESSION binlog_format = ROW;
    XA START 'x1'; INSERT INTO d.t (v) VALUES ('x1'); XA END 'x1'; XA PREPARE 'x1';
      XA COMMIT 'x1';
    XA START 'x2'; INSERT INTO d.t (v) VALUES ('x2'); XA END 'x2'; XA COMMIT 'x2' ONE PHASE;
    XA START 'x3'; INSERT INTO d.t (v) VALUES ('x3'); XA END 'x3'; XA PREPARE 'x3';
      XA ROLLBACK 'x3';
    CREATE TABLE d.t2 ENGINE=InnoDB SELECT * FROM d.t;
    SET gtid_domain_id = 1;
    CREATE TABLE d.other (id INT PRIMARY KEY) ENGINE=InnoDB;
    INSERT INTO d.other VALUES (1);
    BEGIN; INSERT INTO d.other VALUES (2); INSERT INTO d.t (v) VALUES ('dom1'); COMMIT;
    SET gtid_domain_id = 0;
    INSERT INTO d.t (v) VALUES ('back in 0');
    FLUSH BINARY LOGS;
    """,
    f"""
    SET gtid_seq_no = 1000; INSERT INTO d.t (v) VALUES ('jump');
    SET timestamp = UNIX_TIMESTAMP() - 3600; INSERT INTO d.t (v) VALUES ('an hour ago');
    SET timestamp = DEFAULT;
    SET timestamp = 1700000000; BEGIN; INSERT INTO d.t (v) VALUES ('slow trx');
      SET timestamp = 1700000100; COMMIT; SET timestamp = DEFAULT;
    INSERT INTO d.t (v) VALUES (REPEAT('x', {BIG_ROW}));
    FLUSH BINARY LOGS;
    FLUSH BINARY LOGS;
    SET GLOBAL binlog_checksum = NONE;
    INSERT INTO d.t (v) VALUES ('no checksum');
    CREATE TABLE d.nocrc (id INT) ENGINE=InnoDB;
    INSERT INTO d.m (v) VALUES ('no checksum myisam');
    XA START 'x4'; INSERT INTO d.t (v) VALUES ('x4'); XA END 'x4'; XA PREPARE 'x4';
      XA COMMIT 'x4';
    SET gtid_domain_id = 1; INSERT INTO d.other VALUES (3); SET gtid_domain_id = 0;
    SET GLOBAL binlog_checksum = CRC32;
    INSERT INTO d.t (v) VALUES ('crc again');
    FLUSH BINARY LOGS;
    INSERT INTO d.t (v) VALUES ('active file');
    """,
]


@dataclass(frozen=True)
class Binlogs:
    sandbox: Sandbox
    files: list[Path]  # every file of the binlog index, the active one last
    binlog_pos: GtidPosition  # @@gtid_binlog_pos after the workload


@pytest.fixture(scope="module")
def binlogs() -> Iterator[Binlogs]:
    with sandbox_factory() as factory:
        box = factory.new("binlogs")
        for script in WORKLOAD:
            box.execute_script(script)
        index = (box.binlog_dir / "binlog.index").read_text().split()
        ((pos,),) = box.query("SELECT @@gtid_binlog_pos")
        yield Binlogs(box, [Path(line) for line in index], GtidPosition.parse(pos))


# --- mariadb-binlog as the oracle -----------------------------------------------------------
_EVENT_LINE = re.compile(
    r"^#(\d{6}\s+\d{1,2}:\d\d:\d\d) server id (\d+)\s+end_log_pos (\d+)(?: CRC32 0x[0-9a-f]+)?"
    r"\s+(.*)$"
)
_GTID = re.compile(r"^GTID (\d+-\d+-\d+)")
_NOT_IN_GROUPS = ("Rotate to ", "Stop", "Binlog checkpoint ", "Gtid list ", "Start: ")


@dataclass(frozen=True)
class Oracle:
    transactions: list[tuple[Gtid, int, int, int]]  # gtid, time, start, end
    gtid_list: set[Gtid]
    events: list[tuple[int, int, str]]  # start, end, description


def mariadb_binlog(path: Path) -> Oracle:
    """What ``mariadb-binlog`` says the file holds.

    Groups are delimited independently of the reader's terminator rules: a group is
    everything from a GTID event up to the next GTID event or event that lives outside
    groups (or the end of the file).
    """
    tool = find_executable("mariadb-binlog", "mysqlbinlog")
    output = subprocess.run(
        [tool, str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
        env={**os.environ, "TZ": "UTC"},
    ).stdout
    # Each event's offset is its "# at N" line (in order, though an Annotate_rows event
    # may print its own after the next event's): its end is the next event's offset.
    # Not end_log_pos, which MariaDB 11.4+ leaves 0 inside transactions.
    starts: list[int] = []
    printed: list[tuple[int, int, str]] = []  # end_log_pos, time, description
    gtid_list_text = ""
    in_gtid_list = False
    for line in output.splitlines():
        if in_gtid_list:  # continued as "# 1-101-3]"
            gtid_list_text += line.lstrip("# ")
            in_gtid_list = "]" not in line
            continue
        if line.startswith("# at "):
            starts.append(int(line.removeprefix("# at ")))
            continue
        match = _EVENT_LINE.match(line)
        if match is None:
            continue
        stamp, _, end_log_pos, description = match.groups()
        stamp_time = calendar.timegm(time.strptime(stamp, "%y%m%d %H:%M:%S"))
        printed.append((int(end_log_pos), stamp_time, description.strip()))
        if description.startswith("Gtid list ["):
            gtid_list_text = description
            in_gtid_list = "]" not in description
    assert len(starts) == len(printed), "one '# at' line per event"
    ends = [*starts[1:], path.stat().st_size]
    events: list[tuple[int, int, str]] = []
    times: list[int] = []
    for start, end, (end_log_pos, stamp_time, description) in zip(
        starts, ends, printed, strict=True
    ):
        assert end_log_pos in (0, end), f"{description} at {start}: end_log_pos {end_log_pos}"
        events.append((start, end, description))
        times.append(stamp_time)
    transactions: list[tuple[Gtid, int, int, int]] = []
    current: list[object] | None = None
    for (start, end, description), stamp in zip(events, times, strict=True):
        gtid = _GTID.match(description)
        if gtid is not None or description.startswith(_NOT_IN_GROUPS):
            if current is not None:
                transactions.append(tuple(current))  # type: ignore[arg-type]
                current = None
            if gtid is not None:
                current = [Gtid.parse(gtid.group(1)), stamp, start, end]
        elif current is not None:
            current[3] = end
    if current is not None:
        transactions.append(tuple(current))  # type: ignore[arg-type]
    listed = gtid_list_text.partition("[")[2].partition("]")[0]
    gtid_list = {Gtid.parse(part) for part in listed.split(",") if part.strip()}
    return Oracle(transactions, gtid_list, events)


def as_tuples(index: BinlogIndex) -> list[tuple[Gtid, int, int, int]]:
    return [(e.gtid, e.commit_time, e.start_offset, e.end_offset) for e in index.transactions]


# --- the reader agrees with mariadb-binlog ----------------------------------------------------
def test_every_file_matches_mariadb_binlog(binlogs: Binlogs) -> None:
    indexes = [read_binlog(path) for path in binlogs.files]
    for path, index in zip(binlogs.files, indexes, strict=True):
        oracle = mariadb_binlog(path)
        assert as_tuples(index) == oracle.transactions, path.name
        assert set(index.gtid_list) == oracle.gtid_list, path.name
        assert index.size == path.stat().st_size
        assert index.name == path.name
        assert not index.partial
        assert index.complete_offset == index.size
        assert index.incident_offsets == ()
    # The files chain, from an empty state to the server's position.
    segments = [index.segment() for index in indexes]
    assert check_chain(segments, start=GtidPosition(), end=binlogs.binlog_pos) == []
    assert segments[-1].end_position == binlogs.binlog_pos


def test_the_workload_covers_what_it_claims(binlogs: Binlogs) -> None:
    indexes = [read_binlog(path) for path in binlogs.files]
    everything = [e for index in indexes for e in index.transactions]
    assert {e.gtid.domain_id for e in everything} == {0, 1}
    assert {index.checksum for index in indexes} == {True, False}
    assert Gtid(0, binlogs.sandbox.server_id, 1000) in {e.gtid for e in everything}
    times = [e.commit_time for e in everything]
    assert any(later < earlier for earlier, later in itertools.pairwise(times))
    # The transaction whose COMMIT ran at 1700000100 after starting at 1700000000.
    assert 1700000100 in times
    assert 1700000000 not in times
    assert max(e.end_offset - e.start_offset for e in everything) > BIG_ROW
    for before, after in itertools.pairwise(indexes):
        assert before.closed
        assert not before.in_use
        assert before.next_file == after.name
    assert indexes[-1].in_use
    assert not indexes[-1].closed
    assert indexes[-1].next_file is None
    # Every file names the server that wrote it, as the server itself does.
    ((version,),) = binlogs.sandbox.query("SELECT VERSION()")
    assert {index.server_version for index in indexes} == {version}


@pytest.mark.parametrize("block_size", [4096, 65536])
def test_small_blocks_give_the_same_index(binlogs: Binlogs, block_size: int) -> None:
    for path in binlogs.files:
        assert read_binlog(path, block_size=block_size) == read_binlog(path), path.name


# --- damaged files ---------------------------------------------------------------------------
def _copy(path: Path, tmp_path: Path) -> Path:
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    return copy


def _file_with(binlogs: Binlogs, *, checksum: bool) -> Path:
    for path in binlogs.files[:-1]:
        index = read_binlog(path)
        if index.checksum == checksum and len(index.transactions) >= 3:
            return path
    raise AssertionError(f"the workload has no closed file with checksum={checksum}")


def test_a_flipped_byte_fails_the_checksum_of_its_event(binlogs: Binlogs, tmp_path: Path) -> None:
    path = _copy(_file_with(binlogs, checksum=True), tmp_path)
    events = mariadb_binlog(path).events
    for start, end, description in events[3::7]:  # a spread of event kinds
        data = bytearray(path.read_bytes())
        target = (start + end) // 2 if end - start > 19 else start
        data[target] ^= 0x40
        damaged = tmp_path / f"damaged-{start}" / path.name
        damaged.parent.mkdir()
        damaged.write_bytes(bytes(data))
        with pytest.raises(CorruptBinlogError) as caught:
            read_binlog(damaged)
        assert caught.value.offset == start, description
        assert caught.value.file == path.name
        assert f"{path.name} at byte offset {start}" in str(caught.value)
        assert "CRC32" in str(caught.value)


def test_a_damaged_length_is_caught_without_checksums(binlogs: Binlogs, tmp_path: Path) -> None:
    path = _copy(_file_with(binlogs, checksum=False), tmp_path)
    index = read_binlog(path)
    start = index.transactions[1].start_offset
    data = bytearray(path.read_bytes())
    data[start + 9] ^= 0x01  # low byte of the GTID event's length
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBinlogError) as caught:
        read_binlog(path)
    assert caught.value.offset == start


def test_a_truncated_file(binlogs: Binlogs, tmp_path: Path) -> None:
    original = _file_with(binlogs, checksum=True)
    full = read_binlog(original)
    cut_trx = full.transactions[2]
    path = _copy(original, tmp_path)
    for cut in (cut_trx.start_offset + 10, cut_trx.end_offset - 1, cut_trx.start_offset + 42):
        with path.open("r+b") as file:
            file.truncate(cut)
        with pytest.raises(CorruptBinlogError, match="truncated") as caught:
            read_binlog(path)
        assert caught.value.offset == cut_trx.start_offset
        partial = read_binlog(path, allow_partial=True)
        assert partial.partial
        assert list(partial.transactions) == list(full.transactions[:2])
        assert partial.complete_offset == cut_trx.start_offset
        assert partial.size == cut
        assert partial.segment().end_position == full.gtid_list_at_start.advance(
            full.transactions[0].gtid
        ).advance(full.transactions[1].gtid)
        shutil.copyfile(original, path)


def test_a_file_cut_between_transactions_lacks_its_rotate(binlogs: Binlogs, tmp_path: Path) -> None:
    original = _file_with(binlogs, checksum=True)
    full = read_binlog(original)
    path = _copy(original, tmp_path)
    with path.open("r+b") as file:
        file.truncate(full.transactions[-1].end_offset)
    with pytest.raises(CorruptBinlogError, match="without a Rotate or Stop"):
        read_binlog(path)
    partial = read_binlog(path, allow_partial=True)
    assert partial.transactions == full.transactions
    assert partial.partial
    assert not partial.closed


@pytest.mark.parametrize(
    ("content", "offset", "message"),
    [
        (b"", 0, "too short"),
        (b"\xfebin", 4, "too short"),
        (b"GIF89a" + bytes(100), 0, "not a binlog"),
    ],
)
def test_not_a_binlog(tmp_path: Path, content: bytes, offset: int, message: str) -> None:
    path = tmp_path / "binlog.000001"
    path.write_bytes(content)
    with pytest.raises(CorruptBinlogError, match=message) as caught:
        read_binlog(path, allow_partial=True)
    assert caught.value.offset == offset


# --- a file being written --------------------------------------------------------------------
def test_reading_the_file_the_server_is_writing(binlogs: Binlogs) -> None:
    box = binlogs.sandbox
    active = binlogs.files[-1]
    done = threading.Event()

    def write() -> None:
        try:
            conn = box.connect()
            with conn.cursor() as cursor:
                for i in range(400):
                    cursor.execute("INSERT INTO d.t (v) VALUES (%s)", (f"live {i}" * 20,))
            conn.close()
        finally:
            done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[TransactionTable] = []
    try:
        while not done.is_set():
            index = read_binlog(active, allow_partial=True)
            assert index.in_use
            assert index.complete_offset <= index.size
            seen.append(index.transactions)
    finally:
        writer.join()
    final = read_binlog(active)  # complete now: nothing is being written
    assert len(final.transactions) >= 400
    assert not final.partial
    for snapshot in seen:
        assert list(snapshot) == list(final.transactions[: len(snapshot)])
    # The reads really overlapped the writes.
    assert len({len(snapshot) for snapshot in seen}) > 2, [len(x) for x in seen]
