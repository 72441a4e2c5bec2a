"""``binhoard backup create`` on a real server: the type the schedule chooses, ``--if-due``.

One sandbox serves the module; each test has its own site (and so its own backups).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from binhoard.app import open_site
from binhoard.cli import cli
from binhoard.config import Settings, parse_settings
from binhoard.domain.manifest import BackupManifest
from binhoard.domain.schedule import WEEKDAYS, format_utc
from binhoard.localstate import exclusive
from binhoard.ops.site import list_backups
from binhoard.server.sandbox import Sandbox
from tests.support import ops
from tests.support.configs import config_for
from tests.support.sandboxes import sandbox_factory
from tests.support.workload import create_schema, write_rows


@pytest.fixture(scope="module")
def source() -> Iterator[Sandbox]:
    with sandbox_factory() as factory:
        box = factory.new("source")
        create_schema(box)
        write_rows(box, 200, seed=1)
        yield box


@pytest.fixture
def utc_today() -> str:
    """Today's weekday (UTC), not within a minute of midnight: the tests' backups all
    start on the day this names."""
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    if midnight - now < timedelta(minutes=1):
        time.sleep((midnight - now).total_seconds() + 1)
    return WEEKDAYS[datetime.now(UTC).weekday()]


class Site:
    """A configuration file for ``source`` with its own site, and the CLI run against it."""

    def __init__(self, box: Sandbox, directory: Path, **backup_settings: Any) -> None:
        data = config_for(box, directory / "site")
        data["backup_settings"] = backup_settings
        self.config = directory / "binhoard.json"
        self.config.write_text(json.dumps(data))
        self.settings: Settings = parse_settings(data, source=str(self.config))
        self.store = open_site(self.settings)

    def create(self, *args: str) -> Result:
        result = CliRunner().invoke(
            cli, ["backup", "create", "--config", str(self.config), *args], catch_exceptions=False
        )
        assert result.exit_code == 0, result.output
        return result

    def backups(self) -> list[BackupManifest]:
        """Oldest first, by start time: ids have whole seconds, these backups take less."""
        return sorted(list_backups(self.store), key=lambda b: b.started_at)

    def types(self) -> list[str]:
        return [b.backup_type for b in self.backups()]

    def backup_at(self, started: datetime) -> None:
        """A full backup recorded as started at ``started`` (through the API's clock)."""
        clock: Callable[[], datetime] = lambda: started  # noqa: E731 - a fixed clock
        ops.backup(self.settings, self.store, now=clock)


def first_line(result: Result, prefix: str) -> str:
    return next(line for line in result.output.splitlines() if line.startswith(prefix))


def test_a_day_outside_the_schedule_takes_incrementals(
    source: Sandbox, tmp_path: Path, utc_today: str
) -> None:
    others = ",".join(day for day in WEEKDAYS if day != utc_today)
    site = Site(
        source, tmp_path, incremental={"enabled": True, "full_backup_week_schedule": others}
    )
    first = site.create()
    assert "full backup: there is no earlier backup of server_id" in first.output
    [full] = site.backups()

    write_rows(source, 50, seed=2)
    second = site.create()
    reason = (
        f"incremental backup: {utc_today} is not a full-backup day; building on {full.backup_id}"
    )
    assert reason in second.output
    inc = site.backups()[-1]
    assert (inc.backup_type, inc.parent_backup_id) == ("incremental", full.backup_id)

    # An explicit choice wins over the schedule.
    assert "full backup: full backup requested" in site.create("--full").output
    assert site.types() == ["full", "incremental", "full"]


def test_on_a_full_backup_day_the_first_backup_is_full_and_later_ones_incremental(
    source: Sandbox, tmp_path: Path, utc_today: str
) -> None:
    site = Site(
        source, tmp_path, incremental={"enabled": True, "full_backup_week_schedule": utc_today}
    )
    site.backup_at(datetime.now(UTC) - timedelta(days=1))
    first = site.create()
    assert f"full backup: {utc_today} is a full-backup day and no full backup was taken" in (
        first.output
    )
    todays_full = site.backups()[-1]

    write_rows(source, 50, seed=3)
    second = site.create()
    assert f"incremental backup: today's full backup {todays_full.backup_id} exists" in (
        second.output
    )
    assert site.types() == ["full", "full", "incremental"]
    # And the explicit choice still wins.
    assert "incremental backup: incremental backup requested" in site.create("--incremental").output


def test_if_due_takes_a_backup_only_when_the_latest_slot_has_none(
    source: Sandbox, tmp_path: Path
) -> None:
    # One slot a day, an hour ago (a backup two hours ago precedes it).
    slot = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
    site = Site(source, tmp_path, backup_hour=slot.hour, backup_minute=slot.minute)
    site.backup_at(datetime.now(UTC) - timedelta(hours=2))

    due = site.create("--if-due")
    assert f"due: no backup started since the scheduled time {format_utc(slot)}" in due.output
    assert "full backup: incremental backups are disabled" in due.output
    assert site.types() == ["full", "full"]

    skipped = site.create("--if-due")
    next_at = format_utc(slot + timedelta(days=1))
    assert first_line(skipped, "not due: ").startswith(f"not due: next backup at {next_at} (")
    assert site.types() == ["full", "full"]

    # A backup running on this host: nothing to do, and not an error (cron runs again).
    with exclusive(site.settings.state_directory / "backup.lock", "a test"):
        busy = site.create("--if-due")
    assert busy.output == "not due: another backup is running on this host\n"


def test_full_and_incremental_are_mutually_exclusive(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["backup", "create", "--config", str(tmp_path / "x.json"), "--full", "--incremental"]
    )
    assert result.exit_code == 2
    assert "mutually exclusive" in result.output
