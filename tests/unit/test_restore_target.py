"""Whether a server's option file allows a point-in-time restore into it (pure)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from binhoard.domain.restore_target import TargetDescription, target_problems

GOOD = {
    "datadir": "/srv/db/data",
    "socket": "/srv/db/db.sock",
    "port": "3307",
    "server_id": "2",
    "log_bin": "/srv/db/binlogs/binlog",
    "skip_slave_start": "",
    "relay_log": "/srv/db/relay/relay",
    "relay_log_recovery": "OFF",
}


def target(**changes: object) -> TargetDescription:
    base = TargetDescription(
        cnf="/srv/db/my.cnf",
        options=GOOD,
        data_directory=Path("/srv/db/data"),
        unix_socket=Path("/srv/db/db.sock"),
        port=3306,
        relay_log_prefix=None,
        relay_log_index_file=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def with_options(**options: str | None) -> TargetDescription:
    merged = {**GOOD, **options}
    return target(options={k: v for k, v in merged.items() if v is not None})


def test_a_well_described_target_has_no_problem() -> None:
    assert target_problems(target(), {1}) == []
    # Relative paths are the datadir's; relay settings agreeing with the server's are fine.
    fine = target(
        options={**GOOD, "datadir": "/srv/db/data", "socket": "../db.sock"},
        relay_log_prefix=Path("/srv/db/relay/relay"),
        relay_log_index_file=Path("/srv/db/relay/relay.index"),
    )
    assert target_problems(fine, {1}) == []


def test_each_missing_setting_is_named_with_the_file() -> None:
    cases = {
        "log_bin is not set in /srv/db/my.cnf": with_options(log_bin=None),
        "skip-slave-start is not set": with_options(skip_slave_start="0"),
        "relay_log_recovery is ON": with_options(relay_log_recovery="1"),
        "server_id is 1 in /srv/db/my.cnf (the default), the source's": with_options(
            server_id=None
        ),
        "datadir is /elsewhere in /srv/db/my.cnf": with_options(datadir="/elsewhere"),
        "this server's socket is /run/other.sock": with_options(socket="/run/other.sock"),
    }
    for expected, description in cases.items():
        problems = target_problems(description, {1})
        assert len(problems) == 1 and expected in problems[0], (expected, problems)


def test_a_client_aimed_at_another_port_is_refused() -> None:
    tcp = target(unix_socket=None, port=3306)
    [problem] = target_problems(tcp, {1})
    assert "client_params.port is 3306, but this server's port is 3307" in problem
    assert target_problems(target(unix_socket=None, port=3307), {1}) == []


def test_configured_relay_settings_must_be_the_servers() -> None:
    problems = target_problems(
        target(
            relay_log_prefix=Path("/tmp/relay"),
            relay_log_index_file=Path("/srv/db/relay/other.index"),
        )
    )
    assert [p.split(",")[0] for p in problems] == [
        "mysql.relay_log_prefix is /tmp/relay",
        "mysql.relay_log_index_file is /srv/db/relay/other.index",
    ]
    assert "relay_log_index is /srv/db/relay/relay.index" in problems[1]
