"""Which backups to keep and which to delete: a pure function of the site's backups, the
policy and ``now``, with a reason for every backup (docs/configuration.md, "Retention").

A backup is deleted with its stream (its binlog records), so keeping a backup keeps the
point-in-time window that starts at it. The rules, in order; the first that decides
wins:

1. Never deleted: an *open* stream (it still receives binlogs: no ``closed.json``, not
   broken), the newest backup that can be restored, a backup preserved until a time
   still to come (or whose preservation mark cannot be read).
2. A *broken* backup (it cannot be restored: its manifest, one of its chain, or an
   operator's mark says so) counts for nothing: it is deleted once a newer backup
   that can be restored exists, and kept (for inspection) until then.
3. The others (the *usable* ones), newest first: the first ``count_min`` are kept
   whatever their age; those after the first ``count_max`` are deleted; in between, with
   ``age_max``, a backup is deleted once the next newer usable backup is itself older
   than ``age_max``: restores to any time in the window start from that one or a newer
   one, so the window stays restorable whole.
4. Grandfather-father-son counts, on top: the newest usable backup of each of the last
   ``hourly`` hours, ``daily`` days, ``weekly`` ISO weeks, ``monthly`` months and
   ``yearly`` years (UTC) that have one is kept, whatever rule 3 said.
5. A kept incremental keeps every backup of its chain: it cannot be restored without
   them.

All times are compared in UTC; ``now`` is given, never read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from binhoard.domain.manifest import backup_id_time
from binhoard.domain.schedule import format_utc

Rule = Literal[
    "open-stream",
    "newest",
    "preserved",
    "broken",
    "count-min",
    "count-max",
    "window",
    "expired",
    "gfs",
    "parent",
]


@dataclass(frozen=True)
class GfsCounts:
    """Grandfather-father-son: how many hours, days, ISO weeks, months and years keep
    their newest backup (0: that period keeps none)."""

    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0


@dataclass(frozen=True)
class RetentionPolicy:
    count_min: int
    count_max: int
    age_max: timedelta | None = None  # None: no age limit
    gfs: GfsCounts = GfsCounts()


@dataclass(frozen=True)
class RetentionCandidate:
    """What retention needs to know of one backup and its stream."""

    backup_id: str
    completed_at: datetime | None  # None: the manifest cannot be read (then broken)
    chain: tuple[str, ...] = ()  # backup ids from the full one to this one; () if unknown
    open: bool = False  # the stream still receives binlogs
    broken: str | None = None  # why it cannot be restored
    preserve_until: datetime | None = None
    preserve_unreadable: str | None = None  # why its newest preservation mark cannot be read

    @property
    def time(self) -> datetime:
        """When it was taken, for ordering and age: completion (the snapshot is taken at
        the end of the copy), else the start time its id names."""
        return (
            self.completed_at or backup_id_time(self.backup_id) or datetime.min.replace(tzinfo=UTC)
        )


@dataclass(frozen=True)
class RetentionDecision:
    backup_id: str
    keep: bool
    rule: Rule  # which rule decided (stable, for JSON and metrics)
    reason: str  # one sentence for people

    @property
    def action(self) -> str:
        return "keep" if self.keep else "delete"


def _days(age: timedelta) -> str:
    return f"{age / timedelta(days=1):g}"


def plan_retention(
    candidates: Sequence[RetentionCandidate], policy: RetentionPolicy, now: datetime
) -> list[RetentionDecision]:
    """One decision per candidate, oldest first (see the module's rules)."""
    if now.tzinfo is None:
        raise ValueError(f"{now.isoformat()} has no time zone")
    ordered = sorted(candidates, key=lambda c: (c.time, c.backup_id))
    usable = [c for c in ordered if c.broken is None]
    decided: dict[str, RetentionDecision] = {}

    def decide(c: RetentionCandidate, keep: bool, rule: Rule, reason: str) -> None:
        decided.setdefault(c.backup_id, RetentionDecision(c.backup_id, keep, rule, reason))

    newest = usable[-1] if usable else None
    for c in ordered:
        protected = _protection(c, newest, now)
        if protected is not None:
            decide(c, True, *protected)
    newer_usable: RetentionCandidate | None = None
    for c in reversed(ordered):
        if c.broken is None:
            newer_usable = c
        else:
            decide(c, *_broken(c, newer_usable))
    for rank, c in enumerate(reversed(usable)):
        following = usable[len(usable) - rank] if rank else None
        decide(c, *_by_count_and_age(rank, c, following, policy, now))

    for backup_id, why in _gfs_keeps(usable, policy.gfs).items():
        if not decided[backup_id].keep:
            decided[backup_id] = RetentionDecision(backup_id, True, "gfs", why)
    _keep_chains(ordered, decided)
    return [decided[c.backup_id] for c in ordered]


def _keep_chains(
    ordered: Sequence[RetentionCandidate], decided: dict[str, RetentionDecision]
) -> None:
    """Rule 5. Newest first, so the reason names the newest incremental that needs a
    backup; a chain holds every ancestor, so one pass keeps them all."""
    for c in reversed(ordered):
        if not decided[c.backup_id].keep:
            continue
        for parent in c.chain[:-1]:
            if parent in decided and not decided[parent].keep:
                decided[parent] = RetentionDecision(
                    parent, True, "parent", f"incremental {c.backup_id}, kept, builds on it"
                )


def _broken(
    c: RetentionCandidate, newer_usable: RetentionCandidate | None
) -> tuple[bool, Rule, str]:
    """Rule 2, for a broken backup."""
    if newer_usable is None:
        return True, "broken", f"broken ({c.broken}), but no newer backup can be restored"
    return False, "broken", f"broken ({c.broken}); {newer_usable.backup_id}, newer, can be restored"


def _protection(
    c: RetentionCandidate, newest: RetentionCandidate | None, now: datetime
) -> tuple[Rule, str] | None:
    """Rule 1: why ``c`` is never deleted by retention, if it is not."""
    if c is newest:
        return "newest", "the newest backup that can be restored"
    if c.open and c.broken is None:
        return "open-stream", "its stream is open: it still receives binlogs"
    if c.preserve_unreadable is not None:
        return (
            "preserved",
            f"its preservation cannot be read ({c.preserve_unreadable}): kept until it is "
            "set again",
        )
    if c.preserve_until is not None and c.preserve_until > now:
        return "preserved", f"preserved until {format_utc(c.preserve_until)}"
    return None


@dataclass(frozen=True)
class DeletionPlan:
    """What deleting one backup by hand takes: ``backup_ids``, newest first (the backup
    and every incremental that builds on it, which could not be restored without it),
    and ``refusals``, why retention would not do it (a person may insist)."""

    backup_ids: tuple[str, ...]
    refusals: tuple[str, ...]


def plan_deletion(
    candidates: Sequence[RetentionCandidate], backup_id: str, now: datetime
) -> DeletionPlan | None:
    """``None`` if ``backup_id`` is not one of ``candidates``."""
    ordered = sorted(candidates, key=lambda c: (c.time, c.backup_id))
    if not any(c.backup_id == backup_id for c in ordered):
        return None
    usable = [c for c in ordered if c.broken is None]
    newest = usable[-1] if usable else None
    going = [c for c in ordered if c.backup_id == backup_id or backup_id in c.chain[:-1]]
    refusals = []
    for c in going:
        protected = _protection(c, newest, now)
        if protected is not None and c.backup_id == backup_id:
            refusals.append(protected[1])
        elif protected is not None:
            refusals.append(f"{c.backup_id}, which builds on it: {protected[1]}")
    dependents = [c.backup_id for c in going if c.backup_id != backup_id]
    if dependents:
        refusals.append(
            f"incremental backups build on {backup_id} and would be deleted with it: "
            + ", ".join(dependents)
        )
    return DeletionPlan(tuple(c.backup_id for c in reversed(going)), tuple(refusals))


def _by_count_and_age(
    rank: int,
    c: RetentionCandidate,
    following: RetentionCandidate | None,
    policy: RetentionPolicy,
    now: datetime,
) -> tuple[bool, Rule, str]:
    """Rule 3 for the usable backup with ``rank`` newer usable ones, ``following`` the
    next newer (``None`` for the newest)."""
    if rank < policy.count_min:
        return (
            True,
            "count-min",
            f"one of the newest {policy.count_min} usable backups (backup_count_min)",
        )
    if rank >= policy.count_max:
        return (
            False,
            "count-max",
            f"{rank} newer usable backups exist; backup_count_max is {policy.count_max}",
        )
    if policy.age_max is None:
        return (
            True,
            "window",
            f"one of the newest {policy.count_max} usable backups (backup_count_max)",
        )
    start = now - policy.age_max
    days = _days(policy.age_max)
    if following is not None and following.time <= start:
        return (
            False,
            "expired",
            f"{following.backup_id}, newer, was taken {format_utc(following.time)}, before "
            f"the {days}-day window (backup_age_days_max) began at {format_utc(start)}: "
            "no restore in the window starts from this one",
        )
    if c.time <= start:
        return (
            True,
            "window",
            f"restores to the start of the {days}-day window (backup_age_days_max), "
            f"{format_utc(start)}, start from it",
        )
    return True, "window", f"taken within the last {days} days (backup_age_days_max)"


def _period_labels(moment: datetime) -> dict[str, str]:
    utc = moment.astimezone(UTC)
    iso = utc.isocalendar()
    return {
        "hourly": f"{utc:%Y-%m-%d %H}:00 UTC",
        "daily": f"{utc:%Y-%m-%d}",
        "weekly": f"{iso.year}-W{iso.week:02d}",
        "monthly": f"{utc:%Y-%m}",
        "yearly": f"{utc:%Y}",
    }


def _gfs_keeps(usable: Sequence[RetentionCandidate], gfs: GfsCounts) -> dict[str, str]:
    """The backups each grandfather-father-son count keeps, with why: the newest of each
    of the last N periods that have a usable backup."""
    keeps: dict[str, str] = {}
    counts = {
        "hourly": gfs.hourly,
        "daily": gfs.daily,
        "weekly": gfs.weekly,
        "monthly": gfs.monthly,
        "yearly": gfs.yearly,
    }
    for period, count in counts.items():
        seen: set[str] = set()
        for c in reversed(usable):
            if len(seen) >= count:
                break
            label = _period_labels(c.time)[period]
            if label not in seen:
                seen.add(label)
                keeps.setdefault(
                    c.backup_id, f"the newest backup of {label} (retention.{period} {count})"
                )
    return keeps
