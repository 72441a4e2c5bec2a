"""The binlog reader over real binlogs of MariaDB 11.8.9 (tests/data/mariadb-11.8).

Written by a sandbox of MariaDB 11.8.9 (Debian 13) with ``server_id=7``: DDL, a row
insert, an update with a savepoint rolled back to, an XA transaction (prepared, then
committed), an Aria (non-transactional) insert ended by a ``COMMIT`` query, a
user-variable insert, a ``DROP TABLE``; rotated twice by ``FLUSH BINARY LOGS``. Two
things differ from 10.11: every event a transaction writes from its binlog cache has
``next_pos`` 0 in its header (``binlog_legacy_event_pos=OFF``, 11.4+) and each binlog
has a GTID index ``binlog.NNNNNN.idx`` beside it (``binlog_gtid_index=ON``, 11.4+).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from binhoard.domain.binlog import binlog_sort_key
from binhoard.domain.errors import CorruptBinlogError
from binhoard.server.binlog_reader import read_binlog

DATA = Path(__file__).parent.parent / "data" / "mariadb-11.8"

# (gtid, offset of its GTID event, offset just after its last event), from the headers.
FILE_1 = [
    ("0-7-1", 325, 454),  # CREATE DATABASE
    ("0-7-2", 454, 638),  # CREATE TABLE
    ("0-7-3", 638, 898),  # INSERT: Annotate_rows, Table_map, Write_rows, Xid
    ("0-7-4", 898, 1211),  # UPDATE, SAVEPOINT, ROLLBACK TO SAVEPOINT, Xid
    ("0-7-5", 1211, 1542),  # XA START .. XA PREPARE
    ("0-7-6", 1542, 1677),  # XA COMMIT
    ("0-7-7", 1677, 1843),  # CREATE TABLE ... ENGINE=Aria
    ("0-7-8", 1843, 2088),  # Aria INSERT, ended by a COMMIT query
    ("0-7-9", 2088, 2421),  # INSERT with a user variable
]
FILE_2 = [("0-7-10", 339, 570), ("0-7-11", 610, 771)]


def _transactions(name: str) -> list[tuple[str, int, int]]:
    index = read_binlog(DATA / name)
    return [(t.gtid.format(), t.start_offset, t.end_offset) for t in index.transactions]


def test_every_transaction_of_11_8_is_found_with_its_exact_end() -> None:
    assert _transactions("binlog.000001") == FILE_1
    assert _transactions("binlog.000002") == FILE_2


def test_the_files_chain_and_close_as_on_10_11() -> None:
    first = read_binlog(DATA / "binlog.000001")
    assert first.server_version.startswith("11.8.9-MariaDB")
    assert first.checksum and first.closed and not first.in_use and not first.partial
    assert first.next_file == "binlog.000002"
    assert first.gtid_list_at_start.format() == ""
    assert first.size == (DATA / "binlog.000001").stat().st_size
    second = read_binlog(DATA / "binlog.000002")
    assert second.gtid_list_at_start.format() == "0-7-9"
    assert second.segment().first_gtid is not None
    # The active file when the server was stopped: no transaction, no final event.
    last = read_binlog(DATA / "binlog.000003", allow_partial=True)
    assert last.gtid_list_at_start.format() == "0-7-11"
    assert len(last.transactions) == 0 and not last.closed


def test_events_inside_transactions_really_carry_no_next_pos() -> None:
    """The data exercises the 11.4+ header: an event inside a transaction with
    next_pos 0, and the transaction's last event with its real end."""
    data = (DATA / "binlog.000001").read_bytes()

    def next_pos(offset: int) -> int:
        return int(struct.unpack_from("<I", data, offset + 13)[0])

    assert data[680 + 4] == 160 and next_pos(680) == 0  # Annotate_rows of 0-7-3
    assert data[867 + 4] == 16 and next_pos(867) == 898  # its Xid


def test_a_wrong_nonzero_next_pos_is_still_refused(tmp_path: Path) -> None:
    data = bytearray((DATA / "binlog.000001").read_bytes())
    # The Xid of 0-7-3 (31 bytes at 867) claims to end one byte later, under a valid
    # CRC32: only next_pos is wrong.
    struct.pack_into("<I", data, 867 + 13, 899)
    struct.pack_into("<I", data, 867 + 27, zlib.crc32(data[867 : 867 + 27]))
    broken = tmp_path / "binlog.000001"
    broken.write_bytes(bytes(data))
    with pytest.raises(CorruptBinlogError, match=r"offset 867.*says it ends at 899"):
        read_binlog(broken)


def test_gtid_index_files_are_never_binlogs() -> None:
    """``binlog.NNNNNN.idx`` is no binlog name (it cannot sort among them, be taken as
    "the next file", or be archived as one) and its content is no binlog."""
    for name in ("binlog.000001.idx", "binlog.000002.idx", "binlog.000003.idx"):
        with pytest.raises(ValueError, match="not a binlog file name"):
            binlog_sort_key(name)
    with pytest.raises(CorruptBinlogError):
        read_binlog(DATA / "binlog.000001.idx")
    # The server's own index lists the binlogs only.
    listed = [Path(line).name for line in (DATA / "binlog.index").read_text().splitlines()]
    assert listed == ["binlog.000001", "binlog.000002", "binlog.000003"]
