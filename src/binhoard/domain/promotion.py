"""Promotion records and the fencing rule (docs/format.md, "Promotions and fencing").

A stream is owned by the server that took its backup until a node *promotes* itself:
it writes ``streams/<stream_id>/promotions/<n>.json`` create-if-absent, ``n`` = the number of
promotions it read (0, 1, ...). Two nodes promoting at once both try the same ``n``
and exactly one create wins; a node promoted twice gets two records. Nothing is ever
overwritten, so the ownership history of a stream is the list of its promotions.

The *fencing rule* decides, from records and promotions alone, which binlog records
count: record ``s`` counts only if its ``server_id`` is the owner of ``s``, the server
of the newest promotion (highest ``n``) whose ``takes_over_at`` is at or before ``s``
(the backup's server before any). A deposed primary that keeps uploading after the
promotion, or that won the create of seq ``takes_over_at`` before the promotion
existed, writes records that never count: its keys are *fenced* (skipped, not holes),
and the new owner writes at the next free ``seq``. Every reader goes through
:func:`fence`, so none can tell fenced records from absent ones.

Continuity across the change: a promotion's ``gtid_position`` is the end of the last
record that counts before ``takes_over_at`` (the backup's snapshot if none), and the
new owner's first record starts in its own binlog at that position (``start_offset``
is the transaction boundary there, like a stream's first record and its snapshot).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from binhoard.domain.binlog import describe_problem
from binhoard.domain.catalog import SEQ_DIGITS, BinlogRecord, chain_problems
from binhoard.domain.documents import CorruptDocumentError, seal, unseal
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.history import check_history_id


def promotions_prefix(stream_id: str) -> str:
    # Under the stream's prefix, after its records in listing order: the archiver's
    # listing of a stream from its last known record on sees them at no extra request.
    return f"streams/{stream_id}/promotions/"


def promotion_key(stream_id: str, seq: int) -> str:
    return f"{promotions_prefix(stream_id)}{seq:0{SEQ_DIGITS}d}.json"


def seq_of_promotion_key(key: str) -> int | None:
    """The ``n`` of a promotion key; ``None`` for any other key."""
    name = key.rsplit("/", 1)[-1]
    digits = name.removesuffix(".json")
    if "/promotions/" not in key or len(digits) != SEQ_DIGITS or not digits.isdigit():
        return None
    return int(digits)


@dataclass(frozen=True)
class Promotion:
    """``server_id`` took over ``stream_id`` from ``previous_server_id``: records from
    ``takes_over_at`` on are its own, continuing from ``gtid_position``. ``forced``: the
    operator promoted without the old owner's archive being applied first (MyHoard's
    ``force``), so ``gtid_position`` is where the archive ended as read then."""

    stream_id: str
    seq: int  # n: this stream's promotion number, from 0
    server_id: int
    previous_server_id: int
    takes_over_at: int  # the first binlog record seq the new owner writes
    gtid_position: GtidPosition
    at: datetime
    forced: bool = False
    # The new owner's history (domain/history.py): always the stream's, which a node of
    # another history cannot take over. None in records written before history ids.
    history_id: str | None = None

    @property
    def key(self) -> str:
        return promotion_key(self.stream_id, self.seq)

    def to_bytes(self) -> bytes:
        history = {} if self.history_id is None else {"history_id": self.history_id}
        return seal(
            {
                **history,
                "stream_id": self.stream_id,
                "seq": self.seq,
                "server_id": self.server_id,
                "previous_server_id": self.previous_server_id,
                "takes_over_at": self.takes_over_at,
                "gtid_position": self.gtid_position.format(),
                "at": self.at.isoformat(),
                "forced": self.forced,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes, *, key: str) -> Promotion:
        doc = unseal(raw, key=key)
        try:
            forced = doc["forced"]
            if not isinstance(forced, bool):
                raise ValueError("forced is not true or false")
            promotion = cls(
                stream_id=str(doc["stream_id"]),
                seq=int(doc["seq"]),
                server_id=int(doc["server_id"]),
                previous_server_id=int(doc["previous_server_id"]),
                takes_over_at=int(doc["takes_over_at"]),
                gtid_position=GtidPosition.parse(str(doc["gtid_position"])),
                at=datetime.fromisoformat(str(doc["at"])),
                forced=forced,
                history_id=check_history_id(doc.get("history_id")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptDocumentError(key, f"missing or invalid field: {exc}") from None
        if promotion.key != key:
            raise CorruptDocumentError(
                key, f"names promotion {promotion.seq} of {promotion.stream_id}"
            )
        if promotion.takes_over_at < 0:
            raise CorruptDocumentError(key, f"takes over at seq {promotion.takes_over_at}")
        return promotion


def ordering_problem(promotions: Sequence[Promotion]) -> tuple[str, str] | None:
    """``(key, reason)`` of the first promotion that breaks the numbering (``n`` must
    be 0, 1, ... without a hole) or goes back (a promoter reads the stream after the
    promotions before it, so ``takes_over_at`` never decreases); ``None`` if sound."""
    for n, promotion in enumerate(promotions):
        if promotion.seq != n:
            return promotion_key(promotion.stream_id, n), (
                f"promotion {n} of stream {promotion.stream_id} is missing "
                f"(promotion {promotion.seq} exists)"
            )
        if n and promotion.takes_over_at < promotions[n - 1].takes_over_at:
            return promotion.key, (
                f"promotion {n} of stream {promotion.stream_id} takes over at binlog record "
                f"{promotion.takes_over_at}, before promotion {n - 1} "
                f"({promotions[n - 1].takes_over_at})"
            )
    return None


def owner_of(seq: int, base_server_id: int, promotions: Sequence[Promotion]) -> int:
    """The server whose record ``seq`` counts: that of the newest promotion taking over
    at or before ``seq``; ``base_server_id`` (the backup's) before any."""
    owner = base_server_id
    for promotion in promotions:  # in n order; takes_over_at never decreases
        if promotion.takes_over_at <= seq:
            owner = promotion.server_id
    return owner


def current_owner(base_server_id: int, promotions: Sequence[Promotion]) -> int:
    """Who may write the stream's next record: the newest promotion's server."""
    return promotions[-1].server_id if promotions else base_server_id


@dataclass(frozen=True)
class Fenced:
    """A stream's records split by the fencing rule: ``kept`` count (in ``seq`` order,
    ``seq`` may skip the fenced ones), ``fenced`` never do (a deposed owner's)."""

    kept: tuple[BinlogRecord, ...]
    fenced: tuple[BinlogRecord, ...]


def fence(
    records: Sequence[BinlogRecord], base_server_id: int, promotions: Sequence[Promotion]
) -> Fenced:
    """Applies the fencing rule to ``records`` (every record, in ``seq`` order)."""
    kept: list[BinlogRecord] = []
    fenced: list[BinlogRecord] = []
    for record in records:
        owner = owner_of(record.seq, base_server_id, promotions)
        (kept if record.server_id == owner else fenced).append(record)
    return Fenced(tuple(kept), tuple(fenced))


def handovers(
    kept: Sequence[BinlogRecord], promotions: Sequence[Promotion]
) -> dict[int, Promotion]:
    """For each kept record that is its owner's first after a promotion, by index in
    ``kept``: the promotion it continues from. Between such a record and the one before
    it the gap-free rule is the promotion's (the record's file contains the promotion's
    ``gtid_position``), not Gtid_list equality."""
    found: dict[int, Promotion] = {}
    for promotion in promotions:
        at = next((i for i, r in enumerate(kept) if r.seq >= promotion.takes_over_at), None)
        if at is not None and kept[at].server_id == promotion.server_id:
            found[at] = promotion  # a later promotion at the same record wins
    return found


def handover_problems(
    kept: Sequence[BinlogRecord], promotions: Sequence[Promotion], snapshot: GtidPosition
) -> list[str]:
    """Every broken continuity across an ownership change, as sentences: the promotion
    must continue from where the kept records before it end, and the new owner's first
    record must contain that position."""
    found: list[str] = []
    for index, promotion in sorted(handovers(kept, promotions).items()):
        before = kept[index - 1].gtid_position_at_end if index else snapshot
        if before != promotion.gtid_position:
            found.append(
                f"promotion {promotion.seq} ({promotion.key}) continues from "
                f"{promotion.gtid_position or '(empty)'}, but the archive before it ends "
                f"at {before or '(empty)'}"
            )
        first = kept[index]
        if not (
            promotion.gtid_position.covers(first.gtid_list_at_start)
            and first.gtid_position_at_end.covers(promotion.gtid_position)
        ):
            found.append(
                f"{first.name} (record {first.seq}, server {first.server_id}) does not "
                f"contain the position {promotion.gtid_position or '(empty)'} promotion "
                f"{promotion.seq} continues from"
            )
    return found


def continuity_problems(
    kept: Sequence[BinlogRecord], promotions: Sequence[Promotion], snapshot: GtidPosition
) -> list[str]:
    """Every gap in a stream's kept records, as sentences: within one owner's run each
    Gtid_list equals the end of the record before it; across an ownership change the
    promotion's rule holds (:func:`handover_problems`)."""
    cuts = handovers(kept, promotions)
    runs: list[list[BinlogRecord]] = [[]]
    for index, record in enumerate(kept):
        if index in cuts and runs[-1]:
            runs.append([])
        runs[-1].append(record)
    found = [describe_problem(p) for run in runs for p in chain_problems(run)]
    return found + handover_problems(kept, promotions, snapshot)


def deposed_by(
    server_id: int, base_server_id: int, promotions: Sequence[Promotion]
) -> Promotion | None:
    """The promotion that deposed ``server_id``, if it once owned the stream and no
    longer does; ``None`` if it owns it or never did."""
    if not promotions or promotions[-1].server_id == server_id:
        return None
    owners = {base_server_id} | {p.server_id for p in promotions}
    if server_id not in owners:
        return None
    last_own = max((p.seq for p in promotions if p.server_id == server_id), default=-1)
    return next(p for p in promotions if p.seq > last_own and p.server_id != server_id)


def lacking_records(
    kept: Sequence[BinlogRecord], position: GtidPosition
) -> tuple[BinlogRecord, ...]:
    """The kept records a node at ``position`` has not applied whole, in order: from the
    first whose end it does not cover on. What it has of the first is skipped when
    applied (the server's position says where, ``relay_plan.applied_prefix``)."""
    first = next(
        (i for i, r in enumerate(kept) if not position.covers(r.gtid_position_at_end)),
        len(kept),
    )
    return tuple(kept[first:])


def divergence_in(
    transactions: Iterable[tuple[int, int, int]], position: GtidPosition
) -> tuple[Gtid, Gtid] | None:
    """``(mine, theirs)``: the first of ``transactions`` (``(domain, server_id, seq)``,
    in binlog order) whose sequence number ``position`` holds from another server: the
    node's history and the archive's are two (a deposed primary's writes next to its
    successor's), so nothing of the archive may be applied on it."""
    for domain, server, seq in transactions:
        mine = position.get(domain)
        if mine is not None and mine.seq_no == seq and mine.server_id != server:
            return mine, Gtid(domain, server, seq)
    return None


@dataclass(frozen=True)
class CannotContinue:
    """Why a node cannot take over a stream: it must start a new one (a full backup)."""

    reason: str


def decide_promotion(
    *,
    stream_id: str,
    base_server_id: int,
    kept: Sequence[BinlogRecord],
    promotions: Sequence[Promotion],
    snapshot: GtidPosition,
    next_seq: int,
    server_id: int,
    position: GtidPosition,
    at: datetime,
    force: bool = False,
) -> Promotion | CannotContinue | None:
    """The promotion ``server_id`` (whose ``@@gtid_current_pos`` is ``position``) writes
    to take the stream over; ``None`` if it owns it already.

    The archive ends at ``end``. A node at exactly ``end``, or past it on the same
    history (it replicated transactions the old owner had not archived yet), continues
    from ``end`` at record ``next_seq``. A node behind ``end`` must apply the archive
    first; with ``force`` (MyHoard's) it takes over at the first record it lacks and
    that record and the old owner's later ones are fenced: what they hold is given up.
    A node on another history (an equal sequence number of another server) cannot
    continue the stream at all.
    """
    if current_owner(base_server_id, promotions) == server_id:
        return None
    end = kept[-1].gtid_position_at_end if kept else snapshot
    diverged = position.diverges_from(end)
    if diverged:
        mine, theirs = diverged[0]
        return CannotContinue(
            f"this server's GTID position {position or '(empty)'} is not on the stream's "
            f"history: it has {mine} where the stream has {theirs}"
        )
    if not position.covers(snapshot):
        return CannotContinue(
            f"this server is at {position or '(empty)'}, before the stream's snapshot "
            f"{snapshot or '(empty)'}: it was not restored from this stream's backup"
        )
    takes_over_at, continues_from = next_seq, end
    if not position.covers(end):
        if not force:
            return CannotContinue(
                f"this server is at {position or '(empty)'}, behind the stream's archive "
                f"({end or '(empty)'}): apply the archive first, or promote with force to "
                "give up what it lacks"
            )
        lacking = next(i for i, r in enumerate(kept) if not position.covers(r.gtid_position_at_end))
        takes_over_at = kept[lacking].seq
        continues_from = kept[lacking - 1].gtid_position_at_end if lacking else snapshot
    return Promotion(
        stream_id=stream_id,
        seq=len(promotions),
        server_id=server_id,
        previous_server_id=current_owner(base_server_id, promotions),
        takes_over_at=takes_over_at,
        gtid_position=continues_from,
        at=at,
        forced=force and takes_over_at != next_seq,
    )
