"""Which mariabackup may restore which backup (``domain/versions.py``), over the version
texts Debian's packages print."""

from __future__ import annotations

import dataclasses

import pytest

from binhoard.domain.errors import IncompatibleVersionError, UsageError
from binhoard.domain.manifest import BackupManifest
from binhoard.domain.versions import (
    MariaDBVersion,
    check_chain_preparable,
    incremental_base_problem,
    parse_version,
    prepare_verdict,
    same_series,
)
from binhoard.storage.store import MemoryStore
from tests.support.sites import SiteBuilder

# What these machines print: @@version of each server, and mariadb-backup --version
# (binhoard records its first line, with the path it ran).
SERVER_10_11 = "10.11.19-MariaDB-0+deb12u1-log"
SERVER_11_8 = "11.8.9-MariaDB-0+deb13u1 from Debian-log"
TOOL_10_11 = (
    "/usr/bin/mariadb-backup based on MariaDB server 10.11.19-MariaDB debian-linux-gnu (x86_64)"
)
TOOL_11_8 = "mariadb-backup based on MariaDB server 11.8.9-MariaDB debian-linux-gnu (x86_64)"


@pytest.mark.parametrize(
    ("text", "version"),
    [
        (SERVER_10_11, MariaDBVersion(10, 11, 19)),
        (SERVER_11_8, MariaDBVersion(11, 8, 9)),
        (TOOL_10_11, MariaDBVersion(10, 11, 19)),
        (TOOL_11_8, MariaDBVersion(11, 8, 9)),
        ("10.6.21-MariaDB", MariaDBVersion(10, 6, 21)),
        ("12.3.0-MariaDB-log", MariaDBVersion(12, 3, 0)),
        ("8.0.36", None),  # MySQL: another flavour, not a MariaDB version
        ("mariabackup", None),
        ("", None),
    ],
)
def test_parse_version(text: str, version: MariaDBVersion | None) -> None:
    assert parse_version(text) == version


def test_versions_order_by_number_not_text() -> None:
    assert MariaDBVersion(10, 11, 19) > MariaDBVersion(10, 11, 9)
    assert MariaDBVersion(10, 11, 19) < MariaDBVersion(11, 8, 9)
    assert MariaDBVersion(10, 11, 19).series == "10.11"
    assert str(MariaDBVersion(11, 8, 9)) == "11.8.9"


@pytest.mark.parametrize(
    ("backup", "tool", "verdict"),
    [
        (SERVER_10_11, TOOL_10_11, "same"),
        (SERVER_11_8, TOOL_11_8, "same"),
        ("10.11.11-MariaDB-0+deb12u1-log", TOOL_10_11, "newer_tool"),
        (
            "10.11.19-MariaDB-log",
            "mariadb-backup based on MariaDB server 10.11.6-MariaDB",
            "older_tool",
        ),
        (SERVER_10_11, TOOL_11_8, "other_series"),  # tried: see docs/servers.md
        (SERVER_11_8, TOOL_10_11, "other_series"),  # tried: see docs/servers.md
        ("11.4.5-MariaDB-log", TOOL_11_8, "other_series"),
        (
            "10.11.19-MariaDB",
            "mariadb-backup based on MariaDB server 10.1.48-MariaDB",
            "other_series",
        ),
        ("8.0.36", TOOL_10_11, "unknown"),
        (SERVER_10_11, "xtrabackup version 8.0.35", "unknown"),
    ],
)
def test_prepare_verdict(backup: str, tool: str, verdict: str) -> None:
    assert prepare_verdict(backup, tool) == verdict


def test_same_series() -> None:
    assert same_series(SERVER_10_11, TOOL_10_11)
    assert same_series("10.11.6-MariaDB", SERVER_10_11)
    assert not same_series(SERVER_10_11, SERVER_11_8)
    assert not same_series("8.0.36", "8.0.36")


def chain(*versions: str) -> list[BackupManifest]:
    """A chain of backups (full first), each taken by the server of ``versions``."""
    site = SiteBuilder(MemoryStore())
    backups = []
    for i, version in enumerate(versions):
        parent = backups[-1].backup_id if backups else None
        backups.append(site.backup(f"b{i}", parent=parent))
        backups[-1] = dataclasses.replace(backups[-1], server_version=version)
    return backups


def test_a_chain_of_the_tools_series_is_restored_without_a_word() -> None:
    assert check_chain_preparable(chain(SERVER_10_11), TOOL_10_11) == []
    assert check_chain_preparable(chain("10.11.6-MariaDB-log", SERVER_10_11), TOOL_10_11) == []


def test_an_upgrade_across_series_is_refused_with_both_versions_and_the_remedy() -> None:
    with pytest.raises(IncompatibleVersionError) as caught:
        check_chain_preparable(chain(SERVER_10_11), TOOL_11_8)
    message = caught.value.message
    assert message.startswith(
        "backup b0 was taken by MariaDB 10.11.19, and this host's mariadb-backup is "
        "MariaDB 11.8.9: mariabackup prepares only backups of its own release series, so "
        "nothing was restored."
    )
    assert "Restore it with MariaDB 10.11" in message
    assert "start MariaDB 11.8 on its datadir and run mariadb-upgrade" in message
    assert "mariadb-dump" in message
    assert isinstance(caught.value, UsageError) and caught.value.exit_code == 2


def test_a_downgrade_is_refused_and_only_a_logical_dump_offered() -> None:
    with pytest.raises(IncompatibleVersionError) as caught:
        check_chain_preparable(chain(SERVER_11_8), TOOL_10_11)
    message = caught.value.message
    assert "backup b0 was taken by MariaDB 11.8.9" in message
    assert "MariaDB cannot be downgraded: restore it with MariaDB 11.8" in message
    assert "mariadb-upgrade" not in message


def test_every_backup_of_the_chain_must_be_of_the_tools_series() -> None:
    # A server upgraded in place between its full backup and an incremental.
    with pytest.raises(IncompatibleVersionError) as caught:
        check_chain_preparable(chain(SERVER_10_11, SERVER_11_8), TOOL_11_8)
    assert caught.value.message.startswith(
        "backup b1 builds on backup b0, taken by MariaDB 10.11.19, and this host's"
    )
    with pytest.raises(IncompatibleVersionError) as caught:
        check_chain_preparable(chain(SERVER_10_11, SERVER_11_8), TOOL_10_11)
    assert caught.value.message.startswith("backup b1 was taken by MariaDB 11.8.9")


def test_a_chain_of_another_series_is_named_by_the_backup_restored() -> None:
    with pytest.raises(IncompatibleVersionError) as caught:
        check_chain_preparable(chain(SERVER_10_11, SERVER_10_11), TOOL_11_8)
    assert caught.value.message.startswith("backup b1 was taken by MariaDB 10.11.19")


def test_an_older_mariabackup_of_the_series_restores_with_a_warning() -> None:
    tool = "mariadb-backup based on MariaDB server 10.11.6-MariaDB debian-linux-gnu (x86_64)"
    [warning] = check_chain_preparable(chain(SERVER_10_11), tool)
    assert warning.startswith(
        "backup b0 was taken by MariaDB 10.11.19, and this host's mariadb-backup is the "
        "older 10.11.6"
    )
    assert "upgrade MariaDB here to 10.11.19 or later" in warning


def test_a_version_that_names_no_mariadb_is_refused_naming_it() -> None:
    with pytest.raises(IncompatibleVersionError) as caught:
        check_chain_preparable(chain("8.0.36"), TOOL_10_11)
    assert caught.value.message == (
        "cannot restore backup b0: the server_version of backup b0, '8.0.36', names no "
        "MariaDB version, and mariabackup prepares only backups of its own release series, "
        "so nothing was restored"
    )
    with pytest.raises(IncompatibleVersionError) as caught:
        check_chain_preparable(chain(SERVER_10_11), "mariabackup: unknown option")
    assert "this host's mariadb-backup --version, 'mariabackup: unknown option'," in (
        caught.value.message
    )


def test_an_incremental_builds_only_on_a_backup_of_the_servers_series() -> None:
    [parent] = chain(SERVER_10_11)
    assert incremental_base_problem(parent, "10.11.20-MariaDB-0+deb12u1-log") is None
    # Upgraded in place to 11.8 since: the next backup is a full one.
    assert incremental_base_problem(parent, SERVER_11_8) == (
        f"the server is now {SERVER_11_8} and backup b0 was taken by {SERVER_10_11}: an "
        "incremental backup cannot build on another MariaDB series (no mariabackup could "
        "prepare the chain)"
    )
