"""The server facts binhoard checks before backing up or archiving, over the values of
``SHOW GLOBAL VARIABLES`` (``sql.FACT_VARIABLES``)."""

from __future__ import annotations

from binhoard.server.sql import FACT_VARIABLES, facts_from_variables

# What a sandbox of MariaDB 11.8.9 (Debian 13) answered: no binlog_storage_engine row,
# the variable does not exist before 12.3.
MARIADB_11_8 = {
    "version": "11.8.9-MariaDB-0+deb13u1 from Debian-log",
    "server_id": "7",
    "log_bin": "ON",
    "binlog_format": "ROW",
    "gtid_strict_mode": "ON",
    "log_slave_updates": "ON",
    "read_only": "OFF",
    "gtid_current_pos": "0-7-4",
    "gtid_binlog_pos": "0-7-4",
    "gtid_slave_pos": "",
}


def test_a_server_with_binlog_files_is_ready() -> None:
    facts = facts_from_variables(MARIADB_11_8)
    assert facts.binlog_storage_engine == ""
    assert facts.problems(expected_server_id=7) == []
    assert set(MARIADB_11_8) < set(FACT_VARIABLES)


def test_a_binlog_stored_in_innodb_is_refused_with_the_reason() -> None:
    # MariaDB 12.3 started with binlog_storage_engine=innodb (not runnable here: its
    # value is the one the option takes).
    facts = facts_from_variables({**MARIADB_11_8, "binlog_storage_engine": "innodb"})
    (problem,) = facts.problems(expected_server_id=7)
    assert problem.startswith("binlog_storage_engine is innodb: the binlog is stored in InnoDB")
    assert "cannot archive or replay" in problem


def test_an_empty_binlog_storage_engine_means_files() -> None:
    # 12.3 without the option: the variable exists and is empty (NULL reads as "").
    facts = facts_from_variables({**MARIADB_11_8, "binlog_storage_engine": ""})
    assert facts.problems(expected_server_id=7) == []


def test_every_problem_is_named_at_once() -> None:
    facts = facts_from_variables(
        {
            **MARIADB_11_8,
            "log_bin": "OFF",
            "binlog_format": "MIXED",
            "binlog_storage_engine": "innodb",
        }
    )
    problems = facts.problems(expected_server_id=8)
    assert [p.split(" ")[0] for p in problems] == [
        "log_bin",
        "binlog_storage_engine",
        "binlog_format",
        "the",
    ]
