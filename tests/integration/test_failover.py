"""Failover of three nodes with real MariaDB replication, every daemon stepped by the test.

A primary in ``active`` under a write load; two replicas seeded from its backup
(``restore`` with ``replicate_from``) and observing. The replicas are caught up at a
barrier (``MASTER_GTID_WAIT``), stop receiving, and the primary's mariadbd is SIGKILLed
mid-load: it dies holding a tail of transactions neither replica has. One replica is
promoted, the other re-points to it, writes continue there; the old primary comes back
and uploads, and takes writes of its own, for a while.

When the old primary's late upload (its tail) lands relative to the promotion is the
test's parameter (``LATE``). Then point-in-time restores of the stream to points before
and after the failover have exactly the checksums of the node that owned each point,
and nothing the deposed primary uploaded after the promotion is ever applied.

Deterministic: the controllers run their jobs when the test says (tests/support/nodes.py),
an interleaving inside a job is a hook on its site writes, and waits are
``MASTER_GTID_WAIT`` with deadlines. CI runs this file five times in a row
(scripts/test)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.catalog import binlog_records_prefix
from binhoard.domain.promotion import Promotion, promotions_prefix
from binhoard.ops.catalog import StreamState, read_site
from binhoard.ops.pitr import PitrRequest
from binhoard.server.sandbox import Sandbox
from binhoard.storage.store import ObjectStore
from tests.integration.test_seed import grant_replication, new_node, seeded_config
from tests.support import ops
from tests.support.configs import config_for
from tests.support.daemon import ScriptedClock
from tests.support.nodes import Hook, Load, SteppedNode, load_on
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import checksums, create_schema, write_rows

# When the old primary's late record (its tail) is uploaded, against the promotion:
LATE = {
    # its pass ends before the promoter reads the stream: the tail counts, and the
    # promoter, which never received it, applies it before taking over
    "before-the-promoter-reads": "before",
    # the promoter has read the stream, its record is not written yet: the late record
    # takes the seq the promotion then takes over at, and is fenced
    "after-the-read-before-the-promotion": "between",
    # the old primary's pass read the stream before the promotion existed and writes
    # its record after: fenced likewise
    "in-a-pass-begun-before-the-promotion": "in_pass",
    # the promotion exists and the old primary's pass notices it: nothing is uploaded,
    # then or later (also after its daemon restarts)
    "after-it-noticed-it-was-deposed": "after",
}


@dataclass(frozen=True)
class Point:
    """A server's position, writes paused, and its checksums then."""

    gtid: str
    sums: dict[str, int]


def point(box: Sandbox) -> Point:
    return Point(gtid_of(box), checksums(box))


def gtid_of(box: Sandbox) -> str:
    return str(box.query("SELECT @@gtid_binlog_pos")[0][0])


def reaches(replica: Sandbox, gtid: str, why: str, timeout: int = 60) -> None:
    """Barrier: ``replica`` applies ``gtid`` within ``timeout`` s."""
    waited = replica.query("SELECT MASTER_GTID_WAIT(%s, %s)", (gtid, timeout))
    assert waited[0][0] == 0, f"{replica.directory} did not reach {gtid} ({why}) in {timeout} s"


def the_stream(store: ObjectStore, stream_id: str) -> StreamState:
    (stream,) = (s for s in read_site(store).streams if s.stream_id == stream_id)
    return stream


@pytest.mark.parametrize("late", list(LATE.values()), ids=list(LATE))
def test_three_nodes_fail_over_without_a_gap_and_the_deposed_primary_counts_for_nothing(
    sandboxes: SandboxFactory, late: str
) -> None:
    clock = ScriptedClock(datetime.now(UTC))
    identity = Identity.generate()
    site = sandboxes.root / "site"

    # --- a primary in active under a write load -------------------------------------
    box = sandboxes.new("primary")
    create_schema(box)
    grant_replication(box)
    write_rows(box, 100, seed=1)
    primary = SteppedNode(box, seeded_config(box, site, identity), clock)
    store = open_site(primary.settings)
    replicas = [
        SteppedNode(b, seeded_config(b, site, identity), clock)
        for b in (new_node(sandboxes, "one"), new_node(sandboxes, "two"))
    ]
    one, two = replicas
    with load_on(box, seed=100):
        primary.set_mode("active")  # lists, takes its first backup, archives
        (stream_id,) = (s.stream_id for s in primary.controller.snapshot().backups or ())
        primary.archive_pass()
        # --- two replicas seeded from its backup, observing ----------------------
        for replica in replicas:
            replica.settle()  # the listing
            replica.set_mode(
                "restore", site="default", stream_id=stream_id, replicate_from=primary.address
            )
            assert replica.mode == "observe", replica.last_error()
            primary.archive_pass()

    # --- caught up at a barrier, then the replicas receive nothing more ------------------
    before = point(box)
    for replica in replicas:
        reaches(replica.box, before.gtid, "the primary's writes before the failover")
        assert checksums(replica.box) == before.sums
    primary.archive_pass(rotate=True)
    assert the_stream(store, stream_id).end_position.format() == before.gtid
    for replica in replicas:
        replica.box.execute_script("STOP SLAVE IO_THREAD")

    # --- the primary's mariadbd is SIGKILLed mid-load ------------------------------------
    load = Load(box, seed=500)
    load.expect_death = True
    load.start()
    wait_for("transactions the replicas never receive", lambda: load.commits >= 3)
    box.kill()
    load.stop()
    box.start()  # it comes back, with a tail of transactions nobody else has
    tail = point(box)
    assert tail.gtid != before.gtid

    # --- the promotion, and the old primary's late upload --------------------------------
    late_upload(late, primary, one, stream_id)
    assert one.mode == "active", one.last_error()
    stream = the_stream(store, stream_id)
    (promotion,) = stream.promotions
    assert (promotion.server_id, promotion.previous_server_id) == (
        one.settings.server_id,
        primary.settings.server_id,
    )
    check_late_upload(stream, promotion, late, primary.settings.server_id)
    one.box.execute_script("SET GLOBAL read_only = OFF")  # the operator's step
    promoted = point(one.box)
    assert promoted.gtid == (tail.gtid if late == "before" else before.gtid)

    # --- the other replica re-points to the new primary ----------------------------------
    two.set_mode("observe", replicate_from=one.address)
    reaches(two.box, promoted.gtid, "re-pointed to the new primary")

    # --- writes continue on the new primary; the old one uploads for a while -----------
    with load_on(one.box, seed=700) as writes:
        for n in range(3):
            wait_for("writes on the new primary", lambda n=n: writes.commits >= 2 * (n + 1))
            one.archive_pass()
            write_rows(box, 50, seed=900 + n)  # the deposed primary takes writes too
            primary.archive_pass(rotate=n == 1)
            assert primary.controller.snapshot().status.deposed
    after = point(one.box)
    reaches(two.box, after.gtid, "following the new primary")
    assert checksums(two.box) == after.sums
    for _ in range(5):
        one.archive_pass(rotate=True)
        if the_stream(store, stream_id).end_position.format() == after.gtid:
            break
    stream = the_stream(store, stream_id)
    assert stream.end_position.format() == after.gtid and not stream.problems()
    assert len(stream.promotions) == 1
    check_late_upload(stream, promotion, late, primary.settings.server_id)

    # --- restores before and after the failover ------------------------------------------
    targets = {"before the failover": before, "after the failover": after}
    if late == "before":
        targets["the old primary's tail, archived before the promotion"] = tail
    for what, expected in targets.items():
        restored = restore(sandboxes, site, identity, stream_id, {"to_gtid": expected.gtid})
        assert checksums(restored) == expected.sums, what
        restored.stop()
    latest = restore(sandboxes, site, identity, stream_id, {"to_latest": True})
    assert checksums(latest) == after.sums
    assert gtid_of(latest) == after.gtid


def late_upload(late: str, primary: SteppedNode, promoter: SteppedNode, stream_id: str) -> None:
    """The old primary's next archive pass (its late upload of its tail) and the
    promotion, in the order ``late`` names."""
    if late == "before":
        primary.archive_pass()
        tail = gtid_of(primary.box)
        assert the_stream(open_site(primary.settings), stream_id).end_position.format() == tail
        promoter.promote()
    elif late == "between":
        promotions = promotions_prefix(stream_id)
        promoter.hooks.append(Hook(lambda key: key.startswith(promotions), primary.archive_pass))
        promoter.promote()
        assert promoter.hooks[0].fired
    elif late == "in_pass":
        records = binlog_records_prefix(stream_id)
        primary.hooks.append(Hook(lambda key: key.startswith(records), promoter.promote))
        primary.archive_pass()
        assert primary.hooks[0].fired
    else:
        promoter.promote()
        primary.archive_pass()
        assert primary.controller.snapshot().status.deposed
        primary.restart()  # a restarted daemon finds out again at its first pass
        primary.archive_pass(rotate=True)
        assert primary.controller.snapshot().status.deposed


def check_late_upload(stream: StreamState, promotion: Promotion, late: str, old: int) -> None:
    """What the old primary uploaded after the takeover point is fenced, whenever it
    landed; only a record uploaded before the promoter read the stream counts."""
    taken = promotion.takes_over_at
    assert all(r.server_id == promotion.server_id for r in stream.records if r.seq >= taken)
    assert all(r.server_id == old and r.seq >= taken for r in stream.fenced)
    fenced_at = {r.seq for r in stream.fenced}
    if late in ("between", "in_pass"):
        assert taken in fenced_at, "the late record takes the seq the promotion takes over at"
    else:
        assert not stream.fenced, "nothing was uploaded after the promotion"


def restore(
    sandboxes: SandboxFactory,
    site: Path,
    identity: Identity,
    stream_id: str,
    target: dict[str, object],
) -> Sandbox:
    box = new_node(sandboxes, "restored")
    settings = parse_settings(config_for(box, site, identity=identity), source="test")
    ops.point_in_time(settings, open_site(settings)).start(
        PitrRequest("default", target, backup_id=stream_id)
    )
    return box
