"""The chaos suite: one *round* puts a real daemon, on S3 behind a fault proxy, through
``kill -9`` in every mode while a writer commits, then checks what a user relies on:
every transaction older than the RPO bound is restorable (a point-in-time restore on a
fresh node gives exactly the rows committed before a marker), nothing is archived or
backed up twice, a restore survives a full disk, and every planted corruption (a byte
flipped, an object cut short) is found by restore and ``binhoard verify``, naming the
object.

Every random choice comes from one seed. The CI variant (tests/integration/test_chaos.py)
runs one round; ``scripts/chaos --minutes N`` runs rounds until the time is up and prints
a summary (``Tally``) as one JSON line.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.crypto.age import Identity
from binhoard.daemon.controller import ARCHIVE_INTERVAL
from binhoard.domain.gtid import GtidPosition
from binhoard.ops.catalog import StreamState, read_streams
from binhoard.ops.site import find_leftovers
from binhoard.server.sandbox import Sandbox
from binhoard.storage.store import ObjectStore, read_all
from tests.support.cli import run_binhoard
from tests.support.configs import config_for
from tests.support.daemon_process import DaemonProcess
from tests.support.faultproxy import FaultProxy, ProxyFaultPlan
from tests.support.mounts import resize, tmpfs
from tests.support.s3server import S3Server
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import Marker, checksums, create_schema, mark, write_rows

# Short, so that a round sees many rotations; the bound below follows from it.
ROTATION_INTERVAL = 3.0
# A transaction is stored at most this long after it commits (or after the daemon
# starts, if later): the archive pass that first sees it waiting starts the rotation
# timer (<= one ARCHIVE_INTERVAL), the first pass after ROTATION_INTERVAL rotates (<= one
# more) and uploads in that pass; UPLOAD_ALLOWANCE covers the upload under 10% faults
# and a busy shared machine.
UPLOAD_ALLOWANCE = 20.0
RPO_BOUND = ROTATION_INTERVAL + 2 * ARCHIVE_INTERVAL.total_seconds() + UPLOAD_ALLOWANCE
STORAGE_FAULTS = ProxyFaultPlan(
    rate=0.10, kinds={"slowdown": 1.0, "reset": 1.0, "stall": 1.0, "truncate": 1.0}
)


@dataclass(frozen=True)
class Scale:
    """How much one round does."""

    active_rounds: int  # kill -9 while active, under writes
    crash_loop_kills: int  # then kill -9 every 0-4 s, faster than the rotation timer
    restore_kills: int
    promote_kills: int
    corruptions: int


CI = Scale(active_rounds=12, crash_loop_kills=8, restore_kills=5, promote_kills=2, corruptions=6)


@dataclass
class Tally:
    """What the suite did and saw; the long variant's summary."""

    seed: int
    rounds: int = 0
    kills: Counter[str] = field(default_factory=Counter)  # by mode
    storage_faults: Counter[str] = field(default_factory=Counter)  # by kind
    storage_requests: int = 0
    disk_full: int = 0
    disk_full_skipped: str | None = None
    corruptions: Counter[str] = field(default_factory=Counter)  # "flip", "truncate"
    corruptions_found_by_restore: int = 0
    corruptions_found_by_verify: int = 0
    corruptions_no_restore_reads: int = 0  # my.cnf copies, stream markers: verify's alone
    verify_sound: int = 0  # verify runs that found the whole site sound
    restores_checked: int = 0
    rpo_checks: int = 0
    rpo_markers_checked: int = 0  # markers found stored once older than the bound
    rpo_seen: list[float] = field(default_factory=list)  # now - newest stored commit
    rto: list[float] = field(default_factory=list)  # a daemon's restore to latest, kills included
    rto_disk_full: list[float] = field(default_factory=list)  # failed on a full disk, resumed
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def spread(values: list[float]) -> dict[str, float] | None:
            if not values:
                return None
            ordered = sorted(values)
            return {
                "min": round(ordered[0], 1),
                "median": round(ordered[len(ordered) // 2], 1),
                "max": round(ordered[-1], 1),
            }

        return {
            "seed": self.seed,
            "rounds": self.rounds,
            "kills": dict(self.kills),
            "kills_total": sum(self.kills.values()),
            "storage_requests": self.storage_requests,
            "storage_faults": dict(self.storage_faults),
            "disk_full": self.disk_full,
            "disk_full_skipped": self.disk_full_skipped,
            "corruptions": dict(self.corruptions),
            "corruptions_found_by_restore": self.corruptions_found_by_restore,
            "corruptions_found_by_verify": self.corruptions_found_by_verify,
            "corruptions_no_restore_reads": self.corruptions_no_restore_reads,
            "verify_sound": self.verify_sound,
            "restores_checked": self.restores_checked,
            "rpo_bound_s": RPO_BOUND,
            "rpo_checks": self.rpo_checks,
            "rpo_markers_checked": self.rpo_markers_checked,
            "rpo_seen_s": spread(self.rpo_seen),
            "rto_s": spread(self.rto),
            "rto_disk_full_s": spread(self.rto_disk_full),
            "failures": self.failures,
        }


class Writer(threading.Thread):
    """Commits transactions without pause, and every few a ``Marker`` (the writes stop
    for it to a whole second, so its time separates the transactions before from those
    after). A failure is kept and raised by ``stop``."""

    def __init__(self, box: Sandbox, seed: int) -> None:
        super().__init__(name="chaos-writer", daemon=True)
        self.box = box
        self.seed = seed
        self.markers: list[Marker] = []
        self._halt = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        batch = 0
        try:
            while not self._halt.is_set():
                write_rows(self.box, 50, seed=self.seed + batch)
                batch += 1
                if batch % 4 == 0:
                    self.markers.append(mark(self.box))
        except BaseException as exc:  # noqa: BLE001 - raised again by stop()
            self._error = exc

    def halt(self) -> None:
        self._halt.set()
        self.join(timeout=120)

    def stop(self) -> list[Marker]:
        self.halt()
        if self._error is not None:
            raise AssertionError(f"the writer failed: {self._error}") from self._error
        return list(self.markers)


def covers(stream: StreamState, gtid: str) -> bool:
    position = GtidPosition.parse(gtid)
    return (
        stream.broken is None
        and position.covers(stream.snapshot_gtid)
        and stream.end_position.covers(position)
    )


def kill_and_restart(daemon: DaemonProcess, rng: random.Random, most: float) -> float:
    """Lets the daemon work for a random while (the point: the kill lands anywhere in
    what it does), then ``kill -9`` and a restart; when it was killed (Unix time)."""
    time.sleep(rng.uniform(0.0, most))
    killed = time.time()
    daemon.kill()
    daemon.start()
    return killed


def assert_site_whole(store: ObjectStore, streams_expected: int) -> None:
    """Whole streams, no file archived twice, nothing unnamed left behind."""
    streams = read_streams(store)
    assert len(streams) == streams_expected, [s.stream_id for s in streams]
    named = set()
    for stream in streams:
        assert stream.broken is None and stream.problems() == [], stream.stream_id
        names = [r.name for r in stream.records]
        assert len(names) == len(set(names)), f"a file archived twice in {stream.stream_id}"
        named |= {r.object.key for r in stream.records}
    assert find_leftovers(store) == []
    stored = {i.key for i in store.list("binlogs/")}
    assert stored == named, "binlog uploads that no record names"


class Round:
    """One round of the suite, in its own sandboxes, site prefix and fault proxy."""

    def __init__(
        self, seed: int, scale: Scale, tally: Tally, sandboxes: SandboxFactory, s3: S3Server
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.scale = scale
        self.tally = tally
        self.sandboxes = sandboxes
        self.s3 = s3
        self.identity = Identity.generate()
        self.proxy = FaultProxy(s3.endpoint_url, replace(STORAGE_FAULTS, seed=seed))
        storage = s3.storage_config(prefix=f"chaos-{seed:08x}").model_dump(mode="json")
        storage["aws_secret_access_key"] = s3.secret_key  # dumped masked otherwise
        self.direct_storage = storage
        self.proxied_storage = {**storage, "endpoint_url": self.proxy.url}
        self.daemons: list[DaemonProcess] = []
        self.last_start = 0.0
        self.down: list[tuple[float, float]] = []  # the primary's: killed, answering again

    # --- configuration -------------------------------------------------------------
    def config(self, box: Sandbox, *, proxied: bool = True) -> dict[str, Any]:
        data = config_for(box, self.sandboxes.root / "unused-site", identity=self.identity)
        site = data["backup_sites"]["default"]
        site["object_storage"] = self.proxied_storage if proxied else self.direct_storage
        data["backup_settings"] = {
            # The schedule's own backup stays out of the way: only the first and the requested.
            "backup_hour": (time.gmtime().tm_hour + 12) % 24,
            "forced_binlog_rotation_interval": ROTATION_INTERVAL,
            "incremental": {"enabled": True},
        }
        return data

    def store(self, box: Sandbox) -> ObjectStore:
        """The site, straight from S3 (no faults): what the checks read."""
        return open_site(parse_settings(self.config(box, proxied=False), source="chaos"))

    # --- kill -9 ---------------------------------------------------------------------
    def kill_and_restart(self, daemon: DaemonProcess, mode: str, most: float) -> None:
        killed = kill_and_restart(daemon, self.rng, most)
        self.tally.kills[mode] += 1
        self.last_start = time.time()
        self.down.append((killed, self.last_start))

    def daemon(self, box: Sandbox) -> DaemonProcess:
        daemon = DaemonProcess(box.directory / "daemon", self.config(box))
        self.daemons.append(daemon)
        daemon.start()
        self.last_start = time.time()
        return daemon

    # --- the round -----------------------------------------------------------------------
    def run(self) -> None:
        self.proxy.start()
        try:
            source, final, markers, expected = self.primary_under_fire()
            self.check_site(source, expected)
            self.replica_restores_and_promotes(final)
            self.restore_into_a_full_disk(markers)
            self.corruptions()
        finally:
            counts = self.proxy.counts
            self.proxy.stop()
            for daemon in self.daemons:
                daemon.close()
            self.tally.storage_requests += counts.pop("requests", 0)
            counts.pop("forwarded", None)
            self.tally.storage_faults.update(counts)
        self.tally.rounds += 1

    def primary_under_fire(self) -> tuple[Sandbox, Marker, list[Marker], int]:
        source = self.sandboxes.new("source")
        create_schema(source)
        write_rows(source, 200, seed=self.seed)
        primary = self.daemon(source)
        self.kill_and_restart(primary, "idle", 0.5)
        wait_for("the first listing", lambda: primary.get("/backup")["backups"] is not None)
        primary.send("PUT", "/status", {"mode": "active"})
        expected = 1  # the first backup, taken at once
        wait_for("the first backup", lambda: len(primary.backups()) >= 1, timeout=120)
        writer = Writer(source, seed=self.rng.randrange(1 << 30))
        writer.start()
        try:
            for round_ in range(self.scale.active_rounds):
                choice = self.rng.random()
                if choice < 0.5:
                    incremental = self.rng.random() < 0.5
                    body = {"backup_type": "basebackup", "incremental": incremental}
                    primary.send("POST", "/backup", body)
                    expected += 1
                elif choice < 0.8:
                    primary.send("POST", "/backup", {"backup_type": "binlog"})
                self.kill_and_restart(primary, "active", 4.0)  # a backup, a rotation, a pass
                # Each accepted request is carried out, once, before the next one.
                wait_for(
                    f"{expected} backups (active round {round_}; log {primary.log})",
                    lambda n=expected: len(primary.backups()) >= n,
                    timeout=180,
                )
                assert len(primary.backups()) == expected, primary.tail()
                self.check_rpo(source, writer.markers)
            # A crash loop: killed more often than the rotation timer fires.
            for _ in range(self.scale.crash_loop_kills):
                self.kill_and_restart(primary, "active", 4.0)
                self.check_rpo(source, writer.markers)
            # Then no kill for a whole bound: every marker older than it must be stored
            # by the archiver's own rotations (no flush asked for).
            quiet_until = self.last_start + RPO_BOUND + 1
            wait_for("a quiet RPO bound", lambda: time.time() >= quiet_until, timeout=RPO_BOUND + 5)
            self.check_rpo(source, writer.markers)
        except BaseException:
            writer.halt()  # the round's own failure is the one to report
            raise
        markers = writer.stop()
        final = mark(source)
        answer = primary.send("POST", "/backup", {"backup_type": "binlog", "wait_for_upload": 120})
        assert answer == {"success": True}, primary.tail()
        # The flush stored the rest: every marker is in an unbroken stream.
        wait_for(
            "every marker stored after the flush",
            lambda: self.check_rpo(source, markers, all_due=True),
            timeout=RPO_BOUND,
        )
        assert primary.terminate() == 0
        return source, final, markers, expected

    def check_rpo(self, source: Sandbox, markers: list[Marker], *, all_due: bool = False) -> bool:
        """Every marker older than the bound (plus the time the daemon was down since
        it committed) is in an unbroken stream; records the RPO seen (now minus the
        newest stored commit)."""
        now = time.time()
        streams = read_streams(self.store(source))
        due = [m for m in markers if all_due or self.stored_by(m.time) <= now]
        missing = [m.gtid for m in due if not any(covers(s, m.gtid) for s in streams)]
        if all_due:
            return not missing
        self.tally.rpo_markers_checked += len(due)
        assert not missing, f"older than the RPO bound ({RPO_BOUND} s) and not stored: {missing}"
        newest = max((s.newest_commit_time or 0 for s in streams), default=0)
        if newest:  # the writer commits all the time: the lag of the archive, kills and all
            self.tally.rpo_seen.append(now - newest)
        self.tally.rpo_checks += 1
        return True

    def stored_by(self, committed: float) -> float:
        """When a transaction committed then must be in storage: the bound, extended by
        the longest time the daemon was down since (a killed daemon archives nothing).
        Not by the sum of them: a started daemon rotates at its first pass, so restarts
        do not add up."""
        outages = [up - max(killed, committed) for killed, up in self.down if up > committed]
        return committed + RPO_BOUND + max(outages, default=0.0)

    def check_site(self, source: Sandbox, expected: int) -> None:
        assert_site_whole(self.store(source), expected)

    def replica_restores_and_promotes(self, final: Marker) -> None:
        """A fresh node restores to the newest transaction through its daemon, killed
        during the restore, in observe and while it promotes itself."""
        box = self.sandboxes.new("replica", start=False)
        box.create(initialize=False)
        replica = self.daemon(box)
        wait_for("the listing", lambda: bool(replica.backups()))
        newest = replica.backups()[-1]["stream_id"]
        started = time.monotonic()
        replica.send("PUT", "/status", {"mode": "restore", "site": "default", "stream_id": newest})
        for _ in range(self.scale.restore_kills):
            self.kill_and_restart(replica, "restore", 4.0)
        replica.wait_mode("observe", timeout=300)
        self.tally.rto.append(time.monotonic() - started)
        self.kill_and_restart(replica, "observe", 0.5)
        assert replica.mode() == "observe"
        self.assert_restored(box, final)
        replica.send("PUT", "/status", {"mode": "promote"})
        for _ in range(self.scale.promote_kills):
            self.kill_and_restart(replica, "promote", 1.0)
        replica.wait_mode("active", timeout=120)
        assert replica.terminate() == 0
        box.stop()

    def assert_restored(self, box: Sandbox, marker: Marker) -> None:
        got = (checksums(box), str(box.query("SELECT @@gtid_current_pos")[0][0]))
        assert got == (marker.sums, marker.gtid), f"restored {got[1]}, wanted {marker.gtid}"
        self.tally.restores_checked += 1

    def restore_into_a_full_disk(self, markers: list[Marker]) -> None:
        """A point-in-time restore to a random marker with a temporary directory too
        small: one clear error (exit 10); once space is freed ``--resume`` ends exactly
        at the marker."""
        marker = self.rng.choice(markers)
        box = self.sandboxes.new("full", start=False)
        box.create(initialize=False)
        config_file = box.directory / "binhoard.json"
        config_file.write_text(json.dumps(self.config(box)))
        temporary = box.directory / "binhoard" / "tmp"
        command = ("restore", "--config", str(config_file))
        try:
            with tmpfs(temporary, self.rng.randrange(64, 4096) * 1024):
                started = time.monotonic()
                failed = run_binhoard(*command, "--to-gtid", marker.gtid)
                assert failed.returncode == 10, failed.stderr[-3000:]
                assert "no space left on device" in failed.stderr, failed.stderr[-3000:]
                assert "Traceback" not in failed.stderr
                self.tally.disk_full += 1
                resize(temporary, 1024**3)
                resumed = run_binhoard(*command, "--resume")
                assert resumed.returncode == 0, resumed.stderr[-3000:]
                self.tally.rto_disk_full.append(time.monotonic() - started)
        except pytest.skip.Exception as skipped:
            self.tally.disk_full_skipped = str(skipped)
            restored = run_binhoard(*command, "--to-gtid", marker.gtid)
            assert restored.returncode == 0, restored.stderr[-3000:]
        self.assert_restored(box, marker)
        box.stop()

    # --- corruption ----------------------------------------------------------------------
    def corruptions(self) -> None:
        """Flips a byte of, or cuts short, random stored objects one at a time; each must
        be found, naming it, by ``binhoard verify`` (which first finds the whole site
        sound, and again at the end) and by a restore that reads it."""
        verifier = self.sandboxes.new("verifier", start=False)
        verifier.create(initialize=False)
        verifier_config = verifier.directory / "binhoard.json"
        verifier_config.write_text(json.dumps(self.config(verifier, proxied=False)))
        self.verify_sound(verifier_config)
        store = self.store(verifier)
        streams = read_streams(store)
        for _ in range(self.scale.corruptions):
            key, restore_args = self.pick_object(store, streams)
            original = read_all(store, key)
            how = self.rng.choice(("flip", "truncate")) if original else "truncate"
            damaged = bytearray(original)
            if how == "flip":
                damaged[self.rng.randrange(len(damaged))] ^= 1 << self.rng.randrange(8)
            else:
                del damaged[self.rng.randrange(len(damaged)) :]
            store.put(key, [bytes(damaged)])
            self.tally.corruptions[how] += 1
            try:
                # Not --full: what verify proved before is skipped, the changed object not.
                self.found_by_verify(verifier_config, key)
                if restore_args:
                    self.found_by_restore(key, restore_args)
                else:
                    self.tally.corruptions_no_restore_reads += 1
            finally:
                store.put(key, [original])
        self.verify_sound(verifier_config)

    def verify_sound(self, config_file: Path) -> None:
        result = run_binhoard("verify", "--config", str(config_file), "--all", "--json")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        self.tally.verify_sound += 1

    def pick_object(
        self, store: ObjectStore, streams: list[StreamState]
    ) -> tuple[str, tuple[str, ...]]:
        """A random object of a backup or a stream, and a restore that reads it (none:
        verify alone checks it)."""
        candidates: list[tuple[str, tuple[str, ...]]] = []
        for stream in streams:
            backup = stream.stream_id
            for info in store.list(f"backups/{backup}/"):
                # A restore only warns about a bad my.cnf copy (it uses the host's): verify's.
                reads = () if "/my.cnf" in info.key else ("--backup", backup)
                candidates.append((info.key, reads))
            reached = stream.snapshot_gtid
            for record in stream.records:
                end = record.gtid_position_at_end
                # A record that adds no transaction (a file rotated with nothing new, as
                # a promoted node's first ones) is needed by no target: verify's alone.
                target = () if reached.covers(end) else ("--backup", backup, "--to-gtid", str(end))
                candidates.append((record.key, target))
                candidates.append((record.object.key, target))
                reached = end
            # Markers and promotions: what a restore makes of them depends on the
            # target (a closed stream's marker does not stop one inside it); verify's.
            for info in store.list(f"streams/{backup}/"):
                if "/binlogs/" not in info.key:
                    candidates.append((info.key, ()))
        return self.rng.choice(candidates)

    def found_by_restore(self, key: str, restore_args: tuple[str, ...]) -> None:
        # A fresh node for each: a failed restore leaves its datadir and state behind.
        box = self.sandboxes.new("checker", start=False)
        box.create(initialize=False)
        config_file = box.directory / "binhoard.json"
        config_file.write_text(json.dumps(self.config(box, proxied=False)))
        failed = run_binhoard("restore", "--config", str(config_file), *restore_args)
        box.stop()
        assert failed.returncode != 0, f"a restore reading the damaged {key} succeeded"
        assert key in failed.stderr, f"the restore did not name {key}:\n{failed.stderr[-3000:]}"
        assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
        self.tally.corruptions_found_by_restore += 1

    def found_by_verify(self, config_file: Path, key: str) -> None:
        found = run_binhoard("verify", "--config", str(config_file), "--all", "--json")
        assert found.returncode == 8, f"verify missed {key}: {found.stdout[-3000:]}"
        bad = {o["key"] for o in json.loads(found.stdout)["objects"] if o["status"] != "ok"}
        assert key in bad, f"verify did not name {key} but {sorted(bad)}"
        self.tally.corruptions_found_by_verify += 1
