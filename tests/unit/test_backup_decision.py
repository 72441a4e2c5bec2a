"""Whether to take a backup, of which type and on which parent (pure), and the server
facts a backup and an archive pass require."""

from __future__ import annotations

import pytest

from binhoard.domain.backup_decision import BackupSchedule, choose_parent, decide_backup
from binhoard.domain.errors import NotFoundError, ServerNotReadyError
from binhoard.domain.server_facts import ServerFacts, check_facts
from tests.unit.test_schedule import OTHER, SERVER, at, backup

DAILY = BackupSchedule(hour=3, minute=0, interval_minutes=1440)
INCREMENTAL = BackupSchedule(
    hour=3, minute=0, interval_minutes=1440, incremental_enabled=True, full_backup_days={"sun"}
)


def test_not_due_is_no_backup_whatever_was_asked() -> None:
    backups = [backup(at("2026-11-21 03:10"))]
    decision = decide_backup(
        DAILY, SERVER, backups, at("2026-11-21 09:00"), requested="full", if_due=True
    )
    assert decision.backup_type is None and decision.schedule is not None
    assert decision.reason == decision.schedule.reason and "after the latest" in decision.reason


def test_due_then_the_requested_type_or_the_schedule_s() -> None:
    backups = [backup(at("2026-11-20 03:10"))]
    now = at("2026-11-21 09:00")  # a Saturday
    requested = decide_backup(DAILY, SERVER, backups, now, requested="incremental", if_due=True)
    assert requested.backup_type == "incremental"
    assert requested.reason == "incremental backup requested"
    assert requested.schedule is not None and requested.schedule.due
    chosen = decide_backup(INCREMENTAL, SERVER, backups, now)
    assert chosen.backup_type == "incremental" and chosen.schedule is None
    assert decide_backup(DAILY, SERVER, backups, now).backup_type == "full"  # disabled
    # Another server's backup is nothing to build on.
    assert decide_backup(INCREMENTAL, OTHER, backups, now).backup_type == "full"


def test_the_parent_is_the_newest_backup_of_this_server() -> None:
    older = backup(at("2026-11-20 03:00"), tag="1")
    newer = backup(at("2026-11-21 03:00"), backup_type="incremental", tag="2")
    others = backup(at("2026-11-21 04:00"), server_id=OTHER, tag="3")
    assert choose_parent([older, newer, others], SERVER) == newer
    with pytest.raises(NotFoundError, match="no earlier backup of server_id 9"):
        choose_parent([older, newer, others], 9)


FACTS = ServerFacts(
    version="11.8.5-MariaDB",
    server_id=SERVER,
    log_bin=True,
    binlog_format="ROW",
    gtid_strict_mode=True,
    log_slave_updates=True,
    read_only=False,
    gtid_current_pos="0-7-5",
    gtid_binlog_pos="0-7-5",
    gtid_slave_pos="",
)


def test_facts_are_checked_all_at_once_naming_the_refused_operation() -> None:
    assert check_facts(FACTS, SERVER, what="cannot back up") is FACTS
    bad = ServerFacts(**{**FACTS.__dict__, "log_bin": False, "server_id": OTHER})
    with pytest.raises(ServerNotReadyError) as caught:
        check_facts(bad, SERVER, what="cannot archive")
    message = caught.value.message
    assert message.startswith("cannot archive")
    assert "log_bin is OFF" in message and f"server_id is {OTHER}" in message
