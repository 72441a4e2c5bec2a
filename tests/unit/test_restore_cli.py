"""``binhoard restore`` command-line checks that need no server (exit codes, messages)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from binhoard.cli import main
from binhoard.crypto.age import Identity


def write_config(tmp_path: Path) -> Path:
    identity = Identity.generate()
    config = {
        "server_id": 1,
        "state_directory": "state",
        "temporary_directory": "tmp",
        "mysql": {
            "config_file_name": "my.cnf",
            "data_directory": "data",
            "binlog_prefix": "binlogs/binlog",
        },
        "backup_sites": {
            "default": {
                "object_storage": {"storage_type": "local", "directory": "site"},
                "encryption_keys": {
                    "public": str(identity.recipient),
                    "private": identity.secret_text(),
                },
            }
        },
    }
    path = tmp_path / "binhoard.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("option", ["--to-time", "--to-gtid", "--to-position"])
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_target_is_a_usage_error_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, value: str
) -> None:
    config = write_config(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["restore", "--config", str(config), option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"{option} is empty" in err
    assert len(err.strip().splitlines()) == 1
    # Nothing was started: no state, no scratch space, no datadir, no site opened.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["binhoard.json"]


GOOD_STATE = {
    "phase": "applying_binlogs",
    "site": "default",
    "target_args": {"to_latest": True},
    "target_text": "the latest archived transaction",
    "approximate_ok": False,
    "requested_backup_id": None,
    "backup_id": "20240501T000000Z-00000000",
    "records": 4,
    "applied_records": 1,
}


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (b'{"phase": "applying_bin', "not JSON"),
        (b"[1]", "not a JSON object"),
        (json.dumps({**GOOD_STATE, "phase": "bogus"}).encode(), "unknown phase 'bogus'"),
        (json.dumps({"phase": "applying_binlogs"}).encode(), "no site"),
        (json.dumps({**GOOD_STATE, "applied_records": "x"}).encode(), "not counts"),
        (json.dumps({**GOOD_STATE, "records": None}).encode(), "not counts"),
        (json.dumps({**GOOD_STATE, "applied_records": 9}).encode(), "exceeds records 4"),
        (json.dumps({**GOOD_STATE, "target_args": {"to_gtid": "x"}}).encode(), "unusable target"),
    ],
)
@pytest.mark.parametrize("how", [["--resume"], ["--to-latest"]])
def test_a_damaged_restore_json_is_one_line_naming_it_and_how_to_start_over(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: bytes,
    why: str,
    how: list[str],
) -> None:
    """Read as absent, a damaged restore.json made --resume say there was nothing to
    resume; wrong fields raised tracebacks; an unknown phase "resumed" to exit 0 having
    done nothing. A new start must not run over the unfinished restore either."""
    config = write_config(tmp_path)
    state = tmp_path / "state" / "restore.json"
    state.parent.mkdir()
    state.write_bytes(damage)
    with pytest.raises(SystemExit) as info:
        main(["restore", "--config", str(config), *how])
    assert info.value.code == 4
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if not x.startswith("restore: ")]
    assert line.startswith(f"binhoard: error: {state.resolve()} is damaged (")
    assert why in line
    assert f"empty {(tmp_path / 'data').resolve()}, delete {state.resolve()}" in line
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--replicate-from", "127.0.0.1:3307"], "--replicate-from goes with --to-latest"),
        (["--to-gtid", "0-1-5", "--replicate-from", "127.0.0.1:3307"], "goes with --to-latest"),
        (["--resume", "--replicate-from", "127.0.0.1:3307"], "goes with --to-latest"),
        (["--to-latest", "--replicate-from", "127.0.0.1:3307"], "needs replication.user"),
    ],
)
def test_replicate_from_is_checked_before_anything_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    config = write_config(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["restore", "--config", str(config), *options])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
