"""Pure decisions of binlog archiving: which file a stream needs next, whether a file
starts where the stream ends, where a snapshot sits in its file, and when to rotate.

No I/O here; ``ops/archive.py`` feeds these functions with what it reads from the
server and the site.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from binhoard.domain.binlog import TransactionIndexEntry, binlog_sort_key
from binhoard.domain.gtid import GtidPosition


@dataclass(frozen=True)
class Archive:
    """Archive ``name`` next, from ``start_offset`` (the snapshot's position for a
    stream's first file, else 4)."""

    name: str
    start_offset: int


@dataclass(frozen=True)
class Wait:
    """Nothing to do until the server closes ``name`` (its active file)."""

    name: str


@dataclass(frozen=True)
class Missing:
    """The file the stream needs is not on the server any more (or never was).

    ``needed`` names it; ``detail`` says why it cannot be archived. The stream cannot
    continue: a restore past this point would silently miss transactions.
    """

    needed: str
    detail: str


NextStep = Archive | Wait | Missing


class ServerFiles:
    """The server's binlog index, prepared once per pass for lookups by name.

    A pass asks every stream's next step, and asks again each time a stream advances;
    scanning the index for each answer made a pass quadratic in the index's length (a
    server rotating every 5 minutes with 7 days of binlogs lists ~2,000 files: 18 CPU s
    per idle pass). Here an answer costs a set lookup or a binary search.

    ``names`` are the names in the index, oldest first (the active one included).
    """

    __slots__ = ("_names", "_present", "_running_max", "active")

    def __init__(self, names: Sequence[str], active: str) -> None:
        self._names = tuple(names)
        self.active = active
        self._present = frozenset(self._names)
        # Sort keys are computed on first need only: a stream without records never
        # needs them, and a name that is not a binlog name raises (ValueError) exactly
        # when the scan it replaces did.
        self._running_max: list[tuple[str, int]] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    def _first_after(self, name: str) -> str | None:
        """The first name in index order that sorts after ``name``, if any.

        The running maximum of the keys never decreases and first exceeds ``name``'s
        key exactly at that name, whatever the index's order, so a binary search on it
        finds what a scan of the index would."""
        if self._running_max is None:
            running: list[tuple[str, int]] = []
            for each in self._names:
                key = binlog_sort_key(each)
                running.append(key if not running or key > running[-1] else running[-1])
            self._running_max = running
        index = bisect.bisect_right(self._running_max, binlog_sort_key(name))
        return self._names[index] if index < len(self._names) else None

    def next_step(  # noqa: PLR0911 - one return per case, each documented by its value
        self, last_archived: str | None, snapshot_file: str, snapshot_pos: int
    ) -> NextStep:
        """What a stream archives next: ``last_archived`` is the name of the stream's last
        record, ``None`` if it has none (then the file holding the snapshot comes first)."""
        names = self._names
        active = self.active
        if last_archived is None:
            if snapshot_file == active:
                return Wait(active)
            if snapshot_file in self._present:
                return Archive(snapshot_file, snapshot_pos)
            return Missing(
                snapshot_file,
                f"the backup's snapshot file {snapshot_file} is not in the server's binlog "
                f"index (oldest there: {names[0] if names else '(none)'}): "
                "purged before it was archived, or the binlogs were reset",
            )
        following = self._first_after(last_archived)
        if following is None:
            if last_archived not in self._present and names:
                return Missing(
                    "(the file after " + last_archived + ")",
                    f"the server's binlog index ({names[0]}..{names[-1]}) does not "
                    f"continue from {last_archived}: the binlogs were reset (RESET MASTER?)",
                )
            return Wait(active)
        if following == active:
            return Wait(active)
        return Archive(following, 4)


def next_step(
    last_archived: str | None,
    snapshot_file: str,
    snapshot_pos: int,
    server_files: Sequence[str],
    active: str,
) -> NextStep:
    """One stream's next step (:meth:`ServerFiles.next_step`). Prepares the index on
    every call: a pass, which asks for every stream, builds one :class:`ServerFiles`."""
    return ServerFiles(server_files, active).next_step(last_archived, snapshot_file, snapshot_pos)


def state_at_offset(
    gtid_list_at_start: GtidPosition,
    transactions: Sequence[TransactionIndexEntry],
    offset: int,
) -> GtidPosition | None:
    """The GTID state at byte ``offset`` of a file: its Gtid_list advanced by every
    transaction ending at or before ``offset``. ``None`` if ``offset`` falls inside a
    transaction (not a position a snapshot or a replica can stand at)."""
    state = gtid_list_at_start
    for entry in transactions:
        if entry.end_offset <= offset:
            state = state.advance(entry.gtid, strict=False)
        elif entry.start_offset < offset:
            return None
        else:
            break
    return state


def offset_of_state(
    gtid_list_at_start: GtidPosition,
    transactions: Sequence[TransactionIndexEntry],
    position: GtidPosition,
    start: int = 4,
) -> int | None:
    """The first transaction boundary of a file (``start`` is its first event) where
    its GTID state is exactly ``position``; ``None`` if there is none (the file skips
    over it, or is on another history). Where a promoted server's own binlogs continue
    the stream it took over (docs/format.md, "Promotions and fencing")."""
    state = gtid_list_at_start
    if state == position:
        return start
    for entry in transactions:
        state = state.advance(entry.gtid, strict=False)
        if state == position:
            return entry.end_offset
    return None


class RotationTimer:
    """When to ``FLUSH BINARY LOGS`` so that transactions reach storage in time.

    Transactions wait in the server's active binlog until it is closed. The timer
    starts when waiting transactions are first seen and fires ``interval`` seconds
    later; it is reset when nothing waits (the archive caught up with the server).

    A new timer (a process just started) fires at its first check that finds
    transactions waiting: how long they have waited is unknown (the process before may
    have been killed a moment before its own timer fired), and starting the count
    afresh let a daemon restarted more often than ``interval`` never rotate, leaving
    its transactions out of storage for good.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.waiting_since: float | None = None
        self._checked = False

    def due(self, *, waiting: bool, now: float) -> bool:
        """Whether to rotate now; call once per check with whether transactions wait."""
        first, self._checked = not self._checked, True
        if not waiting:
            self.waiting_since = None
            return False
        if first:
            return True
        if self.waiting_since is None:
            self.waiting_since = now
        return now - self.waiting_since >= self.interval

    def rotated(self) -> None:
        self.waiting_since = None


@dataclass(frozen=True)
class ArchiveLag:
    """How far the archive is behind the server: transactions the server has written
    that no record covers yet, per domain as GTID ranges."""

    transactions: int
    ranges: tuple[str, ...]

    def describe(self) -> str:
        if not self.transactions:
            return "0 transactions"
        return f"{self.transactions} transactions ({', '.join(self.ranges)})"


def archive_lag(server: GtidPosition, archived: GtidPosition) -> ArchiveLag:
    """``server`` is its ``gtid_binlog_pos``, ``archived`` where the stream's archive ends."""
    total = 0
    ranges: list[str] = []
    for domain, gtid in server.items():
        after = archived.seq_no(domain)
        if gtid.seq_no > after:
            total += gtid.seq_no - after
            ranges.append(f"{domain}-{gtid.server_id}-{after + 1}..{gtid.format()}")
    return ArchiveLag(total, tuple(ranges))
