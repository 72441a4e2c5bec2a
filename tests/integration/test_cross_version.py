"""Backups met by the other tested MariaDB series, for real: the host's server and the
other one in its Debian root (docs/servers.md, "Restoring across versions").

A backup is restored only by the series that took it: the other one refuses, before
anything is downloaded or the datadir touched, naming both versions and what to do.
A server upgraded in place takes a full backup next, never an incremental on a backup of
the old series. These run from the host's suite, in both directions at once.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from binhoard.server.sandbox import Sandbox
from tests.support.servers import SERVERS, host_server, other_root, run_with, series

SCHEMA = (
    "CREATE DATABASE d; CREATE TABLE d.t (id INT PRIMARY KEY, v VARCHAR(20)); "
    "INSERT INTO d.t VALUES (1, 'a'), (2, 'b')"
)


@pytest.fixture(scope="module")
def other() -> str:
    return other_root()


@pytest.fixture
def work() -> Iterator[Path]:
    """A short directory (socket paths) that both servers see at the same path."""
    directory = Path(tempfile.mkdtemp(prefix="bh-"))
    try:
        yield directory
    finally:
        # A server a failed step left running, on the host or in the root (one process
        # table): stopped by its pid, as binhoard finds it.
        for cnf in directory.glob("*/my.cnf"):
            Sandbox(cnf.parent).stop(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def run_ok(server: str, script: str, work: Path) -> str:
    result = run_with(server, "set -e\n" + script, binds=(work,))
    assert result.returncode == 0, f"{server}:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def sandbox_with_backup(server: str, work: Path, name: str, server_id: int) -> Path:
    """A sandbox of ``server`` with a table and a full backup in the site ``site-<name>``
    (a stream with no binlog yet); the sandbox is stopped again. Returns the site."""
    site = work / f"site-{name}"
    run_ok(
        server,
        f"""
        $BH sandbox start {name} --root {work} --server-id {server_id}
        $BH sandbox config {name} --root {work} -o {work}/{name}.json --site {site} \\
            --key {work}/key
        $BH sandbox sql --root {work} --name {name} "{SCHEMA}"
        $BH backup create --config {work}/{name}.json --full
        $BH sandbox stop {name} --root {work}
        """,
        work,
    )
    return site


def test_a_backup_is_restored_only_by_the_series_that_took_it(other: str, work: Path) -> None:
    host = host_server()
    for number, (taker, restorer) in enumerate(((host, other), (other, host)), start=1):
        site = sandbox_with_backup(taker, work, f"src{number}", server_id=number)
        # The target as an operator describes it: a my.cnf and an empty datadir.
        target = work / f"tgt{number}"
        run_ok(
            restorer,
            f"""
            $BH sandbox create {target.name} --root {work} --server-id {10 + number} --empty
            $BH sandbox config {target.name} --root {work} -o {target}.json --site {site} \\
                --key {work}/key
            """,
            work,
        )
        took, has = re.escape(series(taker)), re.escape(series(restorer))
        remedy = (
            rf"Restore it with MariaDB {took} .*, then upgrade that server in place: start "
            rf"MariaDB {has} on its datadir and run mariadb-upgrade; or load a logical dump"
            if SERVERS.index(taker) < SERVERS.index(restorer)
            else rf"MariaDB cannot be downgraded: restore it with MariaDB {took}"
        )
        expected = re.compile(
            rf"binhoard: error: backup \S+ was taken by MariaDB {took}\.\d+, and this host's "
            rf"mariadb-backup is MariaDB {has}\.\d+: mariabackup prepares only backups of its "
            rf"own release series, so nothing was restored\. {remedy}"
        )
        for how in ("--backup latest", "--to-latest"):
            result = run_with(restorer, f"$BH restore --config {target}.json {how}", binds=(work,))
            errors = [x for x in result.stderr.splitlines() if x.startswith("binhoard: ")]
            assert result.returncode == 2, (how, result.stderr)
            assert len(errors) == 1 and expected.match(errors[0]), (how, errors)
            assert not any((target / "data").iterdir())
            assert not list((target / "binhoard" / "tmp").glob("restore-*"))
        # Refused while planning: ended, so a restore on the right host is not blocked.
        state = json.loads((target / "binhoard" / "state" / "restore.json").read_text())
        assert state["phase"] == "failed"


def test_after_an_upgrade_in_place_the_next_backup_is_full(other: str, work: Path) -> None:
    old, new = sorted((host_server(), other), key=SERVERS.index)
    sandbox_with_backup(old, work, "db", server_id=1)
    # The remedy for an old backup: the new series started on the old datadir, upgraded.
    output = run_ok(
        new,
        f"""
        $BH sandbox start db --root {work}
        mariadb-upgrade --defaults-file={work}/db/my.cnf --user=root --silent
        $BH sandbox sql --root {work} --name db "INSERT INTO d.t VALUES (3, 'c')"
        $BH backup create --config {work}/db.json --incremental
        $BH backup list --config {work}/db.json --json >{work}/backups.json
        $BH sandbox stop db --root {work}
        """,
        work,
    )
    assert re.search(
        rf"the server is now {re.escape(series(new))}\.\S+ .* and backup \S+ was taken by "
        rf"{re.escape(series(old))}\.\S+: an incremental backup cannot build on another "
        r"MariaDB series .*; taking a full backup",
        output,
    ), output
    listing = json.loads((work / "backups.json").read_text())
    assert [b["backup_type"] for b in listing] == ["full", "full"]
