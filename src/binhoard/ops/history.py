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
from datetime import UTC, datetime
from pathlib import Path

from binhoard.domain.history import History, check_history_id, new_history_id
from binhoard.localstate import StateFile, exclusive

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
    log.warning("new history %s: %s", history.history_id, reason)
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
