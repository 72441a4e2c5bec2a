"""Binlog purge against real MariaDB replication on loopback: a primary backed up and
archived, one replica that lags (its SQL thread stopped) and one disconnected (its
replication stopped), their positions reported in the form ``PUT /replication_state``
takes. Purge never removes a binlog a reported replica has not applied, nor one not
yet stored; once the replicas catch up and report, it proceeds in bounded steps."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from binhoard.app import open_server, open_site
from binhoard.config import Settings, parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.gtid import GtidPosition
from binhoard.ops.catalog import read_site
from binhoard.ops.purge import BinlogPurger, PurgeReport
from binhoard.server.sandbox import Sandbox
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.ops import archiver, backup
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import create_schema, write_rows

REPL_USER, REPL_PASSWORD = "repl", "repl-pw"
WAIT = 30  # seconds MASTER_GTID_WAIT may take at most


def replicate(replica: Sandbox, primary: Sandbox, start: str) -> None:
    """Makes ``replica`` replicate ``primary`` from GTID position ``start``."""
    replica.execute_script(
        f"""
        RESET MASTER;
        SET GLOBAL gtid_slave_pos = '{start}';
        CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={primary.port},
          MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}',
          MASTER_USE_GTID=slave_pos;
        START SLAVE
        """
    )


def catch_up(replica: Sandbox, primary: Sandbox) -> None:
    target = str(primary.query("SELECT @@gtid_binlog_pos")[0][0])
    ((result,),) = replica.query("SELECT MASTER_GTID_WAIT(%s, %s)", (target, WAIT))
    assert result == 0, f"{replica.name} did not reach {target} in {WAIT} s"


def reported(*replicas: tuple[str, Sandbox]) -> dict[str, dict[str, str]]:
    """What each replica would report: its GTID positions."""
    state = {}
    for node, box in replicas:
        current, slave = box.query("SELECT @@gtid_current_pos, @@gtid_slave_pos")[0]
        state[node] = {"gtid_current_pos": str(current), "gtid_slave_pos": str(slave)}
    return state


def rotate(primary: Sandbox, rows: int, seed: int) -> None:
    write_rows(primary, rows, seed=seed)
    primary.query("FLUSH BINARY LOGS")


def purge(settings: Settings, state: dict[str, dict[str, str]]) -> PurgeReport:
    now = datetime.now(UTC)
    purger = BinlogPurger(open_server(settings), settings.server_id, settings.binlog_purge_settings)
    site = read_site(open_site(settings))
    return purger.run(site, state, dict.fromkeys(state, now.timestamp()), observing=False, now=now)


def binlog_names(primary: Sandbox) -> list[str]:
    return [str(row[0]) for row in primary.query("SHOW BINARY LOGS")]


def assert_applied_everywhere(
    settings: Settings, report: PurgeReport, state: dict[str, dict[str, str]]
) -> None:
    """Every purged file's end (as the archive recorded it) is applied on every node."""
    (stream,) = read_site(open_site(settings)).streams
    ends = {r.name: r.gtid_position_at_end for r in stream.records}
    snapshot = stream.snapshot_gtid
    for name in report.purged:
        end = ends.get(name, snapshot)
        for node, positions in state.items():
            at = GtidPosition.parse(positions["gtid_slave_pos"])
            for domain, gtid in end.items():
                assert at[domain].server_id == gtid.server_id, (name, node)
                assert at[domain].seq_no >= gtid.seq_no, (name, node, at, end)


def test_purge_keeps_what_a_lagging_or_disconnected_replica_needs(
    sandboxes: SandboxFactory, tmp_path: Path
) -> None:
    primary = sandboxes.new("primary")
    lagging = sandboxes.new("lagging")
    gone = sandboxes.new("gone")
    primary.execute_script(
        f"""
        CREATE USER '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{REPL_PASSWORD}';
        GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'127.0.0.1'
        """
    )
    start = str(primary.query("SELECT @@gtid_binlog_pos")[0][0])
    for replica in (lagging, gone):
        replicate(replica, primary, start)
    config = config_for(primary, tmp_path / "site", identity=Identity.generate())
    config["binlog_purge_settings"] = {
        "min_binlog_age_before_purge": 0,
        "max_files_per_cycle": 2,
    }
    settings = parse_settings(config, source="test")
    site = open_site(settings)

    create_schema(primary)
    rotate(primary, 50, seed=1)
    backup(settings, site)
    rotate(primary, 50, seed=2)
    for replica in (lagging, gone):
        catch_up(replica, primary)
    gone.query("STOP SLAVE")  # disconnected: its position stays here
    rotate(primary, 50, seed=3)
    rotate(primary, 50, seed=4)
    catch_up(lagging, primary)
    lagging.query("STOP SLAVE SQL_THREAD")  # receives, applies nothing
    rotate(primary, 50, seed=5)
    rotate(primary, 50, seed=6)
    archiver(settings, site).archive_once()
    rotate(primary, 50, seed=7)  # closed, not stored yet
    state = reported(("lagging", lagging), ("gone", gone))
    before = binlog_names(primary)

    # Bounded steps until the disconnected replica's position holds purge back.
    report = _drain(settings, state, primary)
    assert report.decision.kind == "replica"
    assert "not applied on node gone" in report.blocked_by
    kept = report.decision.kept
    assert kept is not None and binlog_names(primary)[0] == kept
    # The disconnected replica has the first two files (up to the second rotation).
    assert kept == before[2], report.blocked_by
    # The CLI's dry run says the same, and removes nothing.
    cli = run_binhoard(
        "binlog",
        "purge",
        "--dry-run",
        "--config",
        str(_write_config(tmp_path, config)),
        "--replication-state",
        json.dumps(state),
    )
    assert cli.returncode == 0, cli.stderr
    assert f"keep {kept}: {kept} is not applied on node gone" in cli.stdout
    assert binlog_names(primary)[0] == kept

    # The disconnected replica comes back; the lagging one still lags.
    gone.query("START SLAVE")
    catch_up(gone, primary)
    state = reported(("lagging", lagging), ("gone", gone))
    report = _drain(settings, state, primary)
    assert "not applied on node lagging" in report.blocked_by
    assert before.index(binlog_names(primary)[0]) > before.index(kept)

    # Both caught up: everything stored goes, the file not yet stored stays.
    lagging.query("START SLAVE SQL_THREAD")
    catch_up(lagging, primary)
    state = reported(("lagging", lagging), ("gone", gone))
    report = _drain(settings, state, primary)
    unstored = before[-2]
    assert report.blocked_by.startswith(f"{unstored} is not stored in stream")
    assert binlog_names(primary) == [unstored, before[-1]]
    archiver(settings, site).archive_once()
    report = _drain(settings, state, primary)
    assert report.decision.kind == "active"
    assert binlog_names(primary) == [before[-1]]


def _drain(settings: Settings, state: dict[str, dict[str, str]], primary: Sandbox) -> PurgeReport:
    """Passes until one stops for a reason other than the per-pass cap and the server's
    index starts at the file it kept; each removes at most 2 files
    (``max_files_per_cycle``), all applied everywhere. MariaDB may stop a PURGE early,
    silently, at a file its binlog checkpoint has not passed yet (right after a
    rotation): the next pass goes on, as the daemon's would."""
    reports: list[PurgeReport] = []

    def settled() -> bool:
        report = purge(settings, state)
        assert len(report.purged) <= 2
        assert_applied_everywhere(settings, report, state)
        reports.append(report)
        kept = report.decision.kept
        return report.decision.kind != "cap" and binlog_names(primary)[0] == kept

    wait_for("purge to stop for a reason other than its per-pass cap", settled)
    return reports[-1]


def _write_config(directory: Path, config: dict[str, object]) -> Path:
    path = directory / "binhoard.json"
    path.write_text(json.dumps(config))
    return path
