"""A state or temporary directory that cannot be created is one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from binhoard.cli import main
from tests.support.sites import site_config


def test_a_state_directory_that_cannot_be_created_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the state directory's parent should be\n")
    config = site_config(tmp_path)
    config["state_directory"] = str(blocker / "state")
    path = tmp_path / "bh.json"
    path.write_text(json.dumps(config))

    with pytest.raises(SystemExit) as exited:
        main(["binlog", "archive", "--config", str(path)])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"binhoard: error: {blocker / 'state'}: Not a directory"]
