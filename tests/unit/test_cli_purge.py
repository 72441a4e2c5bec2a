"""``binhoard binlog purge``: a replication state that is not one is refused, naming
the option, before anything is read from the server or the site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_main
from tests.support.sites import site_config


@pytest.mark.parametrize(
    "state",
    [
        '{"n1": {"gtid_current_pos": "not-a-gtid"}}',
        '{"server1.206375d9-aaaa": {"uuid": "1-5"}}',
        "[1, 2]",
        "{",
    ],
)
def test_a_bad_replication_state_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], state: str
) -> None:
    path = tmp_path / "binhoard.json"
    path.write_text(json.dumps(site_config(tmp_path)))
    code, out, err = run_main(
        ["binlog", "purge", "-c", str(path), "--dry-run", "--replication-state", state], capsys
    )
    assert code == 2, (out, err)
    assert "--replication-state:" in err
    assert "Traceback" not in err
