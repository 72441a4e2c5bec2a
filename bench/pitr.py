"""Point-in-time apply rate: binhoard's restore to latest against ``mariadb-binlog | mariadb``.

Usage::

    .venv/bin/python bench/pitr.py [--transactions 50000] [--connections 1]
        [--binlog-file-mb 4] [--keep]

A sandbox MariaDB (relaxed durability while generating) gets a small OLTP schema, a
few thousand transactions, a full binhoard backup (so the snapshot sits in the middle
of a binlog file), then ``--transactions`` more transactions written by a stored
procedure in autocommit, on ``--connections`` concurrent sessions: 4 in 10 single-row
inserts, 3 in 10 single-row updates, 2 in 10 three-row transactions (update + two
inserts), 1 in 10 an update of the last order. ``max_binlog_size`` spreads them over
several files; all are archived with ``BinlogArchiver``. Then, each into a fresh
sandbox with the same server options:

* binhoard: ``PointInTimeRestore.start(PitrRequest(site, {"to_latest": True}))``, once
  with ``restore_parallel_threads`` 0 and once with 4 (the default picks by core count).
  The apply part
  is timed from the phase ``applying_binlogs`` to ``completed`` (server already started
  and given the snapshot's GTID state; includes indexing the downloaded files and the
  finalizing step), reported separately from the base restore before it. binhoard
  relaxes durability during apply by design (``sync_binlog=0``,
  ``innodb_flush_log_at_trx_commit=2``) and applies through the SQL thread with
  ``log_slave_updates=ON``.
* baseline: the same backup restored with ``restore_backup`` + ``start_restored_server``,
  then ``mariadb-binlog --start-position=<snapshot pos> <snapshot file> <later files>
  | mariadb``, as an operator would run it: the server's default durability
  (``innodb_flush_log_at_trx_commit=1``; MariaDB's default ``sync_binlog`` is 0).
* baseline relaxed: the same, after ``SET GLOBAL sync_binlog=0,
  innodb_flush_log_at_trx_commit=2`` (what binhoard sets), the fairer comparison.

The baselines read the source server's own binlog files (the same bytes binhoard
archived); binhoard downloads, verifies, decrypts and decompresses its copies while the
base backup is restored. Every result is checked: ``CHECKSUM TABLE`` of every user
table and ``@@gtid_binlog_pos`` equal to the source's at the end. Rates are
transactions (GTIDs after the snapshot) per second of apply. The last line printed is
one JSON object with the figures: ``ours_tps`` (and ``ratio``, ``ratio_vs_relaxed``,
``ours_sql_thread_tps``) are for the default ``restore_parallel_threads``;
``ours_threads0_tps`` / ``ours_threads4_tps`` and ``ratio_threads0*`` give both.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import binhoard.app
import binhoard.config
import binhoard.ops.backup
import binhoard.ops.restore_backup
from binhoard.crypto.age import Identity
from binhoard.domain.binlog import binlog_sort_key
from binhoard.domain.manifest import BackupManifest
from binhoard.ops.archive import BinlogArchiver
from binhoard.ops.catalog import read_streams
from binhoard.ops.pitr import PitrProgress, PitrRequest, PointInTimeRestore
from binhoard.server.process import find_executable
from binhoard.server.sandbox import Sandbox
from binhoard.storage.store import ObjectStore

MB = 1_000_000
WARMUP_TRANSACTIONS = 3000  # before the backup: the snapshot lands inside a binlog file
CALL_CHUNK = 10_000  # transactions per CALL of the procedure
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")

SCHEMA = """
CREATE DATABASE bench;
CREATE TABLE bench.accounts (
  id INT PRIMARY KEY, owner VARCHAR(32) NOT NULL, balance BIGINT NOT NULL,
  updates INT NOT NULL DEFAULT 0
) ENGINE=InnoDB;
CREATE TABLE bench.orders (
  id BIGINT AUTO_INCREMENT PRIMARY KEY, account INT NOT NULL, amount INT NOT NULL,
  status VARCHAR(16) NOT NULL, note VARCHAR(200) NOT NULL, KEY (account)
) ENGINE=InnoDB;
CREATE TABLE bench.ledger (
  id BIGINT AUTO_INCREMENT PRIMARY KEY, account INT NOT NULL, delta INT NOT NULL,
  KEY (account)
) ENGINE=InnoDB;
INSERT INTO bench.accounts (id, owner, balance) SELECT seq, CONCAT('owner-', seq), 1000
  FROM bench.seq_1_to_10000;
"""

# One transaction per iteration, each changing at least one row (a row-format statement
# that changes nothing writes no transaction), so n iterations are n GTIDs.
PROCEDURE = """
CREATE PROCEDURE bench.load(n INT)
BEGIN
  DECLARE i INT DEFAULT 0;
  DECLARE k INT;
  DECLARE a INT;
  WHILE i < n DO
    SET k = i % 10;
    SET a = 1 + FLOOR(RAND() * 10000);
    IF k < 4 THEN
      INSERT INTO bench.orders (account, amount, status, note)
        VALUES (a, FLOOR(RAND() * 1000), 'new', REPEAT('n', FLOOR(RAND() * 100)));
    ELSEIF k < 7 THEN
      UPDATE bench.accounts SET balance = balance + 1 + FLOOR(RAND() * 100),
        updates = updates + 1 WHERE id = a;
    ELSEIF k < 9 THEN
      START TRANSACTION;
      UPDATE bench.accounts SET balance = balance - 10, updates = updates + 1 WHERE id = a;
      INSERT INTO bench.ledger (account, delta) VALUES (a, -10);
      INSERT INTO bench.orders (account, amount, status, note)
        VALUES (a, 10, 'paid', 'transfer');
      COMMIT;
    ELSE
      UPDATE bench.orders SET status = 'shipped', amount = amount + 1
        WHERE id = LAST_INSERT_ID();
    END IF;
    SET i = i + 1;
  END WHILE;
END
"""

DURABILITY_VARS = (
    "sync_binlog",
    "innodb_flush_log_at_trx_commit",
    "log_slave_updates",
    "slave_parallel_threads",
    "slave_parallel_mode",
)


def _log(message: str) -> None:
    print(message, flush=True)


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


# --- data -----------------------------------------------------------------------------
def user_tables(box: Sandbox) -> list[str]:
    placeholders = ", ".join(["%s"] * len(SYSTEM_SCHEMAS))
    rows = box.query(
        "SELECT CONCAT('`', table_schema, '`.`', table_name, '`') FROM information_schema.tables "
        f"WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ({placeholders}) ORDER BY 1",
        SYSTEM_SCHEMAS,
    )
    return [str(r[0]) for r in rows]


def checksums(box: Sandbox) -> dict[str, int]:
    """``CHECKSUM TABLE`` of every user table (as tests/support/workload.py does)."""
    tables = user_tables(box)
    rows = box.query(f"CHECKSUM TABLE {', '.join(tables)}") if tables else []
    return {str(name): int(value) for name, value in rows}


def gtid_seq(position: str) -> int:
    """The sequence number of domain 0's GTID in ``position`` (the bench uses domain 0)."""
    for gtid in filter(None, position.split(",")):
        domain, _, seq = gtid.strip().split("-")
        if domain == "0":
            return int(seq)
    return 0


def variables(box: Sandbox, names: tuple[str, ...]) -> dict[str, str]:
    rows = box.query(
        f"SELECT {', '.join(f'@@global.{n}' for n in names)}",
    )
    return {n: str(v) for n, v in zip(names, rows[0], strict=True)}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def describe(settings: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def run_load(box: Sandbox, count: int, connections: int = 1) -> None:
    """``count`` transactions, split over ``connections`` concurrent sessions."""

    def one(share: int) -> None:
        while share > 0:
            step = min(CALL_CHUNK, share)
            box.query("CALL bench.load(%s)", (step,))
            share -= step

    shares = [count // connections + (i < count % connections) for i in range(connections)]
    with ThreadPoolExecutor(max_workers=connections) as pool:
        for future in [pool.submit(one, share) for share in shares]:
            future.result()


# --- one comparison ----------------------------------------------------------------------
class Bench:
    def __init__(
        self, tmp: Path, options: dict[str, str], transactions: int, connections: int = 1
    ) -> None:
        self.tmp = tmp
        self.connections = connections
        self.options = options
        self.transactions = transactions
        self.boxes: list[Sandbox] = []
        self.site = tmp / "site"
        identity = Identity.generate()
        self.public_key = str(identity.recipient)
        self.private_key = identity.secret_text()
        self.next_server_id = 2
        self.source = self._sandbox("src", server_id=1)

    def _sandbox(self, name: str, server_id: int | None = None) -> Sandbox:
        if server_id is None:
            server_id = self.next_server_id
            self.next_server_id += 1
        box = Sandbox(self.tmp / name, server_id=server_id, options=self.options)
        self.boxes.append(box)
        return box

    def settings(self, box: Sandbox, **overrides: Any) -> binhoard.config.Settings:
        data = box.binhoard_config(
            site_directory=self.site,
            public_key=self.public_key,
            private_key=self.private_key,
            work_dir=box.directory / "bh",
        )
        data.update(overrides)
        return binhoard.config.parse_settings(data, source="bench")

    # --- the archived workload -------------------------------------------------------
    def generate(self) -> tuple[BackupManifest, list[Path]]:
        src = self.source
        src.start()
        src.query("SET GLOBAL sync_binlog = 0")
        src.query("SET GLOBAL innodb_flush_log_at_trx_commit = 2")
        src.execute_script(SCHEMA)
        src.query(PROCEDURE)
        run_load(src, WARMUP_TRANSACTIONS)
        settings = self.settings(src)
        store = binhoard.app.open_site(settings)
        server = binhoard.app.open_server(settings)
        manifest = binhoard.ops.backup.create_backup(
            server, store, binhoard.app.backup_config(settings)
        )
        snap = manifest.snapshot
        _log(
            f"backup {manifest.backup_id}: snapshot {snap.binlog_file}:{snap.binlog_pos} "
            f"GTID {snap.gtid_position}"
        )
        started = time.perf_counter()
        run_load(src, self.transactions, self.connections)
        src.query("FLUSH BINARY LOGS")
        elapsed = time.perf_counter() - started
        archiver = BinlogArchiver(server, store, binhoard.app.archive_config(settings))
        report = archiver.archive_once()
        if report.problems:
            raise RuntimeError(f"archiving reported problems: {report.problems}")
        records = [r for s in read_streams(store) for r in s.records]
        active = str(src.query("SHOW MASTER STATUS")[0][0])
        names = [str(r[0]) for r in src.query("SHOW BINARY LOGS")]
        first = binlog_sort_key(snap.binlog_file)
        files = [
            src.binlog_dir / n
            for n in names
            if n != active and binlog_sort_key(n) >= first  # the files the archive holds
        ]
        if sorted(r.name for r in records) != sorted(p.name for p in files):
            raise RuntimeError(
                f"archived {[r.name for r in records]}, source has {[p.name for p in files]}"
            )
        _log(
            f"generated {self.transactions} transactions ({self.connections} connection(s)) "
            f"in {elapsed:.1f}s "
            f"({_rate(self.transactions, elapsed)}/s); archived {len(files)} binlog files, "
            f"{sum(p.stat().st_size for p in files) / MB:.1f} MB"
        )
        return manifest, files

    # --- binhoard ----------------------------------------------------------------------
    def ours(self, threads: int, expected: dict[str, int], gtid: str) -> dict[str, float]:
        box = self._sandbox(f"o{threads}")
        box.create(initialize=False)
        settings = self.settings(box, restore_parallel_threads=threads)
        store = binhoard.app.open_site(settings)
        seen: dict[str, float] = {}
        server_cpu: list[float] = []
        during: dict[str, str] = {}

        def on_progress(progress: PitrProgress) -> None:
            if progress.phase not in seen:
                seen[progress.phase] = time.perf_counter()
                if progress.phase == "applying_binlogs":
                    server_cpu.append(cpu_seconds(box.pid()))
            if (
                progress.phase == "applying_binlogs"
                and progress.transactions_applied
                and not during
            ):
                during.update(variables(box, DURABILITY_VARS))  # as binhoard set them

        batches: list[tuple[int, float]] = []
        capture = _BatchCapture(batches)
        logger = logging.getLogger("binhoard.restore")
        logger.addHandler(capture)
        logger.setLevel(logging.INFO)
        started = time.perf_counter()
        try:
            restore = PointInTimeRestore(
                binhoard.app.open_server(settings),
                store,
                binhoard.app.pitr_config(settings),
                progress=on_progress,
            )
            result = restore.start(PitrRequest("default", {"to_latest": True}))
        finally:
            logger.removeHandler(capture)
        ended = time.perf_counter()
        if result.phase != "completed":
            raise RuntimeError(f"binhoard restore ended in phase {result.phase}")
        apply_start = seen["applying_binlogs"]
        apply_s = ended - apply_start
        base_s = apply_start - started
        sql_s = sum(s for _, s in batches)
        applied = result.transactions_applied
        self._verify(box, expected, gtid, f"binhoard threads={threads}")
        if applied != self.transactions:
            raise RuntimeError(f"binhoard applied {applied} transactions, not {self.transactions}")
        after = variables(box, DURABILITY_VARS)
        server_s = cpu_seconds(box.pid()) - server_cpu[0]
        box.stop()
        _log(
            f"binhoard threads={threads}: base restore + start {base_s:.1f}s; apply "
            f"{apply_s:.1f}s = {_rate(applied, apply_s)} trx/s ({len(batches)} batch(es), "
            f"SQL thread {sql_s:.1f}s = {_rate(applied, sql_s)} trx/s); mariadbd CPU "
            f"{server_s:.1f}s; settings during apply: {describe(during) or '(not sampled)'}; "
            f"after: {describe(after)}"
        )
        return {"tps": _rate(applied, apply_s), "sql_tps": _rate(applied, sql_s), "base_s": base_s}

    # --- baseline ----------------------------------------------------------------------
    def baseline(
        self,
        manifest: BackupManifest,
        files: list[Path],
        expected: dict[str, int],
        gtid: str,
        *,
        relaxed: bool,
    ) -> float:
        label = "baseline relaxed" if relaxed else "baseline"
        box = self._sandbox("br" if relaxed else "bd")
        box.create(initialize=False)
        settings = self.settings(box)
        store: ObjectStore = binhoard.app.open_site(settings)
        started = time.perf_counter()
        server = binhoard.app.open_server(settings)
        binhoard.ops.restore_backup.restore_backup(
            server,
            store,
            manifest.backup_id,
            box.datadir,
            site=settings.backup_sites["default"],
            temporary_directory=settings.temporary_directory,
        )
        binhoard.ops.restore_backup.start_restored_server(server, manifest)
        base_s = time.perf_counter() - started
        if relaxed:
            box.query("SET GLOBAL sync_binlog = 0")
            box.query("SET GLOBAL innodb_flush_log_at_trx_commit = 2")
        during = variables(box, DURABILITY_VARS)
        tool = find_executable("mariadb-binlog", "mysqlbinlog")
        client = find_executable("mariadb", "mysql")
        err_path = box.directory / "baseline.err"
        server_before = cpu_seconds(box.pid())
        tools_before = children_cpu()
        started = time.perf_counter()
        with err_path.open("wb") as err:
            producer = subprocess.Popen(
                [tool, f"--start-position={manifest.snapshot.binlog_pos}", *map(str, files)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
            assert producer.stdout is not None
            consumer = subprocess.Popen(
                [client, f"--defaults-file={box.cnf}", "--user=root"],
                stdin=producer.stdout,
                stdout=err,
                stderr=err,
            )
            producer.stdout.close()
            codes = (producer.wait(), consumer.wait())
        apply_s = time.perf_counter() - started
        server_s = cpu_seconds(box.pid()) - server_before
        tools_s = children_cpu() - tools_before
        if codes != (0, 0):
            tail = err_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{label}: mariadb-binlog | mariadb exited {codes}:\n{tail}")
        self._verify(box, expected, gtid, label)
        box.stop()
        _log(
            f"{label}: base restore + start {base_s:.1f}s; apply {apply_s:.1f}s = "
            f"{_rate(self.transactions, apply_s)} trx/s; mariadbd CPU {server_s:.1f}s, "
            f"mariadb-binlog + mariadb CPU {tools_s:.1f}s; settings: {describe(during)}"
        )
        return _rate(self.transactions, apply_s)

    def _verify(self, box: Sandbox, expected: dict[str, int], gtid: str, label: str) -> None:
        got = checksums(box)
        if got != expected:
            differ = sorted(
                k for k in expected.keys() | got.keys() if got.get(k) != expected.get(k)
            )
            raise RuntimeError(f"{label}: CHECKSUM TABLE differs from the source for {differ}")
        # gtid_binlog_pos: after the baseline, gtid_current_pos is still the snapshot (the
        # applied GTIDs carry the source's server_id, so it takes gtid_slave_pos).
        position = str(box.query("SELECT @@global.gtid_binlog_pos")[0][0])
        if position != gtid:
            raise RuntimeError(f"{label}: gtid_binlog_pos {position}, source {gtid}")
        _log(f"{label}: verified: {len(got)} tables' CHECKSUM TABLE and GTID {gtid} match")

    def stop_all(self) -> None:
        for box in self.boxes:
            try:
                box.stop()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"stopping {box.directory}: {exc}", file=sys.stderr)


class _BatchCapture(logging.Handler):
    """Collects (transactions, seconds) of each batch from the applier's log line."""

    def __init__(self, batches: list[tuple[int, float]]) -> None:
        super().__init__(logging.INFO)
        self.batches = batches

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if record.msg.startswith("applied %d transactions") and isinstance(args, tuple):
            self.batches.append((int(str(args[0])), float(str(args[3]))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transactions", type=int, default=50_000, help="after the snapshot")
    parser.add_argument("--binlog-file-mb", type=int, default=4, help="max_binlog_size (MiB)")
    parser.add_argument(
        "--connections", type=int, default=1, help="concurrent sessions writing the workload"
    )
    parser.add_argument("--keep", action="store_true", help="keep the sandboxes directory")
    args = parser.parse_args(argv)
    if args.transactions < 100:
        parser.error("--transactions must be at least 100")
    if not 1 <= args.connections <= 32:
        parser.error("--connections must be 1..32")

    tmp = Path(tempfile.mkdtemp(prefix="bhp-"))  # short: unix socket paths < 108 bytes
    options = {
        "max_binlog_size": str(args.binlog_file_mb * 1024 * 1024),
        "innodb_buffer_pool_size": "256M",
    }
    bench = Bench(tmp, options, args.transactions, args.connections)
    try:
        _log(
            f"machine: {os.cpu_count()} CPUs, {platform.platform()}, load average "
            f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; work dir {tmp}"
        )
        manifest, files = bench.generate()
        src = bench.source
        expected = checksums(src)
        gtid = str(src.query("SELECT @@global.gtid_current_pos")[0][0])
        counted = gtid_seq(gtid) - gtid_seq(manifest.snapshot.gtid_position)
        if counted != args.transactions:
            raise RuntimeError(f"{counted} GTIDs after the snapshot, not {args.transactions}")
        src.stop()  # idle from here on; the restores get the whole machine
        for path in files:  # warm the page cache for the baselines as for binhoard's site
            path.read_bytes()

        ours4 = bench.ours(4, expected, gtid)
        relaxed = bench.baseline(manifest, files, expected, gtid, relaxed=True)
        ours0 = bench.ours(0, expected, gtid)
        durable = bench.baseline(manifest, files, expected, gtid, relaxed=False)
        ours = ours4 if binhoard.config.default_apply_threads() == 4 else ours0
        _log(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        result = {
            "bench": "pitr",
            "transactions": args.transactions,
            "binlog_files": len(files),
            "binlog_mb": round(sum(p.stat().st_size for p in files) / MB, 1),
            "ours_tps": ours["tps"],
            "ours_threads0_tps": ours0["tps"],
            "ours_threads4_tps": ours4["tps"],
            "ours_sql_thread_tps": ours["sql_tps"],
            "baseline_tps": durable,
            "baseline_relaxed_tps": relaxed,
            "ratio": round(ours["tps"] / durable, 2),
            "ratio_vs_relaxed": round(ours["tps"] / relaxed, 2),
            "ratio_threads0": round(ours0["tps"] / durable, 2),
            "ratio_threads0_vs_relaxed": round(ours0["tps"] / relaxed, 2),
        }
        print(json.dumps(result), flush=True)
        return 0
    finally:
        bench.stop_all()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
