"""The MariaDB flavour of the server port (``binhoard.ports.server.Server``).

Built from the settings in ``binhoard.app.open_server`` only. Each call opens its own
connection (``sql.connect``) and closes it: the ops ask a few questions per run, and a
connection kept across a long backup or restore would only be one more thing to lose.
Tools are looked for when first used, so that a host without mariabackup can still
show its status.
"""

from __future__ import annotations

import functools
import logging
import subprocess
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from binhoard.config import MySQLSettings
from binhoard.domain.binlog_file import BinlogIndex, BinlogSummary
from binhoard.domain.errors import BinhoardError, ServerError, UsageError
from binhoard.domain.privileges import Grants
from binhoard.domain.restore_target import TargetDescription
from binhoard.domain.server_facts import ServerFacts
from binhoard.ports.server import CheckpointWait, ServerBinlogs, SettingsJournal
from binhoard.server import sql
from binhoard.server.backup_tool import MariaBackup
from binhoard.server.binlog_reader import read_binlog, summarize_binlog
from binhoard.server.checks import MariaDBChecks
from binhoard.server.mycnf import read_server_options
from binhoard.server.process import ServerProcess
from binhoard.server.relay_apply import RelayApplier
from binhoard.server.replication import MariaDBReplication

log = logging.getLogger("binhoard.server")


class _Connections:
    def __init__(self, mysql: MySQLSettings) -> None:
        self.mysql = mysql

    @contextmanager
    def session(self) -> Iterator[sql.Connection]:
        conn = sql.connect(self.mysql.client_params)
        try:
            yield conn
        finally:
            conn.close()


class MariaDBBinlogs(_Connections):
    """``SHOW BINARY LOGS``, ``FLUSH BINARY LOGS``, ``PURGE BINARY LOGS``; files read by
    ``server/binlog_reader.py``."""

    def list(self) -> ServerBinlogs:
        with self.session() as conn:
            rows = sql.query(conn, "SHOW BINARY LOGS")
            status = sql.query(conn, "SHOW MASTER STATUS")
        if not status:
            raise UsageError("the server has binary logging off: nothing to archive")
        return ServerBinlogs(
            directory=self.mysql.binlog_prefix.parent,
            names=tuple(str(row[0]) for row in rows),
            active=str(status[0][0]),
        )

    def flush(self) -> None:
        with self.session() as conn:
            sql.query(conn, "FLUSH BINARY LOGS")

    def purge_to(self, name: str) -> None:
        with self.session() as conn:
            sql.query(conn, "PURGE BINARY LOGS TO %s", (name,))

    def summarize(self, path: Path, *, states_at: Collection[int] = ()) -> BinlogSummary:
        return summarize_binlog(path, states_at=states_at)

    def read(self, path: Path) -> BinlogIndex:
        return read_binlog(path)


class MariaDBFlushing(_Connections):
    """InnoDB's flushing settings (``sql.bound_checkpoint_age`` and its helpers)."""

    def bound_checkpoint_age(self, journal: SettingsJournal) -> CheckpointWait:
        with self.session() as conn:
            return sql.bound_checkpoint_age(conn, journal=journal)

    def setting_names(self) -> tuple[str, ...]:
        return sql.flush_setting_names()

    def put_back(self, values: Mapping[str, str]) -> None:
        with self.session() as conn:
            sql.restore_flush_settings(conn, values)

    def startup_values(self) -> dict[str, str]:
        cnf = self.mysql.config_file_name
        try:
            configured = read_server_options(cnf).options
        except UsageError as exc:
            log.warning("%s", exc.message)
            configured = {}
        with self.session() as conn:
            return sql.startup_flush_settings(conn, configured)


class MariaDBProcess(_Connections):
    """mariadbd of ``mysql.config_file_name`` (``server/process.py``), or the operator's
    ``start_command``."""

    def __init__(self, mysql: MySQLSettings, start_command: list[str] | None) -> None:
        super().__init__(mysql)
        self.start_command = start_command
        self._process = ServerProcess(mysql.config_file_name)

    def running(self) -> bool:
        return self._process.pid() is not None

    def stop(self) -> bool:
        return self._process.stop()

    def _answers(self) -> bool:
        try:
            sql.connect(self.mysql.client_params, timeout=2).close()
        except ServerError as exc:
            if not exc.retryable:
                raise  # it answered, refusing us (access denied): waiting cannot help
            return False
        return True

    def ensure_running(self) -> None:
        """Starts the configured server unless it already answers: ``start_command`` when
        configured, else ``mariadbd --defaults-file=<config_file_name>``."""
        if self._answers():
            return
        process = self._process

        def describe() -> str:
            return self.describe_start_failure(process.log_file)

        if self.start_command:
            result = subprocess.run(self.start_command, check=False)
            if result.returncode != 0:
                raise ServerError(
                    f"start_command {self.start_command} exited with {result.returncode}\n"
                    + describe()
                )
            process.wait_until(self._answers, describe_failure=describe)
        else:
            process.start(self._answers, describe_failure=describe)

    def describe_start_failure(self, stderr_log: Path, lines: int = 20) -> str:
        """The last lines of the server's error log (``log_error`` of its option file, else
        its standard error as binhoard captured it), which say why it did not start."""
        try:
            options = read_server_options(self.mysql.config_file_name)
            path = options.error_log(self.mysql.data_directory) or stderr_log
        except BinhoardError:
            path = stderr_log
        try:
            text = path.read_text(errors="replace")
        except OSError as exc:
            return f"(its error log {path} cannot be read: {exc.strerror})"
        tail = "\n".join(text.strip().splitlines()[-lines:])
        return f"last lines of its error log {path}:\n{tail}"


class MariaDBServer(_Connections):
    """The configured MariaDB server: SQL over ``mysql.client_params``, mariabackup,
    the SQL thread fed with relay logs, replication from a primary, mariadbd.
    ``state_directory`` keeps the applier's saved settings (``restore-apply.json``);
    ``apply_threads`` is its ``slave_parallel_threads``."""

    flavour = "mariadb"

    def __init__(
        self,
        mysql: MySQLSettings,
        *,
        state_directory: Path,
        apply_threads: int,
        start_command: list[str] | None = None,
    ) -> None:
        super().__init__(mysql)
        self.state_directory = state_directory
        self.apply_threads = apply_threads
        self.binlogs = MariaDBBinlogs(mysql)
        self.flushing = MariaDBFlushing(mysql)
        self.process = MariaDBProcess(mysql, start_command)
        self.replication = MariaDBReplication(mysql)
        self.checks = MariaDBChecks(self.session)

    @functools.cached_property
    def backup_tool(self) -> MariaBackup:
        return MariaBackup(self.mysql.config_file_name, self.mysql.client_params, self.datadir)

    @property
    def datadir(self) -> Path:
        return self.mysql.data_directory

    def facts(self) -> ServerFacts:
        with self.session() as conn:
            return sql.server_facts(conn)

    def grants(self) -> Grants:
        with self.session() as conn:
            return sql.grants(conn)

    def set_gtid_state(self, gtid_position: str) -> None:
        """A restored server has empty ``gtid_binlog_pos``/``gtid_slave_pos`` (binlogs are
        not in the backup); binlog apply then continues from exactly this state."""
        with self.session() as conn:
            sql.query(conn, "RESET MASTER")
            sql.query(conn, "SET GLOBAL gtid_binlog_state = %s", (gtid_position,))
            sql.query(conn, "SET GLOBAL gtid_slave_pos = %s", (gtid_position,))

    def relay_applier(self) -> RelayApplier:
        return RelayApplier.for_server(
            self.mysql,
            parallel_threads=self.apply_threads,
            state_file=self.state_directory / "restore-apply.json",
        )

    def restore_target(self) -> TargetDescription:
        mysql = self.mysql
        return TargetDescription(
            cnf=str(mysql.config_file_name),
            options=read_server_options(mysql.config_file_name).options,
            data_directory=mysql.data_directory,
            unix_socket=mysql.client_params.unix_socket,
            port=mysql.client_params.port,
            relay_log_prefix=mysql.relay_log_prefix,
            relay_log_index_file=mysql.relay_log_index_file,
        )
