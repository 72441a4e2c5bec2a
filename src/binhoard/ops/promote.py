"""Taking over a stream after a failover: the promotion record (docs/format.md,
"Promotions and fencing").

No coordination service: the record is written create-if-absent at the next promotion
number, so of two nodes promoting the same stream at once exactly one create wins; the
other is told so and writes nothing. What a promotion must hold is decided in
``domain/promotion.py``; this reads the stream and writes the record.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime

from binhoard.domain.errors import ConflictError, PreconditionFailedError, UsageError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.history import History
from binhoard.domain.promotion import CannotContinue, Promotion, decide_promotion
from binhoard.ops.catalog import StreamState, read_site
from binhoard.ops.sitecache import SiteCache
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.promote")


@dataclass(frozen=True)
class PromotionResult:
    """``promotion``: the record this node wrote (``None`` if it owned the stream
    already, or cannot continue it). ``new_stream_needed``: why it cannot continue the
    stream; the caller starts a new one (a full backup) at once."""

    stream_id: str
    promotion: Promotion | None
    new_stream_needed: str | None = None


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
) -> PromotionResult:
    """Makes ``server_id`` (at GTID ``position``, of ``history``) the owner of
    ``stream_id``. A node of another history (restored to an earlier point, then
    written to: a fork) never takes it over, even with ``force`` or the stream's
    server_id: it starts a new stream, and the stream stays as it is.

    Raises ``ConflictError`` if another node's promotion of the stream landed first
    (between this read and this write) or the node is behind the stream's archive on its
    history without ``force``, ``UsageError`` for a stream that does not exist.
    """
    stream = _stream(store, stream_id, cache)
    if not history.holds(stream.backup.history_id):
        reason = (
            f"this node's history ({history.history_id}: {history.reason}) is not the "
            f"history of stream {stream_id} "
            f"({stream.backup.history_id or 'written before history ids'}): its "
            "transactions would collide with the stream's (the same GTIDs, another "
            "database); a new stream starts, and the stream stays as it is"
        )
        log.warning("cannot continue stream %s: %s", stream_id, reason)
        return PromotionResult(stream_id, None, reason)
    if stream.closed is not None:
        return PromotionResult(
            stream_id, None, f"stream {stream_id} is closed (a newer stream took over)"
        )
    if stream.broken is not None:
        return PromotionResult(
            stream_id, None, f"stream {stream_id} is broken: {stream.broken.reason}"
        )
    end = stream.end_position
    if not force and position.covers(stream.snapshot_gtid) and not position.covers(end):
        # Behind on the stream's history: the node can still apply the archive, and a
        # new stream would leave what it lacks out of every later restore.
        raise ConflictError(
            f"this node is at {position or '(empty)'}, behind the archive of stream "
            f"{stream_id} ({end or '(empty)'}): it has not applied the whole archive; "
            "restore it again to the latest point, or promote with force to give up what "
            "it lacks"
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


def _stream(store: ObjectStore, stream_id: str, cache: SiteCache | None) -> StreamState:
    for stream in read_site(store, cache).streams:
        if stream.stream_id == stream_id:
            return stream
    raise UsageError(f"stream {stream_id} does not exist (no readable manifest)")
