"""The daemon process's edges without a server: SIGHUP's reload (which keys it applies,
which need a restart), and ``binhoard status`` asking a running daemon over HTTP."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from binhoard.config import load_settings
from binhoard.daemon import service
from binhoard.daemon.api import HttpServer
from binhoard.daemon.port import SetMode
from tests.support.cli import run_main
from tests.support.daemon import Harness
from tests.support.http_api import TOKEN
from tests.support.sites import site_config

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)


def write_config(path: Path, **changes: Any) -> Path:
    data = site_config(path.parent)
    data.update(changes)
    path.write_text(json.dumps(data))
    return path


def test_sighup_applies_what_jobs_read_and_names_what_needs_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="binhoard.daemon")
    h = Harness(tmp_path, START)
    config = write_config(tmp_path / "bh.json")
    h.controller.settings = load_settings(config)  # the daemon runs with this file

    def reload() -> list[str]:
        """SIGHUP, then a step; the log lines about it."""
        caplog.clear()
        service.reload_config(config, h.controller)
        h.step()
        return [r.getMessage() for r in caplog.records if "reloaded" in r.getMessage()]

    assert reload() == ["configuration reloaded: nothing changed"]
    assert h.doers.configured == []

    write_config(config, backup_settings={"backup_hour": 5}, http_port=16999)
    [line] = reload()
    assert "not reloaded: http_port changed, which needs a restart" in line
    assert h.doers.configured == []
    assert h.controller.settings.backup_settings.backup_hour == 3
    # Not only in the log: GET /status says it until a reload applies.
    refused = h.controller.snapshot().status.config_reload_error
    assert refused is not None and refused.startswith("http_port changed")

    write_config(config, backup_settings={"backup_hour": 5})
    [line] = reload()
    assert line.startswith("configuration reloaded: backup_settings")
    assert [s.backup_settings.backup_hour for s in h.doers.configured] == [5]
    assert h.controller.settings.backup_settings.backup_hour == 5
    assert h.controller.snapshot().status.config_reload_error is None

    config.write_text("{not json")
    [line] = reload()
    assert "configuration not reloaded" in line and "not valid JSON" in line
    refused = h.controller.snapshot().status.config_reload_error
    assert refused is not None and "not valid JSON" in refused


def test_status_asks_the_running_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = Harness(tmp_path, START)
    h.settle()
    h.submit(SetMode("active"))
    h.settle()
    server = HttpServer(h.controller, address="127.0.0.1", port=0, auth_token=TOKEN)
    server.start()
    try:
        config = write_config(tmp_path / "bh.json", http_port=server.port, http_auth_token=TOKEN)
        code, out, err = run_main(["status", "--config", str(config)], capsys)
        assert code == 0, err
        assert f"http://127.0.0.1:{server.port}, mode active" in out
        assert "last backup 2026-03-02T01:00:00" in out
        code, out, _ = run_main(["status", "--config", str(config), "--json"], capsys)
        assert code == 0 and json.loads(out)["daemon"]["mode"] == "active"

        write_config(config, http_port=server.port, http_auth_token="another-token-0123456789")
        code, _, err = run_main(["status", "--config", str(config)], capsys)
        assert code == 2 and "refused the http_auth_token" in err
    finally:
        server.stop()
