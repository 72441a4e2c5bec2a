"""``binhoard verify`` on a site in the S3 server (SeaweedFS) holding a real MariaDB
backup and its archived binlogs: everything verifies, the next run skips it all, and a
byte flipped or cut in a stored object (written back with a plain PUT, which changes its
ETag and Last-Modified) is named, alone, with exit status 8."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.storage.store import read_all
from tests.support import ops
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.s3server import S3Server
from tests.support.sandboxes import SandboxFactory
from tests.support.workload import create_schema, write_rows


def _verify(config: Path, *args: str) -> tuple[int, dict[str, object]]:
    done = run_binhoard("verify", "--config", str(config), "--json", *args)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def _bad(report: dict[str, object]) -> list[tuple[str, str]]:
    objects = report["objects"]
    assert isinstance(objects, list)
    return [(o["key"], o["status"]) for o in objects if o["status"] in ("corrupt", "missing")]


def test_verify_a_real_backup_on_s3_and_find_a_flipped_or_cut_byte(
    sandboxes: SandboxFactory, s3_server: S3Server, tmp_path: Path
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 200, seed=1)
    config = config_for(source, sandboxes.root / "unused")
    site = s3_server.storage_section(f"verify-{secrets.token_hex(4)}")
    config["backup_sites"]["default"]["object_storage"] = site
    settings = parse_settings(config, source="test")
    store = open_site(settings)
    manifest = ops.backup(settings, store)
    write_rows(source, 100, seed=2)
    source.query("FLUSH BINARY LOGS")
    assert ops.archiver(settings, store).archive_once().problems == []
    config_path = tmp_path / "binhoard.json"
    config_path.write_text(json.dumps(config))

    code, first = _verify(config_path)
    assert code == 0 and first["ok"] and _bad(first) == []
    summary = first["summary"]
    assert isinstance(summary, dict) and summary["skipped"] == 0 and summary["ok"] >= 6
    code, again = _verify(config_path)
    assert isinstance(again["summary"], dict)
    assert code == 0 and again["summary"]["skipped"] == summary["ok"]
    assert again["summary"]["bytes_read"] == 0

    record = next(i.key for i in store.list(f"streams/{manifest.backup_id}/binlogs/"))
    for key, cut in ((manifest.data.key, False), (record, True), (manifest.my_cnf.key, False)):
        original = read_all(store, key)
        middle = len(original) // 2
        changed = (
            original[:middle]
            if cut
            else original[:middle] + bytes([original[middle] ^ 0x01]) + original[middle + 1 :]
        )
        store.put(key, [changed])
        try:
            for args in ((), ("--full",)):
                code, report = _verify(config_path, *args)
                assert (code, _bad(report)) == (8, [(key, "corrupt")]), (key, args)
        finally:
            store.put(key, [original])
        code, report = _verify(config_path)
        assert code == 0 and _bad(report) == []
