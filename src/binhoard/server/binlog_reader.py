"""A fast reader of MariaDB binlog *files*: which transactions, when, and where.

Archiving and point-in-time restore need, for every binlog file, its starting GTID
state (the Gtid_list event), and for every transaction its GTID, commit time and
byte range: the end offset is where ``START SLAVE UNTIL RELAY_LOG_POS`` stops right
after it. Nothing else in the file matters here, so the reader walks the event
headers only and never decodes row events. It verifies every event's CRC32 (when
the file has checksums), so an archived file is proven intact while it is indexed.

Format (MariaDB 10.x, binlog version 4), as used here:

* 4-byte magic ``\\xfebin``, then events. Each event has a 19-byte header:
  ``timestamp u32, type u8, server_id u32, length u32, next_pos u32, flags u16``
  (little-endian). ``next_pos`` is the offset just after the event in this file.
* The first event is the Format_description (15). Its last 5 bytes are the checksum
  algorithm (0 none, 1 CRC32) and a CRC32 that is present even when checksums are
  off; with CRC32 every other event also ends in 4 CRC bytes. Its header flag
  ``0x1`` (LOG_EVENT_BINLOG_IN_USE_F) stays set while the server has the file open;
  the CRC is computed with that flag clear.
* Gtid_list (163) follows: the binlog state before this file.
* A transaction (event group) starts with a GTID event (162: ``seq_no u64,
  domain_id u32, flags2 u8``; the server_id is the header's). With flags2 bit 0
  (FL_STANDALONE) the group is one statement (DDL, ``XA COMMIT``), possibly preceded
  by context events (Intvar, Rand, User_var, Annotate_rows, Table_map). Otherwise it
  ends with an XID event (16), an XA_PREPARE event (38), or a Query event whose text
  is ``COMMIT``, ``ROLLBACK``, ``XA COMMIT ...`` or ``XA ROLLBACK ...``.
* Binlog_checkpoint (161) may appear between groups; the file ends with Rotate (4)
  or Stop (3) once closed.

Speed: a binlog is mostly small row events (~120 bytes on average), so the cost is
per event. The hot loop does one ``struct.unpack_from``, one ``zlib.crc32`` and one
byte-table lookup per event; the GTID and XID events every InnoDB transaction has
are handled inline, anything rarer goes to a slow path. CRC32 is checked against the
CRC residue (the CRC32 of a message followed by its own little-endian CRC is a
constant), which avoids unpacking the stored value. Transactions are kept as plain
integers in a :class:`~binhoard.domain.binlog.TransactionTable` (48 bytes each), not
as objects. About 200+ MB/s here, 5-6x ``mariadb-binlog > /dev/null``
(``bench/binlog_reader.py``).

Two readings of a file, one scan each: :func:`read_binlog` keeps every transaction
(restore resolves exact stops and batches from them); :func:`summarize_binlog` keeps
only the file's summary and the GTID state at given offsets
(:class:`~binhoard.domain.binlog.SegmentBuilder`), in memory independent of the number
of transactions: what the archiver needs. The rows of one block are handed to the
one or the other as the scan goes.

Not supported, each failing with a clear error: encrypted binlogs, relay logs (they
start with a Rotate event), MySQL binlogs, and binlogs from before MariaDB 10.0 (no
Gtid_list).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import BinaryIO, Final, Protocol

from binhoard.domain.binlog import SegmentBuilder, TransactionTable
from binhoard.domain.binlog_file import BinlogHead, BinlogIndex, BinlogSummary
from binhoard.domain.errors import CorruptBinlogError
from binhoard.domain.gtid import Gtid, GtidPosition

MAGIC: Final = b"\xfebin"
HEADER_LEN: Final = 19
CRC_LEN: Final = 4
# zlib.crc32(payload + crc32(payload).to_bytes(4, "little")) for every payload.
CRC32_RESIDUE: Final = 0x2144DF1C
DEFAULT_BLOCK_SIZE: Final = 8 << 20
# A summary keeps nothing per transaction, so what it holds is the block being read (and
# its copy when an event straddles two) and that block's rows: 8 MiB blocks of ~300-byte
# transactions cost ~45 MiB of peak RSS, 1 MiB ones ~5 MiB, at the same speed
# (docs/benchmarks.md). The archiver's memory bound leaves that room to the upload.
SUMMARY_BLOCK_SIZE: Final = 1 << 20

# Event types (MariaDB's log_event.h numbering).
STOP_EVENT: Final = 3
ROTATE_EVENT: Final = 4
INTVAR_EVENT: Final = 5
RAND_EVENT: Final = 13
USER_VAR_EVENT: Final = 14
FORMAT_DESCRIPTION_EVENT: Final = 15
XID_EVENT: Final = 16
QUERY_EVENT: Final = 2
TABLE_MAP_EVENT: Final = 19
INCIDENT_EVENT: Final = 26
XA_PREPARE_LOG_EVENT: Final = 38
ANNOTATE_ROWS_EVENT: Final = 160
BINLOG_CHECKPOINT_EVENT: Final = 161
GTID_EVENT: Final = 162
GTID_LIST_EVENT: Final = 163
START_ENCRYPTION_EVENT: Final = 164

LOG_EVENT_BINLOG_IN_USE_F: Final = 0x1
LOG_EVENT_IGNORABLE_F: Final = 0x80
FL_STANDALONE: Final = 0x1

CHECKSUM_OFF: Final = 0
CHECKSUM_CRC32: Final = 1

# Events that may precede the statement of a standalone group.
_CONTEXT_EVENTS: Final = frozenset(
    {INTVAR_EVENT, RAND_EVENT, USER_VAR_EVENT, ANNOTATE_ROWS_EVENT, TABLE_MAP_EVENT}
)
# Events that never belong inside a group; meeting one there means a broken file.
_OUTSIDE_ONLY: Final = frozenset(
    {
        STOP_EVENT,
        ROTATE_EVENT,
        FORMAT_DESCRIPTION_EVENT,
        BINLOG_CHECKPOINT_EVENT,
        GTID_EVENT,
        GTID_LIST_EVENT,
        START_ENCRYPTION_EVENT,
    }
)
# What the hot loop does with each event type, by state. 0: nothing (skip it);
# 1: call the slow path; 2: a GTID opens a transaction; 3: an XID closes it. The
# table in use *is* the state: the slow path picks the next one. Outside a group,
# before the Gtid_list, inside a standalone group and after the final event every
# event takes the slow path: they are few. Inside a transaction only terminators and
# events that must not be there do; row events, Table_map, Annotate_rows and
# statements pass straight through.
_SKIP, _SLOW, _OPEN, _CLOSE = 0, 1, 2, 3
_ALL_SLOW: Final = bytes([_SLOW]) * 256
_BETWEEN_GROUPS: Final = bytes(_OPEN if t == GTID_EVENT else _SLOW for t in range(256))
_IN_TRANSACTION: Final = bytes(
    _CLOSE
    if t == XID_EVENT
    else _SLOW
    if t in _OUTSIDE_ONLY | {QUERY_EVENT, XA_PREPARE_LOG_EVENT, INCIDENT_EVENT}
    else _SKIP
    for t in range(256)
)

_HEADER = struct.Struct("<IBIIIH")  # timestamp, type, server_id, length, next_pos, flags
_HOT_HEADER = struct.Struct("<IB4xII")  # timestamp, type, length, next_pos
# From offset 5 of a GTID event: the header's server_id, then seq_no, domain_id, flags2.
_GTID = struct.Struct("<I10xQIB")
_GTID_MIN_LENGTH: Final = HEADER_LEN + 8 + 4 + 1
_GTID_LIST_ENTRY = struct.Struct("<IIQ")  # domain_id, server_id, seq_no
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")

_FDE_FIXED = 2 + 50 + 4 + 1  # binlog_version, server_version, create_timestamp, header_len

_GROUP_ENDING_QUERIES: Final = (b"COMMIT", b"ROLLBACK")
_GROUP_ENDING_QUERY_PREFIXES: Final = (b"XA COMMIT ", b"XA ROLLBACK ")


def read_binlog(
    path: Path | str, *, allow_partial: bool = False, block_size: int = DEFAULT_BLOCK_SIZE
) -> BinlogIndex:
    """Indexes the binlog file at ``path``.

    Raises :class:`~binhoard.domain.errors.CorruptBinlogError`, naming the file and
    the byte offset, for a bad magic number, a checksum mismatch, an event that does
    not fit, a group that does not end properly, an unknown event outside a group, or
    an encrypted binlog. A file that ends inside an event or inside a group, or that
    its header says is closed but has no Rotate/Stop event, is truncated: an error,
    unless ``allow_partial`` is set, in which case the complete transactions are
    returned with ``partial=True`` and ``complete_offset`` saying how far they go (use
    it for a file the server is still writing). ``block_size`` is how much is read at
    a time; events larger than that are read whole.
    """
    path = Path(path)
    table = TransactionTable()
    with path.open("rb", buffering=0) as file:
        head = _Reader(path.name, file, block_size, table).read(allow_partial)
    return BinlogIndex(**head.head_fields(), transactions=table)


def summarize_binlog(
    path: Path | str,
    *,
    states_at: Collection[int] = (),
    block_size: int = SUMMARY_BLOCK_SIZE,
) -> BinlogSummary:
    """Summarises the closed binlog file at ``path`` in one scan, verifying every event
    as :func:`read_binlog` does and raising the same errors; also gives the GTID state at
    each offset of ``states_at`` (e.g. a backup's snapshot in the file). Memory does not
    grow with the number of transactions: only one block's rows are held at a time."""
    path = Path(path)
    with path.open("rb", buffering=0) as file:
        reader = _Reader(path.name, file, block_size, None)
        reader.summary_offsets = tuple(states_at)
        head = reader.read(allow_partial=False)
    builder = reader.builder
    assert builder is not None  # made when the Gtid_list was read; read() checks there is one
    return BinlogSummary(
        **head.head_fields(),
        transaction_count=builder.transaction_count,
        min_commit_time=builder.min_commit_time,
        states_at={offset: builder.state_at(offset) for offset in states_at},
        _builder=builder,
    )


class _RowSink(Protocol):
    def extend_rows(self, rows: Iterable[tuple[int, int, int, int, int, int]]) -> None: ...


class _Reader:
    """State of one pass over one file.

    The open group lives in ``group`` as ``(domain, server, seq, commit time, start
    offset)``; the hot loop's current table says what state the pass is in.
    """

    def __init__(self, name: str, file: BinaryIO, block_size: int, sink: _RowSink | None) -> None:
        """``sink`` takes the transactions' rows block by block; ``None``: a
        :class:`SegmentBuilder` (``builder``) made when the Gtid_list is read, for the
        states at ``summary_offsets``."""
        self.name = name
        self.file = file
        self.block_size = max(block_size, 4096)
        self.checksum = False
        self.crc_len = 0
        self.query_post_header = 13
        self.server_version = ""
        self.created = 0
        self.in_use = False
        self.gtid_list: tuple[Gtid, ...] | None = None
        self.closed = False
        self.next_file: str | None = None
        self.incidents: list[int] = []
        self.sink = sink
        self.summary_offsets: tuple[int, ...] = ()
        self.builder: SegmentBuilder | None = None
        self.rows: list[tuple[int, int, int, int, int, int]] = []
        self.group: tuple[int, int, int, int, int] | None = None
        self.standalone = False
        self.base = 0  # file offset of the hot loop's buffer start, for the slow path

    def fail(self, offset: int, detail: str) -> CorruptBinlogError:
        return CorruptBinlogError(self.name, offset, detail)

    # --- the pass ----------------------------------------------------------------------
    def read(self, allow_partial: bool) -> BinlogHead:
        buf = self._read_exactly(4 + HEADER_LEN, 0)
        if buf[:4] != MAGIC:
            raise self.fail(0, f"not a binlog file (magic {buf[:4].hex()}, expected fe62696e)")
        pos = self._read_format_description(buf)
        base, buf, pos = self._scan(pos)
        size = base + len(buf)
        complete = base + pos  # every event before this is whole
        problem = ""
        if pos < len(buf):
            problem = f"file ends inside an event ({len(buf) - pos} bytes of it)"
        if self.group is not None:
            complete = self.group[4]
            problem = f"file ends inside transaction {self._group_name()}, which starts here"
        elif not problem and not self.closed and not self.in_use:
            # Closed cleanly (the server cleared the in-use flag) yet no Rotate/Stop.
            problem = "file ends without a Rotate or Stop event although it was closed"
        if problem and not allow_partial:
            raise self.fail(complete, f"truncated: {problem}")
        if self.gtid_list is None:
            raise self.fail(complete, "no Gtid_list event: not a MariaDB 10 binlog, or cut short")
        self._flush_rows()
        return BinlogHead(
            name=self.name,
            size=size,
            server_version=self.server_version,
            created=self.created,
            checksum=self.checksum,
            in_use=self.in_use,
            closed=self.closed,
            partial=bool(problem),
            next_file=self.next_file,
            gtid_list=self.gtid_list,
            gtid_list_at_start=GtidPosition.from_binlog_state(self.gtid_list),
            complete_offset=complete,
            incident_offsets=tuple(self.incidents),
        )

    def _read_exactly(self, count: int, offset: int) -> bytes:
        data = self.file.read(count)
        if len(data) < count:
            raise self.fail(offset + len(data), f"file too short ({offset + len(data)} bytes)")
        return data

    def _read_format_description(self, head: bytes) -> int:
        timestamp, event_type, _, length, next_pos, flags = _HEADER.unpack_from(head, 4)
        if event_type != FORMAT_DESCRIPTION_EVENT:
            raise self.fail(4, f"first event is type {event_type}, not Format_description (15)")
        if not HEADER_LEN + _FDE_FIXED + 5 <= length <= 64 * 1024 or next_pos != 4 + length:
            raise self.fail(4, f"Format_description event has a bad length {length}")
        event = head[4:] + self._read_exactly(length - HEADER_LEN, 4 + HEADER_LEN)
        # MariaDB >= 5.3 always checksums this event, whatever binlog_checksum says, but
        # the CRC is of the event as it is once *closed*: the server sets the in-use
        # flag in place when it opens the file and clears it at close, without
        # recomputing the CRC. So check it with the flag cleared.
        closed_form = bytearray(event)
        closed_form[17] &= ~LOG_EVENT_BINLOG_IN_USE_F & 0xFF
        if zlib.crc32(closed_form) != CRC32_RESIDUE:
            raise self.fail(4, "Format_description event fails its CRC32 check")
        binlog_version = _U16.unpack_from(event, HEADER_LEN)[0]
        version = event[HEADER_LEN + 2 : HEADER_LEN + 52].split(b"\0", 1)[0]
        self.server_version = version.decode("ascii", "replace")
        header_len = event[HEADER_LEN + 56]
        if binlog_version != 4 or header_len != HEADER_LEN:
            raise self.fail(
                4, f"unsupported binlog version {binlog_version} (header length {header_len})"
            )
        if "MariaDB" not in self.server_version:
            raise self.fail(
                4, f"written by {self.server_version!r}: only MariaDB binlogs are supported"
            )
        algorithm = event[length - 5]
        if algorithm not in (CHECKSUM_OFF, CHECKSUM_CRC32):
            raise self.fail(4, f"unknown binlog checksum algorithm {algorithm}")
        self.checksum = algorithm == CHECKSUM_CRC32
        self.crc_len = CRC_LEN if self.checksum else 0
        post_headers = event[HEADER_LEN + _FDE_FIXED : length - 5]
        if len(post_headers) >= QUERY_EVENT:
            self.query_post_header = post_headers[QUERY_EVENT - 1]
        self.in_use = bool(flags & LOG_EVENT_BINLOG_IN_USE_F)
        self.created = int(timestamp)
        return 4 + int(length)

    def _scan(self, start: int) -> tuple[int, bytes, int]:  # noqa: PLR0915 - one hot loop
        """The hot loop: walks every event from ``start``; returns (base, buffer, pos)
        where reading stopped (``pos < len(buffer)`` means the file ended mid-event).

        Deliberately one flat loop with everything in locals, and the two events every
        transaction has (GTID, XID) handled inline: attribute lookups and calls per
        event would halve the throughput.
        """
        read = self.file.read
        block_size = self.block_size
        unpack = _HOT_HEADER.unpack_from
        unpack_gtid = _GTID.unpack_from
        crc32 = zlib.crc32
        residue = CRC32_RESIDUE
        checksum = self.checksum
        min_length = HEADER_LEN + self.crc_len
        gtid_min_length = _GTID_MIN_LENGTH + self.crc_len
        slow = self._slow_path
        rows = self.rows
        append = rows.append
        in_transaction, between_groups, all_slow = _IN_TRANSACTION, _BETWEEN_GROUPS, _ALL_SLOW
        opens, closes = _OPEN, _CLOSE
        table = all_slow  # until the Gtid_list event
        group: tuple[int, int, int, int, int] | None = None
        base = start  # file offset of buf[0]
        buf = b""
        pos = 0
        need = HEADER_LEN
        while True:
            more = read(max(block_size, need))
            if not more:
                self.group = group
                return base, buf, pos
            buf = buf[pos:] + more
            base += pos
            self.base = base
            pos = 0
            size = len(buf)
            last_header = size - HEADER_LEN
            need = HEADER_LEN
            while pos <= last_header:
                timestamp, event_type, length, next_pos = unpack(buf, pos)
                end = pos + length
                if end > size:
                    need = end - size
                    break
                # next_pos 0: not filled in. MariaDB 11.4+ leaves it 0 in the events a
                # transaction writes from its binlog cache (binlog_legacy_event_pos=OFF,
                # the default); only the event that ends the transaction has it.
                if (
                    (checksum and crc32(buf[pos:end]) != residue)
                    or (next_pos and next_pos - base != end)
                    or length < min_length
                ):
                    self._bad_event(buf, pos)
                action = table[event_type]
                if action:
                    if action == opens and length >= gtid_min_length:
                        server_id, seq_no, domain_id, flags2 = unpack_gtid(buf, pos + 5)
                        group = (domain_id, server_id, seq_no, timestamp, base + pos)
                        if flags2 & FL_STANDALONE:
                            self.group = group
                            self.standalone = True
                            table = all_slow
                        else:
                            table = in_transaction
                    elif action == closes:
                        append((*group, base + end))  # type: ignore[misc]  # a group is open
                        group = None
                        table = between_groups
                    else:
                        self.group = group
                        table = slow(buf, pos, end, event_type)
                        group = self.group
                pos = end
            self._flush_rows()

    def _flush_rows(self) -> None:
        """Hands the rows collected so far to the sink: one block's worth at a time."""
        if self.rows:
            sink = self.sink if self.sink is not None else self.builder
            assert sink is not None  # rows exist only after the Gtid_list made the builder
            sink.extend_rows(self.rows)
            self.rows.clear()

    def _bad_event(self, buf: bytes, pos: int) -> None:
        _, event_type, _, length, next_pos, _ = _HEADER.unpack_from(buf, pos)
        offset = self.base + pos
        what = f"event type {event_type} (length {length})"
        if length < HEADER_LEN + self.crc_len:
            raise self.fail(offset, f"{what} is shorter than an event header")
        if self.checksum:
            stored = _U32.unpack_from(buf, pos + length - CRC_LEN)[0]
            computed = zlib.crc32(buf[pos : pos + length - CRC_LEN])
            if stored != computed:
                raise self.fail(
                    offset,
                    f"{what} fails its CRC32 check (stored {stored:#010x}, "
                    f"computed {computed:#010x})",
                )
        raise self.fail(
            offset, f"{what} says it ends at {next_pos}, but it ends at {offset + length}"
        )

    # --- the slow path: one call per rare event ------------------------------------------
    def _slow_path(self, buf: bytes, pos: int, end: int, event_type: int) -> bytes:
        """Handles an event the hot loop does not; returns the table for the next event."""
        offset = self.base + pos
        if self.group is None:
            return self._outside_group(buf, pos, end, event_type, offset)
        if event_type in _OUTSIDE_ONLY:
            raise self.fail(
                offset,
                f"event type {event_type} inside transaction {self._group_name()} "
                f"(which starts at {self.group[4]})",
            )
        if event_type == INCIDENT_EVENT:
            self.incidents.append(offset)
        if self.standalone:
            if event_type in _CONTEXT_EVENTS:
                return _ALL_SLOW
            return self._end_group(self.base + end)
        if event_type == XA_PREPARE_LOG_EVENT or (
            event_type == QUERY_EVENT and self._ends_group(buf, pos, end, offset)
        ):
            return self._end_group(self.base + end)
        return _IN_TRANSACTION

    def _outside_group(self, buf: bytes, pos: int, end: int, event_type: int, offset: int) -> bytes:
        if self.closed:
            raise self.fail(offset, f"event type {event_type} after the file's final event")
        handler = self._handlers.get(event_type)
        if handler is not None:
            handler(self, buf, pos, end, offset)
        elif event_type == INCIDENT_EVENT:
            self.incidents.append(offset)
        elif not _U16.unpack_from(buf, pos + 17)[0] & LOG_EVENT_IGNORABLE_F:
            raise self.fail(offset, f"unexpected event type {event_type} outside a transaction")
        if self.closed or self.gtid_list is None:
            return _ALL_SLOW
        return _BETWEEN_GROUPS

    def _end_group(self, end_offset: int) -> bytes:
        if self.group is not None:
            self.rows.append((*self.group, end_offset))
        self.group = None
        self.standalone = False
        return _BETWEEN_GROUPS

    def _group_name(self) -> str:
        if self.group is None:
            return "(none)"
        domain, server, seq, _, _ = self.group
        return f"{domain}-{server}-{seq}"

    def _ends_group(self, buf: bytes, pos: int, end: int, offset: int) -> bool:
        """True for a Query event ``COMMIT``, ``ROLLBACK``, ``XA COMMIT ..``, ``XA ROLLBACK ..``.

        Exact matches: ``ROLLBACK TO SAVEPOINT`` is logged inside transactions.
        """
        body = pos + HEADER_LEN
        post = self.query_post_header
        if end - self.crc_len < body + post:
            raise self.fail(offset, "Query event shorter than its post-header")
        db_len = buf[body + 8]
        status_len = _U16.unpack_from(buf, body + 11)[0]
        start = body + post + status_len + db_len + 1
        query = buf[start : end - self.crc_len]
        return query in _GROUP_ENDING_QUERIES or query.startswith(_GROUP_ENDING_QUERY_PREFIXES)

    # --- events outside groups ------------------------------------------------------------
    def _on_gtid(self, buf: bytes, pos: int, end: int, offset: int) -> None:
        # Only reached when the hot loop cannot take it: before the Gtid_list, or short.
        if self.gtid_list is None:
            raise self.fail(offset, "GTID event before the Gtid_list event")
        raise self.fail(offset, f"GTID event too short ({end - pos} bytes)")

    def _on_gtid_list(self, buf: bytes, pos: int, end: int, offset: int) -> None:
        if self.gtid_list is not None:
            raise self.fail(offset, "a second Gtid_list event")
        body = pos + HEADER_LEN
        count = _U32.unpack_from(buf, body)[0] & 0x0FFFFFFF
        expected = HEADER_LEN + 4 + count * _GTID_LIST_ENTRY.size + self.crc_len
        # An empty list comes with 2 bytes of padding (MariaDB 10.11): allow a longer event.
        if end - pos < expected:
            raise self.fail(
                offset, f"Gtid_list event of {end - pos} bytes cannot hold {count} GTIDs"
            )
        self.gtid_list = tuple(
            Gtid(*_GTID_LIST_ENTRY.unpack_from(buf, body + 4 + i * _GTID_LIST_ENTRY.size))
            for i in range(count)
        )
        if self.sink is None:
            self.builder = SegmentBuilder(
                self.name,
                GtidPosition.from_binlog_state(self.gtid_list),
                offsets=self.summary_offsets,
            )

    def _on_rotate(self, buf: bytes, pos: int, end: int, offset: int) -> None:
        name = buf[pos + HEADER_LEN + 8 : end - self.crc_len]
        self.next_file = name.decode("utf-8", "replace")
        self.closed = True

    def _on_stop(self, buf: bytes, pos: int, end: int, offset: int) -> None:
        self.closed = True

    def _on_checkpoint(self, buf: bytes, pos: int, end: int, offset: int) -> None:
        """Binlog_checkpoint: crash-recovery bookkeeping of the server, nothing to index."""

    def _on_encryption(self, buf: bytes, pos: int, end: int, offset: int) -> None:
        raise self.fail(offset, "encrypted binlog (Start_encryption event): cannot be indexed")

    def _on_format_description(self, buf: bytes, pos: int, end: int, offset: int) -> None:
        raise self.fail(offset, "a second Format_description event")

    _handlers: Final[dict[int, Callable[[_Reader, bytes, int, int, int], None]]] = {
        GTID_EVENT: _on_gtid,
        GTID_LIST_EVENT: _on_gtid_list,
        ROTATE_EVENT: _on_rotate,
        STOP_EVENT: _on_stop,
        BINLOG_CHECKPOINT_EVENT: _on_checkpoint,
        START_ENCRYPTION_EVENT: _on_encryption,
        FORMAT_DESCRIPTION_EVENT: _on_format_description,
    }
