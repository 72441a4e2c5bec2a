"""``backup list`` and ``binlog list`` on a site with a corrupt manifest and a corrupt
binlog record: everything else is listed, the broken ones are marked, by object."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from binhoard.domain.catalog import archive_status_key
from binhoard.domain.manifest import manifest_key
from binhoard.storage.backends import LocalStore
from binhoard.storage.store import read_all
from tests.support.cli import run_main as run
from tests.support.sites import SiteBuilder, site_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Backups A (full), B (incremental on A), C (full); A's manifest and the second
    record of C's stream corrupt."""
    store = LocalStore(tmp_path / "site")
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 2)
    build.backup("B", parent="A")
    build.archive("B", 1)
    build.backup("C")
    build.archive("C", 3)
    for key in (manifest_key("A"), build.record_key("C", 1)):
        path = tmp_path / "site" / key
        path.write_bytes(read_all(store, key).replace(b'"', b"'", 1))
    path = tmp_path / "bh.json"
    path.write_text(json.dumps(site_config(tmp_path)))
    return path


def test_backup_list_marks_broken_backups_and_lists_the_others(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["backup", "list", "--config", str(config), "--json"], capsys)
    assert code == 0
    entries = {e["backup_id"]: e for e in json.loads(out)}
    assert list(entries) == ["A", "B", "C"]
    assert entries["A"]["broken_object"] == "backups/A/manifest.json"
    assert entries["A"]["backup_type"] is None  # nothing of it can be trusted
    assert entries["B"]["broken_object"] == "backups/A/manifest.json"
    assert entries["B"]["backup_type"] == "incremental"
    assert "builds on backup A" in entries["B"]["broken_reason"]
    assert entries["A"]["broken_at"] and entries["B"]["broken_at"]
    assert entries["C"]["broken_at"] is None and entries["C"]["backup_type"] == "full"
    assert "BROKEN: backup A: document backups/A/manifest.json is corrupt" in err

    code, out, err = run(["backup", "list", "--config", str(config)], capsys)
    assert code == 0
    assert "BROKEN" in out and "C" in out


def test_binlog_list_reports_broken_streams_by_object(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["binlog", "list", "--config", str(config), "--json"], capsys)
    assert code == 9
    streams = {s["stream_id"]: s for s in json.loads(out)}
    assert set(streams) == {"A", "B", "C"}
    assert streams["A"]["broken_object"] == "backups/A/manifest.json"
    assert streams["B"]["broken_object"] == "backups/A/manifest.json"
    assert len(streams["B"]["binlogs"]) == 1
    assert streams["C"]["broken_object"] == "streams/C/binlogs/0000000001.json"
    assert [b["seq"] for b in streams["C"]["binlogs"]] == [0]
    code, out, _ = run(["binlog", "list", "--config", str(config), "--stream", "A"], capsys)
    assert code == 9
    assert "BROKEN" in out and "backups/A/manifest.json" in out


def test_a_corrupt_archive_status_does_not_stop_binlog_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``archive-status.json`` is a report about the archiver: a damaged one is named,
    and every stream is still listed."""
    store = LocalStore(tmp_path / "site")
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 2)
    store.put(archive_status_key("A"), [b'{"outcome": "ok", "sin'])
    config = tmp_path / "bh.json"
    config.write_text(json.dumps(site_config(tmp_path)))

    code, out, err = run(["binlog", "list", "--config", str(config), "--json"], capsys)
    assert code == 9, err
    (stream,) = json.loads(out)
    assert [b["seq"] for b in stream["binlogs"]] == [0, 1]
    assert "archive status unknown" in stream["archive_stalled"]
    assert "streams/A/archive-status.json" in stream["archive_stalled"]
    code, out, err = run(["binlog", "list", "--config", str(config)], capsys)
    assert code == 9 and "streams/A/archive-status.json is corrupt" in out
    assert "Traceback" not in err
