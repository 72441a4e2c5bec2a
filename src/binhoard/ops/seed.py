"""Seeding a replica: a restored server made a replica of a primary, caught up.

The last phase of a point-in-time restore with ``replicate_from`` (``ops/pitr.py``'s
``replicating``; ``binhoard restore --to-latest --replicate-from HOST:PORT``,
``PUT /status {"mode": "restore", "replicate_from": ...}``). The restore leaves the
server read-only at the GTID position it restored; here:

1. the primary's ``@@gtid_binlog_state`` is read with the replication account
   (unreachable, or refusing it: ``ReplicationError`` ``unreachable``), and must contain
   this server's ``gtid_slave_pos`` (``domain/replica.py``; else ``divergent``);
2. ``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos`` (skipped when the server already
   replicates from that primary: a resumed run), ``START SLAVE``;
3. ``MASTER_GTID_WAIT`` for the primary's position read in 1, in short slices so that a
   replication error (``failed``), a cancel (``CancelledError``) or the deadline
   (``timeout``) ends the wait.

Every step can run again: a run killed anywhere is resumed by running it again.

After a failover the other replicas of the old primary are *re-pointed* at the new one
(:func:`repoint`; ``PUT /status {"mode": "observe", "replicate_from": ...}``,
``binhoard repoint``): the same check against the new primary's binlog state first,
with this server's ``gtid_current_pos`` (what it holds, its own writes included), then
``CHANGE MASTER TO ... MASTER_USE_GTID=slave_pos``. A node that has transactions the new
primary lacks is refused: replicating would lose them, or apply the new primary's
equal sequence numbers over them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from binhoard.config import is_loopback_address
from binhoard.domain.errors import (
    BinhoardError,
    CancelledError,
    ConflictError,
    ReplicationError,
    UsageError,
)
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.replica import (
    PrimaryAddress,
    divergence,
    parse_primary_address,
    same_address,
)
from binhoard.ports.server import PrimaryState, ReplicaCredentials, ReplicaStatus, Server

log = logging.getLogger("binhoard.seed")

# How long one MASTER_GTID_WAIT may block before errors and the cancel are checked.
WAIT_SLICE = 1.0
# IO thread errors that retrying cannot fix, though the IO thread keeps retrying some
# ("Connecting"): the primary refused the account (1045; 1597 when the account lacks
# REPLICATION SLAVE: its COM_REGISTER_SLAVE is denied, seen on 10.11 and 11.8), or it
# cannot send what this server needs (1236: the position is not in its binlogs, or its
# binlogs were purged).
_REFUSED_IO_ERRNOS = frozenset({1045, 1597})
_FATAL_IO_ERRNOS = _REFUSED_IO_ERRNOS | {1236}


@dataclass(frozen=True)
class SeedSettings:
    """``replication.user``/``password`` and ``catch_up_timeout`` (``app.seed_settings``)."""

    credentials: ReplicaCredentials
    catch_up_timeout: float
    # This node's own server: its TCP address (``mysql.client_params``; None through a
    # socket) and ``server_id``, so that a primary naming it is refused up front.
    own_address: PrimaryAddress | None = None
    own_server_id: int | None = None


def check_primary(
    text: str, *, seed: SeedSettings | None, allowed: Collection[str]
) -> PrimaryAddress:
    """The primary ``replicate_from`` names, if this host may replicate from it: a
    loopback or listed (``replication.primaries``) ``HOST:PORT``, with
    ``replication.user`` configured. ``UsageError`` naming what is wrong."""
    if seed is None:
        raise UsageError("replicate_from needs replication.user in the configuration")
    try:
        primary = parse_primary_address(text, allowed=allowed, is_loopback=is_loopback_address)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if seed.own_address is not None and same_address(primary, seed.own_address):
        raise UsageError(
            f"replicate_from {primary.format()} is this node's own server "
            f"(mysql.client_params {seed.own_address.format()}); name the primary"
        )
    return primary


def refuse_itself(server: Server, primary: PrimaryAddress, settings: SeedSettings) -> None:
    """Before a seeding restore touches anything: ``UsageError`` if ``primary`` answers
    with this node's ``server_id`` (its own server under another address). A primary
    that cannot be reached now is left to the ``replicating`` phase, which names it and
    can be resumed."""
    if settings.own_server_id is None:
        return
    try:
        _primary_state(server, primary, settings, own=settings.own_server_id)
    except ReplicationError as exc:
        log.warning("not checked before the restore: %s", exc.message)


def replicate(
    server: Server,
    primary: PrimaryAddress,
    settings: SeedSettings,
    *,
    cancel: threading.Event | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> GtidPosition:
    """Makes ``server`` a replica of ``primary`` and waits until it applied everything
    the primary had logged when this began; returns that position."""
    replication = server.replication
    where = primary.format()
    status = replication.status()
    local = GtidPosition.parse(status.gtid_slave_pos)
    state = _primary_state(server, primary, settings)
    why = divergence(local, state)
    if why is not None:
        replication.stop()  # a resumed run may have started it already
        raise ReplicationError(f"cannot replicate from {where}: {why}", kind="divergent")
    if not (status.configured and status.primary == where):
        replication.change_primary(primary, settings.credentials)
    replication.start()
    goal = GtidPosition.from_binlog_state(state)
    log.info("replicating from %s from %s; catching up to %s", where, local, goal)
    deadline = clock() + settings.catch_up_timeout
    while not replication.wait_for_gtid(goal, WAIT_SLICE):
        if cancel is not None and cancel.is_set():
            raise CancelledError("seeding the replica was cancelled")
        status = replication.status()
        _check(status, where)
        if clock() >= deadline:
            raise ReplicationError(
                f"the replica of {where} did not catch up to {goal} within "
                f"{settings.catch_up_timeout:g} s (at {status.gtid_slave_pos}, "
                f"{status.seconds_behind} s behind{_io_note(status)}); resuming continues",
                kind="timeout",
            )
    log.info("caught up with %s at %s", where, goal)
    return goal


@dataclass(frozen=True)
class Repointed:
    """``primary`` is now this server's primary; replication continues from ``position``
    (its ``gtid_current_pos``). ``changed``: False if it replicated from it already."""

    primary: str
    position: GtidPosition
    changed: bool


def repoint(
    server: Server, primary: PrimaryAddress, settings: SeedSettings, *, resumed: bool = False
) -> Repointed:
    """Points this replica at ``primary`` (the new primary after a failover) and starts
    replication. Refused with ``ConflictError`` when this server has transactions the
    primary lacks, or holds other ones at the same sequence numbers: it must be
    re-seeded from the new primary's stream. Replication is then left as it was
    (``resumed``: a re-point a crash interrupted, which had stopped it: started again)."""
    replication = server.replication
    where = primary.format()
    before = replication.status()
    if before.configured and before.primary == where:
        replication.start()
        position = GtidPosition.parse(server.facts().gtid_current_pos)
        return Repointed(where, position, changed=False)
    running = before.configured and (resumed or before.sql_running or before.io_running != "No")
    replication.stop()  # nothing more arrives from the old primary while this decides
    try:
        position = GtidPosition.parse(server.facts().gtid_current_pos)
        state = _primary_state(server, primary, settings)
        why = divergence(position, state)
        if why is not None:
            raise ConflictError(
                f"this node cannot be re-pointed at {where}: {why}. It has transactions "
                f"{where} lacks (this node is at {position or '(empty)'}, {where} at "
                f"{GtidPosition.from_binlog_state(state) or '(empty)'}): replicating would "
                "lose them or apply other transactions over them. Re-seed it from the new "
                f"primary's stream (an empty datadir, then a restore with replicate_from "
                f"{where}; docs/failover.md)"
            )
    except BinhoardError:
        if running:
            replication.start()  # as it was: the operator decides
        raise
    replication.change_primary(primary, settings.credentials)
    replication.start()
    log.warning(
        "re-pointed: this server replicates from %s (was %s), from %s",
        where,
        before.primary or "none",
        position or "(empty)",
    )
    return Repointed(where, position, changed=True)


@dataclass(frozen=True)
class Reconciled:
    """This node's replication as found at the daemon's start: ``primary``, what it
    replicates from (None: not a replica); ``problem``, what is not as the daemon's
    state says, in a sentence (None: as expected)."""

    primary: str | None
    problem: str | None


def reconcile(
    server: Server,
    expected: str | None,
    interrupted: PrimaryAddress | None,
    settings: SeedSettings | None,
) -> Reconciled:
    """At the daemon's start: a re-point at ``interrupted`` that a crash cut short is
    finished (:func:`repoint` again, ``resumed``) or, refused, rolled back (replication
    from the primary still configured started again); else replication is compared with
    ``expected`` (the primary the state names), and what differs is said."""
    if interrupted is not None and settings is not None:
        try:
            done = repoint(server, interrupted, settings, resumed=True)
        except BinhoardError as exc:
            status = server.replication.status()
            back = status.primary if status.configured else None
            return Reconciled(
                back,
                f"the re-point at {interrupted.format()}, interrupted by a restart, was "
                f"not finished: {exc.message}; replication "
                + (f"from {back} started again" if back else "is not configured"),
            )
        log.warning("the re-point at %s, interrupted by a restart, is finished", done.primary)
        return Reconciled(done.primary, None)
    if expected is None:
        return Reconciled(None, None)
    status = server.replication.status()
    if not status.configured:
        why = f"this node should replicate from {expected}, but no replication is configured"
    elif status.primary != expected:
        why = f"this node should replicate from {expected}, but replicates from {status.primary}"
    elif not status.sql_running or status.io_running == "No":
        why = (
            f"replication from {expected} is stopped (IO thread {status.io_running}, SQL "
            f"thread {'Yes' if status.sql_running else 'No'}): START SLAVE"
        )
    else:
        return Reconciled(expected, None)
    return Reconciled(status.primary or None, why)


def _primary_state(
    server: Server, primary: PrimaryAddress, settings: SeedSettings, *, own: int | None = None
) -> tuple[Gtid, ...]:
    """The primary's ``@@gtid_binlog_state``; ``UsageError`` if it has this server's
    ``server_id`` (``own``, else the running server's): this server itself (its own
    address), or one MariaDB would refuse to replicate from (its IO thread stops on
    equal server ids)."""
    state: PrimaryState = server.replication.primary_state(primary, settings.credentials)
    if own is None:
        own = server.facts().server_id
    if state.server_id == own:
        raise UsageError(
            f"replicate_from {primary.format()} has this server's server_id {own}: it is "
            "this server itself (or another with its server_id); name the primary"
        )
    return state.binlog_state


def _check(status: ReplicaStatus, where: str) -> None:
    """Raises ``ReplicationError`` if replication stopped with an error it cannot pass."""
    if not status.configured:
        raise ReplicationError(
            f"replication from {where} was removed meanwhile (RESET SLAVE ALL?)", kind="failed"
        )
    if status.last_sql_errno:
        raise ReplicationError(
            f"replication from {where} stopped applying: error {status.last_sql_errno}: "
            f"{status.last_sql_error}",
            kind="failed",
            server_errno=status.last_sql_errno,
        )
    if status.last_io_errno in _FATAL_IO_ERRNOS or (
        status.last_io_errno and status.io_running == "No"
    ):
        kind = "unreachable" if status.last_io_errno in _REFUSED_IO_ERRNOS else "failed"
        raise ReplicationError(
            f"replication from {where} cannot read the primary's binlogs: error "
            f"{status.last_io_errno}: {status.last_io_error}",
            kind=kind,
            server_errno=status.last_io_errno,
        )


def _io_note(status: ReplicaStatus) -> str:
    if status.last_io_errno:
        return f"; IO thread {status.io_running}: {status.last_io_error}"
    return ""
