"""Histories: which writes belong together, independently of ``server_id``
(docs/format.md, "Histories and forks").

A node restored to an earlier point and then written to commits transactions with the
same domain, the same ``server_id`` (when it keeps it) and the same sequence numbers as
the history it was restored from: ``0-1-51..`` twice, two different databases. GTIDs
cannot tell the two apart, so every node keeps a *history id* in its local state
(``state_directory/history.json``), minted at random:

* on the node's first run without one (an existing server, or one upgraded from a
  version without history ids): it continues whatever it wrote before;
* by a restore to a point that is not the end of an open stream (a time, GTID or
  position target, a plain backup restore, a closed stream): a *fork*;

and adopted from the stream by a restore to the end of an open stream, or one that
then replicates from the primary (seeding): the node continues that history.

Each backup manifest and promotion record carries the writer's history id. A node
archives into, builds incrementals on, takes over and is deposed from only streams of
its own history; a stream of another history stays as it is (open, restorable, never
closed or fenced by the fork). Documents written before history ids have none: they
belong to every history that did not begin with a fork (an upgraded node keeps
archiving its streams), and to no fork.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

_HISTORY_RE = re.compile(r"[0-9a-f]{16}")


def new_history_id() -> str:
    """16 random hex digits: unique without coordination."""
    return secrets.token_hex(8)


def check_history_id(value: object) -> str | None:
    """``value`` as a history id (``None`` stays ``None``: a document written before
    history ids); raises ``ValueError`` for anything else."""
    if value is None:
        return None
    if not isinstance(value, str) or not _HISTORY_RE.fullmatch(value):
        raise ValueError(f"history_id {value!r} is not 16 lower-case hex digits")
    return value


@dataclass(frozen=True)
class History:
    """This node's history: ``history_id``, and whether it began with a fork (a restore
    to an earlier point), which decides about documents without a history id.
    ``reason`` says in words where it comes from, for logs and ``GET /status``."""

    history_id: str
    forked: bool
    reason: str

    def holds(self, history_id: str | None) -> bool:
        """Whether a document of ``history_id`` is of this history. One without a history
        id (written before they existed) is, unless this history began with a fork: a
        fork never continues anything written before it."""
        if history_id is None:
            return not self.forked
        return history_id == self.history_id
