"""Synthetic MariaDB binlog files for unit tests: the events the reader indexes, with
CRC32 checksums, as a 10.11 server writes them (Format_description, Gtid_list, GTID /
row / XID groups, Stop). Real files come from real servers in the integration tests;
these let the archiver's decisions run against a ``MemoryStore`` without one."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from binhoard.domain.gtid import Gtid, GtidPosition

_HEADER = struct.Struct("<IBIIIH")
_FDE = 15
_STOP = 3
_XID = 16
_WRITE_ROWS = 30
_GTID = 162
_GTID_LIST = 163


@dataclass
class BinlogWriter:
    """Builds one closed binlog file; ``offset`` is where the next event goes. Events
    go to ``out`` if given (files larger than memory, for benchmarks), else to ``body``."""

    server_id: int
    created: int
    start: tuple[Gtid, ...] = ()
    out: BinaryIO | None = None
    body: bytearray = field(default_factory=bytearray)
    xid: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        self._write(b"\xfebin")
        version = b"10.11.19-MariaDB".ljust(50, b"\0")
        post_headers = bytes([56, 13, 0, 8, 0, 18, 0, 4, 4, 4])
        fde = struct.pack("<H", 4) + version + struct.pack("<IB", self.created, 19) + post_headers
        self._event(_FDE, fde + b"\x01", self.created)
        entries = b"".join(
            struct.pack("<IIQ", g.domain_id, g.server_id, g.seq_no) for g in self.start
        )
        self._event(_GTID_LIST, struct.pack("<I", len(self.start)) + entries, self.created)

    def _write(self, data: bytes) -> None:
        if self.out is not None:
            self.out.write(data)
        else:
            self.body += data
        self.offset += len(data)

    @property
    def gtid_list_at_start(self) -> GtidPosition:
        return GtidPosition.from_binlog_state(self.start)

    def _event(self, event_type: int, payload: bytes, timestamp: int) -> None:
        length = 19 + len(payload) + 4
        header = _HEADER.pack(
            timestamp, event_type, self.server_id, length, self.offset + length, 0
        )
        event = header + payload
        self._write(event + struct.pack("<I", zlib.crc32(event)))

    def transaction(self, gtid: Gtid, commit_time: int, payloads: Iterable[bytes] = ()) -> None:
        """One InnoDB transaction: GTID, a row event per payload, XID."""
        self._event(
            _GTID, struct.pack("<QIB", gtid.seq_no, gtid.domain_id, 0) + bytes(6), commit_time
        )
        for payload in payloads:
            self._event(_WRITE_ROWS, payload, commit_time)
        self.xid += 1
        self._event(_XID, struct.pack("<Q", self.xid), commit_time)

    def finish(self) -> None:
        """The Stop event that closes the file."""
        self._event(_STOP, b"", self.created)

    def close(self, path: Path) -> Path:
        self.finish()
        path.write_bytes(bytes(self.body))
        return path
