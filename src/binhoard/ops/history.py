"""This node's history id in its local state, ``state_directory/history.json``
(``domain/history.py`` says what a history is).

``{"history_id": "<16 hex>", "forked": bool, "reason": "...", "since": "<ISO 8601>"}``.
Read by every writer before it decides which streams and backups are its own (the
archiver every pass: the daemon's restore may change it), written by a restore and on
a node's first run. A file that cannot be read is a new history with ``forked``: the
safe side (a new stream at once; nothing written before history ids is continued),
and it says so in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from binhoard.domain.errors import BinhoardError
from binhoard.domain.history import History, check_history_id, new_history_id
from binhoard.domain.restore_plan import Latest, RestorePlan, plan_restore
from binhoard.localstate import StateFile, exclusive
from binhoard.ops.catalog import SiteState, StreamState

log = logging.getLogger("binhoard.history")


def _file(state_directory: Path) -> StateFile:
    return StateFile(state_directory / "history.json")


def _parse(data: dict[str, object]) -> History | None:
    try:
        history_id = check_history_id(data.get("history_id"))
    except ValueError:
        return None
    forked, reason = data.get("forked"), data.get("reason")
    if history_id is None or not isinstance(forked, bool) or not isinstance(reason, str):
        return None
    return History(history_id, forked, reason)


def local_history(state_directory: Path) -> History:
    """This node's history; minted (and kept) on the first call without one."""
    state = _file(state_directory)
    data = state.read()
    if data is not None and (history := _parse(data)) is not None:
        return history
    with exclusive(state_directory / "history.lock", "minting the history id"):
        data = state.read()  # another process may have minted it meanwhile
        if data is not None and (history := _parse(data)) is not None:
            return history
        if data is None and not state.path.exists():
            history = History(new_history_id(), False, "this node's first run with history ids")
        else:
            history = History(
                new_history_id(),
                True,
                f"{state.path} could not be read: a new history, continuing no stream",
            )
            log.error("%s", history.reason)
        _write(state_directory, history)
        return history


def fork_history(state_directory: Path, reason: str) -> History:
    """A new history for a node whose data was restored to an earlier point."""
    history = History(new_history_id(), True, reason)
    _write(state_directory, history)
    log.info("new history %s: %s", history.history_id, reason)
    return history


def adopt_history(state_directory: Path, history_id: str | None, reason: str) -> History:
    """The node continues ``history_id`` (a stream's; ``None`` for a stream written
    before history ids: a new id, not forked, so that it continues such streams)."""
    history = History(history_id or new_history_id(), False, reason)
    _write(state_directory, history)
    log.info("history %s: %s", history.history_id, reason)
    return history


def _write(state_directory: Path, history: History) -> None:
    _file(state_directory).write(
        {
            "history_id": history.history_id,
            "forked": history.forked,
            "reason": history.reason,
            "since": datetime.now(UTC).isoformat(),
        }
    )


def own_streams(streams: Sequence[StreamState], history: History) -> list[StreamState]:
    """The streams of ``history``: a node restored to an earlier point keeps its
    server_id, and its binlogs continue the GTIDs and file names of the history it was
    forked from (0-1-51.. twice), so that history's streams are not its own."""
    return [s for s in streams if history.holds(s.backup.history_id)]


def without_other_histories(site: SiteState, server_id: int, history: History) -> SiteState:
    """``site`` without the streams of ``server_id`` that are of another history than
    ``history``: binlog purge asks whether this node's files are stored, and a stream
    of the history it was forked from holds files of the same names (and server_id)
    that are not its files."""
    streams = tuple(
        s
        for s in site.streams
        if s.backup.server_id != server_id or history.holds(s.backup.history_id)
    )
    return replace(site, streams=streams)


# --- after a restore ---------------------------------------------------------------------
def restored_history(
    state_directory: Path, site: SiteState, plan: RestorePlan, *, replicates: bool
) -> History:
    """The history a node has once ``plan`` is restored into it, written down before
    its datadir is touched. It continues the stream's history when it ends up at the
    end of an open stream (a restore to the latest transaction), or replicates from the
    primary (seeding: it catches up on the primary's history); any other restore is a
    fork, whose writes must start a stream of their own."""
    stream_id = plan.backup.backup_id
    stream = next((s for s in site.streams if s.stream_id == stream_id), None)
    open_end = (
        isinstance(plan.target, Latest)
        and stream is not None
        and stream.closed is None
        and stream.broken is None
    )
    if replicates or open_end:
        how = "seeded from" if replicates else "restored to the end of"
        return adopt_history(state_directory, plan.backup.history_id, f"{how} stream {stream_id}")
    if isinstance(plan.target, Latest):
        why = "the end of a stream that is closed (a newer stream continues its history)"
    else:
        why = "an earlier point than the end of its history"
    return fork_history(
        state_directory,
        f"restored to {plan.target.describe()} of stream {stream_id}, {why}: a fork, "
        "whose writes start a new stream",
    )


def other_histories(site: SiteState, plan: RestorePlan, approximate_ok: bool) -> list[str]:
    """The streams of other histories that would also reach ``plan``'s target, as
    sentences: two histories forked from one another can both hold a time, a GTID (the
    same sequence numbers) or a binlog position. The plan takes the newest backup that
    precedes the target, whatever its history; these say which others there are, and
    how to ask for one (``--backup``, ``stream_id`` over the API)."""
    chosen = plan.backup.history_id
    usable = [b for b in site.backups.usable if b.history_id != chosen]
    catalog = {s.stream_id: s.records for s in site.streams}
    broken = {b: x.reason for b, x in site.broken_streams.items()}
    found = []
    for history_id in dict.fromkeys(b.history_id for b in usable):
        backups = [b for b in usable if b.history_id == history_id]
        try:
            other = plan_restore(
                backups, catalog, plan.target, approximate_ok=approximate_ok, broken_streams=broken
            )
        except (BinhoardError, ValueError):
            continue  # that history does not reach the target
        found.append(
            f"stream {other.backup.backup_id} of another history "
            f"({history_id or 'written before history ids'}) also reaches "
            f"{plan.target.describe()}; restore it with --backup {other.backup.backup_id} "
            f"(stream_id {other.backup.backup_id} over the API)"
        )
    return found
