"""Which local binlogs may be purged now, and why the next one is kept.

A pure decision (no clock, no I/O): the op (``ops/purge.py``) gathers the server's
files, what the open streams hold and what the other nodes reported, and asks
:func:`decide`. The answer is always a prefix of the index, oldest first, never the
active file, and at most ``max_files`` long: one ``PURGE BINARY LOGS`` over a large
backlog holds the server's binlog index lock for its whole duration (MyHoard saw
commits stall for hours), so a backlog is purged over several passes.

A file may go only when all of these hold (the first that fails is the reason):

* it is closed and older than ``min_age`` (seconds since it was closed);
* it is stored in every open stream (``Stream.holds``): by name when this node archives
  them (active), by GTID position when it observes another node's streams; a file
  that ends before a stream's backup snapshot is in that backup. In observe
  mode with no open stream at all, ``purge_when_observe_no_streams`` skips this check;
* its end state is known (the archiver's record, or the file read), and it is applied
  on every node that reported a position (:func:`applied`);
* a node whose report is older than ``max_report_age`` is *stale*: it keeps blocking
  (it may be a replica that is down and will need these files to catch up) and is
  named as stale in the reason, ``GET /status`` and the metrics, so that the operator
  either gets it reporting again or removes it from ``PUT /replication_state``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from binhoard.domain.gtid import GtidPosition

# The positions a node's report may hold, most telling first: what the node applied
# (``gtid_current_pos`` includes its own and its replicated transactions; a replica's
# ``gtid_slave_pos`` only those it replicated; ``gtid_binlog_pos`` those it logged).
POSITION_KEYS = ("gtid_current_pos", "gtid_slave_pos", "gtid_binlog_pos")


@dataclass(frozen=True)
class LocalBinlog:
    """One file of the server's index."""

    name: str
    size: int
    closed_at: float | None  # Unix seconds; None: the active file (or unknown)
    end_state: GtidPosition | None  # the GTID position at its end; None: unknown


@dataclass(frozen=True)
class Stream:
    """An open stream: its backup's snapshot position, the files archived after it, and
    how far they go."""

    stream_id: str
    start_position: GtidPosition
    files: frozenset[str]
    end_position: GtidPosition

    def holds(self, binlog: LocalBinlog, *, by_name: bool) -> bool:
        """Whether the stream has what ``binlog`` holds: archived under its name (this
        node's streams), or within its archive's GTID reach (another node's, whose files
        have other names); either way a file that ends before the backup's snapshot is
        in the backup itself. Positions compare as :func:`applied` does."""
        end = binlog.end_state
        if end is not None and applied(self.start_position, [end]):
            return True
        if by_name:
            return binlog.name in self.files
        return end is not None and applied(self.end_position, [end])


@dataclass(frozen=True)
class NodeReport:
    """What ``PUT /replication_state`` said of one node, and when."""

    node: str
    positions: Mapping[str, str]
    reported_at: float  # Unix seconds

    def position(self) -> GtidPosition | None:
        for key in POSITION_KEYS:
            text = self.positions.get(key)
            if text is not None:
                return GtidPosition.parse(text)
        return None


@dataclass(frozen=True)
class PurgeRules:
    min_age: float
    max_files: int
    max_report_age: float
    observing: bool  # the streams are another node's (observe mode)
    purge_when_observe_no_streams: bool


# Why the first kept file is kept, as a word (a metric tag; ``reason`` says it in full).
BlockKind = Literal["active", "age", "stream", "unknown", "replica", "stale_replica", "cap"]


@dataclass(frozen=True)
class PurgeDecision:
    purge: tuple[LocalBinlog, ...]  # a prefix of the index, oldest first
    kept: str | None  # the first file kept, if any
    reason: str  # why it is kept, in full
    kind: BlockKind
    stale_nodes: tuple[str, ...]  # nodes whose report is older than max_report_age
    capped: bool  # more files could go, beyond this pass's cap

    @property
    def purge_to(self) -> str | None:
        """The name for ``PURGE BINARY LOGS TO`` (which keeps the file named)."""
        if not self.purge:
            return None
        return self.kept


def applied(position: GtidPosition, later_ends: Sequence[GtidPosition]) -> bool:
    """Whether a node at ``position`` has applied a file whose end state is
    ``later_ends[0]`` (``later_ends[1:]``: the end states of the files after it).

    In every domain of the file's end, the node must be at a point of *this* history at
    or after it: some end state from the file's on has the node's GTID's server id in
    that domain, at a sequence number no higher than the node's (and at least the
    file's). Equal sequence numbers under different server ids are two histories (a
    deposed primary's writes against the new primary's), never "already applied".
    """
    end = later_ends[0]
    for domain, needed in end.items():
        at = position.get(domain)
        if at is None or at.seq_no < needed.seq_no:
            return False
        if not any(
            (mark := later.get(domain)) is not None
            and mark.server_id == at.server_id
            and needed.seq_no <= mark.seq_no <= at.seq_no
            for later in later_ends
        ):
            return False
    return True


def decide(
    binlogs: Sequence[LocalBinlog],
    active: str,
    streams: Sequence[Stream],
    reports: Sequence[NodeReport],
    rules: PurgeRules,
    *,
    now: float,
) -> PurgeDecision:
    stale = tuple(r.node for r in reports if now - r.reported_at > rules.max_report_age)
    judge = _Judge(active, streams, [(r.node, r.position()) for r in reports], stale, rules, now)
    ends = [b.end_state for b in binlogs]
    purge: list[LocalBinlog] = []
    for index, binlog in enumerate(binlogs):
        later = [e for e in ends[index:] if e is not None]
        kept = judge.own(binlog) or judge.stored(binlog) or judge.applied(binlog, later)
        if kept is not None:
            kind, reason = kept
            return PurgeDecision(tuple(purge), binlog.name, reason, kind, stale, capped=False)
        if len(purge) == rules.max_files:
            reason = f"{binlog.name}: at most {rules.max_files} files are purged per pass"
            return PurgeDecision(tuple(purge), binlog.name, reason, "cap", stale, capped=True)
        purge.append(binlog)
    # An index without its active file: the server's answer is not one to act on.
    return PurgeDecision((), None, f"{active} is not in the index", "unknown", stale, False)


Kept = tuple[BlockKind, str] | None


@dataclass(frozen=True)
class _Judge:
    """The checks of one pass, each the reason a file is kept, or None."""

    active: str
    streams: Sequence[Stream]
    positions: Sequence[tuple[str, GtidPosition | None]]
    stale: Sequence[str]
    rules: PurgeRules
    now: float

    def own(self, binlog: LocalBinlog) -> Kept:
        name = binlog.name
        if name == self.active:
            return "active", f"{name} is the active file"
        if binlog.closed_at is None:
            return "unknown", f"{name}: when it was closed is unknown"
        age, min_age = self.now - binlog.closed_at, self.rules.min_age
        if age < min_age:
            why = f"younger than min_binlog_age_before_purge ({age:.0f} s < {min_age:.0f} s)"
            return "age", f"{name} is {why}"
        return None

    def stored(self, binlog: LocalBinlog) -> Kept:
        rules = self.rules
        if rules.observing and not self.streams and rules.purge_when_observe_no_streams:
            return None  # MyHoard's rule: an observer with no stream to protect
        if not self.streams:
            return "stream", f"{binlog.name} is not stored: no open backup stream"
        for stream in self.streams:
            if not stream.holds(binlog, by_name=not rules.observing):
                return "stream", f"{binlog.name} is not stored in stream {stream.stream_id}"
        return None

    def applied(self, binlog: LocalBinlog, later: Sequence[GtidPosition]) -> Kept:
        name, end = binlog.name, binlog.end_state
        if not self.positions:
            return None
        if end is None:
            return "unknown", f"{name}: its GTID state at the end is unknown"
        for node, position in self.positions:
            kind: BlockKind = "stale_replica" if node in self.stale else "replica"
            flag = " (its report is stale)" if node in self.stale else ""
            if position is None:
                return kind, f"{name} is not known to be applied on node {node}{flag}: no position"
            if not applied(position, later):
                return kind, (
                    f"{name} is not applied on node {node}{flag}: its position "
                    f"{position.format() or '(empty)'} does not reach the file's end {end.format()}"
                )
        return None
