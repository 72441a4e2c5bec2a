"""Restore planning, ``backup list`` and ``binlog list`` read the site through this
host's cache: what was read once (and still lists the same) is not fetched again."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from binhoard.app import pitr_config
from binhoard.cli import main
from binhoard.config import Settings, parse_settings
from binhoard.domain.manifest import manifest_key
from binhoard.ops.archive import archive_end_notes
from binhoard.ops.pitr import PitrRequest, PointInTimeRestore
from binhoard.storage.backends import LocalStore
from binhoard.storage.store import MemoryStore, ObjectStore, read_all
from binhoard.storage.wrappers import MetricsStore
from tests.support.fakeserver import FakeServer
from tests.support.sites import CountingObserver, SiteBuilder, site_config

RECORDS = 5000
STREAMS = 14


def _ids() -> list[str]:
    return [f"2024050{1 + i // 10}T{i % 10:02d}0000Z-{i:08x}" for i in range(STREAMS)]


def build_site(store: MemoryStore | LocalStore, records: int) -> SiteBuilder:
    """Daily backups whose streams hold ``records`` between them, all but the newest
    closed (as bench/archive_pass.py builds it)."""
    build = SiteBuilder(store)
    ids = _ids()
    per_stream = records // STREAMS
    for index, backup_id in enumerate(ids):
        build.backup(backup_id)
        build.archive(backup_id, per_stream if index < STREAMS - 1 else records - 13 * per_stream)
        if index:
            build.mark(ids[index - 1], closed_by=backup_id)
    build.mark(ids[-1])
    return build


def restore_of(settings: Settings, store: ObjectStore, **kwargs: Any) -> PointInTimeRestore:
    server = FakeServer(settings.state_directory.parent / "server", running=False)
    return PointInTimeRestore(server, store, pitr_config(settings), **kwargs)


def test_restore_planning_fetches_what_this_host_has_not_read(tmp_path: Path) -> None:
    memory = MemoryStore()
    build_site(memory, RECORDS)
    observer = CountingObserver()
    store = MetricsStore(memory, observer)
    settings = parse_settings(site_config(tmp_path), source="test")
    request = PitrRequest("default", {"to_latest": True})

    uncached = restore_of(settings, store, use_cache=False)._plan(request)
    calls = observer.take()
    assert calls["get"] >= RECORDS  # every record, every time

    first = restore_of(settings, store)._plan(request)  # fills this host's cache
    assert observer.take()["get"] == calls["get"]
    # Another restore (or a resume) on this host: listings only, the site decides what
    # exists; and the same plan.
    restore = restore_of(settings, store)
    again = restore._plan(request)
    assert observer.take() == {"list": 1 + STREAMS}
    assert again == first == uncached
    assert again.backup.backup_id == _ids()[-1] and len(again.records) == RECORDS - 13 * 357

    # What restore --to-latest prints at the end: the stream's end, and the archiver's
    # status (the one document that changes, never cached).
    end, warning = archive_end_notes(store, again.backup.backup_id, restore.cache)
    assert observer.take() == {"list": 1, "get": 1}
    assert end == archive_end_notes(memory, again.backup.backup_id)[0] and warning is None


def _rewrite_keeping_size_and_mtime(path: Path) -> None:
    """Changes the bytes but not the size or mtime: only the ctime (which cannot be set
    back) and a GET can see it."""
    st = path.stat()
    path.write_bytes(path.read_bytes().replace(b'"', b"'", 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def test_listings_trust_the_cache_only_for_files_unchanged_since(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalStore(tmp_path / "site")
    build = build_site(store, 60)
    config = tmp_path / "bh.json"
    config.write_text(json.dumps(site_config(tmp_path)))
    first_id = _ids()[0]

    code, out = run(["backup", "list", "--config", str(config), "--json"], capsys)
    assert code == 0 and all(e["broken_at"] is None for e in json.loads(out))
    code, out = run(["binlog", "list", "--config", str(config), "--json"], capsys)
    assert code == 0 and sum(len(s["binlogs"]) for s in json.loads(out)) == 60

    # Changed by hand, its size and mtime set back: the cached copies are not used,
    # since a local file's ctime (which cannot be set back) changed with it.
    _rewrite_keeping_size_and_mtime(tmp_path / "site" / manifest_key(first_id))
    _rewrite_keeping_size_and_mtime(tmp_path / "site" / build.record_key(first_id, 0))
    code, out = run(["backup", "list", "--config", str(config), "--json"], capsys)
    assert json.loads(out)[0]["broken_object"] == manifest_key(first_id)
    code, out = run(["binlog", "list", "--config", str(config), "--json"], capsys)
    assert manifest_key(first_id) in {s["broken_object"] for s in json.loads(out)}
    assert read_all(store, manifest_key(first_id)).count(b"'") >= 1
