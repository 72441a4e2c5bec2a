"""A binlog file's summary and snapshot state as they were computed before
``SegmentBuilder`` (from the whole transaction table): the specification
tests/unit/test_binlog_summary.py compares the streaming summary with. Kept verbatim
(``BinlogSegment.from_transactions`` as it was); do not optimise."""

from __future__ import annotations

from collections.abc import Sequence

from binhoard.domain.binlog import (
    BinlogSegment,
    TransactionIndexEntry,
    _commit_times_of,
    _rows_of,
    _State,
    binlog_sort_key,
)
from binhoard.domain.gtid import GtidPosition


def reference_segment(
    name: str,
    size: int,
    gtid_list_at_start: GtidPosition,
    transactions: Sequence[TransactionIndexEntry],
) -> BinlogSegment:
    binlog_sort_key(name)
    if not transactions:
        return BinlogSegment(name, size, gtid_list_at_start, gtid_list_at_start, 0, *(None,) * 5)
    state = _State(gtid_list_at_start)
    last_seq = {domain: seq for domain, (_, seq) in state.last.items()}
    previous_end = 4
    for domain, server, seq, _, start, end in _rows_of(transactions):
        if start < previous_end or end <= start or end > size:
            raise ValueError(
                f"{name}: transaction {domain}-{server}-{seq} at {start}..{end} overlaps "
                f"the previous one (ends {previous_end}) or the file end ({size})"
            )
        previous_end = end
        if seq <= last_seq.get(domain, -1):
            state.advance(domain, server, seq, f"{name} at offset {start}")  # raises
        last_seq[domain] = seq
        state.last[domain] = (server, seq)
    first, last = transactions[0], transactions[-1]
    return BinlogSegment(
        name=name,
        size=size,
        gtid_list_at_start=gtid_list_at_start,
        end_position=state.position(),
        transaction_count=len(transactions),
        first_gtid=first.gtid,
        last_gtid=last.gtid,
        first_commit_time=first.commit_time,
        last_commit_time=last.commit_time,
        max_commit_time=max(_commit_times_of(transactions)),
    )
