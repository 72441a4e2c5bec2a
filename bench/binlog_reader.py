"""Benchmark: binhoard's binlog reader against ``mariadb-binlog FILE > /dev/null``.

Generates ~220 MB of binlogs with a sandbox MariaDB (an OLTP-like mix: mostly
single-row autocommit inserts, one multi-statement transaction in five, an occasional
300-row bulk insert; 64 MB files), or reuses the binlog files of ``--dir``. Both
tools then read the same files from a warm page cache; each is timed over all files,
best of ``--repeat`` passes. The reader's pass includes verifying every CRC32 and
building each file's segment summary, i.e. what archiving a file costs.

Ends with one line of JSON on stdout:
{"bench": "binlog_reader", "ours_mbps": ..., "baseline_mbps": ..., "ratio": ...}

    .venv/bin/python bench/binlog_reader.py [--dir DIR] [--size-mb N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from binhoard.domain.binlog import binlog_sort_key
from binhoard.server.binlog_reader import read_binlog
from binhoard.server.process import find_executable
from binhoard.server.sandbox import Sandbox

SCHEMA = """
CREATE DATABASE IF NOT EXISTS bench;
CREATE TABLE IF NOT EXISTS bench.orders (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  customer INT NOT NULL,
  status VARCHAR(16) NOT NULL,
  amount DECIMAL(10,2) NOT NULL,
  note VARCHAR(255) NOT NULL,
  created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB;
"""

# Each loop iteration is one autocommit insert; every 5th adds a two-statement
# transaction, every 200th a 300-row bulk insert. Written by the server itself, so
# generating 200 MB takes seconds rather than minutes of client round trips.
PROCEDURE = """
CREATE PROCEDURE IF NOT EXISTS bench.load(n INT)
BEGIN
  DECLARE i INT DEFAULT 0;
  WHILE i < n DO
    INSERT INTO bench.orders (customer, status, amount, note)
      VALUES (FLOOR(RAND() * 10000), 'new', RAND() * 1000, REPEAT('x', FLOOR(RAND() * 200)));
    IF i % 5 = 0 THEN
      START TRANSACTION;
      UPDATE bench.orders SET status = 'paid', note = CONCAT(LEFT(note, 200), 'p')
        WHERE id = LAST_INSERT_ID();
      INSERT INTO bench.orders (customer, status, amount, note)
        VALUES (FLOOR(RAND() * 10000), 'new', RAND() * 1000, 'second');
      COMMIT;
    END IF;
    IF i % 200 = 0 THEN
      INSERT INTO bench.orders (customer, status, amount, note)
        SELECT seq, 'bulk', seq, REPEAT('b', 50) FROM seq_1_to_300;
    END IF;
    SET i = i + 1;
  END WHILE;
END
"""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def binlog_files(directory: Path) -> list[Path]:
    files = []
    for path in directory.iterdir():
        try:
            binlog_sort_key(path.name)
        except ValueError:
            continue
        if path.is_file():
            files.append(path)
    return sorted(files, key=lambda p: binlog_sort_key(p.name))


def generate(directory: Path, size_mb: int) -> list[Path]:
    box = Sandbox(
        directory / "db",
        server_id=1,
        options={
            "sync_binlog": "0",
            "innodb_flush_log_at_trx_commit": "2",
            "max_binlog_size": "64M",
        },
    )
    started = time.monotonic()
    try:
        box.start()
        box.execute_script(SCHEMA)
        box.query(PROCEDURE)
        while sum(p.stat().st_size for p in binlog_files(box.binlog_dir)) < size_mb * 1e6:
            box.query("CALL bench.load(20000)")
        box.query("FLUSH BINARY LOGS")
    finally:
        box.stop()
    files = binlog_files(box.binlog_dir)
    total = sum(p.stat().st_size for p in files)
    elapsed = time.monotonic() - started
    log(f"generated {total / 1e6:.0f} MB in {len(files)} files in {elapsed:.0f} s")
    return files


def time_ours(files: list[Path]) -> tuple[float, int]:
    started = time.perf_counter()
    transactions = 0
    for path in files:
        index = read_binlog(path)
        index.segment()
        transactions += len(index.transactions)
    return time.perf_counter() - started, transactions


def time_baseline(files: list[Path], tool: str) -> float:
    started = time.perf_counter()
    for path in files:
        subprocess.run([tool, str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, help="reuse the binlog files in this directory")
    parser.add_argument("--size-mb", type=int, default=220, help="binlog volume to generate")
    parser.add_argument("--repeat", type=int, default=3, help="passes per tool; best counts")
    args = parser.parse_args()

    workdir = None
    try:
        if args.dir is not None:
            files = binlog_files(args.dir)
        else:
            workdir = Path(tempfile.mkdtemp(prefix="bh-bench-"))  # short: socket path limit
            files = generate(workdir, args.size_mb)
        if not files:
            raise SystemExit(f"no binlog files in {args.dir}")
        total = sum(p.stat().st_size for p in files)
        for path in files:  # warm the page cache for both tools alike
            path.read_bytes()
        tool = find_executable("mariadb-binlog", "mysqlbinlog")

        ours, transactions = min(time_ours(files) for _ in range(args.repeat))
        log(f"binhoard reader: {total / 1e6:.0f} MB, {transactions} transactions in {ours:.2f} s")
        baseline = min(time_baseline(files, tool) for _ in range(args.repeat))
        log(f"mariadb-binlog > /dev/null: {baseline:.2f} s")
        result = {
            "bench": "binlog_reader",
            "ours_mbps": round(total / ours / 1e6, 1),
            "baseline_mbps": round(total / baseline / 1e6, 1),
            "ratio": round(baseline / ours, 2),
            "mb": round(total / 1e6, 1),
            "files": len(files),
            "transactions": transactions,
            "ours_trx_per_s": round(transactions / ours),
        }
        print(json.dumps(result))
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
