"""A fork with real MariaDB (docs/format.md, "Histories and forks"): a primary backs up
and archives; another node is restored to an earlier point of its stream and then
runs as server_id 1, the primary's, and takes writes: the same GTIDs again
(0-1-N+1..) on another history. The fork's archiver writes nothing to the primary's
stream, its own backup starts a new stream, its promotion is refused with the reason,
and the primary goes on archiving into its stream, which nothing closes, fences or
breaks. Restores of each history to its end on two more nodes give exact checksums."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.gtid import GtidPosition
from binhoard.ops.catalog import StreamState, read_site
from binhoard.ops.history import local_history
from binhoard.ops.pitr import PitrRequest
from binhoard.ops.promote import promote_stream
from binhoard.storage.store import ObjectStore
from tests.integration.test_seed import new_node
from tests.support import ops
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.sandboxes import SandboxFactory
from tests.support.workload import checksums, create_schema, mark, write_rows


def _stream(store: ObjectStore, stream_id: str) -> StreamState:
    return next(s for s in read_site(store).streams if s.stream_id == stream_id)


def test_a_node_restored_to_an_earlier_point_with_the_same_server_id_forks(
    sandboxes: SandboxFactory,
) -> None:
    primary = sandboxes.new("primary", server_id=1)
    create_schema(primary)
    site = sandboxes.root / "site"
    identity = Identity.generate()
    primary_settings = parse_settings(config_for(primary, site, identity=identity), source="a")
    store = open_site(primary_settings)
    write_rows(primary, 200, seed=1)
    old_id = ops.backup(primary_settings, store).backup_id
    write_rows(primary, 150, seed=2)
    primary.query("FLUSH BINARY LOGS")
    earlier = mark(primary)  # the point the fork is restored to
    write_rows(primary, 150, seed=3)
    primary.query("FLUSH BINARY LOGS")
    assert ops.archiver(primary_settings, store).archive_once().problems == []

    # Restored on another node to the earlier point (as server_id 2: the apply refuses
    # the source's), then run as server_id 1, the primary's, and written to.
    fork = new_node(sandboxes, "fork")
    config = config_for(fork, site, identity=identity)
    restoring = parse_settings(config, source="fork")
    request = PitrRequest("default", {"to_gtid": earlier.gtid})
    ops.point_in_time(restoring, open_site(restoring)).start(request)
    assert checksums(fork) == earlier.sums
    history = local_history(restoring.state_directory)
    assert history.forked and f"stream {old_id}" in history.reason
    fork.execute_script("SET GLOBAL server_id = 1; SET GLOBAL read_only = OFF;")
    fork_settings = parse_settings({**config, "server_id": 1}, source="fork")
    write_rows(fork, 150, seed=4)
    fork.query("FLUSH BINARY LOGS")
    fork_end = GtidPosition.parse(str(fork.query("SELECT @@gtid_binlog_pos")[0][0]))
    assert fork_end.seq_no(0) > GtidPosition.parse(earlier.gtid).seq_no(0)
    assert {g.server_id for g in fork_end.values()} == {1}  # the primary's GTIDs again

    report = ops.archiver(fork_settings, store).archive_once()
    assert report.records_written == 0 and report.other_histories
    assert "no open backup stream of this server's history" in report.stall_reasons[0]
    refused = promote_stream(
        store,
        old_id,
        server_id=1,
        position=fork_end,
        now=datetime.now(UTC),
        history=local_history(fork_settings.state_directory),
        force=True,
    )
    assert refused.promotion is None and refused.new_stream_needed is not None

    # The fork's new stream, and both histories going on.
    new_id = ops.backup(fork_settings, store).backup_id
    write_rows(fork, 150, seed=5)
    fork.query("FLUSH BINARY LOGS")
    write_rows(primary, 150, seed=6)
    primary.query("FLUSH BINARY LOGS")
    assert ops.archiver(fork_settings, store).archive_once().problems == []
    assert ops.archiver(primary_settings, store).archive_once().problems == []
    fork_final, primary_final = mark(fork), mark(primary)
    old, new = _stream(store, old_id), _stream(store, new_id)
    assert old.closed is None and old.broken is None and old.promotions == ()
    assert old.fenced == () and old.end_position == GtidPosition.parse(primary_final.gtid)
    assert new.end_position == GtidPosition.parse(fork_final.gtid)
    assert new.backup.history_id == history.history_id != old.backup.history_id

    # Each history restored to its end; the newest backup's by default, the other named.
    for name, backup, expected in (("old", old_id, primary_final), ("new", None, fork_final)):
        box = new_node(sandboxes, name)
        config_file = box.directory / "binhoard.json"
        config_file.write_text(json.dumps(config_for(box, site, identity=identity)))
        chosen = ("--backup", backup) if backup else ()
        done = run_binhoard("restore", "--config", str(config_file), "--to-latest", *chosen)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"(stream {backup or new_id})" in done.stdout
        if backup is None:
            assert f"stream {old_id} of another history" in done.stderr
        assert checksums(box) == expected.sums
