"""Point-in-time apply decided: which files, offsets and GTID states one batch applies,
and how far an interrupted apply got. Pure functions of the files' transaction tables
and the server's ``gtid_slave_pos``; the adapter that runs them through the server's SQL
thread is ``server/relay_apply.py`` (its module docstring has the recipe).

* :func:`plan_batch`: what a batch applies, from where to where, and the state the
  server must be in afterwards;
* :func:`applied_prefix`: after a crash, the longest prefix of the transactions (in
  binlog order) the server's position contains, and where to continue;
* :func:`relay_file_name`, :func:`relay_index_text`: how the files are presented.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from binhoard.domain.binlog import TransactionTable
from binhoard.domain.errors import ApplyError, UsageError
from binhoard.domain.gtid import Gtid, GtidPosition

FIRST_EVENT_OFFSET: Final = 4
"""Where the events of a binlog file begin (after the magic number)."""


class IndexedBinlog(Protocol):
    """What the planning functions need of a binlog file (a ``BinlogIndex`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def gtid_list_at_start(self) -> GtidPosition: ...

    @property
    def transactions(self) -> TransactionTable: ...


@dataclass(frozen=True)
class BatchFile:
    """A local copy of one source binlog (with its original name) and its index (the
    flavour's reader makes it: ``Binlogs.read`` of the server port)."""

    path: Path
    index: IndexedBinlog

    @property
    def name(self) -> str:
        return self.index.name

    @property
    def size(self) -> int:
        return self.index.size

    @property
    def gtid_list_at_start(self) -> GtidPosition:
        return self.index.gtid_list_at_start

    @property
    def transactions(self) -> TransactionTable:
        return self.index.transactions


def relay_file_name(basename: str, number: int) -> str:
    """The name of the ``number``-th relay log (1-based): ``relay.000001``."""
    if number < 1:
        raise ValueError(f"relay log numbers start at 1, not {number}")
    return f"{basename}.{number:06d}"


def relay_index_text(relay_dir: Path, names: Sequence[str]) -> str:
    """The relay index file's content: one absolute path per line."""
    return "".join(f"{relay_dir / name}\n" for name in names)


@dataclass(frozen=True)
class PlannedFile:
    """One file of a batch as it will be applied.

    ``source`` is its position in the list given to :func:`plan_batch`; transactions
    ``first .. first + count - 1`` of it are applied.
    """

    source: int
    name: str
    relay_name: str
    first: int
    count: int


@dataclass(frozen=True)
class BatchPlan:
    """What one batch does, decided from the files' indexes and the server's position.

    ``start_offset`` is the position in the first planned file, ``stop_offset`` the end
    offset of the last transaction applied in the last one. ``stop_at_file_end`` says
    that offset is the file's size: ``UNTIL`` cannot fire there, the batch ends when
    the server's ``gtid_slave_pos`` reaches ``expected_position``.
    """

    files: tuple[PlannedFile, ...]
    start_offset: int
    stop_offset: int
    stop_at_file_end: bool
    transactions: int
    start_position: GtidPosition
    expected_position: GtidPosition
    server_ids: frozenset[int] = frozenset()  # of the transactions applied

    @property
    def until_file(self) -> str:
        return self.files[-1].relay_name


def _fold(gtids: dict[int, tuple[int, int]], base: GtidPosition) -> GtidPosition:
    merged = {g.domain_id: g for g in base.values()}
    for domain, (server, seq) in gtids.items():
        merged[domain] = Gtid(domain, server, seq)
    return GtidPosition(merged.values())


def _check_offsets(
    files: Sequence[IndexedBinlog], start_offset: int, stop_offset: int | None
) -> tuple[int, int]:
    """(transactions of the first file before ``start_offset``, transactions of the last
    file up to ``stop_offset``), raising :class:`UsageError` for offsets that are not
    transaction boundaries."""
    first, last = files[0], files[-1]
    if not FIRST_EVENT_OFFSET <= start_offset <= first.size:
        raise UsageError(f"start offset {start_offset} is outside {first.name} (4..{first.size})")
    starts = first.transactions.start_offsets
    ends = first.transactions.end_offsets
    skip = bisect.bisect_left(starts, start_offset)  # transactions before the start
    if skip > 0 and ends[skip - 1] > start_offset:
        raise UsageError(
            f"start offset {start_offset} is inside transaction "
            f"{first.transactions[skip - 1].gtid} of {first.name}"
        )
    last_count = len(last.transactions)
    if stop_offset is not None:
        last_ends = last.transactions.end_offsets
        found = bisect.bisect_left(last_ends, stop_offset)
        if found == len(last_ends) or last_ends[found] != stop_offset:
            raise UsageError(
                f"stop offset {stop_offset} is not the end of a transaction in {last.name}"
            )
        last_count = found + 1
        if len(files) == 1 and last_count < skip:
            raise UsageError(
                f"stop offset {stop_offset} is before start offset {start_offset} in {first.name}"
            )
    return skip, last_count


def plan_batch(
    files: Sequence[IndexedBinlog],
    start_offset: int,
    stop_offset: int | None,
    position: GtidPosition,
    relay_basename: str = "relay",
) -> BatchPlan | None:
    """Plans the apply of ``files`` (in binlog order) from ``start_offset`` in the first
    to ``stop_offset`` in the last (``None``: its last transaction), on a server whose
    ``gtid_slave_pos`` is ``position``. Returns ``None`` when there is nothing to apply.

    Leading and trailing files without a transaction to apply are left out (``UNTIL``
    at the end of a file never fires; a first file applied to its end is simply
    skipped), so the first planned file may start at offset 4. Raises
    :class:`UsageError` for offsets that are not transaction boundaries and
    :class:`ApplyError` when ``position`` does not fit the start: a transaction before
    the start is not applied (a gap), or one after it already is (MariaDB does not skip
    applied transactions: the start must be exact).
    """
    if not files:
        return None
    first = files[0]
    skip, last_count = _check_offsets(files, start_offset, stop_offset)

    # The state the binlog is in at the start offset must be the server's.
    at_start = {g.domain_id: (g.server_id, g.seq_no) for g in first.gtid_list_at_start.values()}
    for domain, server, seq, _, _, _ in first.transactions[:skip].rows():
        at_start[domain] = (server, seq)
    state_at_start = _fold(at_start, GtidPosition())
    diverged = position.diverges_from(state_at_start)
    if diverged:
        # Equal sequence numbers from two servers (a deposed primary's writes against
        # its successor's) would pass the covers() test below: two histories.
        mine, theirs = diverged[0]
        raise ApplyError(
            f"the server's gtid_slave_pos has {mine} where the binlog at offset "
            f"{start_offset} of {first.name} has {theirs}: the same sequence number from "
            "another server, so the server holds another history (a deposed primary's "
            "writes?); applying would mix two histories"
        )
    if not position.covers(state_at_start):
        raise ApplyError(
            f"the server's gtid_slave_pos {position or '(empty)'} lacks transactions that "
            f"precede offset {start_offset} of {first.name} (binlog state there: "
            f"{state_at_start}): applying from there would leave a gap"
        )

    ranges = []
    for k, file in enumerate(files):
        lo = skip if k == 0 else 0
        hi = last_count if k == len(files) - 1 else len(file.transactions)
        ranges.append((lo, max(lo, hi)))
    used = [k for k, (lo, hi) in enumerate(ranges) if hi > lo]
    if not used:
        return None
    a, b = used[0], used[-1]

    planned: list[PlannedFile] = []
    last_gtid: dict[int, tuple[int, int]] = {}
    server_ids: set[int] = set()
    total = 0
    for number, k in enumerate(range(a, b + 1), start=1):
        lo, hi = ranges[k]
        file = files[k]
        for domain, server, seq, _, offset, _ in file.transactions[lo:hi].rows():
            gtid = Gtid(domain, server, seq)
            if domain not in last_gtid and position.contains(gtid):
                done = "is already applied"
                if position.diverges_from(GtidPosition([gtid])):
                    done = "has the sequence number of another server's transaction"
                raise ApplyError(
                    f"transaction {domain}-{server}-{seq} at offset {offset} of {file.name} "
                    f"{done} (gtid_slave_pos {position}): the start offset "
                    "must follow the server's position exactly",
                    gtid=f"{domain}-{server}-{seq}",
                )
            last_gtid[domain] = (server, seq)
            server_ids.add(server)
        total += hi - lo
        planned.append(
            PlannedFile(k, file.name, relay_file_name(relay_basename, number), lo, hi - lo)
        )
    stop_file = files[b]
    stop = stop_file.transactions[ranges[b][1] - 1].end_offset
    return BatchPlan(
        files=tuple(planned),
        start_offset=start_offset if a == 0 else FIRST_EVENT_OFFSET,
        stop_offset=stop,
        stop_at_file_end=stop >= stop_file.size,
        transactions=total,
        start_position=position,
        expected_position=_fold(last_gtid, position),
        server_ids=frozenset(server_ids),
    )


@dataclass(frozen=True)
class ResumePoint:
    """Where apply continues: ``file_index`` into the files given, at ``offset``.

    ``applied`` of the ``total`` transactions of those files are contained in the
    server's position (those before a first batch's start offset included);
    ``next_gtid`` is the first one that is not. When all are, ``done`` is true and
    ``file_index`` is ``len(files)``. ``server_error`` is the SQL thread's last error,
    if it stopped on one (the next apply clears it).
    """

    file_index: int
    offset: int
    applied: int
    total: int
    last_applied: Gtid | None
    next_gtid: Gtid | None
    position: GtidPosition
    server_error: str = ""

    @property
    def done(self) -> bool:
        return self.applied == self.total


def applied_prefix(files: Sequence[IndexedBinlog], position: GtidPosition) -> ResumePoint:
    """The longest prefix (in binlog order) of the transactions of ``files`` that
    ``position`` contains, and where to continue after it.

    Continue at the end offset of the last applied transaction in its file, or at
    offset 4 of the next file if it was its file's last. Raises :class:`ApplyError` if a
    transaction after the prefix is contained too: the server's state is then not a
    prefix of the binlog (out-of-order commits, or files of another history).
    """
    limits = {g.domain_id: g.seq_no for g in position.values()}
    applied = total = 0
    last: tuple[int, int, int, Gtid] | None = None  # file, transaction, end offset, gtid
    missing: tuple[str, Gtid] | None = None
    for fi, file in enumerate(files):
        for ti, (domain, server, seq, _, _, end) in enumerate(file.transactions.rows()):
            total += 1
            contained = seq <= limits.get(domain, -1)
            if missing is None:
                if contained:
                    applied += 1
                    last = (fi, ti, end, Gtid(domain, server, seq))
                else:
                    missing = (file.name, Gtid(domain, server, seq))
            elif contained:
                raise ApplyError(
                    f"gtid_slave_pos {position} contains {domain}-{server}-{seq} "
                    f"({file.name}) but not {missing[1]} ({missing[0]}), which comes before "
                    "it: the applied transactions are not a prefix of the binlog",
                    gtid=str(missing[1]),
                )
    next_gtid = None if missing is None else missing[1]
    if missing is None:
        return ResumePoint(
            len(files), FIRST_EVENT_OFFSET, applied, total, last and last[3], None, position
        )
    if last is None:
        return ResumePoint(0, FIRST_EVENT_OFFSET, 0, total, None, next_gtid, position)
    fi, ti, end, gtid = last
    if ti == len(files[fi].transactions) - 1:
        return ResumePoint(fi + 1, FIRST_EVENT_OFFSET, applied, total, gtid, next_gtid, position)
    return ResumePoint(fi, end, applied, total, gtid, next_gtid, position)


class AppliedCounter:
    """Counts the transactions of a plan that a position contains, by bisection per
    domain (sequence numbers grow within a domain in binlog order)."""

    def __init__(self, files: Sequence[IndexedBinlog], plan: BatchPlan) -> None:
        self.seqs: dict[int, array[int]] = {}
        self.file_ends: list[int] = []
        total = 0
        for planned in plan.files:
            table = files[planned.source].transactions[
                planned.first : planned.first + planned.count
            ]
            for domain, _, seq, _, _, _ in table.rows():
                self.seqs.setdefault(domain, array("Q")).append(seq)
            total += planned.count
            self.file_ends.append(total)

    def applied(self, position: GtidPosition) -> int:
        return sum(
            bisect.bisect_right(seqs, position.seq_no(domain)) for domain, seqs in self.seqs.items()
        )

    def files_done(self, applied: int) -> int:
        return bisect.bisect_right(self.file_ends, applied)


# --- progress and results ------------------------------------------------------------------
@dataclass(frozen=True)
class ApplyProgress:
    """One report of a batch in progress."""

    transactions_applied: int
    transactions_total: int
    files_applied: int
    files_total: int
    current_file: str  # original name of the file being applied
    position: GtidPosition  # gtid_slave_pos
    elapsed: float  # seconds since START SLAVE

    @property
    def rate(self) -> float:
        """Transactions per second so far."""
        return self.transactions_applied / self.elapsed if self.elapsed > 0 else 0.0


ProgressCallback = Callable[[ApplyProgress], None]


@dataclass(frozen=True)
class BatchResult:
    """A batch applied: ``transactions`` from ``files`` in ``seconds``; the server is at
    ``position``. ``plan`` is ``None`` when the batch held nothing to apply."""

    plan: BatchPlan | None
    position: GtidPosition
    transactions: int
    files: int
    seconds: float
