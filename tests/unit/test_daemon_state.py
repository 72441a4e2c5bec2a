"""The daemon's state store: the typed model round-trips, a ``kill -9`` in the middle
of a transaction leaves the state saved before it, and a damaged file is named."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from binhoard.daemon.state import (
    BackupRequest,
    BrokenRequest,
    Control,
    DaemonState,
    Facts,
    PreservationRequest,
    RestoreRecord,
    RotationRequest,
    StateStore,
)
from binhoard.domain.errors import ConflictError
from tests.support.cli import cli_env

NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def full_state(n: int = 1) -> DaemonState:
    """A state with every part set; ``n`` is written into all of them, so that a state
    mixed from two saves is seen."""
    return DaemonState(
        control=Control(
            "active", NOW + timedelta(hours=n), {"b": {"gtid_current_pos": f"0-1-{n}"}}
        ),
        restore=RestoreRecord(
            "default", f"stream-{n}", "time", NOW.isoformat(), True, NOW, "applying_binlogs"
        ),
        backups=(
            BackupRequest(False, "scheduled", NOW, NOW),
            BackupRequest(True, "requested", NOW + timedelta(seconds=n)),
        ),
        rotations=tuple(RotationRequest(i, NOW, f"binlog.{i:06d}") for i in range(n)),
        preservations=(PreservationRequest("default", f"s{n}", None, NOW),),
        broken_marks=(BrokenRequest("default", f"s{n}", NOW),),
        facts=Facts(last_backup_id=f"backup-{n}", last_error=None, last_error_at=NOW),
    )


def consistent(state: DaemonState) -> int:
    """The ``n`` of a ``full_state(n)``; fails if the parts disagree."""
    assert state.facts.last_backup_id is not None
    n = int(state.facts.last_backup_id.split("-")[1])
    assert state == full_state(n), "a state mixed from two saves"
    return n


def test_the_model_round_trips(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path)
    assert store.load() == DaemonState()  # the first time: idle, nothing pending
    assert store.save(full_state(3))
    assert not store.save(full_state(3))  # nothing changed: nothing written
    store.close()
    assert StateStore.open(tmp_path).load() == full_state(3)


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tests.unit.test_daemon_state import full_state
    from binhoard.daemon.state import StateStore

    store = StateStore.open(Path(sys.argv[1]))
    store.save(full_state(1))
    mode = sys.argv[2]
    if mode == "mid":
        db = store._db  # the connection whose transaction is interrupted

        def stop_mid_transaction() -> int:
            if db.in_transaction and db.total_changes > 12:
                print("mid", flush=True)
                time.sleep(60)
            return 0

        db.set_progress_handler(stop_mid_transaction, 1)
        store.save(full_state(2))
    else:
        n = 2
        print("saving", flush=True)
        while True:
            store.save(full_state(n))
            n = n % 7 + 1
    """
)


def start_child(tmp_path: Path, mode: str) -> subprocess.Popen[str]:
    root = Path(__file__).resolve().parents[2]
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), mode],
        cwd=root,
        env={**cli_env(), "PYTHONPATH": f"{root / 'src'}:{root}"},
        stdout=subprocess.PIPE,
        text=True,
    )


def test_kill_9_in_the_middle_of_a_transaction_leaves_the_previous_state(tmp_path: Path) -> None:
    child = start_child(tmp_path, "mid")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "mid"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = StateStore.open(tmp_path)
    assert store.load() == full_state(1)
    store.save(full_state(4))  # and it is usable again
    store.close()
    assert StateStore.open(tmp_path).load() == full_state(4)


@pytest.mark.parametrize("delay", [0.01, 0.05, 0.2])
def test_kill_9_while_saving_leaves_a_whole_state(tmp_path: Path, delay: float) -> None:
    child = start_child(tmp_path, "loop")
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "saving"
    try:
        child.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert consistent(StateStore.open(tmp_path).load()) in range(1, 8)


def test_a_damaged_state_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "daemon.sqlite").write_bytes(b"not a database, " * 100)
    with pytest.raises(ConflictError, match=r"daemon\.sqlite cannot be read"):
        StateStore.open(tmp_path).load()


def test_a_state_of_the_previous_schema_gains_the_new_fields(tmp_path: Path) -> None:
    # Schema 1 had no restore.replicate_from: its rows load with the field's default.
    store = StateStore.open(tmp_path)
    store.save(full_state())
    store.close()
    db = sqlite3.connect(tmp_path / "daemon.sqlite")
    db.execute("ALTER TABLE restore DROP COLUMN replicate_from")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    state = StateStore.open(tmp_path).load()
    assert state.restore is not None and state.restore.replicate_from is None
    assert state == full_state()


def test_a_field_added_later_gets_its_column_and_its_default(tmp_path: Path) -> None:
    """A state file written before ``Control.replication_reported_at`` existed: the
    column is added, and the rows there read with the field's default."""
    path = tmp_path / "daemon.sqlite"
    store = StateStore(path)
    store.save(full_state())
    store.close()
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE control DROP COLUMN replication_reported_at")
    db.commit()
    db.close()
    reopened = StateStore(path)
    state = reopened.load()
    assert state.control.replication_reported_at == {}
    assert state.control.mode == full_state().control.mode
    saved = replace(state, control=replace(state.control, replication_reported_at={"n": 1.5}))
    reopened.save(saved)
    reopened.close()
    assert StateStore(path).load().control.replication_reported_at == {"n": 1.5}
