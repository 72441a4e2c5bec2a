"""``binhoard backup create`` on a deposed primary (docs/failover.md, "The old primary"):
refused, as its daemon takes no backup, also once the new owner closed the stream."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.ops.catalog import read_streams
from binhoard.ops.promote import promote_stream
from binhoard.storage.backends import LocalStore
from tests.support.cli import run_main
from tests.support.sites import HISTORY, SiteBuilder, site_config


def test_a_deposed_primary_takes_no_backup_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalStore(tmp_path / "site")
    build = SiteBuilder(store)  # this server's stream A
    build.backup("A")
    build.archive("A", 2)
    (stream,) = read_streams(store)
    now = datetime(2026, 1, 2, tzinfo=UTC)
    promote_stream(
        store, "A", server_id=202, position=stream.end_position, now=now, history=HISTORY
    )
    new_owner = SiteBuilder(store, server_id=202, files=build.files)
    new_owner.backup("B")  # the new owner's first backup closes A
    build.mark("A", closed_by="B")
    config = tmp_path / "bh.json"
    config.write_text(json.dumps(site_config(tmp_path)))
    code, _, err = run_main(["backup", "create", "--config", str(config), "--full"], capsys)
    assert code == 4, err
    assert "no backup taken: stream A was taken over by server_id 202" in err
    assert "this server is deposed" in err
