"""The pure parts of the point-in-time restore's phase machine (``ops/pitr.py``): what a
``restore.json`` must hold to be resumed, and how the plan's files are cut into batches
(where each batch starts and stops, what an interrupted run already applied).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

from binhoard.domain.errors import BinhoardError
from binhoard.domain.relay_plan import FIRST_EVENT_OFFSET, ResumePoint
from binhoard.domain.restore_plan import ResolvedStop, parse_target

PHASES = (
    "getting_backup_info",
    "restoring_basebackup",
    "basebackup_restored",
    "applying_binlogs",
    "finalizing",
    "completed",
    "failed",
    # binhoard's, between finalizing and completed, only with replicate_from
    # (ops/seed.py); last here so that the metric's earlier phase numbers stay.
    "replicating",
)


# --- restore.json ----------------------------------------------------------------------
def state_problem(state: object) -> str | None:
    """Why ``state`` cannot be a ``restore.json`` this code wrote, or None."""
    if not isinstance(state, dict):
        return "not a JSON object"
    phase = state.get("phase")
    if phase not in PHASES:
        return f"unknown phase {phase!r}"
    if phase in ("completed", "failed"):
        return None  # nothing is resumed from it
    problems = _request_problems(state)
    if phase != "getting_backup_info":
        problems += _progress_problems(state)
    return problems[0] if problems else None


def _request_problems(state: dict[str, Any]) -> list[str]:
    problems = []
    if not isinstance(state.get("site"), str):
        problems.append("no site")
    target_args = state.get("target_args")
    if not isinstance(target_args, dict):
        problems.append("no target")
    else:
        try:
            parse_target(**target_args)
        except (BinhoardError, TypeError) as exc:
            problems.append(f"unusable target: {exc}")
    if not isinstance(state.get("requested_backup_id"), (str, type(None))):
        problems.append("requested_backup_id is not a backup id")
    if not isinstance(state.get("replicate_from"), (str, type(None))):
        problems.append("replicate_from is not HOST:PORT")
    elif state.get("phase") == "replicating" and state.get("replicate_from") is None:
        problems.append("phase replicating without replicate_from")
    return problems


def _progress_problems(state: dict[str, Any]) -> list[str]:
    if not isinstance(state.get("backup_id"), str):
        return ["no backup_id"]
    records, applied = state.get("records"), state.get("applied_records")
    if not (_is_count(records) and _is_count(applied)):
        return ["records and applied_records are not counts"]
    if applied > records:
        return [f"applied_records {applied} exceeds records {records}"]
    return []


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --- batches ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Batch:
    """The plan's files (``indexes``) applied in one batch, from ``start_offset`` in
    the first; ``later`` are downloaded but wait for the next batch."""

    indexes: list[int]
    start_offset: int
    later: list[int]


def next_batch(indexes: Sequence[int], start_offsets: Sequence[int]) -> Batch:
    """The batch of the downloaded ``indexes`` (consecutive, of a plan whose records
    start at ``start_offsets``). The applier starts only a batch's first file at an
    offset, so a batch ends before a file whose record starts inside it (the backup's
    snapshot in the plan's first file, a new owner's position after a promotion):
    applying that one whole would apply what the record before it holds twice."""
    first = indexes[0]
    cut = next(
        (k for k, i in enumerate(indexes) if k and start_offsets[i] > FIRST_EVENT_OFFSET),
        len(indexes),
    )
    return Batch(list(indexes[:cut]), start_offsets[first], list(indexes[cut:]))


def split_at_limit(indexes: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
    """``indexes`` below ``limit`` (to apply) and the others (downloaded before the exact
    stop was known, past it: to give back unapplied)."""
    return [i for i in indexes if i < limit], [i for i in indexes if i >= limit]


@dataclass(frozen=True)
class Resumed:
    """How the first batch of a run continues after the server's ``ResumePoint``: its
    ``done`` leading files were applied whole; the rest starts at ``start_offset``."""

    done: int
    start_offset: int


def resume_batch(point: ResumePoint, files: int, start_offset: int) -> Resumed:
    """The first batch of ``files`` files (whose first starts at ``start_offset``) after
    an interrupted run got to ``point`` (``applied_prefix`` of these files)."""
    if point.file_index >= files:
        return Resumed(files, FIRST_EVENT_OFFSET)  # all applied: look at the next files
    if point.file_index:
        return Resumed(point.file_index, point.offset)
    return Resumed(0, max(start_offset, point.offset))


def batch_stop_offset(last_index: int, resolved: ResolvedStop | None) -> int | None:
    """Where a batch whose last file is the plan's ``last_index``-th stops: at the exact
    stop in the resolved last file, else at the end of the file (``None``)."""
    if resolved is not None and last_index == len(resolved.records) - 1:
        return resolved.end_offset
    return None
