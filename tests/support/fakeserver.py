"""A MariaDB server with behaviour, for the ops' unit tests (``binhoard.ports.server``).

``FakeServer(directory)`` lays itself out as ``tests/support/sites.site_config(directory)``
configures a server: its datadir is ``directory/data``, its binlogs are real files in
``directory/binlogs`` (``BinlogWriter``: what the archiver reads and a restore applies).
Its "database" is ``data/rows.txt``, one line per committed transaction (its GTID), so
that what a backup, a restore and an apply leave can be compared line by line.

* ``commit(n)`` writes transactions into the active binlog and the rows; ``binlogs.flush``
  closes the active file; ``binlogs.purge_to`` removes files before a name.
* ``backup_tool.backup`` streams the datadir in a small xbstream-like framing, an
  incremental one only the rows since its LSN (the LSN counts commits); the snapshot is
  where the active binlog stands when the backup starts. ``extract``, ``prepare`` (which
  folds an incremental's rows in) and ``move_back`` undo it.
* ``relay_applier()`` applies batches with the real ``plan_batch``: the files' GTIDs up to
  the stop are appended to the rows and ``gtid_slave_pos`` advances.
* ``process`` starts and stops (a stopped server refuses connections).
* ``fail(operation, error)`` makes the next call of ``operation`` (``"facts"``,
  ``"backup.finish"``, ``"apply"``, ``"start"``, ...) raise ``error``; ``crash_after = n``
  kills binhoard (``Killed``) after the next batch applied ``n`` transactions; ``calls``
  lists what the ops asked, in order.
* ``checks`` (``FakeChecks``): marker rows live in ``data/markers.txt``, which backups
  carry whole; ``check_tables`` reports one table per name in ``tables``, failed for
  those in ``corrupt_tables``; ``marker_denied`` refuses the marker as a missing grant.
* ``replication`` (``FakeReplication``) replicates from another fake reachable through
  its ``network``; the primary's history is its rows.

``fake_host`` gives a host's settings and its fake server, ``fake_archiver`` an archiver
over a fake, ``ScriptedClock`` a ``now`` that moves when told. ``mypy --strict`` checks
this module too (pyproject.toml): the fake satisfies the ``Server`` protocol.
"""

from __future__ import annotations

import shutil
import struct
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from binhoard.app import archive_config, backup_config
from binhoard.config import Settings, parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.binlog_file import BinlogIndex, BinlogSummary
from binhoard.domain.errors import (
    ApplyError,
    ReplicationError,
    ServerAccessDeniedError,
    ServerError,
    ServerQueryError,
    UsageError,
)
from binhoard.domain.gtid import Gtid, GtidPosition
from binhoard.domain.manifest import BackupManifest, LsnRange, SnapshotPosition
from binhoard.domain.privileges import BACKUP_PRIVILEGES, RESTORE_PRIVILEGES, Grants, parse_grants
from binhoard.domain.relay_plan import (
    FIRST_EVENT_OFFSET,
    ApplyProgress,
    BatchFile,
    BatchResult,
    IndexedBinlog,
    ProgressCallback,
    ResumePoint,
    applied_prefix,
    plan_batch,
)
from binhoard.domain.replica import PrimaryAddress
from binhoard.domain.restore_target import TargetDescription
from binhoard.domain.restore_test import TableCheck
from binhoard.domain.server_facts import ServerFacts
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.backup import create_backup
from binhoard.ports.server import (
    CheckpointWait,
    PrimaryState,
    ReplicaCredentials,
    ReplicaStatus,
    ServerBinlogs,
    SettingsJournal,
)
from binhoard.server.binlog_reader import read_binlog, summarize_binlog
from binhoard.storage.store import ObjectStore
from tests.support.binlogs import BinlogWriter
from tests.support.sites import site_config

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z: the first commit time
MAGIC = b"FKXB"  # one record of the fake backup stream: MAGIC, name, data
ROWS = "rows.txt"
DELTA = "rows.delta"  # an incremental backup's rows, folded in by prepare
MARKERS = "markers.txt"  # backup marker rows (FakeChecks), carried whole by every backup
FLUSH_DEFAULTS = {"innodb_io_capacity": "200", "innodb_adaptive_flushing": "ON"}
# Where the relay applier points the replication connection (an unused port).
RELAY_APPLY_SOURCE = PrimaryAddress("127.0.0.1", 9)
FLUSH_FAST = {"innodb_io_capacity": "2000", "innodb_adaptive_flushing": "OFF"}


class _Failures:
    def __init__(self) -> None:
        self.pending: dict[str, BaseException] = {}  # Killed too: binhoard dies there
        self.calls: list[str] = []
        self.passes: dict[str, int] = {}  # calls of an operation let through first

    def call(self, operation: str) -> None:
        self.calls.append(operation)
        if self.passes.get(operation, 0) > 0:
            self.passes[operation] -= 1
            return
        error = self.pending.pop(operation, None)
        if error is not None:
            raise error


# --- the binary log ------------------------------------------------------------------------
class FakeBinlogs:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.directory = server.directory / "binlogs"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.closed: list[str] = []
        self.number = 1
        self.writer = self._new_writer()
        # MariaDB's binlog checkpoint: PURGE stops early, without an error, at this file.
        self.purge_stops_at: str | None = None

    def _new_writer(self) -> BinlogWriter:
        state = tuple(self.server.binlog_position.values())
        return BinlogWriter(self.server.server_id, self.server.time, state)

    @property
    def active(self) -> str:
        return f"binlog.{self.number:06d}"

    def list(self) -> ServerBinlogs:
        self.server.connect("binlogs.list")
        if not self.server.log_bin:
            raise UsageError("the server has binary logging off: nothing to archive")
        return ServerBinlogs(self.directory, (*self.closed, self.active), self.active)

    def flush(self) -> None:
        self.server.connect("binlogs.flush")
        self.writer.close(self.directory / self.active)
        self.closed.append(self.active)
        self.number += 1
        self.writer = self._new_writer()

    def purge_to(self, name: str) -> None:
        self.server.connect(f"binlogs.purge_to {name}")
        if name not in (*self.closed, self.active):
            raise ServerError(f"PURGE BINARY LOGS TO {name}: not in the binlog index")
        while self.closed and self.closed[0] not in (name, self.purge_stops_at):
            (self.directory / self.closed.pop(0)).unlink()

    def reset(self, state: GtidPosition) -> None:
        """RESET MASTER: every file gone, a new first one starting at ``state``."""
        for name in self.closed:
            (self.directory / name).unlink(missing_ok=True)
        self.closed, self.number = [], 1
        self.server.binlog_position = state
        self.writer = self._new_writer()

    def summarize(self, path: Path, *, states_at: Collection[int] = ()) -> BinlogSummary:
        return summarize_binlog(path, states_at=states_at)

    def read(self, path: Path) -> BinlogIndex:
        return read_binlog(path)


# --- physical backups ----------------------------------------------------------------------
def pack(files: Mapping[str, bytes]) -> list[bytes]:
    """The fake tool's stream: one chunk per file."""
    return [
        MAGIC + struct.pack("<H", len(name)) + name.encode() + struct.pack("<I", len(data)) + data
        for name, data in files.items()
    ]


def unpack(stream: bytes) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    pos = 0
    while pos < len(stream):
        if stream[pos : pos + 4] != MAGIC:
            raise ServerError(f"fake mbstream -x failed: not a backup stream at byte {pos}")
        (name_len,) = struct.unpack_from("<H", stream, pos + 4)
        name = stream[pos + 6 : pos + 6 + name_len].decode()
        (size,) = struct.unpack_from("<I", stream, pos + 6 + name_len)
        start = pos + 10 + name_len
        files[name] = stream[start : start + size]
        pos = start + size
    return files


@dataclass
class FakeStream:
    chunks: list[bytes]
    snapshot: SnapshotPosition
    lsn: LsnRange
    failures: _Failures

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    def finish(self) -> tuple[SnapshotPosition, LsnRange]:
        self.failures.call("backup.finish")
        return self.snapshot, self.lsn


@dataclass
class FakeOwner:
    given: list[Path] = field(default_factory=list)
    refuse: bool = False

    def check(self) -> None:
        if self.refuse:
            raise UsageError("the restored files must belong to mysql, but binhoard cannot")

    def give(self, *paths: Path) -> None:
        self.given.extend(paths)


class FakeBackupTool:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.owner = FakeOwner()
        self.extracted: list[Path] = []

    def version(self) -> str:
        return "mariadb-backup based on MariaDB server 10.11.19-MariaDB (fake)"

    def option_file(self) -> bytes:
        return f"[mariadbd]\nserver_id={self.server.server_id}\nlog_bin\n".encode()

    def estimated_size(self) -> int:
        return sum(p.stat().st_size for p in self.server.datadir.rglob("*") if p.is_file())

    @contextmanager
    def backup(
        self, work_dir: Path, *, incremental_lsn: int | None = None, parallel: int = 1
    ) -> Iterator[FakeStream]:
        server = self.server
        server.connect("backup")
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "mariabackup.log").write_text("fake\n")
        rows = server.rows()
        if incremental_lsn is None:
            files = {ROWS: "".join(f"{r}\n" for r in rows).encode()}
        else:
            files = {DELTA: "".join(f"{r}\n" for r in rows[incremental_lsn:]).encode()}
        markers = server.datadir / MARKERS
        if markers.exists():
            files[MARKERS] = markers.read_bytes()
        snapshot = SnapshotPosition(
            server.binlogs.active, server.binlogs.writer.offset, server.binlog_position.format()
        )
        lsn = LsnRange(from_lsn=incremental_lsn or 0, to_lsn=len(rows), last_lsn=len(rows))
        yield FakeStream(pack(files), snapshot, lsn, server.failures)

    def files_owner(self, datadir: Path) -> FakeOwner:
        return self.owner

    def extract(self, chunks: Iterable[bytes], target: Path) -> int:
        self.server.failures.call("extract")
        data = b"".join(chunks)
        target.mkdir(parents=True, exist_ok=True)
        for name, body in unpack(data).items():
            (target / name).write_bytes(body)
        self.extracted.append(target)
        return len(data)

    def prepare(self, target: Path, incremental_dir: Path | None = None) -> None:
        self.server.failures.call("prepare")
        if incremental_dir is not None:
            with (target / ROWS).open("ab") as rows:
                rows.write((incremental_dir / DELTA).read_bytes())

    def move_back(self, target: Path, datadir: Path) -> None:
        self.server.failures.call("move_back")
        if any(datadir.iterdir()):
            raise ServerError(f"fake mariabackup --move-back: {datadir} is not empty")
        shutil.move(target / ROWS, datadir / ROWS)
        if (target / MARKERS).exists():
            shutil.move(target / MARKERS, datadir / MARKERS)


# --- the backup marker and a restore test's checks ----------------------------------------
class FakeChecks:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.tables = ["app.rows", "mysql.user"]
        self.corrupt_tables: dict[str, str] = {}  # name: CHECK TABLE's message
        self.marker_denied = False
        self.forget_markers = False  # the copy lost them (a DELETE applied from binlogs)

    @property
    def _file(self) -> Path:
        return self.server.datadir / MARKERS

    def write_marker(self, backup_id: str) -> None:
        self.server.connect("write_marker")
        if self.marker_denied:
            raise ServerAccessDeniedError(
                "writing the backup marker: MariaDB error 1142: INSERT command denied",
                server_errno=1142,
            )
        if self.server.read_only:
            raise ServerQueryError("writing the backup marker: read-only", server_errno=1290)
        with self._file.open("a") as markers:
            markers.write(f"{backup_id}\n")

    def markers(self) -> list[str]:
        return self._file.read_text().split() if self._file.exists() else []

    def has_marker(self, backup_id: str) -> bool:
        self.server.connect("has_marker")
        return not self.forget_markers and backup_id in self.markers()

    def check_tables(self) -> list[TableCheck]:
        self.server.connect("check_tables")
        return [
            TableCheck(t, t not in self.corrupt_tables, self.corrupt_tables.get(t, "OK"))
            for t in self.tables
        ]


# --- InnoDB's flushing ----------------------------------------------------------------------
class FakeFlushing:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.values = dict(FLUSH_DEFAULTS)

    def bound_checkpoint_age(self, journal: SettingsJournal) -> CheckpointWait:
        self.server.connect("flushing.bound_checkpoint_age")
        before = dict(self.values)
        journal.save(before)  # first, as the real one: a kill from here on is undone
        self.values = dict(FLUSH_FAST)
        self.server.failures.call("flushing.flushed")  # a failure here leaves them changed
        self.values = before
        journal.clear()
        return CheckpointWait(1 << 20, 1024, forced=True, reached=True, seconds=0.01)

    def setting_names(self) -> tuple[str, ...]:
        return tuple(FLUSH_DEFAULTS)

    def put_back(self, values: Mapping[str, str]) -> None:
        self.server.connect("flushing.put_back")
        for name, value in values.items():
            if name == "innodb_io_capacity" and not value.isdigit():
                raise ServerQueryError(
                    f"SET GLOBAL {name}: MariaDB error 1232: Incorrect argument type",
                    server_errno=1232,
                )
        self.values.update(values)

    def startup_values(self) -> dict[str, str]:
        return dict(FLUSH_DEFAULTS)


# --- the process -------------------------------------------------------------------------
class FakeProcess:
    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.up = True
        self.starts = 0
        # Set: a start hangs until ``killed`` is set (a server that never comes up),
        # then fails as a killed one does.
        self.hang: threading.Event | None = None
        self.killed = threading.Event()

    def running(self) -> bool:
        return self.up

    def ensure_running(self) -> None:
        if self.up:
            return
        self.server.failures.call("start")
        if self.hang is not None:
            self.hang.set()  # the test may now expect the hang
            if not self.killed.wait(timeout=30):
                raise AssertionError("a hanging fake server was never killed")
            raise ServerError("the fake server was killed while starting")
        self.up = True
        self.starts += 1

    def stop(self) -> bool:
        was = self.up
        self.up = False
        return was


# --- point-in-time apply -----------------------------------------------------------------
class FakeRelayApplier:
    """Applies with the real ``plan_batch``; ``crash_after`` transactions into a batch it
    stops as a killed binhoard would leave the server: the prefix applied, then
    ``Killed`` raised (the SQL thread itself stopped at a transaction boundary)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server

    def resume_point(self, files: Sequence[IndexedBinlog]) -> ResumePoint:
        self.server.connect("relay.resume_point")
        return applied_prefix(files, self.server.slave_position)

    def apply_batch(
        self,
        files: Sequence[BatchFile],
        *,
        start_offset: int = FIRST_EVENT_OFFSET,
        stop_offset: int | None = None,
        progress: ProgressCallback | None = None,
        move: bool = False,
    ) -> BatchResult:
        server = self.server
        server.connect("apply")
        position = server.slave_position
        plan = plan_batch(files, start_offset, stop_offset, position)
        if plan is None:
            return BatchResult(None, position, 0, 0, 0.0)
        if server.server_id in plan.server_ids:
            raise UsageError(f"the server's server_id {server.server_id} is the source's")
        server.applying = True  # the real applier's state file: until finish()
        server.replication.take_over_for_apply()
        applied: list[Gtid] = []
        for planned in plan.files:
            table = files[planned.source].transactions
            for domain, source, seq, _, _, _ in table[
                planned.first : planned.first + planned.count
            ].rows():
                if server.crash_after is not None and len(applied) >= server.crash_after:
                    server.crash_after = None
                    raise Killed(f"killed after {len(applied)} transactions of a batch")
                gtid = Gtid(domain, source, seq)
                server.apply(gtid)
                applied.append(gtid)
        if move:
            for planned in plan.files:
                files[planned.source].path.unlink()
        if progress is not None:
            progress(
                ApplyProgress(
                    len(applied),
                    plan.transactions,
                    len(plan.files),
                    len(plan.files),
                    plan.files[-1].name,
                    server.slave_position,
                    0.01,
                )
            )
        return BatchResult(plan, server.slave_position, len(applied), len(plan.files), 0.01)

    def unfinished(self) -> bool:
        self.server.connect("relay.unfinished")
        return self.server.applying

    def finish(
        self, log_slave_updates_was_off: bool | None = None, *, expected: GtidPosition | None = None
    ) -> GtidPosition:
        server = self.server
        server.connect("relay.finish")
        if expected is not None and server.slave_position != expected:
            raise ApplyError(
                f"after apply gtid_slave_pos={server.slave_position}, expected {expected}"
            )
        if server.binlog_position != server.slave_position:
            raise ApplyError(
                f"after apply gtid_binlog_pos={server.binlog_position} "
                f"gtid_slave_pos={server.slave_position}: they must be equal"
            )
        server.read_only = True
        server.replication.reset_all()
        server.applying = False
        return server.slave_position


class FakeReplication:
    """This fake as a replica of another ``FakeServer`` (``network`` maps ``HOST:PORT`` to
    the servers that address reaches). The primary accepts the accounts of its
    ``replication_accounts``. ``wait_for_gtid`` is where the threads work: the IO thread
    checks that this server's position is in the primary's history (else error 1236,
    as MariaDB's GTID connect), then the SQL thread applies the primary's transactions
    past it, at most ``apply_per_wait`` per call (None: all; 0: a stalled replica)."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.network: dict[str, FakeServer] = {}
        self.primary: PrimaryAddress | None = None
        self.credentials: ReplicaCredentials | None = None
        self.running = False
        self.apply_per_wait: int | None = None
        self.io_error: tuple[int, str] = (0, "")

    def _reach(self, primary: PrimaryAddress, credentials: ReplicaCredentials) -> FakeServer:
        other = self.network.get(primary.format())
        if other is None or not other.process.up:
            raise ReplicationError(f"{primary.format()} does not answer", kind="unreachable")
        if other.replication_accounts.get(credentials.user) != credentials.password:
            raise ReplicationError(
                f"{primary.format()}: access denied for {credentials.user}", kind="unreachable"
            )
        return other

    def primary_state(
        self, primary: PrimaryAddress, credentials: ReplicaCredentials
    ) -> PrimaryState:
        # A connection to the primary alone, as the real one: this server may be down
        # (a seeding restore checks the primary before its datadir is restored).
        self.server.failures.call("replication.primary_state")
        other = self._reach(primary, credentials)
        return PrimaryState(other.server_id, other.binlog_state())

    def change_primary(self, primary: PrimaryAddress, credentials: ReplicaCredentials) -> None:
        self.server.connect("replication.change_primary")
        self.running = False
        self.primary, self.credentials = primary, credentials
        self.io_error = (0, "")

    def start(self) -> None:
        self.server.connect("replication.start")
        if self.primary is None:
            raise ServerQueryError(
                "misconfigured slave: MASTER_HOST was not set", server_errno=1200
            )
        self.running = True

    def stop(self) -> None:
        self.server.connect("replication.stop")
        self.running = False

    def take_over_for_apply(self) -> None:
        """The relay applier's ``RESET SLAVE; CHANGE MASTER TO`` an unused loopback port:
        whatever primary was configured is forgotten."""
        self.running, self.primary, self.credentials = False, RELAY_APPLY_SOURCE, None

    def remove(self) -> None:
        self.server.connect("replication.remove")
        self.reset_all()

    def reset_all(self) -> None:
        """``RESET SLAVE ALL`` (the relay applier's finish)."""
        self.running, self.primary, self.credentials = False, None, None

    def status(self) -> ReplicaStatus:
        self.server.connect("replication.status")
        slave_pos = self.server.slave_position.format()
        if self.primary is None:
            return ReplicaStatus(False, "", "No", False, None, "", slave_pos)
        errno, error = self.io_error
        io = "Yes" if self.running and not errno else ("Connecting" if errno == 1597 else "No")
        return ReplicaStatus(
            configured=True,
            primary=self.primary.format(),
            io_running=io,
            sql_running=self.running,
            seconds_behind=0 if self.running else None,
            gtid_io_pos=slave_pos,
            gtid_slave_pos=slave_pos,
            last_io_errno=errno,
            last_io_error=error,
        )

    def wait_for_gtid(self, position: GtidPosition, timeout: float) -> bool:
        server = self.server
        server.connect("replication.wait_for_gtid")
        if self.running and self.primary is not None and self.credentials is not None:
            self._pull(self._reach(self.primary, self.credentials))
        return server.slave_position.covers(position)

    def _pull(self, primary: FakeServer) -> None:
        assert self.credentials is not None
        user = self.credentials.user
        if user not in primary.replication_slave_users:
            self.io_error = (
                1597,
                f"Master command COM_REGISTER_SLAVE failed: Access denied for user '{user}'",
            )
            return  # the real IO thread keeps trying ("Connecting")
        history = [Gtid.parse(row) for row in primary.rows()]
        mine = self.server.slave_position
        missing = [g for g in mine.values() if g not in history]
        if missing:
            self.io_error = (
                1236,
                f"connecting slave requested to start from GTID {missing[0]}, which is not "
                "in the master's binlog",
            )
            self.running = False
            return
        todo = [g for g in history if not mine.contains(g)]
        for gtid in todo[: self.apply_per_wait]:
            self.server.apply(gtid)


class Killed(BaseException):
    """binhoard killed mid-operation (``kill -9``): nothing of it catches this."""


# --- the server --------------------------------------------------------------------------
class FakeServer:
    """See the module docstring."""

    flavour = "mariadb"

    def __init__(
        self,
        directory: Path,
        *,
        server_id: int = 7,
        running: bool = True,
        privileges: Iterable[str] = (*BACKUP_PRIVILEGES, *RESTORE_PRIVILEGES),
        options: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.datadir = directory / "data"
        self.datadir.mkdir(parents=True, exist_ok=True)
        self.server_id = server_id
        self.time = T0
        self.version = "10.11.19-MariaDB-fake"
        self.log_bin = True
        self.binlog_format = "ROW"
        self.gtid_strict_mode = True
        self.read_only = False
        self.binlog_position = GtidPosition()
        self.slave_position = GtidPosition()
        self.privileges = tuple(privileges)
        self.options = dict(
            options
            if options is not None
            else {
                "log_bin": "binlog",
                "skip_slave_start": "",
                "server_id": str(server_id),
                "datadir": str(self.datadir),
            }
        )
        self.crash_after: int | None = None
        self.applying = False  # a relay apply began and was not finished
        self.failures = _Failures()
        self.binlogs = FakeBinlogs(self)
        self.backup_tool = FakeBackupTool(self)
        self.flushing = FakeFlushing(self)
        self.process = FakeProcess(self)
        self.process.up = running
        self.replication = FakeReplication(self)
        self.checks = FakeChecks(self)
        # Accounts this server accepts as a primary (``FakeReplication``).
        self.replication_accounts = {"repl": "repl-secret"}
        self.replication_slave_users = {"repl"}  # granted REPLICATION SLAVE

    @property
    def calls(self) -> list[str]:
        return self.failures.calls

    def fail(self, operation: str, error: BaseException, *, after: int = 0) -> None:
        """``operation`` raises ``error`` once, after ``after`` calls that pass."""
        self.failures.pending[operation] = error
        self.failures.passes[operation] = after

    def connect(self, operation: str) -> None:
        """What every SQL call does first: a stopped server refuses the connection."""
        if not self.process.up:
            self.failures.calls.append(operation)
            raise ServerError(f"cannot connect to the fake server ({operation}): not running")
        self.failures.call(operation)

    # --- its data ----------------------------------------------------------------------
    def rows(self) -> list[str]:
        path = self.datadir / ROWS
        return path.read_text().split() if path.exists() else []

    def _add_row(self, gtid: Gtid) -> None:
        with (self.datadir / ROWS).open("a") as rows:
            rows.write(f"{gtid}\n")

    def commit(self, count: int = 1, *, payload: int = 100) -> list[Gtid]:
        """``count`` transactions of this server, one second apart, in domain 0."""
        done = []
        for _ in range(count):
            self.time += 1
            gtid = Gtid(0, self.server_id, self.binlog_position.seq_no(0) + 1)
            self.binlogs.writer.transaction(gtid, self.time, [bytes(payload)])
            self.binlog_position = GtidPosition([*self._other_domains(0), gtid])
            self._add_row(gtid)
            done.append(gtid)
        return done

    def binlog_state(self) -> tuple[Gtid, ...]:
        """``@@gtid_binlog_state``: the last GTID of each (domain, server_id) logged."""
        last = {(g.domain_id, g.server_id): g for g in map(Gtid.parse, self.rows())}
        return tuple(last.values())

    def _other_domains(self, domain: int) -> list[Gtid]:
        return [g for g in self.binlog_position.values() if g.domain_id != domain]

    def apply(self, gtid: Gtid) -> None:
        """One transaction applied by the SQL thread (log_slave_updates=ON)."""
        self.slave_position = GtidPosition(
            [*(g for g in self.slave_position.values() if g.domain_id != gtid.domain_id), gtid]
        )
        self.binlog_position = GtidPosition(
            [*(g for g in self.binlog_position.values() if g.domain_id != gtid.domain_id), gtid]
        )
        self._add_row(gtid)

    # --- the port --------------------------------------------------------------------
    def facts(self) -> ServerFacts:
        self.connect("facts")
        position = self.binlog_position.format()
        return ServerFacts(
            version=self.version,
            server_id=self.server_id,
            log_bin=self.log_bin,
            binlog_format=self.binlog_format,
            gtid_strict_mode=self.gtid_strict_mode,
            log_slave_updates=True,
            read_only=self.read_only,
            gtid_current_pos=position,
            gtid_binlog_pos=position,
            gtid_slave_pos=self.slave_position.format(),
        )

    def grants(self) -> Grants:
        self.connect("grants")
        if not self.privileges:
            return parse_grants(["GRANT USAGE ON *.* TO `binhoard`@`localhost`"])
        return parse_grants(
            [f"GRANT {', '.join(self.privileges)} ON *.* TO `binhoard`@`localhost`"]
        )

    def set_gtid_state(self, gtid_position: str) -> None:
        self.connect("set_gtid_state")
        position = GtidPosition.parse(gtid_position)
        self.binlogs.reset(position)
        self.slave_position = position

    def relay_applier(self) -> FakeRelayApplier:
        self.connect("relay_applier")
        return FakeRelayApplier(self)

    def restore_target(self) -> TargetDescription:
        return TargetDescription(
            cnf=str(self.directory / "my.cnf"),
            options=self.options,
            data_directory=self.datadir,
            unix_socket=None,
            port=3306,
            relay_log_prefix=None,
            relay_log_index_file=None,
        )


# --- scratch servers for restore tests ------------------------------------------------------
class FakeScratch:
    """``ports.server.ScratchServer``: a stopped fake server with an empty datadir."""

    def __init__(self, directory: Path, server_id: int) -> None:
        directory.mkdir(parents=True)
        self.directory = directory
        self.server = FakeServer(directory, server_id=server_id, running=False)
        self.port = 13306
        self.destroyed = False

    @property
    def datadir(self) -> Path:
        return self.server.datadir

    @property
    def config_file(self) -> Path:
        return self.directory / "my.cnf"

    def kill(self) -> None:
        self.server.process.up = False
        self.server.process.killed.set()

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.directory)
        self.destroyed = True


class FakeScratchServers:
    """``ports.server.ScratchServers`` of ``FakeScratch``es; ``prepare`` is called with
    each new one (to make its tables corrupt, its start hang...)."""

    def __init__(self, prepare: Callable[[FakeScratch], None] = lambda _: None) -> None:
        self.prepare = prepare
        self.created: list[FakeScratch] = []
        self.removed: list[Path] = []

    def create(self, directory: Path, server_id: int) -> FakeScratch:
        scratch = FakeScratch(directory, server_id)
        self.prepare(scratch)
        self.created.append(scratch)
        return scratch

    def remove(self, directory: Path) -> None:
        self.removed.append(directory)
        shutil.rmtree(directory)


def fake_archiver(
    settings: Settings,
    store: ObjectStore,
    *,
    server: FakeServer | None = None,
    archiver_class: type[BinlogArchiver] = BinlogArchiver,
    **kwargs: Any,
) -> BinlogArchiver:
    """The archiver of ``settings`` (``app.archive_config``) reading ``server``'s binlogs;
    by default a fake server of ``settings.server_id`` beside its state directory, for
    tests that give the binlog index to ``archive_files`` themselves."""
    if server is None:
        server = FakeServer(
            settings.state_directory.parent / "server", server_id=settings.server_id
        )
    return archiver_class(server, store, archive_config(settings), **kwargs)


def fake_host(
    directory: Path,
    identity: Identity,
    *,
    server_id: int = 7,
    configured_server_id: int | None = None,
    running: bool = True,
    **settings: Any,
) -> tuple[Settings, FakeServer]:
    """A host's settings (``site_config`` with the private key, and ``settings`` on top)
    and its fake server, laid out in ``directory``. ``configured_server_id``: what the
    settings say, when it is not the server's."""
    data = site_config(
        directory,
        server_id=configured_server_id or server_id,
        identity=identity,
        private_key=True,
    )
    data.update(settings)
    server = FakeServer(directory, server_id=server_id, running=running)
    return parse_settings(data, source="test"), server


class ScriptedClock:
    """``now()`` for the ops: a fixed time that moves only when told (``advance``)."""

    def __init__(self, start: datetime) -> None:
        self.at = start

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


def backed_up_source(
    settings: Settings, server: FakeServer, store: ObjectStore, start: datetime
) -> tuple[BackupManifest, BackupManifest]:
    """The restore tests' source site: a full backup after 3 transactions, 4 and 2 more
    in two binlog files, an incremental an hour later, 3 more in a third file, and all
    three files archived. Returns the full backup and the incremental."""
    clock = ScriptedClock(start)
    server.commit(3)
    full = create_backup(server, store, backup_config(settings), now=clock)
    for count in (4, 2):
        server.commit(count)
        server.binlogs.flush()
    clock.advance(hours=1)
    incremental = create_backup(
        server, store, backup_config(settings), backup_type="incremental", now=clock
    )
    server.commit(3)
    server.binlogs.flush()
    archiver = BinlogArchiver(server, store, archive_config(settings), use_cache=False)
    assert archiver.archive_once().problems == []
    return full, incremental
