"""What the controller publishes: its state and the last listing, as the immutable
views of ``port.py`` (MyHoard's field names and phase names)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime

from binhoard.daemon.jobs import PromoteStatus, RestoreStatus, SiteView, StreamInfo
from binhoard.daemon.port import BackupView, PromotionView, PurgeView, RestoreView, StatusView
from binhoard.daemon.state import DaemonState, RestoreRecord, RestoreTestResult
from binhoard.domain.history import History

# ops/pitr.py's phases as MyHoard names them. ``pending`` is a restore accepted but not
# started; ``basebackup_restored`` (server started, GTID state set) is the step MyHoard
# calls refreshing the binlogs to apply.
_MYHOARD_PHASES: Mapping[str, str] = {
    "pending": "getting_backup_info",
    "basebackup_restored": "refreshing_binlogs",
}


def backup_views(
    view: SiteView | None,
    tests: Sequence[RestoreTestResult] = (),
    pending: Collection[tuple[str, str]] = (),
) -> tuple[BackupView, ...] | None:
    """``tests``: the last restore test of each stream; ``pending``: (site, stream id)
    of those queued or running."""
    if view is None:
        return None
    by_stream = {(t.site, t.stream_id): t for t in tests}
    return tuple(
        backup_view(
            s,
            view.listed_at,
            by_stream.get((s.site, s.stream_id)),
            pending=(s.site, s.stream_id) in pending,
        )
        for s in view.streams
    )


def backup_view(
    stream: StreamInfo,
    listed_at: datetime,
    test: RestoreTestResult | None = None,
    *,
    pending: bool = False,
) -> BackupView:
    broken = stream.broken_reason is not None
    return BackupView(
        stream_id=stream.stream_id,
        site=stream.site,
        basebackup_info=stream.basebackup_info,
        completed_at=stream.completed_at,
        closed_at=stream.closed_at,
        broken_at=(stream.broken_at or listed_at) if broken else None,
        preserve_until=stream.preserve_until,
        recovery_site=stream.recovery_site,
        # MyHoard: whether a restore can continue from a partial download of it.
        resumable=not broken and stream.manifest is not None,
        window=stream.window,
        restore_test=test,
        restore_test_pending=pending,
    )


def status_view(
    state: DaemonState,
    deposed: tuple[str, ...] = (),
    purge: PurgeView | None = None,
    *,
    reload_refused: str | None = None,
    promotion: PromoteStatus | None = None,
    history: History | None = None,
) -> StatusView:
    facts = state.facts
    return StatusView(
        mode=state.mode,
        backups_paused_until=state.control.backups_paused_until,
        last_backup_at=facts.last_backup_at,
        newest_archived_commit_at=facts.newest_archived_commit_at,
        archive_stalled_reason=facts.archive_stall_reason,
        last_error=facts.last_error,
        config_reload_error=reload_refused,
        replication_state=state.control.replication_state,
        deposed=deposed,
        binlog_purge=purge,
        promotion=_promotion_view(promotion) if state.mode == "promote" else None,
        replicating_from=state.control.replicating_from,
        history=f"{history.history_id}: {history.reason}" if history is not None else None,
    )


def _promotion_view(progress: PromoteStatus | None) -> PromotionView:
    p = progress if progress is not None else PromoteStatus("stopping_replication")
    return PromotionView(
        p.phase, p.binlogs_total, p.binlogs_applied, p.transactions_applied, p.target_gtid
    )


def restore_view(
    record: RestoreRecord | None, progress: RestoreStatus | None
) -> RestoreView | None:
    if record is None:
        return None
    phase = record.phase
    counters = progress if progress is not None else RestoreStatus(phase)
    return RestoreView(
        phase=_MYHOARD_PHASES.get(phase, phase),
        basebackup_compressed_bytes_downloaded=counters.basebackup_compressed_bytes_downloaded,
        basebackup_compressed_bytes_total=counters.basebackup_compressed_bytes_total,
        binlogs_being_restored=counters.binlogs_being_restored,
        binlogs_pending=counters.binlogs_pending,
        binlogs_restored=counters.binlogs_restored,
        stream_id=record.stream_id,
        site=record.site,
        target=record.describe_target(),
        error=record.error,
    )
