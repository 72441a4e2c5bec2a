"""Backups and binlogs met by the other tested MariaDB series, for real: the host's
server and the other one in its Debian root (docs/servers.md, "Restoring across
versions"). They run from the host's suite, in both directions at once.

A backup is restored only by the series that took it: the other one refuses, before
anything is downloaded or the datadir touched, naming both versions and what to do. A
server upgraded in place takes a full backup next, never an incremental on a backup of
the old series. Binlogs, though, are applied by either series through the relay logs.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from binhoard.crypto.age import Identity
from binhoard.server.sandbox import Sandbox
from tests.support.configs import config_for
from tests.support.servers import SERVERS, host_server, other_root, run_with, series

STEP = "$PY -m tests.support.crossing"


@pytest.fixture(scope="module")
def other() -> str:
    return other_root()


@pytest.fixture
def work() -> Iterator[Path]:
    """A short directory (socket paths) that both servers see at the same path, with the
    age identity of its sites in ``key``."""
    directory = Path(tempfile.mkdtemp(prefix="bh-"))
    try:
        (directory / "key").write_text(Identity.generate().secret_text() + "\n")
        yield directory
    finally:
        # A server a failed step left running, on the host or in the root (one process
        # table): stopped by its pid, as binhoard finds it.
        for cnf in directory.glob("*/my.cnf"):
            Sandbox(cnf.parent).stop(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def step(server: str, work: Path, command: str) -> Any:
    """A step of ``tests/support/crossing.py`` where ``server`` is; its JSON."""
    result = run_with(server, f"{STEP} {command}", binds=(work,))
    assert result.returncode == 0, f"{server}: {command}\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout)


def test_a_backup_is_restored_only_by_the_series_that_took_it(other: str, work: Path) -> None:
    host = host_server()
    identity = Identity.parse((work / "key").read_text())
    for number, (taker, restorer) in enumerate(((host, other), (other, host)), start=1):
        site = work / f"site{number}"
        step(taker, work, f"backup {work}/src{number} {number} {site} {work}/key")
        # The target as an operator describes it: a my.cnf and an empty datadir.
        target = Sandbox(work / f"tgt{number}", server_id=10 + number)
        target.create(initialize=False)
        config = work / f"tgt{number}.json"
        config.write_text(json.dumps(config_for(target, site, identity=identity)))

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
            result = run_with(restorer, f"$BH restore --config {config} {how}", binds=(work,))
            errors = [x for x in result.stderr.splitlines() if x.startswith("binhoard: ")]
            assert result.returncode == 2, (how, result.stderr)
            assert len(errors) == 1 and expected.match(errors[0]), (how, errors)
            assert not any(target.datadir.iterdir())
            assert not list((target.directory / "binhoard" / "tmp").glob("restore-*"))
        # Refused while planning: ended, so a restore on the right host is not blocked.
        state = json.loads((target.directory / "binhoard" / "state" / "restore.json").read_text())
        assert state["phase"] == "failed"


def test_after_an_upgrade_in_place_the_next_backup_is_full(other: str, work: Path) -> None:
    old, new = sorted((host_server(), other), key=SERVERS.index)
    site, key = work / "site", work / "key"
    step(old, work, f"backup {work}/db 1 {site} {key}")
    # What an operator does with an old backup: the new series started on the datadir,
    # mariadb-upgrade, and binhoard backing the server up as before.
    upgraded = step(new, work, f"upgrade {work}/db {site} {key}")
    assert upgraded["version"].startswith(f"{series(new)}.")
    assert upgraded["types"] == ["full", "full"]
    said = re.compile(
        rf"the server is now {re.escape(series(new))}\.\S+ .* and backup \S+ was taken by "
        rf"{re.escape(series(old))}\.\S+: an incremental backup cannot build on another "
        r"MariaDB series \(no mariabackup could prepare the chain\); taking a full backup"
    )
    assert [w for w in upgraded["warnings"] if said.fullmatch(w)], upgraded["warnings"]


def test_binlogs_of_one_series_are_applied_by_the_other(other: str, work: Path) -> None:
    """What a replica of the other series (and a restore across an upgrade in place) relies
    on: the relay-log method reads and applies the other series' binlogs exactly."""
    host = host_server()
    for number, (writer, reader) in enumerate(((host, other), (other, host)), start=1):
        written = step(writer, work, f"source {work}/w{number} {number}")
        applied = step(reader, work, f"apply {work}/a{number} 9 {' '.join(written['files'])}")
        assert written["version"].startswith(f"{series(writer)}.")
        assert applied["version"].startswith(f"{series(reader)}.")
        assert applied["gtid"] == written["gtid"]
        assert applied["transactions"] == int(written["gtid"].rsplit("-", 1)[1])
        assert applied["checksums"] == written["checksums"]
