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
