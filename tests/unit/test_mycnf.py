"""The server's option file as mariadbd reads it (through the real my_print_defaults)."""

from __future__ import annotations

import os
import pwd
import socket
from pathlib import Path

import pytest

from binhoard.domain.errors import UsageError
from binhoard.server.mycnf import (
    parse_print_defaults,
    read_server_options,
    server_file_owner,
)


def test_print_defaults_lines_become_options_the_last_one_winning() -> None:
    options = parse_print_defaults(
        "--user=mysql\n--log-error=err.log\n--skip-slave-start\n--loose-relay_log=/r/relay\n"
        "--user=other\nnot an option\n"
    )
    assert options == {
        "user": "other",
        "log_error": "err.log",
        "skip_slave_start": "",
        "relay_log": "/r/relay",
    }


def test_reads_server_groups_and_includes_not_client_ones(tmp_path: Path) -> None:
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "extra.cnf").write_text("[mariadbd]\nlog-error\nserver-id=7\n")
    cnf = tmp_path / "my.cnf"
    cnf.write_text(
        "[client]\nport=1\n[mysqld]\ndatadir=/srv/db\nserver_id=3\n"
        f"skip_slave_start=0\n!includedir {tmp_path / 'conf.d'}\n"
    )
    options = read_server_options(cnf)
    assert options.get("port") is None
    assert options.get("server-id") == "7"  # the include came later
    assert options.datadir == Path("/srv/db")
    assert not options.flag("skip-slave-start")
    host = socket.gethostname().split(".")[0]
    assert options.error_log(Path("/ignored")) == Path(f"/srv/db/{host}.err")


def test_an_unreadable_option_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"mysql.config_file_name {tmp_path / 'no.cnf'}"):
        read_server_options(tmp_path / "no.cnf")


def test_the_server_user_is_its_user_option_else_the_datadir_owner(tmp_path: Path) -> None:
    cnf = tmp_path / "my.cnf"
    cnf.write_text("[mysqld]\nuser=mysql\n")
    owner = server_file_owner(read_server_options(cnf), tmp_path / "data")
    mysql = pwd.getpwnam("mysql")
    assert (owner.uid, owner.gid, owner.name) == (mysql.pw_uid, mysql.pw_gid, "mysql")

    cnf.write_text("[mysqld]\nport=3306\n")
    (tmp_path / "data").mkdir()
    os.chown(tmp_path / "data", mysql.pw_uid, mysql.pw_gid)
    assert server_file_owner(read_server_options(cnf), tmp_path / "data").uid == mysql.pw_uid
    # Not there yet: the nearest directory above it.
    parent = server_file_owner(read_server_options(cnf), tmp_path / "new" / "data")
    assert parent.uid == tmp_path.stat().st_uid

    cnf.write_text("[mysqld]\nuser=no-such-user-here\n")
    with pytest.raises(UsageError, match=f"user=no-such-user-here in {cnf}"):
        server_file_owner(read_server_options(cnf), tmp_path / "data")
