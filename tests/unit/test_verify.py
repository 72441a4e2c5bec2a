"""``binhoard verify`` (``ops/verify.py``, ``domain/verify.py``): every object of a site
read and checked, each bad one named, what an earlier verify proved skipped, and the
streams' GTID chains checked by the readers' own rules.

A real site is built by the fake server (``tests/support/fakeserver.py``) into a local
directory: a full backup after 3 transactions, two binlog files, an incremental, a
third file, all archived (the restore tests' source). Synthetic sites
(``tests/support/sites.py``) give the stream problems."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binhoard.app import pitr_config
from binhoard.config import Settings
from binhoard.crypto.age import Identity
from binhoard.domain.catalog import BinlogRecord
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import BinhoardError, NotFoundError
from binhoard.domain.manifest import BackupManifest, manifest_key
from binhoard.domain.promotion import Promotion
from binhoard.domain.verify import (
    ObjectResult,
    Scope,
    StreamResult,
    VerifyReport,
    document_kind,
    plan_data,
    plan_documents,
)
from binhoard.ops.pitr import PitrRequest, PointInTimeRestore
from binhoard.ops.sitecache import open_cache
from binhoard.ops.verify import VerifyRequest, verify_site
from binhoard.storage.backends import LocalStore
from binhoard.storage.store import MemoryStore, ObjectStore, read_all
from tests.support.cli import run_main
from tests.support.fakeserver import backed_up_source, fake_host
from tests.support.sites import SiteBuilder, full_incremental_full, site_config

IDENTITY = Identity.generate()
START = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


@dataclass
class Site:
    root: Path  # the host's directory: site/, state/, ...
    settings: Settings
    store: LocalStore
    full: str
    incremental: str

    def verify(self, *, full: bool = False, backups: tuple[str, ...] | None = None) -> VerifyReport:
        with open_cache(self.settings.state_directory, self.store.describe()) as cache:
            return verify_site(self.store, [IDENTITY], VerifyRequest(backups, full), cache=cache)

    def path(self, key: str) -> Path:
        return self.root / "site" / key

    def object_keys(self) -> list[str]:
        return [info.key for info in self.store.list("")]


def build_site(root: Path) -> Site:
    settings, server = fake_host(root, IDENTITY)
    store = LocalStore(root / "site")
    full, incremental = backed_up_source(settings, server, store, START)
    return Site(root, settings, store, full.backup_id, incremental.backup_id)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return build_site(tmp_path_factory.mktemp("verify") / "host")


@pytest.fixture
def site(pristine: Site, tmp_path: Path) -> Site:
    """A copy of the module's site (and of its state: no verify has run yet)."""
    shutil.copytree(pristine.root, tmp_path / "host", symlinks=True)
    store = LocalStore(tmp_path / "host" / "site")
    settings, _ = fake_host(tmp_path / "host", IDENTITY, running=False)
    return Site(tmp_path / "host", settings, store, pristine.full, pristine.incremental)


def test_a_sound_site_verifies_and_a_second_verify_reads_nothing_again(site: Site) -> None:
    first = site.verify()
    assert first.error() is None and first.bad == []
    kinds = sorted({r.kind for r in first.objects})
    assert kinds == sorted(
        {"manifest", "data", "my_cnf", "binlog_record", "binlog_data"}
        | {"completed", "closed", "archive_status"}
    )
    assert first.counts["ok"] == len(site.object_keys()) and first.counts["skipped"] == 0
    assert [s.problems for s in first.streams] == [(), ()]

    second = site.verify()
    assert second.counts["skipped"] == len(site.object_keys()) and second.bytes_read == 0
    again = site.verify(full=True)
    assert again.counts["ok"] == len(site.object_keys()) and again.counts["skipped"] == 0


def _corrupt(path: Path, offset: int, cut: bool) -> None:
    """Flips every bit of the byte at ``offset``, or cuts the file there; puts the
    mtime back, as a careful hand would."""
    st = path.stat()
    raw = path.read_bytes()
    offset %= len(raw)
    changed = (
        raw[:offset] if cut else raw[:offset] + bytes([raw[offset] ^ 0xFF]) + raw[offset + 1 :]
    )
    path.write_bytes(changed)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.fixture(scope="module")
def verified(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A site an earlier verify has read whole."""
    built = build_site(tmp_path_factory.mktemp("verified") / "host")
    assert built.verify().error() is None
    return built


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(pick=st.integers(0, 10**6), offset=st.integers(0, 10**9), cut=st.booleans())
def test_any_flipped_or_cut_byte_of_any_object_is_found_and_named(
    verified: Site, pick: int, offset: int, cut: bool
) -> None:
    keys = verified.object_keys()
    key = keys[pick % len(keys)]
    path = verified.path(key)
    original = path.read_bytes()
    _corrupt(path, offset, cut)
    try:
        for full in (False, True):
            report = verified.verify(full=full)
            assert [(r.key, r.status) for r in report.bad] == [(key, "corrupt")], full
            error = report.error()
            assert error is not None and error.exit_code == 8 and key in error.message
    finally:
        path.write_bytes(original)
    assert verified.verify().bad == []


@pytest.mark.parametrize(
    "which",
    [
        "full data",
        "incremental data",
        "record",
        "binlog data",
        "manifest",
        "completed",
        "full manifest",
    ],
)
def test_a_restore_names_the_corrupt_object_it_needs(site: Site, which: str) -> None:
    records = [
        k for k in site.object_keys() if k.startswith(f"streams/{site.incremental}/binlogs/")
    ]
    record = BinlogRecord.from_bytes(read_all(site.store, records[-1]), key=records[-1])
    key = {
        "full data": next(
            k for k in site.object_keys() if k.startswith(f"backups/{site.full}/data")
        ),
        "incremental data": next(
            k for k in site.object_keys() if k.startswith(f"backups/{site.incremental}/data")
        ),
        "record": records[-1],
        "binlog data": record.object.key,
        "manifest": manifest_key(site.incremental),
        "completed": f"streams/{site.incremental}/completed.json",
        "full manifest": manifest_key(site.full),
    }[which]
    _corrupt(site.path(key), 200, cut=False)
    settings, target = fake_host(site.root.parent / "target", IDENTITY, server_id=9, running=False)
    restore = PointInTimeRestore(target, site.store, pitr_config(settings), use_cache=False)
    request = PitrRequest("default", {"to_latest": True}, backup_id=site.incremental)
    with pytest.raises(BinhoardError) as raised:
        restore.start(request)
    assert key in raised.value.message
    assert [r.key for r in site.verify().bad] == [key]


def test_a_restore_warns_of_a_corrupt_my_cnf_it_does_not_need(
    site: Site, caplog: pytest.LogCaptureFixture
) -> None:
    key = next(k for k in site.object_keys() if k.startswith(f"backups/{site.full}/my.cnf"))
    _corrupt(site.path(key), 100, cut=True)
    settings, target = fake_host(site.root.parent / "target", IDENTITY, server_id=9, running=False)
    restore = PointInTimeRestore(target, site.store, pitr_config(settings), use_cache=False)
    assert restore.start(PitrRequest("default", {"to_latest": True})).phase == "completed"
    assert any(key in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert [r.key for r in site.verify().bad] == [key]


def test_a_missing_object_is_named_with_what_references_it(site: Site) -> None:
    data = next(k for k in site.object_keys() if k.startswith(f"backups/{site.full}/data"))
    site.path(data).unlink()
    report = site.verify()
    assert [(r.key, r.status, r.referenced_by) for r in report.bad] == [
        (data, "missing", (manifest_key(site.full),))
    ]
    assert report.error() is not None and report.error().exit_code == 8  # type: ignore[union-attr]


class DeletingStore(LocalStore):
    """Deletes a backup as retention does (manifest first) when its data is first read."""

    def __init__(self, root: Path, backup_id: str) -> None:
        super().__init__(root)
        self.backup_id = backup_id

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        if key.startswith(f"backups/{self.backup_id}/data"):
            self.delete(manifest_key(self.backup_id))
            self.delete(key)
        return super().get(key, offset=offset, length=length)


def test_a_backup_deleted_while_verify_runs_is_not_missing(site: Site) -> None:
    store = DeletingStore(site.root / "site", site.incremental)
    report = verify_site(store, [IDENTITY], VerifyRequest())
    assert report.bad == [] and report.error() is None
    data = next(r for r in report.objects if r.key.startswith(f"backups/{site.full}/data"))
    assert data.status == "ok"


def test_one_backup_covers_its_chain_and_its_own_stream_only(site: Site) -> None:
    report = site.verify(backups=(site.incremental,))
    keys = {r.key for r in report.objects}
    assert manifest_key(site.full) in keys  # the incremental is restored on it
    assert not any(k.startswith(f"streams/{site.full}/") for k in keys)
    assert [s.stream_id for s in report.streams] == [site.incremental]
    with pytest.raises(NotFoundError, match="no backup nope"):
        site.verify(backups=("nope",))


def test_an_unreferenced_object_is_reported_and_checked(site: Site) -> None:
    data = next(k for k in site.object_keys() if k.startswith("binlogs/"))
    leftover = data.replace(".binlog", "-leftover.binlog")
    shutil.copy(site.path(data), site.path(leftover))
    (site.path("binlogs") / "notes.txt").write_text("an operator's file")
    report = site.verify()
    found = {r.key: r.status for r in report.objects if r.kind == "unreferenced"}
    assert found == {leftover: "unreferenced", "binlogs/notes.txt": "unreferenced"}
    assert report.error() is None
    _corrupt(site.path(leftover), 5000, cut=True)
    assert [r.key for r in site.verify().bad] == [leftover]


def test_a_verify_record_survives_a_kill_and_a_deleted_cache(site: Site) -> None:
    site.verify()
    (site.settings.state_directory / "site-cache.sqlite").unlink()
    report = site.verify()
    assert report.counts["skipped"] == 0 and report.bad == []


def test_a_document_with_its_content_kept_but_its_layout_changed_is_corrupt() -> None:
    store = MemoryStore()
    SiteBuilder(store).backup("A")
    key = manifest_key("A")
    raw = read_all(store, key)
    for changed in (raw.replace(b"\n ", b"\n\t", 1), raw[:-1], raw.replace(b": ", b":", 1)):
        with pytest.raises(CorruptDocumentError, match="stored form"):
            BackupManifest.from_bytes(changed, key=key)
        store.replace_raw(key, changed)
        assert [(r.key, r.status) for r in memory_verify(store).bad if r.kind == "manifest"] == [
            (key, "corrupt")
        ]


# --- streams (synthetic sites) ---------------------------------------------------------
def memory_verify(store: ObjectStore) -> VerifyReport:
    return verify_site(store, [IDENTITY], VerifyRequest())


def _documents_only(report: VerifyReport) -> list[tuple[str, str]]:
    """The bad objects that are not the synthetic site's data (which it never writes)."""
    return [
        (r.key, r.status) for r in report.bad if r.kind not in ("data", "my_cnf", "binlog_data")
    ]


def test_a_hole_in_a_stream_is_a_missing_record_and_a_stream_problem() -> None:
    store = MemoryStore()
    build = full_incremental_full(store)
    build.put_objects()
    store.delete(build.record_key("C", 0))
    report = memory_verify(store)
    assert _documents_only(report) == [(build.record_key("C", 0), "missing")]
    problems = {s.stream_id: s.problems for s in report.streams}
    assert any("missing" in p for p in problems["C"]) and problems["A"] == ()


def test_fenced_records_are_counted_and_their_objects_verified() -> None:
    store = MemoryStore()
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 2)
    promotion = Promotion(
        stream_id="A",
        seq=0,
        server_id=202,
        previous_server_id=build.server_id,
        takes_over_at=1,
        gtid_position=build.records["A"][0].gtid_position_at_end,
        at=START,
        forced=True,
    )
    store.put(promotion.key, [promotion.to_bytes()])
    build.put_objects()
    report = memory_verify(store)
    (stream,) = report.streams
    assert (stream.records, stream.fenced, stream.promotions) == (1, 1, 1)
    fenced_data = build.records["A"][1].object.key
    assert fenced_data in {r.key for r in report.objects}


def test_the_command_prints_each_bad_object_and_exits_8(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site.root / "binhoard.json"
    config.write_text(
        json.dumps(site_config(site.root, server_id=7, identity=IDENTITY, private_key=True))
    )
    code, out, _ = run_main(["verify", "-c", str(config)], capsys)
    assert code == 0 and "0 corrupt, 0 missing" in out
    code, out, _ = run_main(["verify", "-c", str(config), "--json"], capsys)
    document = json.loads(out)
    assert (
        code == 0 and document["ok"] and document["summary"]["skipped"] == len(site.object_keys())
    )
    key = manifest_key(site.full)
    _corrupt(site.path(key), 10, cut=False)
    code, out, err = run_main(["verify", "-c", str(config)], capsys)
    assert code == 8 and f"CORRUPT {key}" in out and key in err
    code, out, _ = run_main(["verify", "-c", str(config), "--json", "--full"], capsys)
    document = json.loads(out)
    assert code == 8 and not document["ok"]
    assert [o["key"] for o in document["objects"] if o["status"] == "corrupt"] == [key]
    code, _, err = run_main(["verify", "-c", str(config), "--all", "--backup", "x"], capsys)
    assert code == 2 and "exclude each other" in err


def test_stream_problems_alone_exit_9_and_bad_objects_8() -> None:
    gap = StreamResult("A", 2, 0, 0, "0-1-1", "0-1-9", ("a gap between 0-1-5 and 0-1-7",))
    report = VerifyReport("memory", None, False, (), (gap,), 0, 0.0)
    error = report.error()
    assert error is not None and error.exit_code == 9 and "stream A: a gap" in error.message
    bad = ObjectResult("backups/A/manifest.json", "manifest", "corrupt", "checksum mismatch")
    error = VerifyReport("memory", None, False, (bad,), (gap,), 0, 0.0).error()
    assert error is not None and error.exit_code == 8 and bad.key in error.message


# --- the pure parts ---------------------------------------------------------------------
def test_every_kind_of_key_is_known() -> None:
    kinds = {
        "backups/A/manifest.json": "manifest",
        "backups/A/preserve/0000000000.json": "mark",
        "backups/A/broken/0000000003.json": "mark",
        "streams/A/binlogs/0000000000.json": "binlog_record",
        "streams/A/completed.json": "completed",
        "streams/A/closed.json": "closed",
        "streams/A/archive-status.json": "archive_status",
        "streams/A/promotions/0000000000.json": "promotion",
        "binhoard-site.json": "site_marker",
        "streams/A/other.json": "document",
        "backups/A/data.xbstream.zst.age": None,
    }
    assert {key: document_kind(key) for key in kinds} == kinds


def test_a_plan_names_what_is_missing_or_recorded_twice_differently() -> None:
    store = MemoryStore()
    build = full_incremental_full(store)
    manifests = {m.backup_id: m for m in build.backups}
    records = [r for rs in build.records.values() for r in rs]
    listed = {i.key for i in store.list("")} | {b.data.key for b in build.backups}
    listed |= {r.object.key for r in records}
    listed.discard(manifest_key("A"))
    other = replace(records[0], object=replace(records[0].object, stored_sha256="1" * 64))
    plan = plan_data(listed, Scope(), [manifests["B"], manifests["C"]], [*records, other])
    problems = {(p.key, p.status) for p in plan.problems}
    assert (manifest_key("A"), "missing") in problems  # B builds on it
    assert ("backups/B/my.cnf", "missing") in problems
    assert (records[0].object.key, "corrupt") in problems
    assert len(plan.problems) == len(problems)

    scope = Scope.of(["B"], manifests)
    assert scope.covers("backups/A/data.xbstream") and not scope.covers("streams/A/closed.json")
    assert scope.covers("streams/B/closed.json") and not scope.covers("backups/C/manifest.json")
    documents = plan_documents({i.key for i in store.list("")}, scope)
    assert {c.key.split("/")[1] for c in documents.checks} == {"A", "B"}
    assert not any(c.key.startswith("streams/A/") for c in documents.checks)
