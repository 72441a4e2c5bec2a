"""Binlog purge: remove local binlogs that are stored and applied everywhere.

One pass gathers what ``domain/purge.py`` decides on (the server's files with their
size, close time and GTID state at the end; the open streams of the upload site; the
nodes' reported positions), then runs at most one ``PURGE BINARY LOGS TO`` for at most
``max_files_per_cycle`` files and re-reads the index: MariaDB may stop early without an
error (a file its binlog checkpoint still needs), and what is really gone is what the
pass reports and counts. The server itself does not protect a replica that is
connected but behind (it deletes files that replica has not received), so the
decision's check of the reported positions is what does.

A file's end state comes from the archiver's record of it (active mode: this server's
records, by name); a file no record names (one from before the oldest stream's backup;
in observe mode this node's own files, which another node archives) is read once and
remembered by name and size, at most ``max_files_per_cycle + 1`` a pass.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from binhoard.config import BinlogPurgeSettings
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.purge import (
    LocalBinlog,
    NodeReport,
    PurgeDecision,
    PurgeRules,
    Stream,
    decide,
)
from binhoard.metric_names import (
    BINLOG_PURGE_BLOCKED,
    BINLOG_PURGE_STALE_NODES,
    BINLOG_PURGED_BYTES,
    BINLOG_PURGED_FILES,
)
from binhoard.metrics import Metrics
from binhoard.ops.catalog import SiteState
from binhoard.ports.server import Server, ServerBinlogs

log = logging.getLogger("binhoard.purge")

BLOCK_KINDS = ("age", "stream", "unknown", "replica", "stale_replica", "cap")


@dataclass(frozen=True)
class PurgeReport:
    """One pass: what was decided, and what the server really removed."""

    decision: PurgeDecision
    purged: tuple[str, ...] = ()
    purged_bytes: int = 0
    server_kept: str | None = None  # the server stopped early at this file
    dry_run: bool = False

    @property
    def blocked_by(self) -> str:
        if self.server_kept is not None:
            return f"the server keeps {self.server_kept} (its binlog checkpoint needs it)"
        return self.decision.reason


@dataclass
class BinlogPurger:
    """Passes of binlog purge for one server; keeps the end states it read."""

    server: Server
    server_id: int
    settings: BinlogPurgeSettings
    metrics: Metrics | None = None
    _read_ends: dict[tuple[str, int, float], GtidPosition] = field(default_factory=dict)

    def run(
        self,
        site: SiteState,
        replication_state: Mapping[str, Mapping[str, str]],
        reported_at: Mapping[str, float],
        *,
        observing: bool,
        now: datetime,
        dry_run: bool = False,
    ) -> PurgeReport:
        binlogs = self.server.binlogs.list()
        files = self._local_files(binlogs, site, observing=observing)
        sizes = {f.name: f.size for f in files if f.name != binlogs.active}
        streams = open_streams(site, self.server_id, sizes, observing=observing)
        reports = [
            NodeReport(node, positions, reported_at.get(node, 0.0))
            for node, positions in sorted(replication_state.items())
        ]
        rules = PurgeRules(
            min_age=self.settings.min_binlog_age_before_purge,
            max_files=self.settings.max_files_per_cycle,
            max_report_age=self.settings.max_replication_state_age,
            observing=observing,
            purge_when_observe_no_streams=self.settings.purge_when_observe_no_streams,
        )
        decision = decide(files, binlogs.active, streams, reports, rules, now=now.timestamp())
        if decision.stale_nodes:
            log.warning(
                "replication state of %s is older than %.0f s: reported again, or removed",
                ", ".join(decision.stale_nodes),
                rules.max_report_age,
            )
        report = PurgeReport(decision, dry_run=dry_run)
        if decision.purge_to is not None and not dry_run:
            report = self._purge(decision, decision.purge_to)
        self._record(report)
        return report

    def _purge(self, decision: PurgeDecision, to: str) -> PurgeReport:
        log.info("purging %d binlogs, up to %s", len(decision.purge), to)
        self.server.binlogs.purge_to(to)
        left = set(self.server.binlogs.list().names)
        gone = [b for b in decision.purge if b.name not in left]
        kept = next((b.name for b in decision.purge if b.name in left), None)
        if kept is not None:
            log.info("the server stopped the purge early, at %s", kept)
        return PurgeReport(
            decision,
            purged=tuple(b.name for b in gone),
            purged_bytes=sum(b.size for b in gone),
            server_kept=kept,
        )

    def _local_files(
        self, binlogs: ServerBinlogs, site: SiteState, *, observing: bool
    ) -> list[LocalBinlog]:
        recorded = {
            (r.name, r.size): r.gtid_position_at_end
            for s in site.streams
            if s.backup.server_id == self.server_id
            for r in s.records
        }
        files = []
        # Read only as many unrecorded files as one pass can purge (and the one after).
        reads_left = self.settings.max_files_per_cycle + 1
        for name in binlogs.names:
            if name == binlogs.active:
                files.append(LocalBinlog(name, 0, None, None))  # always kept
                continue
            path = binlogs.path(name)
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue  # purged since the index was read
            end = None if observing else recorded.get((name, stat.st_size))
            seen = (name, stat.st_size, stat.st_mtime)
            if end is None:
                end = self._read_ends.get(seen)
            if end is None and reads_left > 0:
                reads_left -= 1
                end = self.server.binlogs.summarize(path).segment().end_position
                self._read_ends[seen] = end
            files.append(LocalBinlog(name, stat.st_size, stat.st_mtime, end))
        return files

    def _record(self, report: PurgeReport) -> None:
        if self.metrics is None:
            return
        if report.purged:
            self.metrics.increment(BINLOG_PURGED_FILES, len(report.purged))
            self.metrics.increment(BINLOG_PURGED_BYTES, report.purged_bytes)
        kind = report.decision.kind
        for name in BLOCK_KINDS:
            self.metrics.gauge(BINLOG_PURGE_BLOCKED, 1 if name == kind else 0, {"reason": name})
        self.metrics.gauge(BINLOG_PURGE_STALE_NODES, len(report.decision.stale_nodes))


def open_streams(
    site: SiteState, server_id: int, sizes: Mapping[str, int], *, observing: bool
) -> list[Stream]:
    """The streams a file must be stored in: this server's open ones (active), or the
    open, unbroken ones of the site (observe: another node archives them). A broken
    stream of this server still counts: nothing is archived into it, so purging stops
    (and says which stream) until a new backup closes it. A record stands for a local
    file of its name only with the file's size (``sizes``): after a ``RESET MASTER``
    the names start again, and an old record must not vouch for a new file."""
    return [
        Stream(
            s.stream_id,
            s.snapshot_gtid,
            frozenset(r.name for r in s.records if sizes.get(r.name) == r.size),
            s.end_position,
        )
        for s in site.streams
        if s.closed is None and (s.broken is None if observing else s.backup.server_id == server_id)
    ]
