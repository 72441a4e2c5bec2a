"""Restore planning: backup choice, files to apply, exact stops, refusals (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from binhoard.domain.binlog import (
    BinlogSegment,
    GtidGap,
    TransactionIndexEntry,
    TransactionTable,
    stop_for_time,
)
from binhoard.domain.catalog import BinlogRecord, starts_inside
from binhoard.domain.errors import PlanError, UsageError
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import BackupManifest, LsnRange, ObjectRef, SnapshotPosition
from binhoard.domain.restore_plan import (
    AmbiguousPositionError,
    ArchiveGapError,
    ArchiveInconsistentError,
    BrokenBackupError,
    FilePosTarget,
    GtidTarget,
    Latest,
    NoBackupError,
    ResolvedStop,
    RestorePlan,
    Target,
    TargetBeforeSnapshotError,
    TargetBeyondArchiveError,
    TargetSyntaxError,
    TargetUnreachableError,
    TimeTarget,
    UnknownDomainError,
    exact_stop,
    parse_gtid_target,
    parse_position_target,
    parse_target,
    parse_time_target,
    plan_restore,
)

P = GtidPosition.parse
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- building streams --------------------------------------------------------------------
def trx_table(specs: Sequence[tuple[str, int]]) -> TransactionTable:
    """Transactions back to back from offset 256, 100 bytes each: ``(gtid, commit time)``."""
    rows = []
    for i, (text, commit_time) in enumerate(specs):
        gtid = Gtid.parse(text)
        rows.append(
            (gtid.domain_id, gtid.server_id, gtid.seq_no, commit_time, 256 + 100 * i, 356 + 100 * i)
        )
    return TransactionTable(rows)


def object_ref(key: str, size: int) -> ObjectRef:
    return ObjectRef(key, "none", (), size, "0" * 64, size, "0" * 64)


@dataclass
class Stream:
    backup: BackupManifest
    records: list[BinlogRecord]
    tables: list[TransactionTable]

    def catalog(self) -> dict[str, list[BinlogRecord]]:
        return {self.backup.backup_id: self.records}


def build_stream(
    backup_id: str,
    files: Sequence[Sequence[tuple[str, int]]],
    *,
    first: int = 1,
    start: str = "",
    in_snapshot: int = 0,
    completed: int = 0,
    gtid_lists: dict[int, str] | None = None,
    snapshot_pos: int | None = None,
    snapshot_gtid: str | None = None,
) -> Stream:
    """A backup whose snapshot follows the first ``in_snapshot`` transactions of the first
    of ``files`` (named ``binlog.<first>``, ...), and its stream's records. Each file
    starts where the previous one ended unless ``gtid_lists`` says otherwise (gaps)."""
    records: list[BinlogRecord] = []
    tables: list[TransactionTable] = []
    state = P(start)
    for seq, specs in enumerate(files):
        table = trx_table(specs)
        name = f"binlog.{first + seq:06d}"
        at_start = P(gtid_lists[seq]) if gtid_lists and seq in gtid_lists else state
        segment = BinlogSegment.from_transactions(name, 266 + 100 * len(table), at_start, table)
        records.append(
            BinlogRecord(
                stream_id=backup_id,
                seq=seq,
                server_id=1,
                name=name,
                object=object_ref(f"binlogs/1/{name}", segment.size),
                gtid_list_at_start=segment.gtid_list_at_start,
                gtid_position_at_end=segment.end_position,
                first_gtid=segment.first_gtid,
                last_gtid=segment.last_gtid,
                first_commit_time=segment.first_commit_time,
                last_commit_time=segment.last_commit_time,
                min_commit_time=min(table.commit_times, default=None),
                max_commit_time=segment.max_commit_time,
                transactions=segment.transaction_count,
                start_offset=4,
                archived_at=EPOCH,
            )
        )
        tables.append(table)
        state = segment.end_position
    first_table = tables[0] if tables else TransactionTable()
    pos = 256 + 100 * in_snapshot if snapshot_pos is None else snapshot_pos
    gtid = P(start)
    for entry in first_table[:in_snapshot]:
        gtid = gtid.advance(entry.gtid)
    if records:
        records[0] = replace(records[0], start_offset=pos)
    when = datetime.fromtimestamp(completed, UTC)
    backup = BackupManifest(
        backup_id=backup_id,
        backup_type="full",
        parent_backup_id=None,
        chain=(backup_id,),
        server_id=1,
        flavour="mariadb",
        server_version="10.11.19-MariaDB",
        tool_version="mariabackup",
        started_at=when,
        completed_at=when,
        snapshot=SnapshotPosition(
            f"binlog.{first:06d}", pos, gtid.format() if snapshot_gtid is None else snapshot_gtid
        ),
        lsn=LsnRange(0, 0, 0),
        data=object_ref(f"backups/{backup_id}/data.xbstream", 1),
        my_cnf=object_ref(f"backups/{backup_id}/my.cnf", 1),
    )
    return Stream(backup, records, tables)


def tables_of(*streams: Stream) -> dict[tuple[str, int], TransactionTable]:
    return {(s.backup.backup_id, i): t for s in streams for i, t in enumerate(s.tables)}


def resolve(plan: RestorePlan, tables: dict[tuple[str, int], TransactionTable]) -> ResolvedStop:
    """What a restore does once the plan's files are downloaded and indexed."""
    if not plan.records:
        return exact_stop(plan, TransactionTable())
    first, last = plan.records[0], plan.records[-1]
    records = plan.records
    return exact_stop(
        plan,
        tables[last.stream_id, last.seq],
        tables[first.stream_id, first.seq] if len(plan.records) > 1 else None,
        {
            i: tables[r.stream_id, r.seq]
            for i, r in enumerate(records[:-1])
            if starts_inside(records, i)
        },
    )


def applied(
    resolved: ResolvedStop, tables: dict[tuple[str, int], TransactionTable]
) -> list[TransactionIndexEntry]:
    """The transactions replay applies: from the snapshot offset to the end offset."""
    out: list[TransactionIndexEntry] = []
    for i, record in enumerate(resolved.records):
        entries = [
            e for e in tables[record.stream_id, record.seq] if e.start_offset >= record.start_offset
        ]
        if i == len(resolved.records) - 1:
            assert entries, "a resolved stop never ends with a file with nothing to apply"
            if resolved.end_offset is not None:
                assert resolved.end_offset in {e.end_offset for e in entries}
                entries = [e for e in entries if e.end_offset <= resolved.end_offset]
            else:
                assert i > 0, "only a middle file's end offset is left to the caller"
        out += entries
    return out


def seqs(entries: Sequence[TransactionIndexEntry]) -> list[int]:
    return [e.gtid.seq_no for e in entries]


# --- a site with two backups -------------------------------------------------------------
# A completed at 1000, snapshot after 0-1-2 at binlog.000001:456.
# B completed at 1025, snapshot after 0-1-8 at binlog.000004:356.
# Commit times are not monotonic (0-1-6 before 0-1-5); binlog.000003 holds no transaction.
F1 = [("0-1-1", 990), ("0-1-2", 995), ("0-1-3", 1001), ("0-1-4", 1003)]
F2 = [("0-1-5", 1010), ("0-1-6", 1008), ("0-1-7", 1012)]
F3: list[tuple[str, int]] = []
F4 = [("0-1-8", 1020), ("0-1-9", 1030)]
F5 = [("0-1-10", 1040)]
A = build_stream("A", [F1, F2, F3, F4], in_snapshot=2, completed=1000)
B = build_stream("B", [F4, F5], first=4, start="0-1-7", in_snapshot=1, completed=1025)
BACKUPS = [A.backup, B.backup]
CATALOG = {**A.catalog(), **B.catalog()}
TABLES = tables_of(A, B)


def run(
    target: Target,
    *,
    approximate: bool = False,
    backups: Sequence[BackupManifest] = BACKUPS,
    catalog: dict[str, list[BinlogRecord]] = CATALOG,
    tables: dict[tuple[str, int], TransactionTable] = TABLES,
    backup_id: str | None = None,
) -> tuple[RestorePlan, ResolvedStop]:
    plan = plan_restore(backups, catalog, target, approximate_ok=approximate, backup_id=backup_id)
    return plan, resolve(plan, tables)


T = TimeTarget


def gtid(text: str) -> GtidTarget:
    return GtidTarget(P(text))


def pos(text: str) -> FilePosTarget:
    return parse_position_target(text)


@pytest.mark.parametrize(
    ("target", "approximate", "shape", "expected"),
    [
        (Latest(), False, ("B", 2, "end_of_file"), [9, 10]),
        # time: stop before the first transaction (in binlog order) committed at or after T
        (T(1002), False, ("A", 1, "exact"), [3]),
        (T(1001), False, ("A", 1, "exact"), []),
        (T(1009), False, ("A", 2, "exact"), [3, 4]),  # 0-1-5 (1010) stops it, 0-1-6 (1008) too
        (T(1011), False, ("A", 2, "exact"), [3, 4, 5, 6]),
        (T(1013), False, ("A", 4, "exact"), [3, 4, 5, 6, 7]),  # stop at binlog.000004's start
        (T(1025), False, ("B", 1, "exact"), []),  # B completed at 1025: its snapshot precedes
        (T(1035), False, ("B", 2, "exact"), [9]),
        # approximate: whole files whose transactions all committed before T
        (T(1011), True, ("A", 1, "end_of_file"), [3, 4]),
        (T(1013), True, ("A", 2, "end_of_file"), [3, 4, 5, 6, 7]),  # empty binlog.000003 dropped
        (T(1002), True, ("A", 0, "snapshot"), []),
        # GTID
        (gtid("0-1-6"), False, ("A", 2, "exact"), [3, 4, 5, 6]),
        (gtid("0-1-7"), False, ("A", 2, "end_of_file"), [3, 4, 5, 6, 7]),
        (gtid("0-1-2"), False, ("A", 0, "snapshot"), []),
        (gtid("0-1-8"), False, ("B", 0, "snapshot"), []),
        (gtid("0-1-9"), False, ("B", 1, "end_of_file"), [9]),
        (gtid("0-1-10"), False, ("B", 2, "end_of_file"), [9, 10]),
        # file:position: transactions ending at or before it, and everything before the file
        (pos("binlog.000002:456"), False, ("A", 2, "exact"), [3, 4, 5, 6]),
        (pos("binlog.000002:455"), False, ("A", 2, "exact"), [3, 4, 5]),
        (pos("binlog.000002:300"), False, ("A", 2, "exact"), [3, 4]),
        (pos("binlog.000003:4"), False, ("A", 2, "end_of_file"), [3, 4, 5, 6, 7]),
        (pos("binlog.000004:300"), False, ("A", 4, "exact"), [3, 4, 5, 6, 7]),
        (pos("binlog.000004:356"), False, ("B", 0, "snapshot"), []),
        (pos("binlog.000004:457"), False, ("B", 1, "exact"), [9]),
        (pos("binlog.000005:366"), False, ("B", 2, "exact"), [9, 10]),
    ],
)
def test_plans(
    target: Target, approximate: bool, shape: tuple[str, int, str], expected: list[int]
) -> None:
    backup, files, stop = shape
    plan, resolved = run(target, approximate=approximate)
    assert plan.backup.backup_id == backup
    assert len(plan.records) == files
    assert plan.stop.kind == stop
    assert plan.approximate == (approximate and isinstance(target, TimeTarget))
    assert seqs(applied(resolved, TABLES)) == expected
    assert resolved.transactions == len(expected)
    last = f"0-1-{expected[-1]}" if expected else plan.backup.snapshot.gtid_position
    assert resolved.gtid_position == P(last)


def test_stop_after_a_middle_file_leaves_its_end_offset_to_the_caller() -> None:
    plan, resolved = run(T(1013))
    assert [r.name for r in resolved.records] == ["binlog.000001", "binlog.000002"]
    assert resolved.end_offset is None
    assert resolved.stop_before is not None
    assert resolved.stop_before.gtid == Gtid(0, 1, 8)
    # The planned files end with the one holding the stop; nothing after it.
    assert plan.records[-1].name == "binlog.000004"


def test_exact_stop_end_offsets_point_after_the_last_applied_transaction() -> None:
    _, resolved = run(T(1002))
    assert (resolved.records[-1].name, resolved.end_offset) == ("binlog.000001", 556)
    _, resolved = run(T(1009))
    assert (resolved.records[-1].name, resolved.end_offset) == ("binlog.000001", 656)
    _, resolved = run(gtid("0-1-6"))
    assert (resolved.records[-1].name, resolved.end_offset) == ("binlog.000002", 456)


def test_progress_facts() -> None:
    plan, resolved = run(T(1013))
    assert plan.total_bytes == sum(r.size for r in A.records) == 666 + 566 + 266 + 466
    assert plan.transactions_upper_bound == 9
    assert resolved.transactions == 5


def test_a_chosen_backup() -> None:
    _, resolved = run(Latest(), backup_id="A")
    assert seqs(applied(resolved, TABLES)) == [3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(TargetBeforeSnapshotError, match="backup B"):
        plan_restore(BACKUPS, CATALOG, T(1010), backup_id="B")
    with pytest.raises(NoBackupError, match="no backup nope") as unknown:
        plan_restore(BACKUPS, CATALOG, Latest(), backup_id="nope")
    # Not found, as a plain restore of an unknown backup says (exit 3, HTTP 404).
    assert (unknown.value.exit_code, unknown.value.http_status) == (3, 404)


# The way out, in words for the CLI and the daemon's API alike.
LATEST_BOTH_WAYS = "(--to-latest, or no target over the API)"


@pytest.mark.parametrize(
    ("target", "error", "words"),
    [
        (T(999), TargetBeforeSnapshotError, ["no backup precedes", "oldest is A", "completed"]),
        (gtid("0-1-1"), TargetBeforeSnapshotError, ["no backup precedes", "0-1-1"]),
        (pos("binlog.000001:100"), TargetBeforeSnapshotError, ["binlog.000001:456"]),
        (pos("other.000002:500"), TargetBeforeSnapshotError, ["no backup precedes"]),
        (T(1041), TargetBeyondArchiveError, [LATEST_BOTH_WAYS, "binlog.000005", "00:17:20Z"]),
        (gtid("0-1-11"), TargetBeyondArchiveError, [LATEST_BOTH_WAYS, "missing 0-1-11", "0-1-10"]),
        (gtid("0-1-5,1-1-1"), UnknownDomainError, ["domain 1 is not", "archive: 0)"]),
        (gtid("5-151-10"), UnknownDomainError, ["domain 5 is not in the archive", ": 0)"]),
        (gtid("5-1-1,7-1-1"), UnknownDomainError, ["domains 5, 7 are not in the archive"]),
        (
            pos("binlog.000006:4"),
            TargetBeyondArchiveError,
            ["not archived yet", "binlog.000005", LATEST_BOTH_WAYS],
        ),
        (pos("binlog.000005:367"), TargetSyntaxError, ["beyond the end of binlog.000005 (366"]),
        (gtid("0-2-7"), TargetUnreachableError, ["not in this history", "0-1-7"]),
    ],
)
def test_refusals(target: Target, error: type[Exception], words: list[str]) -> None:
    with pytest.raises(error) as caught:
        plan_restore(BACKUPS, CATALOG, target)
    for word in words:
        assert word in str(caught.value)
    assert isinstance(caught.value, PlanError)
    assert isinstance(caught.value, UsageError)


def test_a_domain_first_seen_after_the_snapshot_is_in_the_archive() -> None:
    """Domains come from the binlog records too, not only from backups' snapshots."""
    later = build_stream("D", [[("0-1-1", 10), ("0-1-2", 11)], [("1-1-1", 20)]], in_snapshot=1)
    plan = plan_restore([later.backup], later.catalog(), gtid("0-1-2,1-1-1"))
    assert [r.name for r in plan.records] == ["binlog.000001", "binlog.000002"]
    with pytest.raises(UnknownDomainError, match=r"domain 2 is not .* archive: 0, 1\)"):
        plan_restore([later.backup], later.catalog(), gtid("0-1-2,2-1-1"))


def test_a_broken_backup_is_refused_by_name_and_never_chosen() -> None:
    why = "document backups/B/manifest.json is corrupt: checksum mismatch"
    with pytest.raises(BrokenBackupError, match="backup B cannot be restored: document backups/B"):
        plan_restore([A.backup], CATALOG, Latest(), backup_id="B", broken_backups={"B": why})
    plan = plan_restore([A.backup], CATALOG, Latest(), broken_backups={"B": why})
    assert plan.backup.backup_id == "A"


def test_a_broken_stream_serves_targets_before_the_problem_only() -> None:
    why = "document streams/A/binlogs/0000000002.json is corrupt: checksum mismatch"
    intact = {"A": A.records[:2]}
    plan = plan_restore([A.backup], intact, T(1011), broken_streams={"A": why})
    assert [r.seq for r in plan.records] == [0, 1]
    for target in (T(1013), Latest(), gtid("0-1-8")):
        with pytest.raises(BrokenBackupError) as caught:
            plan_restore([A.backup], intact, target, broken_streams={"A": why})
        assert "archive of backup A is broken" in str(caught.value)
        assert "0000000002.json" in str(caught.value)
        assert "reaches the end of binlog.000002" in str(caught.value)


def test_gtid_of_another_history_is_refused_once_the_file_is_read() -> None:
    plan = plan_restore(BACKUPS, CATALOG, gtid("0-2-6"))
    with pytest.raises(TargetUnreachableError, match="0-1-6 where the target names 0-2-6"):
        resolve(plan, TABLES)


def test_latest_when_the_first_file_ends_at_the_snapshot() -> None:
    done = build_stream("L", [F1[:2]], in_snapshot=2)
    plan = plan_restore([done.backup], done.catalog(), Latest())
    assert plan.stop.kind == "end_of_file"  # the record cannot tell: its 2 are in the snapshot
    resolved = resolve(plan, tables_of(done))
    assert (resolved.records, resolved.transactions) == ((), 0)
    assert resolved.gtid_position == P("0-1-2")


def test_no_backups() -> None:
    with pytest.raises(NoBackupError, match="no backup"):
        plan_restore([], {}, Latest())


# --- gaps --------------------------------------------------------------------------------
C = build_stream(
    "C",
    [[("0-1-1", 1001)], [("0-1-4", 1010)], [("0-1-5", 1020)]],
    gtid_lists={1: "0-1-3"},  # 0-1-2..0-1-3 were never archived
    completed=1000,
)


@pytest.mark.parametrize(
    ("target", "approximate", "expected"),
    [
        (T(1001), False, []),
        (T(1002), True, [1]),  # whole files before binlog.000002: the gap comes after
        (gtid("0-1-1"), False, [1]),
        (pos("binlog.000001:356"), False, [1]),
    ],
)
def test_a_gap_after_the_stop_does_not_matter(
    target: Target, approximate: bool, expected: list[int]
) -> None:
    _, resolved = run(
        target,
        approximate=approximate,
        backups=[C.backup],
        catalog=C.catalog(),
        tables=tables_of(C),
    )
    assert seqs(applied(resolved, tables_of(C))) == expected


@pytest.mark.parametrize(
    "target", [T(1002), T(1020), gtid("0-1-4"), Latest(), pos("binlog.000002:4")]
)
def test_a_gap_before_the_stop_refuses(target: Target) -> None:
    with pytest.raises(ArchiveGapError) as caught:
        plan_restore([C.backup], C.catalog(), target)
    message = str(caught.value)
    assert (
        "gap between binlog.000001 and binlog.000002: transactions 0-*-2..0-*-3 of domain 0"
        in message
    )
    assert "reaches the end of binlog.000001 (GTID 0-1-1" in message
    assert caught.value.problems == (GtidGap("binlog.000001", "binlog.000002", 0, 2, 3),)


# --- a stream without binlogs ------------------------------------------------------------
D = build_stream("D", [], first=3, start="0-1-5", completed=1000, snapshot_pos=1234)


@pytest.mark.parametrize("target", [Latest(), gtid("0-1-5"), pos("binlog.000003:1234")])
def test_an_empty_stream_restores_the_backup_alone(target: Target) -> None:
    plan = plan_restore([D.backup], D.catalog(), target)
    assert plan.records == ()
    assert plan.stop.kind == "snapshot"
    resolved = exact_stop(plan, TransactionTable())
    assert resolved.records == ()
    assert resolved.gtid_position == P("0-1-5")


@pytest.mark.parametrize("target", [T(1000), T(5000), gtid("0-1-6"), pos("binlog.000003:2000")])
def test_an_empty_stream_cannot_prove_a_later_target(target: Target) -> None:
    with pytest.raises(TargetBeyondArchiveError, match="holds no binlog after its snapshot"):
        plan_restore([D.backup], {}, target)


# --- records and files that disagree -----------------------------------------------------
def test_first_record_must_hold_the_snapshot() -> None:
    broken = replace(A.records[0], start_offset=4)
    with pytest.raises(ArchiveInconsistentError, match="does not hold its snapshot"):
        plan_restore([A.backup], {"A": [broken, *A.records[1:]]}, Latest())


def test_snapshot_inside_a_transaction() -> None:
    odd = build_stream("O", [F1], in_snapshot=1, snapshot_pos=400)
    plan = plan_restore([odd.backup], odd.catalog(), Latest())
    with pytest.raises(ArchiveInconsistentError, match=r"binlog\.000001:400 lies inside"):
        resolve(plan, tables_of(odd))


def test_snapshot_gtid_must_match_the_state_at_its_offset() -> None:
    odd = build_stream("O", [F1], in_snapshot=2, snapshot_gtid="0-1-1")
    plan = plan_restore([odd.backup], odd.catalog(), Latest())
    with pytest.raises(ArchiveInconsistentError, match="is 0-1-2, not its snapshot 0-1-1"):
        resolve(plan, tables_of(odd))


def test_index_must_match_the_record() -> None:
    plan = plan_restore(BACKUPS, CATALOG, gtid("0-1-6"))
    with pytest.raises(ArchiveInconsistentError, match=r"index of binlog\.000002"):
        exact_stop(plan, trx_table(F2[:2]), A.tables[0])
    with pytest.raises(ValueError, match="first file's index"):
        exact_stop(plan, A.tables[1])


def test_a_transaction_in_the_snapshot_at_or_after_the_target_time_refuses() -> None:
    # Clocks disagreed: the snapshot holds 0-1-1 committed at 1005, yet the backup
    # completed at 1000.
    skewed = build_stream("S", [[("0-1-1", 1005), ("0-1-2", 999)]], in_snapshot=1, completed=1000)
    plan = plan_restore([skewed.backup], skewed.catalog(), T(1003))
    with pytest.raises(TargetBeforeSnapshotError, match="holds 0-1-1, committed at"):
        resolve(plan, tables_of(skewed))


def test_interleaved_domains_can_make_a_gtid_unreachable() -> None:
    across = build_stream("X", [[("0-1-1", 1), ("1-1-1", 2)], [("0-1-2", 3)]])
    with pytest.raises(TargetUnreachableError, match=r"binlog\.000001 holds transactions beyond"):
        plan_restore([across.backup], across.catalog(), gtid("0-1-2"))
    within = build_stream("Y", [[("1-1-1", 1), ("0-1-1", 2)]])
    plan = plan_restore([within.backup], within.catalog(), gtid("0-1-1"))
    with pytest.raises(TargetUnreachableError, match="without 0-1-1"):
        resolve(plan, tables_of(within))


# --- parsing targets ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-01T12:00:00Z", 1714564800),
        ("2024-05-01T14:00:00+02:00", 1714564800),
        ("2024-05-01 12:00:00+00:00", 1714564800),
        ("@1714564800", 1714564800),
        (" @0 ", 0),
    ],
)
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time_target(text) == TimeTarget(expected)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("2024-05-01T12:00:00", "no time zone"),
        ("2024-05-01", "no time zone"),
        ("2024-05-01T12:00:00.5Z", "fraction of a second"),
        ("yesterday", "not a time"),
        ("@-5", "not a time"),
        ("@12a", "not a time"),
        ("@99999999999999999999", "after 9999-12-31"),
        ("@253402300800", "after 9999-12-31"),
    ],
)
def test_parse_time_refuses(text: str, words: str) -> None:
    with pytest.raises(TargetSyntaxError, match=f"--to-time: .*{words}"):
        parse_time_target(text)


def test_time_target_from_datetime() -> None:
    assert TimeTarget.from_datetime(datetime(2024, 5, 1, 12, tzinfo=UTC)).at == 1714564800
    with pytest.raises(ValueError, match="no time zone"):
        TimeTarget.from_datetime(datetime(2024, 5, 1, 12))
    assert "2024-05-01T12:00:00Z (@1714564800)" in TimeTarget(1714564800).describe()


def test_parse_gtid_and_position() -> None:
    assert parse_gtid_target("0-1-100,1-2-7") == GtidTarget(P("1-2-7,0-1-100"))
    assert parse_position_target("binlog.000042:1234") == FilePosTarget("binlog.000042", 1234)
    assert parse_position_target("my:host-bin.000001:4") == FilePosTarget("my:host-bin.000001", 4)
    for bad in ("", "0-1-x", "0-1-1,0-1-2"):
        with pytest.raises(TargetSyntaxError, match="--to-gtid"):
            parse_gtid_target(bad)
    bad_positions = ("binlog.000001", "binlog.000001:3", "binlog:100", "binlog.000001:-4")
    for bad in (*bad_positions, "0/binlog.000001:4", "4294967296/binlog.000001:4"):
        with pytest.raises(TargetSyntaxError, match="--to-position"):
            parse_position_target(bad)


def test_parse_target_takes_exactly_one() -> None:
    assert parse_target(to_latest=True) == Latest()
    assert parse_target(to_time="@5") == TimeTarget(5)
    assert parse_target(to_gtid="0-1-5") == gtid("0-1-5")
    assert parse_target(to_position="binlog.000001:4") == pos("binlog.000001:4")
    with pytest.raises(TargetSyntaxError, match="exactly one"):
        parse_target()
    with pytest.raises(TargetSyntaxError, match="given: --to-time, --to-gtid"):
        parse_target(to_time="@5", to_gtid="0-1-5")


@pytest.mark.parametrize("option", ["to_time", "to_gtid", "to_position"])
@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_an_empty_or_blank_target_is_refused(option: str, value: str) -> None:
    name = "--" + option.replace("_", "-")
    with pytest.raises(TargetSyntaxError, match=f"{name} is empty") as info:
        parse_target(**{option: value})
    assert info.value.exit_code == 2


# --- properties --------------------------------------------------------------------------
times = st.integers(0, 30)
time_files = st.lists(st.lists(times, max_size=4), min_size=1, max_size=5)
domain_files = st.lists(
    st.lists(st.tuples(st.integers(0, 1), times), max_size=4), min_size=1, max_size=5
)


def stream_of_times(files: list[list[int]], in_snapshot: int) -> Stream:
    seq = iter(range(1, 1000))
    specs = [[(f"0-1-{next(seq)}", t) for t in file] for file in files]
    return build_stream("P", specs, in_snapshot=in_snapshot)


def stream_of_domains(files: list[list[tuple[int, int]]], in_snapshot: int) -> Stream:
    counters = {0: 0, 1: 0}
    specs = []
    for file in files:
        spec = []
        for domain, t in file:
            counters[domain] += 1
            spec.append((f"{domain}-1-{counters[domain]}", t))
        specs.append(spec)
    return build_stream("P", specs, start="0-1-0", in_snapshot=in_snapshot)


def split_at_snapshot(
    stream: Stream,
) -> tuple[list[TransactionIndexEntry], list[tuple[int, TransactionIndexEntry]]]:
    """(transactions in the snapshot, (file index, transaction) after it, in order)."""
    start = stream.records[0].start_offset
    before = [e for e in stream.tables[0] if e.start_offset < start]
    after = [
        (i, e)
        for i, table in enumerate(stream.tables)
        for e in table
        if i or e.start_offset >= start
    ]
    return before, after


def position_after(start: GtidPosition, entries: Sequence[TransactionIndexEntry]) -> GtidPosition:
    for entry in entries:
        start = start.advance(entry.gtid)
    return start


@given(time_files, st.data())
def test_time_plan_applies_exactly_what_stop_for_time_gives(
    files: list[list[int]], data: st.DataObject
) -> None:
    stream = stream_of_times(files, data.draw(st.integers(0, len(files[0]))))
    target = data.draw(st.integers(0, 32))
    tables = tables_of(stream)
    before, numbered = split_at_snapshot(stream)
    after = [e for _, e in numbered]
    if all(e.commit_time < target for e in before + after):
        with pytest.raises(TargetBeyondArchiveError):
            plan_restore([stream.backup], stream.catalog(), TimeTarget(target))
        return
    plan = plan_restore([stream.backup], stream.catalog(), TimeTarget(target))
    assert plan.stop.kind == "exact"
    if any(e.commit_time >= target for e in before):
        with pytest.raises(TargetBeforeSnapshotError):
            resolve(plan, tables)
        return
    expected = stop_for_time(after, target)
    assert expected.stop_before is not None
    # The last planned file holds the stop; no planned file comes after it.
    stop_file = next(i for i, e in numbered if e == expected.stop_before)
    assert plan.records[-1].seq == stop_file
    resolved = resolve(plan, tables)
    assert applied(resolved, tables) == after[: expected.count]
    assert resolved.transactions == expected.count
    assert resolved.stop_before == expected.stop_before
    assert resolved.gtid_position == position_after(plan.snapshot, after[: expected.count])


@given(time_files, st.data())
def test_latest_applies_every_archived_transaction(
    files: list[list[int]], data: st.DataObject
) -> None:
    stream = stream_of_times(files, data.draw(st.integers(0, len(files[0]))))
    tables = tables_of(stream)
    plan = plan_restore([stream.backup], stream.catalog(), Latest())
    _, numbered = split_at_snapshot(stream)
    after = [e for _, e in numbered]
    assert not plan.records or plan.records[-1].transactions  # trailing empty files dropped
    resolved = resolve(plan, tables)
    assert applied(resolved, tables) == after
    assert resolved.gtid_position == stream.records[-1].gtid_position_at_end


@given(time_files, st.data())
def test_approximate_time_applies_whole_files_before_the_target(
    files: list[list[int]], data: st.DataObject
) -> None:
    stream = stream_of_times(files, data.draw(st.integers(0, len(files[0]))))
    target = data.draw(st.integers(0, 32))
    tables = tables_of(stream)
    if all(t < target for file in files for t in file):
        with pytest.raises(TargetBeyondArchiveError):
            plan_restore([stream.backup], stream.catalog(), TimeTarget(target), approximate_ok=True)
        return
    plan = plan_restore([stream.backup], stream.catalog(), TimeTarget(target), approximate_ok=True)
    assert plan.stop.kind in {"snapshot", "end_of_file"}
    whole = 0
    while all(t < target for t in files[whole]):
        whole += 1
    _, numbered = split_at_snapshot(stream)
    expected = [e for i, e in numbered if i < whole]
    resolved = resolve(plan, tables)
    assert applied(resolved, tables) == expected
    assert all(e.commit_time < target for e in expected)


@given(domain_files, st.data())
def test_gtid_plan_ends_exactly_at_the_target(
    files: list[list[tuple[int, int]]], data: st.DataObject
) -> None:
    stream = stream_of_domains(files, data.draw(st.integers(0, len(files[0]))))
    tables = tables_of(stream)
    _, numbered = split_at_snapshot(stream)
    after = [e for _, e in numbered]
    count = data.draw(st.integers(0, len(after)))
    target = position_after(P(stream.backup.snapshot.gtid_position), after[:count])
    plan = plan_restore([stream.backup], stream.catalog(), GtidTarget(target))
    if count:
        assert plan.records[-1].seq == numbered[count - 1][0]
    else:
        assert plan.records == ()
    resolved = resolve(plan, tables)
    assert applied(resolved, tables) == after[:count]
    assert resolved.gtid_position == target
    assert resolved.transactions == count


@given(time_files, st.data())
def test_position_plan_applies_everything_before_the_position(
    files: list[list[int]], data: st.DataObject
) -> None:
    stream = stream_of_times(files, data.draw(st.integers(0, len(files[0]))))
    tables = tables_of(stream)
    index = data.draw(st.integers(0, len(files) - 1))
    record = stream.records[index]
    offset = data.draw(st.integers(4, record.size + 20))
    target = FilePosTarget(record.name, offset)
    if offset > record.size:
        with pytest.raises(TargetSyntaxError, match="beyond the end"):
            plan_restore([stream.backup], stream.catalog(), target)
        return
    if index == 0 and offset < record.start_offset:
        with pytest.raises(TargetBeforeSnapshotError):
            plan_restore([stream.backup], stream.catalog(), target)
        return
    plan = plan_restore([stream.backup], stream.catalog(), target)
    assert all(r.seq <= index for r in plan.records)
    _, numbered = split_at_snapshot(stream)
    expected = [e for i, e in numbered if i < index or (i == index and e.end_offset <= offset)]
    resolved = resolve(plan, tables)
    assert applied(resolved, tables) == expected


def test_a_gtid_target_that_leaves_out_a_domain_of_the_snapshot_says_so() -> None:
    """On a server writing domains 0 and 1, ``--to-gtid 0-1-2`` lacks domain 1: the
    refusal names it and the snapshot's GTID there, not "no backup precedes"."""
    two = build_stream(
        "D", [[("0-1-1", 10), ("0-1-2", 11)], [("0-1-3", 20)]], start="1-1-3", in_snapshot=1
    )
    with pytest.raises(TargetBeforeSnapshotError) as caught:
        plan_restore([two.backup], two.catalog(), gtid("0-1-2"))
    message = str(caught.value)
    assert "names no GTID for domain 1" in message and "(1-1-3)" in message
    assert "0-1-2,1-1-3" in message and "no backup precedes" not in message
    plan = plan_restore([two.backup], two.catalog(), gtid("0-1-2,1-1-3"))
    assert [r.name for r in plan.records] == ["binlog.000001"]
    with pytest.raises(TargetBeforeSnapshotError, match="no backup precedes"):
        plan_restore([two.backup], two.catalog(), gtid("0-1-1,1-1-2"))  # truly before


def test_an_exact_target_past_a_broken_newer_archive_is_planned_from_an_older_backup() -> None:
    """B's archive is broken from its first record; A's reaches 0-1-9: the same database
    comes from A. For --to-latest, whose end past the break is unknown, the refusal
    names A and what it reaches instead of silently restoring less."""
    why = "document streams/B/binlogs/0000000000.json is corrupt: checksum mismatch"
    intact = {**A.catalog(), "B": []}
    plan = plan_restore(BACKUPS, intact, gtid("0-1-9"), broken_streams={"B": why})
    assert plan.backup.backup_id == "A"
    assert seqs(applied(resolve(plan, TABLES), TABLES)) == [3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(BrokenBackupError) as caught:
        plan_restore(BACKUPS, intact, Latest(), broken_streams={"B": why})
    assert "archive of backup B is broken" in str(caught.value)
    assert "(--backup A --to-latest, or stream_id A and no target over the API)" in str(
        caught.value
    )
    # Forced to B, the refusal stands.
    with pytest.raises(BrokenBackupError, match="archive of backup B is broken"):
        plan_restore(BACKUPS, intact, gtid("0-1-9"), backup_id="B", broken_streams={"B": why})


# --- across a promotion (docs/format.md, "Promotions and fencing") -----------------------------
def _across_a_promotion() -> tuple[list[BinlogRecord], dict[tuple[str, int], TransactionTable]]:
    """Server 1 archived 0-1-1..3 in records 0-1 and was deposed at record 2 from 0-1-3;
    its late record 2 (0-1-4, 0-1-5) is fenced, so readers never hand it on. Server 2's
    files (named from binlog.000001 again) continue at record 3 from 0-1-3 with 0-2-4..6:
    the same sequence numbers as the deposed primary's late writes."""
    old = build_stream("X", [[("0-1-1", 100), ("0-1-2", 110)], [("0-1-3", 120)]], completed=90)
    new = build_stream("Y", [[("0-2-4", 200), ("0-2-5", 210)], [("0-2-6", 220)]], start="0-1-3")
    moved = [
        replace(r, stream_id="X", seq=3 + i, server_id=2, start_offset=4)
        for i, r in enumerate(new.records)
    ]
    tables = {**tables_of(old), **{("X", 3 + i): t for i, t in enumerate(new.tables)}}
    return [*old.records, *moved], tables


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (gtid("0-1-2"), ["0-1-1", "0-1-2"]),  # before the failover
        (gtid("0-1-3"), ["0-1-1", "0-1-2", "0-1-3"]),  # at it
        (gtid("0-2-5"), ["0-1-1", "0-1-2", "0-1-3", "0-2-4", "0-2-5"]),  # after it
        (Latest(), ["0-1-1", "0-1-2", "0-1-3", "0-2-4", "0-2-5", "0-2-6"]),
        (T(215), ["0-1-1", "0-1-2", "0-1-3", "0-2-4", "0-2-5"]),
    ],
)
def test_a_restore_across_a_promotion_applies_what_each_owner_committed(
    target: Target, expected: list[str]
) -> None:
    kept, tables = _across_a_promotion()
    backup = build_stream("X", [[("0-1-1", 100)]], completed=90).backup
    _, resolved = run(target, backups=[backup], catalog={"X": kept}, tables=tables)
    assert [e.gtid.format() for e in applied(resolved, tables)] == expected


def test_the_deposed_primarys_late_write_is_not_in_the_history() -> None:
    # 0-1-4 was committed only on the deposed primary after the promotion point: no
    # restore reaches it, though 0-2-4 has its sequence number.
    kept, tables = _across_a_promotion()
    backup = build_stream("X", [[("0-1-1", 100)]], completed=90).backup
    with pytest.raises(PlanError):
        run(gtid("0-1-4"), backups=[backup], catalog={"X": kept}, tables=tables)


def _across_a_takeover_inside_a_file(
    start_offset: int = 456,
) -> tuple[list[BinlogRecord], dict[tuple[str, int], TransactionTable]]:
    """Server 1 archived 0-1-1..3 in records 0-1 and died. Server 2, its replica, logged
    what it replicated (0-1-2, 0-1-3 after its Gtid_list 0-1-1), was promoted at 0-1-3
    and wrote 0-2-4..5 in the same binlog, then 0-2-6 in the next: its first record
    starts inside that file, at the boundary after 0-1-3 (byte 456)."""
    old = build_stream("X", [[("0-1-1", 100), ("0-1-2", 110)], [("0-1-3", 120)]], completed=90)
    new = build_stream(
        "Y",
        [[("0-1-2", 110), ("0-1-3", 120), ("0-2-4", 200), ("0-2-5", 210)], [("0-2-6", 220)]],
        start="0-1-1",
    )
    moved = [
        replace(
            r, stream_id="X", seq=2 + i, server_id=2, start_offset=start_offset if i == 0 else 4
        )
        for i, r in enumerate(new.records)
    ]
    tables = {**tables_of(old), **{("X", 2 + i): t for i, t in enumerate(new.tables)}}
    return [*old.records, *moved], tables


OLD_OWNER = ["0-1-1", "0-1-2", "0-1-3"]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (gtid("0-1-2"), OLD_OWNER[:2]),  # before the takeover
        (gtid("0-1-3"), OLD_OWNER),  # at it
        (gtid("0-2-4"), [*OLD_OWNER, "0-2-4"]),  # after it, inside the new owner's file
        (gtid("0-2-5"), [*OLD_OWNER, "0-2-4", "0-2-5"]),  # at that file's end
        (gtid("0-2-6"), [*OLD_OWNER, "0-2-4", "0-2-5", "0-2-6"]),  # in the next file
        (Latest(), [*OLD_OWNER, "0-2-4", "0-2-5", "0-2-6"]),
        (T(115), OLD_OWNER[:2]),
        (T(121), OLD_OWNER),  # the new owner's file holds nothing of its own before 200
        (T(205), [*OLD_OWNER, "0-2-4"]),
        (T(215), [*OLD_OWNER, "0-2-4", "0-2-5"]),
    ],
)
def test_a_takeover_inside_a_file_applies_each_transaction_once(
    target: Target, expected: list[str]
) -> None:
    kept, tables = _across_a_takeover_inside_a_file()
    backup = build_stream("X", [[("0-1-1", 100)]], completed=90).backup
    _, resolved = run(target, backups=[backup], catalog={"X": kept}, tables=tables)
    assert [e.gtid.format() for e in applied(resolved, tables)] == expected
    assert resolved.transactions == len(expected)
    assert resolved.gtid_position == P(expected[-1])


def test_a_takeover_whose_start_position_is_not_the_previous_end_is_refused() -> None:
    # Byte 356 is the boundary after 0-1-2: starting there would apply 0-1-3 twice.
    kept, tables = _across_a_takeover_inside_a_file(start_offset=356)
    backup = build_stream("X", [[("0-1-1", 100)]], completed=90).backup
    with pytest.raises(ArchiveInconsistentError, match="not the end of the record before"):
        run(Latest(), backups=[backup], catalog={"X": kept}, tables=tables)
    # Inside a transaction: no boundary there at all.
    kept, tables = _across_a_takeover_inside_a_file(start_offset=400)
    with pytest.raises(ArchiveInconsistentError, match="lies inside transaction 0-1-3"):
        run(gtid("0-2-6"), backups=[backup], catalog={"X": kept}, tables=tables)


def test_a_new_owners_file_that_cannot_hold_the_previous_end_is_a_gap() -> None:
    kept, _ = _across_a_takeover_inside_a_file()
    backup = build_stream("X", [[("0-1-1", 100)]], completed=90).backup
    # Its file starts after 0-1-3 (0-1-2 and 0-1-3 were never logged there): a gap.
    late = replace(kept[2], gtid_list_at_start=P("0-1-5"))
    with pytest.raises(ArchiveGapError, match="gap"):
        run(Latest(), backups=[backup], catalog={"X": [*kept[:2], late, *kept[3:]]})
    # It ends before 0-1-3: it cannot continue the stream.
    short = replace(kept[2], gtid_position_at_end=P("0-1-2"))
    with pytest.raises(ArchiveGapError):
        run(Latest(), backups=[backup], catalog={"X": [*kept[:2], short]})


def _partition(items: list[str], sizes: list[int]) -> list[list[str]]:
    """``items`` cut into consecutive runs of ``sizes`` (the rest in the last run)."""
    runs, at = [], 0
    for size in sizes:
        runs.append(items[at : at + size])
        at += size
    return [*runs[:-1], runs[-1] + items[at:]] if runs else [items]


@given(
    old=st.integers(1, 8),
    old_sizes=st.lists(st.integers(0, 3), min_size=1, max_size=4),
    logged_from=st.integers(0, 8),
    own=st.integers(1, 8),
    own_sizes=st.lists(st.integers(0, 3), min_size=1, max_size=4),
)
def test_any_takeover_inside_a_file_replays_exactly_the_history_prefix(
    old: int, old_sizes: list[int], logged_from: int, own: int, own_sizes: list[int]
) -> None:
    """Server 1 archives 0-1-1..old and dies; server 2 logged 0-1-(j+1)..old (it
    replicated them, j <= old) and then writes 0-2-(old+1)..: its first record starts
    after 0-1-old inside its first file. Every GTID and time target replays exactly the
    prefix of that history, each transaction once."""
    j = min(logged_from, old)
    history = [
        *(f"0-1-{s}" for s in range(1, old + 1)),
        *(f"0-2-{s}" for s in range(old + 1, old + own + 1)),
    ]
    times = {g: 100 + i for i, g in enumerate(history)}  # commit order

    def spec(gtids: list[str]) -> list[tuple[str, int]]:
        return [(g, times[g]) for g in gtids]

    old_files = _partition(history[:old], old_sizes)
    own_files = _partition(history[old:], own_sizes)
    first_own = [*history[j:old], *own_files[0]]
    before = build_stream("X", [spec(f) for f in old_files], completed=90)
    after = build_stream(
        "Y", [spec(first_own), *(spec(f) for f in own_files[1:])], start=f"0-1-{j}" if j else ""
    )
    handover = 256 + 100 * (old - j)  # the boundary after 0-1-old in server 2's file
    moved = [
        replace(r, stream_id="X", seq=len(before.records) + i, server_id=2, start_offset=4)
        for i, r in enumerate(after.records)
    ]
    moved[0] = replace(moved[0], start_offset=handover)
    tables = {
        **tables_of(before),
        **{("X", len(before.records) + i): t for i, t in enumerate(after.tables)},
    }
    catalog = {"X": [*before.records, *moved]}
    for n, target in enumerate(history, 1):
        _, resolved = run(gtid(target), backups=[before.backup], catalog=catalog, tables=tables)
        assert [e.gtid.format() for e in applied(resolved, tables)] == history[:n]
        assert resolved.transactions == n
    for n, gtid_text in enumerate(history):
        _, resolved = run(
            T(times[gtid_text]), backups=[before.backup], catalog=catalog, tables=tables
        )
        assert [e.gtid.format() for e in applied(resolved, tables)] == history[:n]
    _, resolved = run(Latest(), backups=[before.backup], catalog=catalog, tables=tables)
    assert [e.gtid.format() for e in applied(resolved, tables)] == history


# --- a binlog position across a takeover: file names of two servers -------------------------
def _end_of_file(tables: dict[tuple[str, int], TransactionTable], seq: int) -> int:
    return tables["X", seq].end_offsets[-1]


def test_a_position_in_a_file_name_two_servers_have_must_name_its_server() -> None:
    kept, tables = _across_a_promotion()  # binlog.000001..2 of server 1, then of server 2
    backup = build_stream("X", [[("0-1-1", 100)]], completed=90).backup
    end = _end_of_file(tables, 3)
    with pytest.raises(AmbiguousPositionError) as caught:
        run(pos(f"binlog.000001:{end}"), backups=[backup], catalog={"X": kept}, tables=tables)
    message = str(caught.value)
    assert "server 1's (record 0) and server 2's (record 3)" in message
    assert f"give 1/binlog.000001:{end} or 2/binlog.000001:{end}" in message
    _, resolved = run(
        pos(f"2/binlog.000001:{end}"), backups=[backup], catalog={"X": kept}, tables=tables
    )
    assert [e.gtid.format() for e in applied(resolved, tables)] == [
        "0-1-1",
        "0-1-2",
        "0-1-3",
        "0-2-4",
        "0-2-5",
    ]
    _, resolved = run(
        pos(f"1/binlog.000002:{_end_of_file(tables, 1)}"),
        backups=[backup],
        catalog={"X": kept},
        tables=tables,
    )
    assert [e.gtid.format() for e in applied(resolved, tables)] == ["0-1-1", "0-1-2", "0-1-3"]


def test_a_position_in_a_file_only_the_new_owner_has_needs_no_server() -> None:
    kept, tables = _across_a_promotion()
    # The new owner's files are binlog.000003..4 here: no name is in the stream twice.
    kept = [replace(r, name=f"binlog.{r.seq:06d}") if r.server_id == 2 else r for r in kept]
    backup = build_stream("X", [[("0-1-1", 100)]], completed=90).backup
    plan = plan_restore([backup], {"X": kept}, pos(f"binlog.000004:{_end_of_file(tables, 4)}"))
    assert plan.records[-1].seq == 4
    # A name neither server has in the stream is ambiguous: whose would it be?
    with pytest.raises(AmbiguousPositionError, match=r"give 1/binlog.000009:4 or 2/binlog"):
        plan_restore([backup], {"X": kept}, pos("binlog.000009:4"))


def test_a_position_of_a_server_that_wrote_nothing_of_the_stream_says_so() -> None:
    kept, _ = _across_a_promotion()  # servers 1 and 2
    backup = build_stream("X", [[("0-1-1", 100)]], completed=90).backup
    with pytest.raises(TargetBeforeSnapshotError, match=r"holds no binlog of server_id 99 "):
        plan_restore([backup], {"X": kept}, pos("99/binlog.000001:4"), backup_id="X")


def test_a_position_names_its_server_on_the_command_line_and_the_api() -> None:
    assert pos("7/binlog.000042:1234") == FilePosTarget("binlog.000042", 1234, 7)
    assert pos("7/binlog.000042:1234").describe() == "binlog position 7/binlog.000042:1234"
    assert pos("binlog.000042:1234").server_id is None
    for bad in ("x/binlog.000042:1234", "7/binlog.000042", "/binlog.000042:5"):
        with pytest.raises(TargetSyntaxError):
            pos(bad)
