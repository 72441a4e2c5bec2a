"""MariaDB replication from a primary (the server port's ``Replication``): seeding.

The *default* connection (no connection name) is used, the one point-in-time apply
(``server/relay_apply.py``) also drives: apply and replication never run at once on a
server (seeding starts only after the apply's ``finish`` ran ``RESET SLAVE ALL``, and a
new apply starts with ``STOP SLAVE; RESET SLAVE``, which takes the connection over), so
one connection means no second set of relay logs and no replica left running unseen
while an apply writes ``gtid_slave_pos``. ``change_primary`` runs ``RESET SLAVE`` first:
relay logs left by an apply (or an earlier primary) are deleted, and with
``MASTER_USE_GTID=slave_pos`` the position is ``gtid_slave_pos``, which it keeps.
"""

from __future__ import annotations

from pydantic import SecretStr

from binhoard.config import ClientParams, MySQLSettings
from binhoard.domain.errors import ReplicationError, ServerError
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.replica import PrimaryAddress, parse_binlog_state
from binhoard.ports.server import PrimaryState, ReplicaCredentials, ReplicaStatus
from binhoard.server import sql

# Seconds between the IO thread's attempts to reach the primary again.
CONNECT_RETRY = 5


class MariaDBReplication:
    def __init__(self, mysql: MySQLSettings) -> None:
        self.mysql = mysql

    def _session(self) -> sql.Connection:
        return sql.connect(self.mysql.client_params)

    def primary_state(
        self, primary: PrimaryAddress, credentials: ReplicaCredentials
    ) -> PrimaryState:
        params = ClientParams(
            host=primary.host,
            port=primary.port,
            user=credentials.user,
            password=SecretStr(credentials.password),
        )
        try:
            conn = sql.connect(params, timeout=5)
        except ServerError as exc:
            raise ReplicationError(
                f"the primary {primary.format()} cannot be reached: {exc.message}",
                kind="unreachable",
            ) from None
        try:
            server_id, text = sql.query(
                conn, "SELECT @@global.server_id, @@global.gtid_binlog_state"
            )[0]
        finally:
            conn.close()
        return PrimaryState(int(server_id), parse_binlog_state(str(text or "")))

    def change_primary(self, primary: PrimaryAddress, credentials: ReplicaCredentials) -> None:
        conn = self._session()
        try:
            sql.query(conn, "STOP SLAVE")
            sql.query(conn, "RESET SLAVE")
            sql.query(
                conn,
                "CHANGE MASTER TO MASTER_HOST=%s, MASTER_PORT=%s, MASTER_USER=%s, "
                "MASTER_PASSWORD=%s, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=%s",
                (primary.host, primary.port, credentials.user, credentials.password, CONNECT_RETRY),
                purpose=f"CHANGE MASTER TO {primary.format()}",
            )
        finally:
            conn.close()

    def start(self) -> None:
        self._run("START SLAVE")

    def stop(self) -> None:
        self._run("STOP SLAVE")

    def remove(self) -> None:
        conn = self._session()
        try:
            sql.query(conn, "STOP SLAVE")
            sql.query(conn, "RESET SLAVE ALL")
        finally:
            conn.close()

    def _run(self, statement: str) -> None:
        conn = self._session()
        try:
            sql.query(conn, statement)
        finally:
            conn.close()

    def status(self) -> ReplicaStatus:
        conn = self._session()
        try:
            rows = sql.query_dicts(conn, "SHOW SLAVE STATUS")
            slave_pos = str(sql.query(conn, "SELECT @@global.gtid_slave_pos")[0][0] or "")
        finally:
            conn.close()
        if not rows or not rows[0].get("Master_Host"):
            return ReplicaStatus(
                configured=False,
                primary="",
                io_running="No",
                sql_running=False,
                seconds_behind=None,
                gtid_io_pos="",
                gtid_slave_pos=slave_pos,
            )
        row = rows[0]
        behind = row.get("Seconds_Behind_Master")
        address = PrimaryAddress(str(row["Master_Host"]), int(row["Master_Port"]))
        return ReplicaStatus(
            configured=True,
            primary=address.format(),
            io_running=str(row.get("Slave_IO_Running") or "No"),
            sql_running=str(row.get("Slave_SQL_Running")) == "Yes",
            seconds_behind=None if behind is None else int(behind),
            gtid_io_pos=str(row.get("Gtid_IO_Pos") or ""),
            gtid_slave_pos=slave_pos,
            last_io_errno=int(row.get("Last_IO_Errno") or 0),
            last_io_error=str(row.get("Last_IO_Error") or ""),
            last_sql_errno=int(row.get("Last_SQL_Errno") or 0),
            last_sql_error=str(row.get("Last_SQL_Error") or ""),
        )

    def wait_for_gtid(self, position: GtidPosition, timeout: float) -> bool:
        conn = self._session()
        try:
            rows = sql.query(
                conn, "SELECT MASTER_GTID_WAIT(%s, %s)", (position.format(), float(timeout))
            )
        finally:
            conn.close()
        return int(rows[0][0]) == 0
