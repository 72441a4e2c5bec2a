"""Whether a server, as its option file describes it, can receive a point-in-time restore.

Checked before anything is downloaded (and shown by ``binhoard config check``), so that
a restore does not fail after its base backup was restored. Each rule is one that was
seen to fail (``notes/mariadb.md``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

_FALSE = frozenset({"0", "off", "false", "no"})


def _set(options: Mapping[str, str], name: str) -> bool:
    value = options.get(name)
    return value is not None and value.strip().lower() not in _FALSE


@dataclass(frozen=True)
class TargetDescription:
    """What binhoard is told of the target: its option file's server options (names with
    ``_``, as :func:`binhoard.server.mycnf.parse_print_defaults` gives them) and the
    binhoard settings that must agree with them."""

    cnf: str
    options: Mapping[str, str]
    data_directory: Path
    unix_socket: Path | None
    port: int
    relay_log_prefix: Path | None
    relay_log_index_file: Path | None


def _path(options: Mapping[str, str], name: str, datadir: Path) -> Path | None:
    value = options.get(name)
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() else datadir / path


def target_problems(
    target: TargetDescription, source_server_ids: Collection[int] = ()
) -> list[str]:
    """Why binhoard cannot restore to a point in time into this server; [] if it can.
    ``source_server_ids``: of the backup and binlogs to apply (empty: not known yet)."""
    o, cnf = target.options, target.cnf
    found: list[str] = []
    if not _set(o, "log_bin"):
        found.append(
            f"log_bin is not set in {cnf}: the restored server needs a binlog (its GTID "
            "state is set with RESET MASTER, and it continues the archive afterwards)"
        )
    if not _set(o, "skip_slave_start"):
        found.append(
            f"skip-slave-start is not set in {cnf}: restarted during the apply, the server "
            "would run its SQL thread past the target"
        )
    if _set(o, "relay_log_recovery"):
        found.append(
            f"relay_log_recovery is ON in {cnf}: at a restart the server would discard the "
            "relay logs being applied; set it OFF"
        )
    server_id = o.get("server_id", "1").strip() or "1"
    if not server_id.isdigit():
        found.append(f"server_id={server_id} in {cnf} is not a number")
    elif int(server_id) in source_server_ids:
        found.append(
            f"server_id is {server_id} in {cnf}"
            + ("" if "server_id" in o else " (the default)")
            + ", the source's: its SQL thread would silently skip the source's transactions;"
            " give the restored server a server_id of its own"
        )
    datadir = _path(o, "datadir", target.data_directory)
    if datadir is not None and datadir.resolve() != target.data_directory.resolve():
        found.append(
            f"datadir is {datadir} in {cnf}, but mysql.data_directory is "
            f"{target.data_directory}: the backup would go where the server does not look"
        )
    return found + _connection_problems(target) + _relay_problems(target)


def _connection_problems(target: TargetDescription) -> list[str]:
    o, cnf = target.options, target.cnf
    found: list[str] = []
    if target.unix_socket is not None:
        socket = _path(o, "socket", target.data_directory)
        if socket is not None and socket.resolve() != target.unix_socket.resolve():
            found.append(
                f"mysql.client_params.unix_socket is {target.unix_socket}, but this server's "
                f"socket is {socket} ({cnf}): binhoard would change another server"
            )
    else:
        port = o.get("port")
        if port and port.strip() != str(target.port):
            found.append(
                f"mysql.client_params.port is {target.port}, but this server's port is "
                f"{port} ({cnf}): binhoard would change another server"
            )
    return found


def _relay_problems(target: TargetDescription) -> list[str]:
    o, cnf = target.options, target.cnf
    found: list[str] = []
    relay_log = _path(o, "relay_log", target.data_directory)
    relay_index = _path(o, "relay_log_index", target.data_directory)
    if relay_index is None and relay_log is not None:
        relay_index = relay_log.with_name(relay_log.name + ".index")  # the server's default
    for key, option, configured, actual in (
        ("relay_log_prefix", "relay_log", target.relay_log_prefix, relay_log),
        ("relay_log_index_file", "relay_log_index", target.relay_log_index_file, relay_index),
    ):
        if (
            configured is not None
            and actual is not None
            and actual.resolve() != configured.resolve()
        ):
            found.append(
                f"mysql.{key} is {configured}, but {option} is {actual} in {cnf}: leave "
                f"mysql.{key} unset to use the server's"
            )
    return found
