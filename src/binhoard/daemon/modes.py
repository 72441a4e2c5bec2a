"""Mode changes asked for with ``PUT /status``: which are allowed, and what they start.

Pure: the current state, the request, the known streams and ``now`` in; a decision or
a refusal (a ``BinhoardError`` the API answers with) out. The rules are MyHoard's
(its README, "PUT /status"):

* the daemon starts in the mode it was last in, ``idle`` the first time;
* from ``idle``: ``restore`` (a new node) or ``active`` (the very first node of a new
  cluster), or ``observe``;
* ``restore`` switches to ``observe`` by itself once the restore has completed; until
  then nothing else is accepted (binhoard extension: a restore whose phase is
  ``failed`` may be replaced by a new ``restore`` request);
* from ``observe``: ``active`` goes through ``promote``, which checks the node can
  take over and then switches to ``active`` by itself (``promote`` may be asked for
  by name, with the same meaning); ``force`` only there (the node takes over though
  it could not apply the whole archive; docs/failover.md);
* ``active`` (and ``promote`` on its way there) is never left except by stopping;
* ``observe`` with ``replicate_from`` on a node in ``observe`` (binhoard extension):
  re-point it at that primary after a failover (``ops/seed.py`` ``repoint``); the mode
  stays ``observe``.

Asking for the mode the daemon is already in is accepted and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from binhoard.daemon.jobs import StreamInfo
from binhoard.daemon.port import Mode, SetMode
from binhoard.daemon.state import RestoreRecord, RestoreTargetKind
from binhoard.domain.errors import ConflictError, NotFoundError, UsageError
from binhoard.domain.restore_plan import parse_target


@dataclass(frozen=True)
class Switch:
    mode: Mode
    restore: RestoreRecord | None = None  # a new restore to run (mode ``restore``)


@dataclass(frozen=True)
class Stay:
    """Already in the mode asked for."""


@dataclass(frozen=True)
class Repoint:
    """Point this replica at ``primary`` (``HOST:PORT``); the mode stays ``observe``."""

    primary: str


def decide(  # noqa: PLR0917 - the decision's inputs, each named by its type
    current: Mode,
    restore: RestoreRecord | None,
    request: SetMode,
    streams: Sequence[StreamInfo] | None,
    sites: Sequence[str],
    now: datetime,
) -> Switch | Stay | Repoint:
    """What ``request`` does in ``current``; raises the refusal."""
    wanted = request.mode
    if wanted == "observe" and request.replicate_from is not None:
        if current != "observe":
            raise ConflictError(
                f"the mode is {current}: only a node in observe mode is re-pointed at "
                "another primary (observe with replicate_from); seed a new one with a "
                "restore with replicate_from"
            )
        return Repoint(request.replicate_from)
    if request.force and (wanted not in ("active", "promote") or current != "observe"):
        # MyHoard's force promotes a node that has not applied the whole archive (what
        # it lacks is given up); binhoard never leaves a restore half-applied, so it
        # means that only for a node in observe, whose restore has completed.
        raise UsageError(
            "force is only for promoting a node in observe mode (mode active or "
            f"promote); the mode is {current} and {wanted} was asked for"
        )
    if wanted == "restore":
        failed = current == "restore" and restore is not None and restore.phase == "failed"
        if current != "idle" and not failed:
            raise ConflictError(
                f"the mode is {current}: a restore is started only in idle mode"
                + (" (or to replace a failed restore)" if current == "restore" else "")
            )
        return Switch("restore", _new_restore(request, streams, sites, now))
    if wanted == current or (wanted == "active" and current == "promote"):
        return Stay()
    if current in ("active", "promote"):
        raise ConflictError(
            f"the mode is {current}: an active node cannot switch to {wanted} (stop the "
            "daemon to take it out of service)"
        )
    if current == "restore":
        phase = restore.phase if restore is not None else "unknown"
        raise ConflictError(
            f"the restore has not completed (phase {phase}): the mode becomes observe by "
            "itself when it has; switch afterwards"
        )
    if wanted == "idle":
        raise ConflictError(f"the mode is {current}: a node never goes back to idle")
    if wanted in ("active", "promote"):
        # A node that was restored takes over through promote; the very first node
        # (idle, nothing restored) becomes active at once.
        return Switch("promote" if current == "observe" else "active")
    return Switch(wanted)  # observe, from idle


def _new_restore(
    request: SetMode, streams: Sequence[StreamInfo] | None, sites: Sequence[str], now: datetime
) -> RestoreRecord:
    """The restore ``request`` asks for, checked against the streams listed."""
    if not request.site or not request.stream_id:
        raise UsageError("a restore needs site and stream_id (GET /backup lists them)")
    if request.site not in sites:
        raise UsageError(f"no backup site {request.site!r} (known: {', '.join(sorted(sites))})")
    kind, value = _target(request)
    if request.replicate_from is not None and kind != "latest":
        # A replica continues from the newest transaction: an earlier target would be
        # a fork of the primary's history, refused as divergent anyway.
        raise UsageError(f"replicate_from needs the latest target, not target_{kind}")
    if streams is None:
        raise ConflictError("the backups have not been listed yet: try again in a moment")
    stream = next(
        (s for s in streams if s.site == request.site and s.stream_id == request.stream_id),
        None,
    )
    if stream is None:
        raise NotFoundError(f"no backup {request.stream_id} in site {request.site}")
    if stream.broken_reason is not None or stream.manifest is None:
        raise ConflictError(
            f"backup {stream.stream_id} is broken and cannot be restored: {stream.broken_reason}"
        )
    target_time = request.target_time
    if target_time is not None:
        if stream.completed_at is not None and target_time < stream.completed_at:
            raise UsageError(
                f"target_time {target_time.isoformat()} is before backup {stream.stream_id} "
                f"completed ({stream.completed_at.isoformat()}): pick an older backup"
            )
        if stream.closed_at is not None and target_time > stream.closed_at:
            raise UsageError(
                f"target_time {target_time.isoformat()} is after stream {stream.stream_id} was "
                f"closed ({stream.closed_at.isoformat()}): pick the stream that took over"
            )
        # Refused now rather than accepted and failed later: a time is reached only once
        # a transaction committed at or after it is archived (domain/restore_plan.py).
        window = stream.window
        if window is None or target_time > window.last_time:
            reach = (
                "has no binlogs archived yet"
                if window is None
                else f"ends at {window.last_time.isoformat()} (GTID {window.last_gtid})"
            )
            raise UsageError(
                f"target_time {target_time.isoformat()} is after the newest archived "
                f"transaction: the archive of stream {stream.stream_id} {reach}. Restore to "
                "the newest transaction (no target), or ask again once the archive reaches it"
            )
    return RestoreRecord(
        site=request.site,
        stream_id=request.stream_id,
        target_kind=kind,
        target_value=value,
        # Only a time can be approximate (MyHoard ignores the flag otherwise).
        approximate_ok=request.target_time_approximate_ok and kind == "time",
        requested_at=now,
        updated_at=now,
        replicate_from=request.replicate_from,
    )


def _target(request: SetMode) -> tuple[RestoreTargetKind, str | None]:
    given: list[tuple[RestoreTargetKind, str]] = []
    if request.target_time is not None:
        if request.target_time.tzinfo is None:
            raise UsageError("target_time needs a time zone (or epoch seconds)")
        given.append(("time", request.target_time.isoformat()))
    if request.target_gtid is not None:
        given.append(("gtid", request.target_gtid))
    if request.target_position is not None:
        given.append(("position", request.target_position))
    if len(given) > 1:
        names = ", ".join(f"target_{kind}" for kind, _ in given)
        raise UsageError(f"give at most one restore target, not {names}")
    kind: RestoreTargetKind = given[0][0] if given else "latest"
    value = given[0][1] if given else None
    parse_target(**RestoreRecord.target_args_of(kind, value))  # refused now, not at plan time
    return kind, value
