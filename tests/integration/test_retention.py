"""Retention on a site of real backups and archived binlogs: ``binhoard prune`` deletes
exactly the streams the policy gives up (with the binlog files only they needed), and
what it keeps still restores to a point in time."""

from __future__ import annotations

import json

import pytest

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.ops.catalog import read_streams
from binhoard.ops.pitr import PitrRequest
from binhoard.ops.site import find_leftovers
from tests.support import ops
from tests.support.cli import run_main
from tests.support.configs import config_for
from tests.support.sandboxes import SandboxFactory
from tests.support.workload import checksums, create_schema, write_rows


def test_prune_deletes_the_right_streams_and_what_it_keeps_restores(
    sandboxes: SandboxFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    config = config_for(source, sandboxes.root / "site")
    config["backup_settings"] = {"backup_count_min": 1, "backup_count_max": 1}
    settings = parse_settings(config, source="test")
    store = open_site(settings)
    archiver = ops.archiver(settings, store)

    def archive_all() -> None:
        source.query("FLUSH BINARY LOGS")
        assert archiver.archive_once().problems == []

    # F1 full, F2 full (closes F1), I3 incremental on F2 (closes F2); a marker in F2's
    # window, between F2 and I3.
    write_rows(source, 300, seed=1)
    f1 = ops.backup(settings, store)
    write_rows(source, 200, seed=2)
    archive_all()
    f2 = ops.backup(settings, store)
    write_rows(source, 200, seed=3)
    archive_all()
    marker = (str(source.query("SELECT @@gtid_current_pos")[0][0]), checksums(source))
    write_rows(source, 100, seed=4)
    i3 = ops.backup(settings, store, backup_type="incremental")
    write_rows(source, 100, seed=5)
    archive_all()
    streams = {s.stream_id: s for s in read_streams(store)}
    assert streams[f1.backup_id].closed is not None and streams[f2.backup_id].closed is not None
    f1_only = {r.object.key for r in streams[f1.backup_id].records} - {
        r.object.key for s in (f2, i3) for r in streams[s.backup_id].records
    }
    assert f1_only  # the files archived before F2's snapshot

    path = sandboxes.root / "bh.json"
    path.write_text(json.dumps(config))
    code, out, err = run_main(["prune", "--config", str(path)], capsys)
    assert code == 0, err
    assert out.splitlines()[:3] == [
        f"delete {f1.backup_id}: 2 newer usable backups exist; backup_count_max is 1",
        f"keep {f2.backup_id}: incremental {i3.backup_id}, kept, builds on it",
        f"keep {i3.backup_id}: the newest backup that can be restored",
    ]
    assert [s.stream_id for s in read_streams(store)] == [f2.backup_id, i3.backup_id]
    present = {info.key for info in store.list()}
    assert not any(key.startswith(f"backups/{f1.backup_id}/") for key in present)
    assert not any(key.startswith(f"streams/{f1.backup_id}/") for key in present)
    assert not f1_only & present
    kept = {r.object.key for s in read_streams(store) for r in s.records}
    assert kept <= present
    assert find_leftovers(store) == []

    # What is kept restores: to the marker, from F2 and the binlogs of its stream.
    target = sandboxes.new("restored", start=False)
    target.create(initialize=False)
    keys = config["backup_sites"]["default"]["encryption_keys"]
    target_settings = parse_settings(
        target.binhoard_config(
            site_directory=sandboxes.root / "site",
            public_key=keys["public"],
            private_key=keys["private"],
            work_dir=target.directory / "binhoard",
        ),
        source="test",
    )
    progress = ops.point_in_time(target_settings, open_site(target_settings)).start(
        PitrRequest("default", {"to_gtid": marker[0]})
    )
    assert progress.phase == "completed"
    assert checksums(target) == marker[1]
    assert target.query("SELECT @@gtid_current_pos")[0][0] == marker[0]
