"""How point-in-time restore cuts the plan's files into batches (``domain/pitr.py``):
where a batch starts and stops, and how the first batch of a resumed run continues."""

from __future__ import annotations

from binhoard.domain.gtid import GtidPosition
from binhoard.domain.pitr import (
    Batch,
    Resumed,
    batch_stop_offset,
    next_batch,
    resume_batch,
    split_at_limit,
)
from binhoard.domain.relay_plan import ResumePoint
from binhoard.domain.restore_plan import ResolvedStop
from binhoard.storage.store import MemoryStore
from tests.support.sites import SiteBuilder


def point(file_index: int, offset: int, applied: int = 0, total: int = 10) -> ResumePoint:
    return ResumePoint(file_index, offset, applied, total, None, None, GtidPosition())


def test_a_batch_starts_at_its_first_record_s_offset_and_ends_before_another_inside() -> None:
    # The plan's first record starts at the snapshot, the fourth (a new owner's first
    # after a promotion) inside its file: each begins a batch of its own.
    offsets = [1234, 4, 4, 777, 4]
    assert next_batch([0, 1, 2, 3, 4], offsets) == Batch([0, 1, 2], 1234, [3, 4])
    assert next_batch([1, 2], offsets) == Batch([1, 2], 4, [])
    assert next_batch([3, 4], offsets) == Batch([3, 4], 777, [])


def test_files_past_the_resolved_stop_are_given_back() -> None:
    assert split_at_limit([2, 3, 4, 5], 4) == ([2, 3], [4, 5])
    assert split_at_limit([2, 3], 4) == ([2, 3], [])
    assert split_at_limit([4, 5], 4) == ([], [4, 5])


def test_a_resumed_batch_skips_what_the_server_applied() -> None:
    # Nothing applied yet: the batch starts where it would have (or later in its file).
    assert resume_batch(point(0, 4), 3, 1234) == Resumed(0, 1234)
    assert resume_batch(point(0, 2000), 3, 1234) == Resumed(0, 2000)
    # Two files applied whole, the third from inside it.
    assert resume_batch(point(2, 777), 3, 1234) == Resumed(2, 777)
    # All of them: the next files are looked at the same way.
    assert resume_batch(point(3, 4, 10, 10), 3, 1234) == Resumed(3, 4)


def test_only_the_resolved_last_file_stops_inside() -> None:
    build = SiteBuilder(MemoryStore())
    build.backup("A")
    records = tuple(build.archive("A", 3))
    resolved = ResolvedStop(records, 555, 25, GtidPosition())
    assert batch_stop_offset(2, resolved) == 555
    assert batch_stop_offset(1, resolved) is None
    assert batch_stop_offset(2, None) is None  # not resolved yet: files are applied whole
