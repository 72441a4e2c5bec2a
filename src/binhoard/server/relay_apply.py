"""Point-in-time apply: local binlog files replayed by the restored server's SQL thread.

The copied binlogs of the source are presented to the restored server as its relay
logs, and its own replication applier (the SQL thread) executes them, in *batches* of
a few files so that disk use stays bounded. The recipe and its traps are in
``notes/mariadb.md`` ("Point-in-time apply: binlogs presented as relay logs"); per
batch:

1. ``STOP SLAVE; RESET SLAVE`` (keeps ``gtid_slave_pos``, deletes old relay logs);
2. hard-link (or copy/move) the batch's files into the relay directory as
   ``relay.000001...`` and write the relay index;
3. ``CHANGE MASTER TO ... MASTER_USE_GTID=no, MASTER_LOG_FILE=<original name>,
   MASTER_LOG_POS=<start>, RELAY_LOG_FILE=relay.000001, RELAY_LOG_POS=<start>``;
4. ``START SLAVE SQL_THREAD UNTIL RELAY_LOG_FILE=<last>, RELAY_LOG_POS=<end offset of
   the last transaction to apply>``;
5. poll until the SQL thread stops; require ``Last_SQL_Errno=0`` and
   ``gtid_slave_pos`` exactly equal to the position computed from the index.

What is decided (which files, offsets and GTID states; the applied prefix after a
crash) is in pure functions in ``domain/relay_plan.py``: :func:`plan_batch`,
:func:`applied_prefix`, :func:`relay_file_name`, :func:`relay_index_text`.

``UNTIL`` only fires when the SQL thread reads an event *after* the stop position: at
the end of a file (a copy of a binlog that was still open, without its closing Rotate)
it moves on to the empty relay log the server created and waits forever. The waiting
loop therefore also ends the batch once ``gtid_slave_pos`` equals the expected state
(then ``STOP SLAVE``), which is exact: commits are in binlog order within a domain.

Resuming: binhoard may die at any moment; the server keeps applying and stops at
``UNTIL``. :meth:`RelayApplier.resume_point` waits for that (using the expected state
recorded in a small state file next to the relay logs), then finds the longest prefix
of the transactions (in binlog order) that ``gtid_slave_pos`` contains; a later
transaction also contained means the state is not a prefix, which is an error. The
state file also keeps the server's durability settings from before the apply, so
that :meth:`RelayApplier.finish` restores them even after a crash.

Parallel apply, measured (2 cores, one shared and noisy machine, relaxed durability,
batches of 2 files, a fresh server replaying a synthetic history; ranges are repeated
runs): 30k small transactions (one UPDATE and one INSERT each, 17 MB):

=================  ==========  ==========  ============
log_slave_updates  serial      4 threads   8 threads
=================  ==========  ==========  ============
ON                 4.7-5.9k/s  8.4-9.2k/s  10.0-12.2k/s
OFF                6.5-9.1k/s  8.0-8.9k/s  10.2k/s
=================  ==========  ==========  ============

3k large transactions (50 statements each, 36 MB): serial 0.95-1.9k/s, 4 threads
1.1-1.9k/s, 8 threads 1.3k/s: no difference beyond the noise. So optimistic parallel
apply helped small transactions 1.5-1.9x with ``log_slave_updates=ON`` here.
``bench/pitr.py`` (50k OLTP transactions, docs/benchmarks.md) measured the opposite on
the same 2 cores: serial was 1.05-2.2x faster in every run, at half the server CPU. So
``restore_parallel_threads`` defaults to serial on hosts with two cores or fewer and to
4 threads on larger ones (``Settings.apply_threads``). (The integration tests' data,
~80 transactions, is too small to measure anything: batches take 10-60 ms.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import pymysql

from binhoard.config import MySQLSettings
from binhoard.disk import disk_full, is_no_space
from binhoard.domain.binlog import binlog_sort_key
from binhoard.domain.errors import ApplyError, ConflictError, UsageError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.relay_plan import (
    FIRST_EVENT_OFFSET,
    AppliedCounter,
    ApplyProgress,
    BatchFile,
    BatchPlan,
    BatchResult,
    IndexedBinlog,
    ProgressCallback,
    ResumePoint,
    applied_prefix,
    plan_batch,
    relay_index_text,
)
from binhoard.server import sql
from binhoard.server.mycnf import FileOwner, give_to, read_server_options, server_file_owner
from binhoard.server.sandbox import free_loopback_port

log = logging.getLogger("binhoard.restore")

DEFAULT_PARALLEL_THREADS: Final = 4
"""Measured: see the module docstring."""

STATE_FILE_NAME: Final = "binhoard-apply.json"

# Settings changed while applying, restored by finish().
_SAVED_SETTINGS: Final = (
    "sync_binlog",
    "innodb_flush_log_at_trx_commit",
    "slave_parallel_threads",
    "slave_parallel_mode",
)
_RELAXED_DURABILITY: Final = (("sync_binlog", 0), ("innodb_flush_log_at_trx_commit", 2))


# --- the adapter -----------------------------------------------------------------------------
ConnectionFactory = Callable[[], sql.Connection]


class RelayApplier:
    """Applies batches of local binlog files through a running server's SQL thread.

    ``conn_factory`` opens a connection to the restored server (as a user with SUPER /
    REPLICATION privileges). ``relay_dir``, ``relay_index`` and ``relay_basename`` must
    be the server's ``relay_log``/``relay_log_index`` settings (checked against the
    server). ``parallel_threads`` sets ``slave_parallel_threads`` (optimistic mode) for
    the apply; 0 applies serially. ``state_file`` (default: in ``relay_dir``) keeps the
    server's settings from before the apply and the running batch's expected end state,
    so that another process can resume and finish after a crash. ``owner``, when given,
    receives the relay logs and index placed (the server must read and delete them).
    """

    def __init__(
        self,
        conn_factory: ConnectionFactory,
        relay_dir: Path,
        relay_index: Path,
        relay_basename: str = "relay",
        parallel_threads: int = DEFAULT_PARALLEL_THREADS,
        *,
        state_file: Path | None = None,
        poll_interval: float = 0.25,
        owner: FileOwner | None = None,
    ) -> None:
        if parallel_threads < 0:
            raise UsageError(f"parallel_threads must be >= 0, not {parallel_threads}")
        self.conn_factory = conn_factory
        self.relay_dir = Path(relay_dir)
        self.relay_index = Path(relay_index)
        self.relay_basename = relay_basename
        self.parallel_threads = parallel_threads
        self.state_file = state_file or self.relay_dir / STATE_FILE_NAME
        self.poll_interval = poll_interval
        self.owner = owner

    @classmethod
    def for_server(
        cls, mysql: MySQLSettings, *, parallel_threads: int, state_file: Path
    ) -> RelayApplier:
        """The applier for the configured server (``mysql.relay_log_prefix``,
        ``mysql.relay_log_index_file``), which must be running: unset relay settings are
        the server's own (``relay_log_basename``, ``relay_log_index``), so that they need
        not be configured twice."""
        params = mysql.client_params
        prefix, index = mysql.relay_log_prefix, mysql.relay_log_index_file
        if prefix is None or index is None:
            conn = sql.connect(params)
            try:
                v = sql.variables(conn, "relay_log_basename", "relay_log_index")
            finally:
                conn.close()
            # Relative values are relative to the datadir, as for every server path.
            prefix = prefix or mysql.data_directory / v["relay_log_basename"]
            index = index or mysql.data_directory / v["relay_log_index"]
        options = read_server_options(mysql.config_file_name)
        return cls(
            lambda: sql.connect(params),
            Path(prefix).parent,
            Path(index),
            Path(prefix).name,
            parallel_threads,
            state_file=state_file,
            owner=server_file_owner(options, mysql.data_directory),
        )

    # --- public API ----------------------------------------------------------------------
    def apply_batch(
        self,
        files: Sequence[BatchFile],
        *,
        start_offset: int = FIRST_EVENT_OFFSET,
        stop_offset: int | None = None,
        progress: ProgressCallback | None = None,
        move: bool = False,
    ) -> BatchResult:
        """Applies ``files`` (in binlog order) from ``start_offset`` in the first to
        ``stop_offset`` (the end offset of a transaction) in the last; ``None`` = all.

        Files are hard-linked into the relay directory (copied across file systems);
        with ``move`` they are moved instead, so that the server deletes them as it
        finishes each one (``relay_log_purge``). Raises :class:`ApplyError` if the SQL
        thread fails (naming the GTID) or ends anywhere but the expected state, and
        :class:`ConflictError` if the SQL thread is already running (call
        :meth:`resume_point` first).
        """
        with self._session() as conn:
            self._check_relay_settings(conn)
            status = _slave_status(conn)
            if status is not None and _sql_running(status):
                raise ConflictError(
                    "the server's SQL thread is running (an earlier apply may still be going "
                    "on): call resume_point() first"
                )
            sql.query(conn, "STOP SLAVE")
            sql.query(conn, "RESET SLAVE")
            self._remove_relay_files()
            position = _slave_pos(conn)
            plan = plan_batch(files, start_offset, stop_offset, position, self.relay_basename)
            if plan is None:
                log.info("nothing to apply in %s", ", ".join(f.name for f in files) or "no files")
                return BatchResult(None, position, 0, 0, 0.0)
            own_id = int(sql.variables(conn, "server_id")["server_id"])
            if own_id in plan.server_ids:
                raise UsageError(
                    f"the server's server_id {own_id} is the source's: its SQL thread would "
                    "silently skip those transactions; give the restored server another "
                    "server_id"
                )
            self._prepare_server(conn)
            self._place_files(files, plan, move=move)
            self._save_state(batch={"expected": plan.expected_position.format()})
            counter = AppliedCounter(files, plan)
            started = time.monotonic()
            self._start(conn, plan)

            def on_poll(pos: GtidPosition) -> None:
                if progress is None:
                    return
                applied = counter.applied(pos)
                done = counter.files_done(applied)
                current = plan.files[min(done, len(plan.files) - 1)].name
                elapsed = time.monotonic() - started
                progress(
                    ApplyProgress(
                        applied, plan.transactions, done, len(plan.files), current, pos, elapsed
                    )
                )

            status = self._wait(conn, plan.expected_position, on_poll)
            seconds = time.monotonic() - started
            position = _slave_pos(conn)
            self._check_stopped_cleanly(status, [files[p.source] for p in plan.files], position)
            if position != plan.expected_position:
                raise ApplyError(
                    f"the SQL thread stopped at gtid_slave_pos {position}, expected "
                    f"{plan.expected_position} (relay log {plan.until_file} "
                    f"offset {plan.stop_offset})"
                )
            sql.query(conn, "STOP SLAVE")
            sql.query(conn, "RESET SLAVE")
            self._save_state(batch=None)
            on_poll(position)
            log.info(
                "applied %d transactions from %s..%s in %.1f s (%.0f/s), now at %s",
                plan.transactions,
                plan.files[0].name,
                plan.files[-1].name,
                seconds,
                plan.transactions / seconds if seconds > 0 else 0.0,
                position,
            )
            return BatchResult(plan, position, plan.transactions, len(plan.files), seconds)

    def resume_point(self, files: Sequence[IndexedBinlog]) -> ResumePoint:
        """Where to continue applying ``files`` after an interrupted run.

        If the SQL thread is still running it is waited for (it stops at the batch's
        ``UNTIL``, or at the expected state recorded when the batch started; without
        that record it is stopped, at a consistent point). Then the longest prefix of
        the files' transactions contained in ``gtid_slave_pos`` says where to continue
        (see :func:`applied_prefix`).
        """
        with self._session() as conn:
            status = _slave_status(conn)
            if status is not None and _sql_running(status):
                batch = self._load_state().get("batch")
                expected = (
                    GtidPosition.parse(str(batch["expected"])) if isinstance(batch, dict) else None
                )
                if expected is None:
                    log.warning("SQL thread running without a recorded batch: stopping it")
                    sql.query(conn, "STOP SLAVE")
                else:
                    log.info("waiting for the SQL thread to reach %s", expected)
                status = self._wait(conn, expected, None)
            sql.query(conn, "STOP SLAVE")
            position = _slave_pos(conn)
            point = applied_prefix(files, position)
            if status is not None and int(status["Last_SQL_Errno"] or 0):
                error = f"{status['Last_SQL_Errno']}: {status['Last_SQL_Error']}"
                point = dataclasses.replace(point, server_error=error)
            return point

    def unfinished(self) -> bool:
        """Whether an apply began and :meth:`finish` has not run since: its state file
        (the server's settings from before, the running batch) is there."""
        return self.state_file.exists()

    def finish(
        self,
        log_slave_updates_was_off: bool | None = None,
        *,
        expected: GtidPosition | None = None,
    ) -> GtidPosition:
        """Ends the apply: ``STOP SLAVE; RESET SLAVE ALL``, the binlog GTID state made
        the applied one when ``log_slave_updates`` was OFF (``None``: ask the server),
        durability and parallel settings restored, ``read_only=ON``.

        Returns the server's position; raises :class:`ApplyError` unless
        ``gtid_binlog_pos``, ``gtid_slave_pos`` and ``gtid_current_pos`` are equal (and
        equal ``expected``, if given).
        """
        with self._session() as conn:
            sql.query(conn, "STOP SLAVE")
            sql.query(conn, "RESET SLAVE ALL")
            self._remove_relay_files()
            if log_slave_updates_was_off is None:
                log_slave_updates_was_off = (
                    sql.variables(conn, "log_slave_updates")["log_slave_updates"] != "ON"
                )
            if log_slave_updates_was_off:
                # Never SET GLOBAL gtid_binlog_state=@@global.gtid_slave_pos directly: it
                # deadlocked the server (notes/mariadb.md).
                sql.query(conn, "SET @binhoard_g = @@global.gtid_slave_pos")
                sql.query(conn, "RESET MASTER")
                sql.query(conn, "SET GLOBAL gtid_binlog_state = @binhoard_g")
            saved = self._load_state().get("saved_settings")
            if isinstance(saved, dict):
                self._set_globals(conn, [(str(k), v) for k, v in saved.items()])
            sql.query(conn, "SET GLOBAL read_only = ON")
            row = sql.query(
                conn,
                "SELECT @@global.gtid_binlog_pos, @@global.gtid_slave_pos, "
                "@@global.gtid_current_pos",
            )[0]
            binlog_pos, slave_pos, current_pos = (GtidPosition.parse(str(v or "")) for v in row)
            if not binlog_pos == slave_pos == current_pos or (
                expected is not None and slave_pos != expected
            ):
                raise ApplyError(
                    f"after apply gtid_binlog_pos={binlog_pos} gtid_slave_pos={slave_pos} "
                    f"gtid_current_pos={current_pos}"
                    + (f", expected {expected}" if expected is not None else "")
                    + ": they must all be equal"
                )
            self.state_file.unlink(missing_ok=True)
            log.info("apply finished at %s; server is read-only", slave_pos or "(empty)")
            return slave_pos

    # --- steps -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _session(self) -> Iterator[sql.Connection]:
        conn = self.conn_factory()
        try:
            yield conn
        except pymysql.err.MySQLError as exc:  # sql.query maps its own; this is a net
            raise sql.server_error(exc, "point-in-time apply") from exc
        finally:
            with contextlib.suppress(pymysql.err.Error):
                conn.close()

    def _check_relay_settings(self, conn: sql.Connection) -> None:
        v = sql.variables(conn, "relay_log_basename", "relay_log_index")
        wanted = (self.relay_dir / self.relay_basename, self.relay_index)
        actual = (Path(v["relay_log_basename"]), Path(v["relay_log_index"]))
        for want, have, name in zip(wanted, actual, ("relay_log", "relay_log_index"), strict=True):
            if want.resolve() != have.resolve():
                raise UsageError(
                    f"the server's {name} is {have}, but binhoard was told {want}: "
                    "set relay_log_prefix / relay_log_index_file to the server's values"
                )

    def _prepare_server(self, conn: sql.Connection) -> None:
        """Relaxes durability and sets parallel apply (the slave is stopped). The
        previous values are saved first, once, so a crash cannot lose them."""
        state = self._load_state()
        if "saved_settings" not in state:
            before = sql.variables(conn, *_SAVED_SETTINGS)
            self._save_state(saved_settings=before)
        threads = self.parallel_threads
        changes: list[tuple[str, object]] = [*_RELAXED_DURABILITY]
        changes.append(("slave_parallel_threads", threads))
        if threads:
            changes.append(("slave_parallel_mode", "optimistic"))
        self._set_globals(conn, changes)
        # The SQL thread ignores read_only; clients must not write while we apply.
        sql.query(conn, "SET GLOBAL read_only = ON")

    def _set_globals(self, conn: sql.Connection, changes: Sequence[tuple[str, object]]) -> None:
        for name, value in changes:
            if not re.fullmatch(r"[a-z_]+", name):
                raise UsageError(f"not a server variable name: {name!r}")
            number = isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value)
            sql.query(conn, f"SET GLOBAL {name} = %s", (int(str(value)) if number else value,))

    def _remove_relay_files(self) -> None:
        """Deletes relay logs of ours that the server's RESET SLAVE did not (files a
        crashed run placed before writing the index), and the index."""
        pattern = re.compile(re.escape(self.relay_basename) + r"\.[0-9]{6,}")
        if self.relay_dir.is_dir():
            for path in self.relay_dir.iterdir():
                if pattern.fullmatch(path.name):
                    path.unlink(missing_ok=True)

    def _place_files(self, files: Sequence[BatchFile], plan: BatchPlan, *, move: bool) -> None:
        self.relay_dir.mkdir(parents=True, exist_ok=True)
        placed = []
        text = relay_index_text(self.relay_dir, [p.relay_name for p in plan.files])
        tmp = self.relay_index.with_name(self.relay_index.name + ".tmp")
        try:
            for planned in plan.files:
                source = files[planned.source].path
                target = self.relay_dir / planned.relay_name
                placed.append(target)
                _place(source, target, move=move)
            tmp.write_text(text)
        except OSError as exc:
            if not is_no_space(exc):
                raise
            # A partial copy would only hold the space a retry needs.
            for path in (*placed, tmp):
                path.unlink(missing_ok=True)
            raise disk_full(
                self.relay_dir,
                what="relay logs",
                needed=sum(files[p.source].size for p in plan.files) + len(text),
            ) from None
        if self.owner is not None:
            # Downloaded by binhoard (mode 0600): a server running as another user could
            # neither read them nor purge them once applied.
            give_to(self.owner, *placed, tmp)
        tmp.replace(self.relay_index)

    def _start(self, conn: sql.Connection, plan: BatchPlan) -> None:
        first = plan.files[0]
        binlog_sort_key(first.name)  # a real binlog name, nothing else goes into SQL
        sql.query(
            conn,
            "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%s, MASTER_USER='none', "
            "MASTER_USE_GTID=no, MASTER_LOG_FILE=%s, MASTER_LOG_POS=%s, "
            "RELAY_LOG_FILE=%s, RELAY_LOG_POS=%s",
            (
                free_loopback_port(),
                first.name,
                plan.start_offset,
                first.relay_name,
                plan.start_offset,
            ),
        )
        sql.query(
            conn,
            "START SLAVE SQL_THREAD UNTIL RELAY_LOG_FILE=%s, RELAY_LOG_POS=%s",
            (plan.until_file, plan.stop_offset),
        )

    def _wait(
        self,
        conn: sql.Connection,
        expected: GtidPosition | None,
        on_poll: Callable[[GtidPosition], None] | None,
    ) -> dict[str, Any] | None:
        """Polls until the SQL thread stops, or until it reached ``expected`` (then
        stops it: UNTIL at a file's end never fires). Returns the last slave status."""
        delay = 0.01
        while True:
            status = _slave_status(conn)
            position = _slave_pos(conn)
            if on_poll is not None:
                on_poll(position)
            if status is None or not _sql_running(status):
                return status
            if expected is not None and position == expected:
                sql.query(conn, "STOP SLAVE")
                return _slave_status(conn)
            time.sleep(delay)
            delay = min(delay * 2, self.poll_interval)

    def _check_stopped_cleanly(
        self,
        status: dict[str, Any] | None,
        files: Sequence[IndexedBinlog],
        position: GtidPosition,
    ) -> None:
        if status is None:
            raise ApplyError("the server has no replication configured any more (RESET SLAVE?)")
        code = int(status["Last_SQL_Errno"] or 0)
        if not code:
            return
        message = str(status["Last_SQL_Error"] or "")
        try:
            failed = applied_prefix(files, position).next_gtid
        except ApplyError:
            failed = None
        where = f" on transaction {failed}" if failed is not None else ""
        raise ApplyError(
            f"the SQL thread failed{where} (relay log {status['Relay_Log_File']}, "
            f"source {status['Relay_Master_Log_File']} offset "
            f"{status['Exec_Master_Log_Pos']}): error {code}: {message}",
            gtid=None if failed is None else str(failed),
            server_errno=code,
            server_message=message,
        )

    # --- state file --------------------------------------------------------------------
    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ApplyError(f"cannot read apply state {self.state_file}: {exc}") from exc
        return data if isinstance(data, dict) else {}

    def _save_state(self, **changes: Any) -> None:
        state = self._load_state()
        for key, value in changes.items():
            if value is None:
                state.pop(key, None)
            else:
                state[key] = value
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")
        with tmp.open("w") as out:
            json.dump(state, out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(self.state_file)


def _place(source: Path, target: Path, *, move: bool) -> None:
    target.unlink(missing_ok=True)
    if move:
        shutil.move(source, target)
        return
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copyfile(source, target)


def _slave_status(conn: sql.Connection) -> dict[str, Any] | None:
    rows = sql.query_dicts(conn, "SHOW SLAVE STATUS")
    return rows[0] if rows else None


def _sql_running(status: dict[str, Any]) -> bool:
    return str(status.get("Slave_SQL_Running")) != "No"


def _slave_pos(conn: sql.Connection) -> GtidPosition:
    value = sql.query(conn, "SELECT @@global.gtid_slave_pos")[0][0]
    return GtidPosition.parse(str(value or ""))
