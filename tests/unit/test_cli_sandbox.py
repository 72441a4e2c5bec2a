"""``binhoard sandbox`` commands that need no server: a sandbox created with an empty
datadir, as a restore target or a replica to seed (docs/failover.md), is one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import run_main


def test_status_of_a_sandbox_created_empty_says_it_is_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "boxes")
    code, out, err = run_main(
        ["sandbox", "create", "b", "--root", root, "--server-id", "2", "--empty"], capsys
    )
    assert code == 0, err
    code, out, err = run_main(["sandbox", "status", "b", "--root", root], capsys)
    assert code == 1, err
    assert "sandbox b: stopped" in out and "server_id 2" in out
    code, _, err = run_main(["sandbox", "status", "nope", "--root", root], capsys)
    assert code != 0 and "no sandbox nope" in err
