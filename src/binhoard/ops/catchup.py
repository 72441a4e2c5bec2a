"""Catching up with the archive before a promotion: what the old primary archived and
this node never received, applied by its own SQL thread.

A replica promoted after its primary died (SIGKILL, a lost host) may lack transactions
the primary archived before it died: replication lags, the archive does not wait for
it. The promotion must not give them up (``force`` does, for an archive that cannot be
read), so before writing the promotion record ``ops/promote.py`` calls
:class:`ArchiveCatchUp` with the stream as read: the kept records the node has not
applied whole (``domain/promotion.py`` ``lacking_records``) are downloaded and applied
with the point-in-time restore's relay-log machinery (``BinlogPrefetcher``,
``relay_plan``, the server port's ``relay_applier()``), from exactly the node's
position:

* each batch starts where the server's ``gtid_slave_pos`` says (``resume_point``): the
  first record usually starts before it, and a run killed mid-batch continues from
  what the server applied, nothing twice;
* an equal sequence number from another server (``domain/promotion.py``
  ``divergence_in``) is another history, never "already applied": nothing is applied
  and the node cannot continue the stream;
* at the end the applier's ``finish`` removes the apply's replication configuration
  (``RESET SLAVE ALL``: nothing is left that would reconnect anywhere, the old primary
  included), puts the server's durability settings back and checks its GTID state.

The node's binlog must log what it applies (``log_slave_updates=ON``): the new owner
archives the stream on from its own binlog, which must hold the promotion's position.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from binhoard.domain.catalog import BinlogRecord
from binhoard.domain.errors import (
    CancelledError,
    ConflictError,
    CorruptBinlogError,
    IntegrityError,
    ObjectNotFoundError,
    PermanentStorageError,
    UsageError,
)
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.pitr import next_batch, resume_batch
from binhoard.domain.promotion import CannotContinue, divergence_in, lacking_records
from binhoard.domain.relay_plan import ApplyProgress, BatchFile
from binhoard.ops.catalog import StreamState
from binhoard.ops.pitr import BinlogPrefetcher
from binhoard.ports.server import RelayApply, Server
from binhoard.storage.store import ObjectStore

log = logging.getLogger("binhoard.promote")

# What cannot be read from the archive, retrying would not help: with force the
# promotion gives it up. A transient failure (a timeout) never gives anything up.
_UNREADABLE = (ObjectNotFoundError, IntegrityError, PermanentStorageError, CorruptBinlogError)


@dataclass(frozen=True)
class CatchUpProgress:
    """Where a catch-up is: ``phase`` is ``applying_binlogs`` or ``finishing_apply``."""

    phase: str
    binlogs_total: int = 0
    binlogs_applied: int = 0
    transactions_applied: int = 0
    target: str = ""  # the archive's end, the GTID position caught up to


CatchUpCallback = Callable[[CatchUpProgress], None]


@dataclass
class _Run:
    """One catch-up: its records, the download and the applier, how far it got."""

    records: Sequence[BinlogRecord]
    prefetcher: BinlogPrefetcher
    applier: RelayApply
    position: GtidPosition  # the server's, as of the last batch
    target: str
    files_done: int = 0
    transactions: int = 0

    def progress(self, phase: str) -> CatchUpProgress:
        return CatchUpProgress(
            phase, len(self.records), self.files_done, self.transactions, self.target
        )


class ArchiveCatchUp:
    """Applies to ``server`` (whose ``server_id`` it is) what a stream's archive holds
    past the server's position (see the module docstring). ``give_up_unreadable``
    (``force``): a record that cannot be downloaded ends the catch-up where it got,
    instead of failing it."""

    def __init__(
        self,
        server: Server,
        store: ObjectStore,
        *,
        server_id: int,
        directory: Path,
        max_binlog_bytes: int,
        identities: Sequence[Any],
        progress: CatchUpCallback | None = None,
        cancel: threading.Event | None = None,
        give_up_unreadable: bool = False,
    ) -> None:
        self.server = server
        self.store = store
        self.server_id = server_id
        self.directory = directory
        self.max_binlog_bytes = max_binlog_bytes
        self.identities = identities
        self.progress = progress
        self.cancel = cancel
        self.give_up_unreadable = give_up_unreadable

    def finish_interrupted(self) -> None:
        """Ends an apply a killed run left (its settings and replication configuration
        on the server): the catch-up starts again from the server's position."""
        applier = self.server.relay_applier()
        if applier.unfinished():
            log.warning("an interrupted catch-up was left on the server: finishing it")
            applier.finish()

    def __call__(
        self, stream: StreamState, position: GtidPosition
    ) -> GtidPosition | CannotContinue:
        """Applies the records of ``stream`` the server at ``position`` lacks; returns
        the server's position after, or why it cannot continue the stream."""
        records = lacking_records(stream.records, position)
        if not records:
            return position
        refused = self._check_server(records, position)
        if refused is not None:
            return refused
        end = stream.end_position
        log.info(
            "this server is at %s, behind the archive of stream %s (%s): applying %d "
            "binlog files from %s",
            position or "(empty)",
            stream.stream_id,
            end,
            len(records),
            records[0].name,
        )
        applier = self.server.relay_applier()
        prefetcher = BinlogPrefetcher(
            self.store, records, self.directory, self.max_binlog_bytes, self.identities
        )
        run = _Run(records, prefetcher, applier, position, end.format())
        self._report(run.progress("applying_binlogs"))
        shutil.rmtree(self.directory, ignore_errors=True)
        prefetcher.start()
        try:
            diverged = self._apply(run)
        except _UNREADABLE as exc:
            if not self.give_up_unreadable:
                raise
            log.warning(
                "the archive cannot be read from %s on (%s): forced, the rest is given up",
                records[run.files_done].name,
                exc.message,
            )
            diverged = None
        finally:
            prefetcher.stop()
            shutil.rmtree(self.directory, ignore_errors=True)
        if not applier.unfinished():
            return diverged or position
        self._report(run.progress("finishing_apply"))
        reached = applier.finish()
        log.info("caught up with stream %s at %s", stream.stream_id, reached or "(empty)")
        return diverged or reached

    def _check_server(
        self, records: Sequence[BinlogRecord], position: GtidPosition
    ) -> CannotContinue | None:
        facts = self.server.facts()
        if not facts.log_slave_updates:
            raise UsageError(
                "the server has log_slave_updates=OFF: what it would apply of the archive "
                "would not be in its binlog, which the stream continues from after the "
                "promotion; set log_slave_updates=ON (and restart it), or promote with "
                "force to give up what it lacks"
            )
        slave = GtidPosition.parse(facts.gtid_slave_pos)
        if slave != position:
            return CannotContinue(
                f"this server has transactions of its own: its gtid_current_pos "
                f"{position or '(empty)'} is not what it replicated (gtid_slave_pos "
                f"{slave or '(empty)'}), so it is not on the stream's history"
            )
        own = next((r for r in records if r.server_id == self.server_id), None)
        if own is not None:
            # The SQL thread skips events of its own server_id: they would never apply.
            raise ConflictError(
                f"binlog record {own.seq} ({own.name}) of stream {own.stream_id}, which this "
                f"server lacks, was written by this server_id ({self.server_id}): it cannot "
                "apply its own binlogs; restore it again from the stream"
            )
        return None

    def _apply(self, run: _Run) -> CannotContinue | None:
        records, prefetcher, applier = run.records, run.prefetcher, run.applier
        offsets = [r.start_offset for r in records]
        while run.files_done < len(records):
            if self.cancel is not None and self.cancel.is_set():
                raise CancelledError("the catch-up before the promotion was cancelled")
            batch = next_batch(prefetcher.take(run.files_done, len(records)), offsets)
            indexes = batch.indexes
            files = [self._batch_file(prefetcher.path(i)) for i in indexes]
            diverged = divergence_in(
                ((d, s, q) for f in files for d, s, q, _, _, _ in f.transactions.rows()),
                run.position,
            )
            if diverged is not None:
                mine, theirs = diverged
                return CannotContinue(
                    f"this server's GTID position {run.position} is not on the stream's "
                    f"history: it has {mine} where the archive has {theirs}"
                )
            # Where the server is in these files: the first usually starts before it,
            # and a killed run's batch may have got anywhere.
            point = applier.resume_point(files)
            resumed = resume_batch(point, len(files), batch.start_offset)
            if resumed.done < len(files):
                before = run.transactions

                def on_apply(state: ApplyProgress, before: int = before) -> None:
                    run.transactions = before + state.transactions_applied
                    self._report(run.progress("applying_binlogs"))

                result = applier.apply_batch(
                    files[resumed.done :],
                    start_offset=resumed.start_offset,
                    progress=on_apply,
                    move=True,
                )
                run.transactions = before + result.transactions
                run.position = result.position
            prefetcher.release(indexes)
            run.files_done = indexes[-1] + 1
            self._report(run.progress("applying_binlogs"))
        return None

    def _batch_file(self, path: Path) -> BatchFile:
        return BatchFile(path, self.server.binlogs.read(path))

    def _report(self, progress: CatchUpProgress) -> None:
        if self.progress is not None:
            self.progress(progress)
