"""What one scan of a binlog file finds: its head (:class:`BinlogHead`), and either every
transaction (:class:`BinlogIndex`, what restore reads) or a summary without them
(:class:`BinlogSummary`, what archiving reads). Data only; the flavour's reader makes
them (``server/binlog_reader.py`` for MariaDB's files), reached through the server
port's ``Binlogs.read`` / ``Binlogs.summarize``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from binhoard.domain.binlog import BinlogSegment, SegmentBuilder, TransactionTable
from binhoard.domain.gtid import Gtid, GtidPosition


@dataclass(frozen=True, slots=True)
class BinlogHead:
    """What one scan of a binlog file finds besides its transactions.

    ``size`` is the number of bytes read (the file may grow while a server writes it).
    ``complete_offset`` is the offset up to which every event is whole and no group is
    open: the end of the file for a whole file; for a partial read
    (``allow_partial=True``) it is where the unfinished part begins. ``in_use`` is the
    server's "still open" header flag; ``closed`` says a Rotate or Stop event ended
    the file (``next_file`` names the Rotate's target). ``created`` is the
    Format_description event's timestamp: when the server opened the file (unix
    seconds). ``incident_offsets`` lists Incident events: the server lost events
    there, so replay must not cross them.
    """

    name: str
    size: int
    server_version: str
    created: int
    checksum: bool
    in_use: bool
    closed: bool
    partial: bool
    next_file: str | None
    gtid_list: tuple[Gtid, ...]
    gtid_list_at_start: GtidPosition
    complete_offset: int
    incident_offsets: tuple[int, ...]

    def head_fields(self) -> dict[str, Any]:
        """This head's fields, to build a :class:`BinlogIndex` or :class:`BinlogSummary`
        (``asdict`` would also turn the GTIDs into dicts)."""
        return {f.name: getattr(self, f.name) for f in fields(BinlogHead)}


@dataclass(frozen=True, slots=True)
class BinlogIndex(BinlogHead):
    """What one binlog file holds, as far as archiving and restore care: the head and
    every transaction (restore resolves its exact stop from them)."""

    transactions: TransactionTable

    def segment(self) -> BinlogSegment:
        """The catalog summary of this file (only the complete part of a partial read).

        Raises :class:`~binhoard.domain.gtid.GtidOrderError` if the file's GTIDs do not
        follow each other as gtid_strict_mode guarantees.
        """
        size = self.complete_offset if self.partial else self.size
        return BinlogSegment.from_transactions(
            self.name, size, self.gtid_list_at_start, self.transactions
        )


@dataclass(frozen=True)
class BinlogSummary(BinlogHead):
    """A binlog file summarised in one scan, without its transactions: what archiving a
    file needs."""

    transaction_count: int
    min_commit_time: int | None
    states_at: Mapping[int, GtidPosition | None] = field(default_factory=dict)
    """The GTID state at each offset asked for; ``None`` where one falls inside a
    transaction (not a position a snapshot can stand at)."""
    _builder: SegmentBuilder | None = field(default=None, repr=False, compare=False)

    def segment(self) -> BinlogSegment:
        """The catalog summary of this file; raises as :meth:`BinlogIndex.segment` does
        (:class:`~binhoard.domain.gtid.GtidOrderError` for GTIDs out of order)."""
        if self._builder is None:
            raise ValueError(f"{self.name}: no summary was built")
        return self._builder.segment(self.size)
