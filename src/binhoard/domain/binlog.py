"""Binlog files as the archive sees them: segments, their order, gaps, and stop points.

A *segment* is one binlog file summarised: what GTID state it starts from (its
Gtid_list event), which transactions it holds and the state it ends in. Chaining
segments proves an archive has no hole: every binlog file starts with the server's
binlog state at the moment it was opened, so the Gtid_list of file N+1 must equal
the state after file N. Any difference is reported, never smoothed over, because a
restore across a missing transaction is silently wrong data.

Stop points follow the rules proven in ``notes/mariadb.md``: commit times are *not*
monotonic in binlog order, and replay can only stop at a prefix of the binlog.
"""

from __future__ import annotations

import itertools
import re
import sys
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import overload

from binhoard.domain.gtid import Gtid, GtidOrderError, GtidPosition

_NAME_RE = re.compile(r"(.+)\.([0-9]+)")


# --- file names ------------------------------------------------------------------------
def binlog_sort_key(name: str) -> tuple[str, int]:
    """Sort key of a binlog file name: ``(base name, number)``.

    MariaDB pads the number to six digits and simply grows it past ``999999``, so
    ``binlog.1000000`` follows ``binlog.999999``; plain string order would put it first.
    Raises :class:`ValueError` for a name without a numeric extension (``binlog.index``).
    """
    match = _NAME_RE.fullmatch(name)
    if match is None:
        raise ValueError(f"not a binlog file name (base.NNNNNN): {name!r}")
    return match.group(1), int(match.group(2))


# --- transactions and segments ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TransactionIndexEntry:
    """One transaction (event group) of a binlog file.

    ``start_offset`` is the offset of its GTID event; ``end_offset`` the offset just
    after its last event, which is where ``START SLAVE UNTIL RELAY_LOG_POS`` must point
    to stop right after it. ``commit_time`` is the GTID event's timestamp (unix seconds,
    1 s resolution): the time the server committed it, as ``--stop-datetime`` sees it.
    """

    gtid: Gtid
    commit_time: int
    start_offset: int
    end_offset: int

    def __post_init__(self) -> None:
        if not 4 <= self.start_offset < self.end_offset:
            raise ValueError(
                f"transaction {self.gtid}: offsets {self.start_offset}..{self.end_offset} "
                "are not a range inside a binlog file"
            )


class TransactionTable(Sequence[TransactionIndexEntry]):
    """The transactions of one binlog file, stored compactly: six integers each.

    A 1 GB binlog can hold millions of transactions; as objects they would take
    hundreds of bytes each, here 48. Entries are built when accessed. The columns
    (:attr:`commit_times`, :attr:`end_offsets`, ...) and :meth:`rows` give fast
    access without building entries, which is what summaries and stop-point searches
    over whole files use. :meth:`to_bytes` / :meth:`from_bytes` give a compact,
    portable (little-endian) form for storing a file's index.

    Rows are ``(domain_id, server_id, seq_no, commit_time, start_offset, end_offset)``.
    """

    __slots__ = ("_data",)

    _WIDTH = 6

    def __init__(self, rows: Iterable[tuple[int, int, int, int, int, int]] = ()) -> None:
        self._data = array("Q", itertools.chain.from_iterable(rows))

    @classmethod
    def from_entries(cls, entries: Iterable[TransactionIndexEntry]) -> TransactionTable:
        return cls(
            (
                e.gtid.domain_id,
                e.gtid.server_id,
                e.gtid.seq_no,
                e.commit_time,
                e.start_offset,
                e.end_offset,
            )
            for e in entries
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> TransactionTable:
        """Inverse of :meth:`to_bytes`; raises :class:`ValueError` on a malformed length."""
        table = cls()
        if len(data) % (8 * cls._WIDTH):
            raise ValueError(
                f"transaction table of {len(data)} bytes is not a whole number of rows"
            )
        table._data.frombytes(data)
        if sys.byteorder != "little":
            table._data.byteswap()
        return table

    def to_bytes(self) -> bytes:
        if sys.byteorder != "little":
            swapped = array("Q", self._data)
            swapped.byteswap()
            return swapped.tobytes()
        return self._data.tobytes()

    def extend_rows(self, rows: Iterable[tuple[int, int, int, int, int, int]]) -> None:
        """Appends rows. Only for the code that builds a table (a reader); a table that
        has been handed out is treated as immutable."""
        self._data.extend(itertools.chain.from_iterable(rows))

    # --- Sequence ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._data) // self._WIDTH

    @overload
    def __getitem__(self, index: int) -> TransactionIndexEntry: ...

    @overload
    def __getitem__(self, index: slice) -> TransactionTable: ...

    def __getitem__(self, index: int | slice) -> TransactionIndexEntry | TransactionTable:
        if isinstance(index, slice):
            table = TransactionTable()
            picked = range(len(self))[index]
            if picked.step == 1:
                width = self._WIDTH
                table._data = self._data[picked.start * width : picked.stop * width]
            else:
                table.extend_rows(row for i, row in enumerate(self.rows()) if i in picked)
            return table
        count = len(self)
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError(f"transaction index {index} out of range ({count} transactions)")
        base = index * self._WIDTH
        domain, server, seq, commit_time, start, end = self._data[base : base + self._WIDTH]
        return TransactionIndexEntry(Gtid(domain, server, seq), commit_time, start, end)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TransactionTable):
            return self._data == other._data
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable while a reader builds it

    def __repr__(self) -> str:
        return f"TransactionTable({len(self)} transactions)"

    # --- columns ---------------------------------------------------------------------------
    def rows(self) -> Iterator[tuple[int, int, int, int, int, int]]:
        data, width = self._data, self._WIDTH
        return zip(*(data[i::width] for i in range(width)), strict=True)

    @property
    def commit_times(self) -> array[int]:
        return self._data[3 :: self._WIDTH]

    @property
    def start_offsets(self) -> array[int]:
        return self._data[4 :: self._WIDTH]

    @property
    def end_offsets(self) -> array[int]:
        return self._data[5 :: self._WIDTH]


def _rows_of(
    transactions: Sequence[TransactionIndexEntry],
) -> Iterator[tuple[int, int, int, int, int, int]]:
    if isinstance(transactions, TransactionTable):
        return transactions.rows()
    return (
        (
            e.gtid.domain_id,
            e.gtid.server_id,
            e.gtid.seq_no,
            e.commit_time,
            e.start_offset,
            e.end_offset,
        )
        for e in transactions
    )


def _commit_times_of(transactions: Sequence[TransactionIndexEntry]) -> Sequence[int]:
    if isinstance(transactions, TransactionTable):
        return transactions.commit_times
    return [entry.commit_time for entry in transactions]


class _State:
    """A GTID position being advanced over many transactions, as plain integers:
    building a GtidPosition per transaction would cost more than reading the file."""

    __slots__ = ("last",)

    def __init__(self, start: GtidPosition) -> None:
        self.last = {g.domain_id: (g.server_id, g.seq_no) for g in start.values()}

    def advance(self, domain: int, server: int, seq: int, where: str) -> None:
        before = self.last.get(domain)
        if before is not None and seq <= before[1]:
            raise GtidOrderError(
                f"GTID {domain}-{server}-{seq} ({where}) does not follow "
                f"{domain}-{before[0]}-{before[1]}: a duplicate or out-of-order transaction "
                "(gtid_strict_mode forbids it)"
            )
        self.last[domain] = (server, seq)

    def position(self) -> GtidPosition:
        return GtidPosition(Gtid(d, s, q) for d, (s, q) in self.last.items())


@dataclass(frozen=True, slots=True)
class BinlogSegment:
    """A summary of one binlog file, small enough to keep in the catalog for every file.

    ``end_position`` is the GTID state after the file: ``gtid_list_at_start`` advanced
    by every transaction in it. ``max_commit_time`` exists besides ``last_commit_time``
    because commit times are not monotonic: "does this file reach time T" must look at
    the maximum, not at the last transaction. Time fields are ``None`` for a file
    without transactions (a file rotated right away still has a Gtid_list).
    """

    name: str
    size: int
    gtid_list_at_start: GtidPosition
    end_position: GtidPosition
    transaction_count: int
    first_gtid: Gtid | None
    last_gtid: Gtid | None
    first_commit_time: int | None
    last_commit_time: int | None
    max_commit_time: int | None

    @classmethod
    def from_transactions(
        cls,
        name: str,
        size: int,
        gtid_list_at_start: GtidPosition,
        transactions: Sequence[TransactionIndexEntry],
    ) -> BinlogSegment:
        """Summarises a file from its index (a :class:`TransactionTable` is fastest).

        Raises :class:`~binhoard.domain.gtid.GtidOrderError` if a transaction does not
        follow the state before it in its domain (a duplicate or out-of-order GTID:
        strict mode broken), and :class:`ValueError` if transactions overlap or run
        past ``size``.
        """
        builder = SegmentBuilder(name, gtid_list_at_start, size=size)
        builder.extend_rows(_rows_of(transactions))
        return builder.segment(size)


class SegmentBuilder:
    """A :class:`BinlogSegment` built from a file's transactions as they are read, in
    memory independent of their number, and the GTID state at chosen byte offsets.

    The archiver needs only a file's summary and, for a stream's first file, the state
    where the backup's snapshot sits; a :class:`TransactionTable` of a 1 GiB binlog of
    small transactions would take ~240 MB for that. Rows come in file order
    (:meth:`extend_rows`, as ``TransactionTable`` takes them); the first problem found
    (overlap, a GTID out of order) is kept and raised by :meth:`segment`, exactly as
    :meth:`BinlogSegment.from_transactions` raises it, while the states at ``offsets``
    are still worked out (:func:`~binhoard.domain.archiving.state_at_offset`'s
    semantics: non-strict, ``None`` inside a transaction).

    ``size``, when known in advance, is checked on every row as ``from_transactions``
    does; otherwise :meth:`segment` checks the last row against the size it is given.
    """

    __slots__ = (
        "_before_last_end",
        "_count",
        "_error",
        "_first",
        "_last",
        "_max_time",
        "_min_time",
        "_pending",
        "_previous_end",
        "_size",
        "_start",
        "_state",
        "_states",
        "name",
    )

    def __init__(
        self,
        name: str,
        gtid_list_at_start: GtidPosition,
        *,
        size: int | None = None,
        offsets: Iterable[int] = (),
    ) -> None:
        self.name = name
        self._start = gtid_list_at_start
        self._size = size
        self._state = _State(gtid_list_at_start)
        self._count = 0
        self._first: tuple[int, int, int, int, int, int] | None = None
        self._last: tuple[int, int, int, int, int, int] | None = None
        self._min_time: int | None = None
        self._max_time: int | None = None
        self._previous_end = 4
        # The first problem: a GtidOrderError, or a row that overlaps or runs past the
        # size as (domain, server, seq, start, end, end of the row before).
        self._error: ValueError | tuple[int, int, int, int, int, int] | None = None
        self._before_last_end = 4
        # Offsets still waiting for the transaction that settles them, the smallest last.
        self._pending = sorted(set(offsets), reverse=True)
        self._states: dict[int, GtidPosition | None] = {}

    def extend_rows(self, rows: Iterable[tuple[int, int, int, int, int, int]]) -> None:
        """Takes the next transactions, ``(domain_id, server_id, seq_no, commit_time,
        start_offset, end_offset)`` each, in file order."""
        # Once per transaction of a file (millions for a big one): locals, plain integers
        # and dicts only, and only the failing case does any formatting.
        last = self._state.last
        pending = self._pending
        settle = pending[-1] if pending else -1
        size = self._size
        limit = size if size is not None else 1 << 64
        previous_end = self._previous_end
        ok = self._error is None
        before_last_end = self._before_last_end
        count = self._count
        low = self._min_time if self._min_time is not None else 1 << 64
        high = self._max_time if self._max_time is not None else -1
        row = self._last
        for row in rows:
            domain, server, seq, commit_time, start, end = row
            if count == 0:
                self._first = row
            count += 1
            # Comparisons, not min()/max(): a call per row costs more than the rest.
            if commit_time < low:  # noqa: PLR1730
                low = commit_time
            if commit_time > high:  # noqa: PLR1730
                high = commit_time
            while settle >= 0 and settle < end:
                # The first transaction ending after an offset settles it: the offset is
                # inside it, or the state before it is the state there.
                pending.pop()
                self._states[settle] = None if start < settle else self._state.position()
                settle = pending[-1] if pending else -1
            if ok:
                if start < previous_end or end <= start or end > limit:
                    # Worded by segment(), which knows the file's size.
                    self._error = (domain, server, seq, start, end, previous_end)
                    ok = False
                else:
                    before = last.get(domain)
                    if before is not None and seq <= before[1]:
                        try:
                            self._state.advance(
                                domain, server, seq, f"{self.name} at offset {start}"
                            )
                        except ValueError as exc:  # GtidOrderError, always
                            self._error = exc
                            ok = False
                before_last_end, previous_end = previous_end, end
            last[domain] = (server, seq)
        self._previous_end = previous_end
        self._before_last_end = before_last_end
        self._count = count
        if count:
            self._min_time, self._max_time = low, high
        self._last = row

    def state_at(self, offset: int) -> GtidPosition | None:
        """The GTID state at ``offset`` (one of the ``offsets`` given), once every row
        has been given: ``None`` if it falls inside a transaction."""
        if offset in self._states:
            return self._states[offset]
        if offset not in self._pending:
            raise KeyError(f"the state at offset {offset} was not asked for")
        return self._state.position()

    @property
    def transaction_count(self) -> int:
        return self._count

    @property
    def min_commit_time(self) -> int | None:
        return self._min_time

    def segment(self, size: int) -> BinlogSegment:
        """The summary of the file of ``size`` bytes, once every row has been given.

        Raises :class:`~binhoard.domain.gtid.GtidOrderError` or :class:`ValueError` as
        :meth:`BinlogSegment.from_transactions` does for the same rows, and
        :class:`ValueError` for a name that is not a binlog file name."""
        binlog_sort_key(self.name)
        error = self._error
        if error is None and self._last is not None and self._last[5] > size:
            # Rows checked without a size: the last one ends furthest. (Which row runs
            # past the end first is not known without keeping them; a reader never
            # gives a row past the bytes it read.)
            domain, server, seq, _, start, end = self._last
            error = (domain, server, seq, start, end, self._before_last_end)
        if isinstance(error, tuple):
            domain, server, seq, start, end, previous_end = error
            raise ValueError(
                f"{self.name}: transaction {domain}-{server}-{seq} at {start}..{end} overlaps "
                f"the previous one (ends {previous_end}) or the file end ({size})"
            )
        if error is not None:
            raise error
        first, last = self._first, self._last
        if first is None or last is None:
            return BinlogSegment(self.name, size, self._start, self._start, 0, *(None,) * 5)
        return BinlogSegment(
            name=self.name,
            size=size,
            gtid_list_at_start=self._start,
            end_position=self._state.position(),
            transaction_count=self._count,
            first_gtid=Gtid(*first[:3]),
            last_gtid=Gtid(*last[:3]),
            first_commit_time=first[3],
            last_commit_time=last[3],
            max_commit_time=self._max_time,
        )


# --- gap checks ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GtidGap:
    """Transactions ``first_missing_seq..last_missing_seq`` of ``domain_id`` are in no
    segment: the state jumps from ``before`` (end of the previous segment, or the
    stream's start) to the Gtid_list of ``after``. A restore cannot cross it."""

    before: str
    after: str
    domain_id: int
    first_missing_seq: int
    last_missing_seq: int


@dataclass(frozen=True, slots=True)
class GtidOverlap:
    """``after`` starts behind the end of ``before`` in ``domain_id``: transactions
    ``first_seq..last_seq`` would be applied twice (a file archived twice, or a
    different history)."""

    before: str
    after: str
    domain_id: int
    first_seq: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class GtidDivergence:
    """Both sides reach the same ``seq_no`` in ``domain_id`` but name different servers
    (``expected`` vs ``found``): two histories (a fork) were mixed in one stream."""

    before: str
    after: str
    domain_id: int
    expected: Gtid
    found: Gtid


@dataclass(frozen=True, slots=True)
class DomainDropped:
    """``after`` starts without domain ``domain_id`` that ``before`` ended with (at
    ``last``): the binlog state was reset (``RESET MASTER``) or the files belong to
    different servers."""

    before: str
    after: str
    domain_id: int
    last: Gtid


@dataclass(frozen=True, slots=True)
class OutOfOrderName:
    """``after`` does not sort after ``before`` by binlog name (or repeats it)."""

    before: str
    after: str


SegmentProblem = GtidGap | GtidOverlap | GtidDivergence | DomainDropped | OutOfOrderName

STREAM_START = "(stream start)"
"""The ``before`` of problems found between the given start position and the first segment."""

STREAM_END = "(stream end)"
"""The ``after`` of problems found between the last segment and the given end position."""


def compare_positions(
    before_name: str, before: GtidPosition, after_name: str, after: GtidPosition
) -> list[SegmentProblem]:
    """Every way ``after`` (a segment's Gtid_list) differs from ``before`` (the state
    expected there), one problem per domain, in domain order."""
    problems: list[SegmentProblem] = []
    names = (before_name, after_name)
    for domain in sorted(set(before) | set(after)):
        expected = before.get(domain)
        found = after.get(domain)
        if expected == found:
            continue
        if found is None:
            if expected is not None:  # always: the domain comes from one of the two
                problems.append(DomainDropped(*names, domain, expected))
            continue
        expected_seq = 0 if expected is None else expected.seq_no
        if found.seq_no > expected_seq:
            problems.append(GtidGap(*names, domain, expected_seq + 1, found.seq_no))
        elif found.seq_no < expected_seq:
            problems.append(GtidOverlap(*names, domain, found.seq_no + 1, expected_seq))
        elif expected is not None:  # same seq_no, another server: two histories
            problems.append(GtidDivergence(*names, domain, expected, found))
    return problems


def check_chain(
    segments: Sequence[BinlogSegment],
    start: GtidPosition | None = None,
    end: GtidPosition | None = None,
) -> list[SegmentProblem]:
    """Every problem that keeps ``segments`` (in the given order) from being one
    gap-free stream; an empty list means they chain.

    Each segment's Gtid_list must equal the end position of the one before it. If
    ``start`` is given, the first segment's Gtid_list must equal it; if ``end`` is
    given (e.g. the Gtid_list of the server's next, not yet archived, file), the last
    segment must end there: without it a lost *last* file cannot be seen. Names must
    strictly increase in binlog order. A missing file *number* whose neighbours still
    chain is not a problem: no transaction can be missing there (every MariaDB
    transaction has a GTID), the file held none.
    """
    problems: list[SegmentProblem] = []
    if start is not None and segments:
        problems += compare_positions(
            STREAM_START, start, segments[0].name, segments[0].gtid_list_at_start
        )
    for before, after in itertools.pairwise(segments):
        if binlog_sort_key(after.name) <= binlog_sort_key(before.name):
            problems.append(OutOfOrderName(before.name, after.name))
        problems += compare_positions(
            before.name, before.end_position, after.name, after.gtid_list_at_start
        )
    if end is not None:
        last_name, last_end = (
            (segments[-1].name, segments[-1].end_position)
            if segments
            else (STREAM_START, start or GtidPosition())
        )
        problems += compare_positions(last_name, last_end, STREAM_END, end)
    return problems


def describe_problem(problem: SegmentProblem) -> str:
    """One sentence naming the files and the GTIDs concerned."""
    where = f"between {problem.before} and {problem.after}"
    if isinstance(problem, GtidGap):
        d = problem.domain_id
        return (
            f"gap {where}: transactions {d}-*-{problem.first_missing_seq}.."
            f"{d}-*-{problem.last_missing_seq} of domain {d} are not archived"
        )
    if isinstance(problem, GtidOverlap):
        d = problem.domain_id
        return (
            f"overlap {where}: transactions of domain {d} seq {problem.first_seq}.."
            f"{problem.last_seq} appear twice"
        )
    if isinstance(problem, GtidDivergence):
        return (
            f"divergence {where}: domain {problem.domain_id} expected {problem.expected}, "
            f"found {problem.found} (two histories)"
        )
    if isinstance(problem, DomainDropped):
        return (
            f"reset {where}: domain {problem.domain_id} (last {problem.last}) disappears "
            "(RESET MASTER or another server)"
        )
    return f"out of order {where}: file names do not increase"


# --- stop points -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StopPoint:
    """Where replay of an ordered list of transactions stops: apply ``transactions[:count]``.

    ``stop_before`` is the first transaction *not* applied, the one that proves the
    target lies before it. ``None`` means every given transaction precedes the target:
    the target is at or beyond their end, and later binlogs (if any exist) may still
    belong before it.
    """

    count: int
    stop_before: TransactionIndexEntry | None

    @property
    def found(self) -> bool:
        """True if the given transactions settle where the stop is."""
        return self.stop_before is not None


@dataclass(frozen=True, slots=True)
class GtidStopPoint(StopPoint):
    """A :class:`StopPoint` for a GTID target, with the state replay ends in.

    ``position`` is ``start`` advanced by the applied transactions. ``reached`` says
    whether it covers the target: it may not when the target names a GTID that does
    not exist, or when domains interleave so that no prefix of the binlog contains all
    of the target without going beyond it in another domain.
    """

    position: GtidPosition = field(default_factory=GtidPosition)
    target: GtidPosition = field(default_factory=GtidPosition)

    @property
    def reached(self) -> bool:
        return self.position.covers(self.target)


def stop_for_time(transactions: Sequence[TransactionIndexEntry], target_time: int) -> StopPoint:
    """Stop point for "the database as of time ``target_time``" (unix seconds).

    Replay stops after the last transaction that precedes the first transaction, in
    binlog order, whose commit time is ``>= target_time``; a later transaction with an
    earlier commit time (times are not monotonic) is *not* applied. This is what
    ``mariadb-binlog --stop-datetime`` does.
    """
    for index, commit_time in enumerate(_commit_times_of(transactions)):
        if commit_time >= target_time:
            return StopPoint(index, transactions[index])
    return StopPoint(len(transactions), None)


def stop_for_gtid(
    transactions: Sequence[TransactionIndexEntry],
    target: GtidPosition,
    start: GtidPosition | None = None,
) -> GtidStopPoint:
    """Stop point for "the database at GTID position ``target``".

    Replay is a prefix of the binlog, so it stops before the first transaction (in
    binlog order) that ``target`` does not contain: nothing beyond the target is ever
    applied. Transactions of domains absent from ``target`` are beyond it too. Check
    :attr:`GtidStopPoint.reached` to learn whether the prefix got all of the target.
    ``start`` is the state replay begins from (the backup's GTID position); a
    transaction it already contains raises :class:`~binhoard.domain.gtid.GtidOrderError`,
    because MariaDB does not skip those: replay must begin exactly after ``start``.
    """
    state = _State(GtidPosition() if start is None else start)
    limits = {gtid.domain_id: gtid.seq_no for gtid in target.values()}
    for index, (domain, server, seq, _, offset, _) in enumerate(_rows_of(transactions)):
        limit = limits.get(domain)
        if limit is None or seq > limit:
            return GtidStopPoint(index, transactions[index], state.position(), target)
        state.advance(domain, server, seq, f"transaction {index} at offset {offset}")
    return GtidStopPoint(len(transactions), None, state.position(), target)
