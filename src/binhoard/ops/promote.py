"""Taking over a stream after a failover: the promotion record (docs/format.md,
"Promotions and fencing").

No coordination service: the record is written create-if-absent at the next promotion
number, so of two nodes promoting the same stream at once exactly one create wins; the
other is told so and writes nothing. What a promotion must hold is decided in
``domain/promotion.py``; this reads the stream and writes the record, after the node
applied what it lacks of the archive (``ops/catchup.py``, given as ``catch_up``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Protocol

from binhoard.domain.errors import ConflictError, PreconditionFailedError, UsageError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.history import History
from binhoard.domain.promotion import CannotContinue, Promotion, decide_promotion
from binhoard.ops.catalog import StreamState, read_site
from binhoard.ops.sitecache import SiteCache
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.promote")

# How many times a promotion applies what the old owner archived and reads the stream
# again: a dead owner archives nothing more; one still running is fenced anyway.
CATCH_UP_ROUNDS: Final = 5


@dataclass(frozen=True)
class PromotionResult:
    """``promotion``: the record this node wrote (``None`` if it owned the stream
    already, or cannot continue it). ``new_stream_needed``: why it cannot continue the
    stream; the caller starts a new one (a full backup) at once."""

    stream_id: str
    promotion: Promotion | None
    new_stream_needed: str | None = None


class CatchUp(Protocol):
    """Applies what ``stream``'s archive holds past the node's ``position`` on the node;
    its position after, or why it cannot continue the stream (``ops/catchup.py``)."""

    def __call__(
        self, stream: StreamState, position: GtidPosition
    ) -> GtidPosition | CannotContinue: ...


def promote_stream(
    store: ObjectStore,
    stream_id: str,
    *,
    server_id: int,
    position: GtidPosition,
    now: datetime,
    history: History,
    force: bool = False,
    cache: SiteCache | None = None,
    catch_up: CatchUp | None = None,
) -> PromotionResult:
    """Makes ``server_id`` (at GTID ``position``, of ``history``) the owner of
    ``stream_id``. A node of another history (restored to an earlier point, then
    written to: a fork) never takes it over, even with ``force`` or the stream's
    server_id: it starts a new stream, and the stream stays as it is.

    A node behind the stream's archive on its history first applies what it lacks with
    ``catch_up``, then reads the stream again: the old owner may have archived more
    meanwhile (at most ``CATCH_UP_ROUNDS`` times). The promotion continues from the end
    of the last read; a record the old owner creates after it is fenced.

    Raises ``ConflictError`` if another node's promotion of the stream landed first
    (between this read and this write) or the node is still behind the stream's archive
    on its history without ``force``, ``UsageError`` for a stream that does not exist.
    """
    for round_number in range(CATCH_UP_ROUNDS + 1):
        stream = _stream(store, stream_id, cache)
        refused = _cannot_take_over(stream, history)
        if refused is not None:
            log.warning("cannot continue stream %s: %s", stream_id, refused)
            return PromotionResult(stream_id, None, refused)
        end = stream.end_position
        if not _behind(stream, position, server_id):
            break
        if catch_up is not None and round_number < CATCH_UP_ROUNDS:
            reached = catch_up(stream, position)
            if isinstance(reached, CannotContinue):
                log.warning("cannot continue stream %s: %s", stream_id, reached.reason)
                return PromotionResult(stream_id, None, reached.reason)
            if reached != position:
                position = reached
                continue  # read again: the old owner may have archived more
        if force:
            break
        # Behind on the stream's history: the node must apply the archive, and a new
        # stream would leave what it lacks out of every later restore.
        tried = (
            f" after {round_number} catch-up rounds (the old owner keeps archiving?)"
            if catch_up is not None
            else ""
        )
        raise ConflictError(
            f"this node is at {position or '(empty)'}, behind the archive of stream "
            f"{stream_id} ({end or '(empty)'}){tried}: it has not applied the whole "
            "archive; promote again, or with force to give up what it lacks"
        )
    decision = decide_promotion(
        stream_id=stream_id,
        base_server_id=stream.backup.server_id,
        kept=stream.records,
        promotions=stream.promotions,
        snapshot=stream.snapshot_gtid,
        next_seq=stream.seq_after,
        server_id=server_id,
        position=position,
        at=now,
        force=force,
    )
    if decision is None:
        log.info("server_id %d already owns stream %s", server_id, stream_id)
        return PromotionResult(stream_id, None)
    if isinstance(decision, CannotContinue):
        log.warning("cannot continue stream %s: %s", stream_id, decision.reason)
        return PromotionResult(stream_id, None, decision.reason)
    decision = replace(decision, history_id=history.history_id)
    try:
        store.put(decision.key, [decision.to_bytes()], if_absent=True)
    except PreconditionFailedError:
        raise ConflictError(
            f"another node promoted itself on stream {stream_id} at the same time "
            f"({decision.key} was written by someone else): this node did not take over "
            "and writes nothing to the stream"
        ) from None
    log.warning(
        "server_id %d took over stream %s from server_id %d at binlog record %d, "
        "continuing from GTID %s%s",
        server_id,
        stream_id,
        decision.previous_server_id,
        decision.takes_over_at,
        decision.gtid_position or "(empty)",
        " (forced: the archive after that point is given up)" if decision.forced else "",
    )
    return PromotionResult(stream_id, decision)


def _cannot_take_over(stream: StreamState, history: History) -> str | None:
    """Why no node of ``history`` may take ``stream`` over, whatever its position."""
    if not history.holds(stream.backup.history_id):
        return (
            f"this node's history ({history.history_id}: {history.reason}) is not the "
            f"history of stream {stream.stream_id} "
            f"({stream.backup.history_id or 'written before history ids'}): its "
            "transactions would collide with the stream's (the same GTIDs, another "
            "database); a new stream starts, and the stream stays as it is"
        )
    if stream.closed is not None:
        return f"stream {stream.stream_id} is closed (a newer stream took over)"
    if stream.broken is not None:
        return f"stream {stream.stream_id} is broken: {stream.broken.reason}"
    return None


def _behind(stream: StreamState, position: GtidPosition, server_id: int) -> bool:
    """Whether a node at ``position`` is behind the archive of ``stream`` on its history
    (so that it can apply what it lacks); it does not when it owns the stream."""
    end = stream.end_position
    return (
        stream.owner != server_id
        and position.covers(stream.snapshot_gtid)
        and not position.covers(end)
        and not position.diverges_from(end)
    )


def _stream(store: ObjectStore, stream_id: str, cache: SiteCache | None) -> StreamState:
    for stream in read_site(store, cache).streams:
        if stream.stream_id == stream_id:
            return stream
    raise UsageError(f"stream {stream_id} does not exist (no readable manifest)")
