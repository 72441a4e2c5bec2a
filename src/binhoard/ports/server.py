"""The server port: what the use cases need of the database server and its tools.

One ``Server`` per configured server, built from the settings in ``binhoard.app``
(``open_server``) and nowhere else. The ops name what they need, never how a flavour
does it: "the server's facts", "rotate the binlog", "stream a backup", "apply these
files up to here", "make sure it runs". MariaDB's implementation is
``binhoard.server.mariadb.MariaDBServer`` (SQL, mariabackup, the SQL thread fed with
relay logs, mariadbd); a MySQL 8 + XtraBackup flavour would be a second implementation,
chosen in ``app.open_server`` by ``mysql.flavour``. The ops' unit tests run against a
fake with behaviour (``tests/support/fakeserver.py``).

Sub-protocols group what belongs together: ``binlogs`` (the binary log and its files),
``backup_tool`` (take and restore physical backups), ``flushing`` (InnoDB's checkpoint
before a backup), ``process`` (the server process itself), ``relay_applier()``
(binlogs applied by the restored server), ``replication`` (this server as a replica
of a primary, seeding) and ``checks`` (the backup marker, the restore test's checks);
``ScratchServer`` is a throw-away server for restore tests. Errors are the project's
(``domain/errors.py``): ``ServerError`` and its kinds, ``DiskFullError``,
``ApplyError``, ``UsageError``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from binhoard.domain.binlog_file import BinlogIndex, BinlogSummary
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import LsnRange, SnapshotPosition
from binhoard.domain.privileges import Grants
from binhoard.domain.relay_plan import (
    FIRST_EVENT_OFFSET,
    BatchFile,
    BatchResult,
    IndexedBinlog,
    ProgressCallback,
    ResumePoint,
)
from binhoard.domain.replica import PrimaryAddress
from binhoard.domain.restore_target import TargetDescription
from binhoard.domain.restore_test import TableCheck
from binhoard.domain.server_facts import ServerFacts


# --- the binary log ----------------------------------------------------------------------
@dataclass(frozen=True)
class ServerBinlogs:
    """The server's binlog index: every file, oldest first, and the one it writes."""

    directory: Path
    names: tuple[str, ...]
    active: str

    def path(self, name: str) -> Path:
        return self.directory / name


class Binlogs(Protocol):
    """The server's binary log, and the flavour's reader of binlog files (the archiver
    reads the server's files, a restore the downloaded copies of a source's)."""

    def list(self) -> ServerBinlogs:
        """The binlog index and the active file; ``UsageError`` if binary logging is off."""
        ...

    def flush(self) -> None:
        """Rotates: closes the active file (which becomes archivable) and opens the next."""
        ...

    def purge_to(self, name: str) -> None:
        """Removes the files before ``name`` from the server's index and disk, as far as
        the server allows: MariaDB stops early, without an error, at a file it still needs
        (its binlog checkpoint has not passed it yet), so callers re-read ``list()``."""
        ...

    def summarize(self, path: Path, *, states_at: Collection[int] = ()) -> BinlogSummary:
        """One scan of a closed file, every event verified; the GTID state at each offset
        of ``states_at``. Raises ``CorruptBinlogError`` naming the file and offset."""
        ...

    def read(self, path: Path) -> BinlogIndex:
        """Every transaction of a closed file (offsets, GTIDs, commit times), verified."""
        ...


# --- physical backups ---------------------------------------------------------------------
class BackupStream(Protocol):
    """A running streamed backup: iterate for its bytes, then ``finish()``."""

    def __iter__(self) -> Iterator[bytes]: ...

    def finish(self) -> tuple[SnapshotPosition, LsnRange]:
        """Waits for the tool; the consistent snapshot's binlog position and the LSNs.
        Raises ``ServerError`` (``DiskFullError`` for a full work directory) if it failed."""
        ...


class FilesOwner(Protocol):
    """Who a restored server's files must belong to."""

    def check(self) -> None:
        """Raises ``UsageError`` if this process cannot give files to the owner: before
        any work whose result would be unusable."""
        ...

    def give(self, *paths: Path) -> None:
        """Makes ``paths`` (and everything below directories among them) the owner's."""
        ...


class BackupTool(Protocol):
    """The flavour's physical backup tool (mariabackup; XtraBackup for MySQL)."""

    def version(self) -> str: ...

    def option_file(self) -> bytes:
        """The server's option file as it is now: stored beside each backup."""
        ...

    def estimated_size(self) -> int:
        """Roughly how many bytes a full backup streams (for progress)."""
        ...

    def backup(
        self, work_dir: Path, *, incremental_lsn: int | None = None, parallel: int = 1
    ) -> AbstractContextManager[BackupStream]:
        """Starts a streamed backup (an incremental one from ``incremental_lsn``);
        ``work_dir`` receives only the tool's own small files. Leaving the block early
        stops the tool."""
        ...

    def files_owner(self, datadir: Path) -> FilesOwner:
        """Whose the files restored into ``datadir`` must be (the server's user)."""
        ...

    def extract(self, chunks: Iterable[bytes], target: Path) -> int:
        """Unpacks a backup stream into ``target``; returns the bytes fed."""
        ...

    def prepare(self, target: Path, incremental_dir: Path | None = None) -> None:
        """Makes the backup in ``target`` consistent, applying ``incremental_dir``."""
        ...

    def move_back(self, target: Path, datadir: Path) -> None:
        """Moves a prepared backup into the (empty) ``datadir``."""
        ...


# --- InnoDB's checkpoint before a backup ---------------------------------------------------
@dataclass(frozen=True)
class CheckpointWait:
    """What ``InnoDBFlushing.bound_checkpoint_age`` found and did."""

    age_before: int
    age_after: int
    forced: bool  # flushing was forced (the age was over the limit)
    reached: bool  # the checkpoint passed the target in time (always, if not forced)
    seconds: float


class SettingsJournal(Protocol):
    """Where the server's own values are kept while binhoard has changed them, so that a
    run killed meanwhile can be undone by the next one (``InnoDBFlushing.put_back``)."""

    def save(self, values: dict[str, str]) -> None: ...
    def clear(self) -> None: ...


class InnoDBFlushing(Protocol):
    """Forcing InnoDB's checkpoint forward before a backup, so that the next incremental
    copies only what changed since (an idle server's checkpoint does not move)."""

    def bound_checkpoint_age(self, journal: SettingsJournal) -> CheckpointWait:
        """Flushes until the checkpoint is recent, within a few seconds; the flushing
        settings are changed meanwhile, kept in ``journal`` and put back either way."""
        ...

    def setting_names(self) -> tuple[str, ...]:
        """The server settings ``bound_checkpoint_age`` changes."""
        ...

    def put_back(self, values: Mapping[str, str]) -> None:
        """Sets those settings to ``values`` (saved by a killed run); ``ServerQueryError``
        if the server refuses a value."""
        ...

    def startup_values(self) -> dict[str, str]:
        """The values the server starts with (its option file, else the defaults): what to
        put back when the saved ones are lost."""
        ...


# --- point-in-time apply -------------------------------------------------------------------
class RelayApply(Protocol):
    """Binlog files applied by the restored server itself, in batches
    (``domain/relay_plan.py`` decides what a batch applies)."""

    def resume_point(self, files: Sequence[IndexedBinlog]) -> ResumePoint:
        """Where to continue applying ``files`` after an interrupted run (waits for an
        apply still running on the server to reach its end)."""
        ...

    def apply_batch(
        self,
        files: Sequence[BatchFile],
        *,
        start_offset: int = FIRST_EVENT_OFFSET,
        stop_offset: int | None = None,
        progress: ProgressCallback | None = None,
        move: bool = False,
    ) -> BatchResult:
        """Applies ``files`` from ``start_offset`` in the first to ``stop_offset`` (a
        transaction's end) in the last, ``None``: all; with ``move`` the files are moved
        to the server, which deletes them once applied. ``ApplyError`` if it fails."""
        ...

    def unfinished(self) -> bool:
        """Whether an apply began on the server and was not finished (a killed run's:
        its settings and replication configuration are still the apply's)."""
        ...

    def finish(
        self, log_slave_updates_was_off: bool | None = None, *, expected: GtidPosition | None = None
    ) -> GtidPosition:
        """Ends the apply: settings restored, the server read-only at the applied state,
        which is returned (``ApplyError`` unless it is ``expected``)."""
        ...


# --- the process -----------------------------------------------------------------------------
class ServerProcessControl(Protocol):
    """The configured server's process."""

    def running(self) -> bool:
        """Whether a process of the configured server exists (answering or not)."""
        ...

    def ensure_running(self) -> None:
        """Starts the server unless it answers (``start_command`` when configured) and
        waits until it does; ``ServerError`` with its error log's last lines if not.
        A server that answers refusing the user raises ``ServerAccessDeniedError``."""
        ...

    def stop(self) -> bool:
        """Stops it cleanly and waits; False if it was not running."""
        ...


# --- replication from a primary (seeding a replica) -----------------------------------
@dataclass(frozen=True)
class ReplicaCredentials:
    """The account this server's IO thread logs in to the primary with
    (``replication.user``/``password``); ``password`` never appears in messages."""

    user: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class PrimaryState:
    """What a replica reads of its primary before replicating from it."""

    server_id: int  # @@server_id: the node's own means it would replicate from itself
    binlog_state: tuple[Gtid, ...]  # @@gtid_binlog_state


@dataclass(frozen=True)
class ReplicaStatus:
    """``SHOW SLAVE STATUS`` of the default connection, as seeding reads it."""

    configured: bool  # a primary is set (CHANGE MASTER TO was run)
    primary: str  # "HOST:PORT", "" when not configured
    io_running: str  # "Yes", "No" or "Connecting"
    sql_running: bool
    seconds_behind: int | None
    gtid_io_pos: str
    gtid_slave_pos: str
    last_io_errno: int = 0
    last_io_error: str = ""
    last_sql_errno: int = 0
    last_sql_error: str = ""


class Replication(Protocol):
    """This server as a replica of a primary, on MariaDB's *default* connection (the
    one point-in-time apply also uses, and clears with ``RESET SLAVE ALL`` when it
    finishes: the two never run at once, docs/failover.md)."""

    def primary_state(
        self, primary: PrimaryAddress, credentials: ReplicaCredentials
    ) -> PrimaryState:
        """The primary's ``@@server_id`` and ``@@gtid_binlog_state``, read with the
        replication account;
        ``ReplicationError`` (``unreachable``) if it does not answer or refuses it."""
        ...

    def change_primary(self, primary: PrimaryAddress, credentials: ReplicaCredentials) -> None:
        """Stops replication and points it at ``primary`` with ``MASTER_USE_GTID=slave_pos``:
        it continues from this server's ``gtid_slave_pos``."""
        ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def remove(self) -> None:
        """``STOP SLAVE; RESET SLAVE ALL``: no primary is configured any more (a promoted
        node must never reconnect to the old one)."""
        ...

    def status(self) -> ReplicaStatus: ...

    def wait_for_gtid(self, position: GtidPosition, timeout: float) -> bool:
        """Whether this server applied ``position`` within ``timeout`` seconds
        (``MASTER_GTID_WAIT``)."""
        ...


# --- checks for restore tests -------------------------------------------------------------
class ServerChecks(Protocol):
    """The marker row a backup writes first, and the checks a restore test runs on the
    restored copy (``ops/restore_test.py``)."""

    def write_marker(self, backup_id: str) -> None:
        """Inserts ``backup_id``'s row into ``binhoard.backup_marker`` (schema and table
        created if missing). ``ServerAccessDeniedError`` without the privileges,
        ``ServerQueryError`` when the server refuses it (read-only)."""
        ...

    def has_marker(self, backup_id: str) -> bool:
        """Whether ``backup_id``'s marker row is there."""
        ...

    def check_tables(self) -> list[TableCheck]:
        """``CHECK TABLE`` of every base table (the system schemas' views excepted)."""
        ...


class ScratchServer(Protocol):
    """A throw-away server in its own directory on a loopback port, for restore tests:
    its ``server`` is restored into (``server.process`` starts it) and checked; it is
    never the configured server."""

    @property
    def directory(self) -> Path: ...

    @property
    def server(self) -> Server: ...

    @property
    def port(self) -> int: ...

    @property
    def datadir(self) -> Path: ...

    @property
    def config_file(self) -> Path: ...

    def kill(self) -> None:
        """Kills its server at once (a test over its time limit); any thread."""
        ...

    def destroy(self) -> None:
        """Stops its server if it runs (killed: nothing of it is kept) and removes its
        directory."""
        ...


class ScratchServers(Protocol):
    """Makes scratch servers (``app.scratch_servers``), and removes what one left."""

    def create(self, directory: Path, server_id: int) -> ScratchServer:
        """A new scratch server in ``directory`` (created), its datadir empty, not
        started."""
        ...

    def remove(self, directory: Path) -> None:
        """Kills the scratch server of ``directory`` if one runs (a daemon killed during
        a test left it) and removes the directory."""
        ...


# --- the server --------------------------------------------------------------------------
class Server(Protocol):
    """The configured database server, as the use cases see it."""

    @property
    def flavour(self) -> str:
        """What backup manifests record (``mariadb``): which tools can restore them."""
        ...

    @property
    def binlogs(self) -> Binlogs: ...

    @property
    def backup_tool(self) -> BackupTool: ...

    @property
    def flushing(self) -> InnoDBFlushing: ...

    @property
    def process(self) -> ServerProcessControl: ...

    @property
    def replication(self) -> Replication: ...

    @property
    def checks(self) -> ServerChecks: ...

    def facts(self) -> ServerFacts:
        """What ``binhoard status`` shows and backups and archive passes check first."""
        ...

    def grants(self) -> Grants:
        """The global privileges of binhoard's account."""
        ...

    def set_gtid_state(self, gtid_position: str) -> None:
        """Makes a freshly restored server's GTID state ``gtid_position`` (its binlog
        and replication positions), so that binlog apply continues from exactly there."""
        ...

    def relay_applier(self) -> RelayApply:
        """The applier for point-in-time restore into this (running) server."""
        ...

    def restore_target(self) -> TargetDescription:
        """What the server's option file and binhoard's settings say of it as the target
        of a point-in-time restore (``domain/restore_target.py`` judges it)."""
        ...
