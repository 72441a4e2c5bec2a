"""Base backup and restore throughput: binhoard against mariabackup | zstd, same run.

Usage::

    .venv/bin/python bench/basebackup.py [--size-mb 1024] [--keep]

Generates a dataset of ``--size-mb`` MiB (InnoDB files) in a sandbox MariaDB, then times

* baseline backup: ``mariabackup --backup --stream=xbstream | zstd -3 -T2 > file``
* binhoard backup: ``create_backup`` into a local-directory site (zstd + age encryption)
* baseline restore: ``zstd -d | mbstream -x``, ``mariabackup --prepare``, ``--move-back``
* binhoard restore: ``restore_backup`` (download, verify, decrypt, decompress, mbstream,
  prepare, move-back)

Throughput is the uncompressed stream size (the manifest's ``plain_size``) over the
wall-clock seconds, for both. Page caches are not dropped between runs (that needs root
and a quiet machine): the dataset is freshly written, so both runs read it mostly from
the page cache. The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyrage

import binhoard.app
import binhoard.config
import binhoard.ops.backup
import binhoard.ops.restore_backup
from binhoard.server import sql
from binhoard.server.sandbox import Sandbox

MIB = 1024 * 1024
TABLES = 4
CHUNK = 16384  # rows per INSERT ... SELECT
RANDOM_PER_ROW = 160  # incompressible bytes per row; the rest is repetitive text


def _log(message: str) -> None:
    print(message, flush=True)


def _row_expr(seed: str) -> str:
    """Column values (a, txt, rnd) of one generated row, from an integer expression."""
    seed = f"({seed})"
    return (
        f"{seed}, "
        f"CONCAT('order ', {seed}, ' customer ', MD5({seed}), ' status ', "
        f"ELT(1 + {seed} % 4, 'new', 'paid', 'shipped', 'returned'), ' note ', "
        f"REPEAT(CONCAT('item ', {seed} % 97, ' qty ', {seed} % 13, ' '), 12), "
        f"SHA2({seed}, 256)), "
        f"RANDOM_BYTES({RANDOM_PER_ROW})"
    )


def _table_bytes(box: Sandbox, table: str) -> int:
    path = box.datadir / "bench" / f"{table}.ibd"
    return path.stat().st_size if path.exists() else 0


def _datadir_bytes(datadir: Path) -> int:
    return sum(p.stat().st_size for p in datadir.rglob("*") if p.is_file())


def generate(box: Sandbox, size_mb: int) -> None:
    """Fills ``bench.t0..t{TABLES-1}`` until their files hold about ``size_mb`` MiB."""
    per_table = size_mb * MIB // TABLES
    box.execute_script(
        "CREATE DATABASE bench; "
        + " ".join(
            f"CREATE TABLE bench.t{i} (id BIGINT AUTO_INCREMENT PRIMARY KEY, a BIGINT NOT NULL, "
            "txt VARCHAR(1000) NOT NULL, rnd VARBINARY(512) NOT NULL) ENGINE=InnoDB;"
            for i in range(TABLES)
        )
    )
    # Small transactions (CHUNK rows, ~14 MiB) keep the undo log in ibdata1 small.
    conn = box.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_log_bin = 0")
            cur.execute(
                f"INSERT INTO bench.t0 (a, txt, rnd) SELECT {_row_expr('seq')} "
                "FROM bench.seq_1_to_4096"
            )
            # t0: double by copying id ranges until its file is large enough.
            while _table_bytes(box, "t0") < per_table:
                cur.execute("SELECT MAX(id) FROM bench.t0")
                top = int(cur.fetchall()[0][0])
                for lo in range(0, top, CHUNK):
                    cur.execute(
                        f"INSERT INTO bench.t0 (a, txt, rnd) SELECT {_row_expr(f'id + {top}')} "
                        f"FROM bench.t0 WHERE id > {lo} AND id <= {min(lo + CHUNK, top)}"
                    )
                    if _table_bytes(box, "t0") >= per_table:
                        break
            # The other tables: as many rows, different text and fresh random bytes.
            cur.execute("SELECT MAX(id) FROM bench.t0")
            top = int(cur.fetchall()[0][0])
            for i in range(1, TABLES):
                for lo in range(0, top, CHUNK):
                    cur.execute(
                        f"INSERT INTO bench.t{i} (a, txt, rnd) "
                        f"SELECT {_row_expr(f'id + {i * 1_000_000_000}')} FROM bench.t0 "
                        f"WHERE id > {lo} AND id <= {lo + CHUNK}"
                    )
    finally:
        conn.close()
    # Untimed, so that neither backup pays for writing out the generated data (binhoard
    # flushes before streaming as well; after this its flush has nothing left to do).
    conn = box.connect()
    try:
        sql.flush_dirty_pages(conn, timeout=600)
    finally:
        conn.close()


def _client_defaults(box: Sandbox, path: Path) -> Path:
    path.write_text(f"!include {box.cnf}\n[mariabackup]\nuser=root\nsocket={box.socket}\n")
    return path


def _run(args: list[str], log: Path) -> None:
    with log.open("ab") as err:
        result = subprocess.run(args, stdout=err, stderr=err, check=False)
    if result.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{args[0]} failed (exit {result.returncode}):\n" + "\n".join(tail))


def baseline_backup(box: Sandbox, work: Path) -> Path:
    """``mariabackup --backup --stream=xbstream | zstd -3 -T2 > file``; returns the file."""
    defaults = _client_defaults(box, work / "client.cnf")
    lsn_dir = work / "lsn"
    lsn_dir.mkdir()
    out = work / "backup.xbstream.zst"
    log = work / "backup.log"
    with log.open("wb") as err, out.open("wb") as sink:
        producer = subprocess.Popen(
            [
                "mariabackup",
                f"--defaults-file={defaults}",
                "--backup",
                "--stream=xbstream",
                f"--target-dir={lsn_dir}",
                f"--extra-lsndir={lsn_dir}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert producer.stdout is not None
        compressor = subprocess.Popen(
            ["zstd", "-3", "-T2", "-q", "-c"], stdin=producer.stdout, stdout=sink, stderr=err
        )
        producer.stdout.close()
        codes = (producer.wait(), compressor.wait())
    if codes != (0, 0):
        raise RuntimeError(f"baseline backup failed {codes}: see {log}")
    return out


def baseline_restore(archive: Path, box: Sandbox, work: Path) -> None:
    """``zstd -d | mbstream -x``, ``--prepare``, ``--move-back`` into ``box``'s datadir."""
    target = work / "extract"
    target.mkdir()
    log = work / "restore.log"
    with log.open("wb") as err, archive.open("rb") as source:
        decompressor = subprocess.Popen(
            ["zstd", "-d", "-q", "-c"], stdin=source, stdout=subprocess.PIPE, stderr=err
        )
        assert decompressor.stdout is not None
        extractor = subprocess.Popen(
            ["mbstream", "-x", "-C", str(target)], stdin=decompressor.stdout, stderr=err
        )
        decompressor.stdout.close()
        codes = (decompressor.wait(), extractor.wait())
    if codes != (0, 0):
        raise RuntimeError(f"baseline extract failed {codes}: see {log}")
    _run(["mariabackup", "--prepare", f"--target-dir={target}"], log)
    _run(
        [
            "mariabackup",
            f"--defaults-file={box.cnf}",
            "--move-back",
            f"--target-dir={target}",
            f"--datadir={box.datadir}",
        ],
        log,
    )


def _counts(box: Sandbox) -> list[int]:
    return [int(box.query(f"SELECT COUNT(*) FROM bench.t{i}")[0][0]) for i in range(TABLES)]


def _mbps(size: int, seconds: float) -> float:
    return round(size / MIB / seconds, 1)


def _measure(
    src: Sandbox, tmp: Path, boxes: list[Sandbox], source_counts: list[int]
) -> dict[str, float]:
    """Backs ``src`` up and restores it, baseline first each time; returns the figures."""
    base_work = tmp / "base"
    base_work.mkdir()
    t0 = time.perf_counter()
    archive = baseline_backup(src, base_work)
    base_backup_s = time.perf_counter() - t0
    base_stored = archive.stat().st_size

    identity = pyrage.x25519.Identity.generate()
    data = src.binhoard_config(
        site_directory=tmp / "site",
        public_key=str(identity.to_public()),
        private_key=str(identity),
        work_dir=tmp / "bh",
    )
    settings = binhoard.config.parse_settings(data, source="bench")
    store = binhoard.app.open_site(settings)
    t0 = time.perf_counter()
    manifest = binhoard.ops.backup.create_backup(settings, store)
    ours_backup_s = time.perf_counter() - t0
    plain = manifest.data.plain_size
    stored = manifest.data.stored_size
    _log(f"stream size {plain / MIB:.1f} MiB (mariabackup xbstream, uncompressed)")
    _log(
        f"backup   baseline {base_backup_s:6.1f}s {_mbps(plain, base_backup_s):7.1f} MiB/s "
        f"stored {base_stored / MIB:.1f} MiB (ratio {plain / base_stored:.2f})"
    )
    _log(
        f"backup   binhoard {ours_backup_s:6.1f}s {_mbps(plain, ours_backup_s):7.1f} MiB/s "
        f"stored {stored / MIB:.1f} MiB (ratio {plain / stored:.2f})"
    )
    src.stop()  # the source is not read any more; restores get the whole machine

    base_dst = Sandbox(tmp / "bdst", server_id=3)
    boxes.append(base_dst)
    base_dst.create(initialize=False)
    t0 = time.perf_counter()
    baseline_restore(archive, base_dst, base_work)
    base_restore_s = time.perf_counter() - t0
    shutil.rmtree(base_work, ignore_errors=True)
    shutil.rmtree(base_dst.directory, ignore_errors=True)
    _log(f"restore  baseline {base_restore_s:6.1f}s {_mbps(plain, base_restore_s):7.1f} MiB/s")

    dst = Sandbox(tmp / "dst", server_id=2)
    boxes.append(dst)
    dst.create(initialize=False)
    t0 = time.perf_counter()
    binhoard.ops.restore_backup.restore_backup(
        settings, store, manifest.backup_id, dst.datadir, site_name="default"
    )
    ours_restore_s = time.perf_counter() - t0
    _log(f"restore  binhoard {ours_restore_s:6.1f}s {_mbps(plain, ours_restore_s):7.1f} MiB/s")
    dst.start()
    restored_counts = _counts(dst)
    if restored_counts != source_counts:
        raise RuntimeError(f"row counts differ: {source_counts} vs {restored_counts}")
    _log(f"restored server answers; row counts match ({sum(restored_counts)} rows)")
    _log("page caches were not dropped: both runs read a freshly written, cached dataset")
    return {
        "ours_backup_mbps": _mbps(plain, ours_backup_s),
        "baseline_backup_mbps": _mbps(plain, base_backup_s),
        "backup_ratio": round(base_backup_s / ours_backup_s, 3),
        "ours_restore_mbps": _mbps(plain, ours_restore_s),
        "baseline_restore_mbps": _mbps(plain, base_restore_s),
        "restore_ratio": round(base_restore_s / ours_restore_s, 3),
        "stored_mb": round(stored / MIB, 1),
        "baseline_stored_mb": round(base_stored / MIB, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=1024, help="dataset size (MiB)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    if args.size_mb < 16:
        parser.error("--size-mb must be at least 16")

    tmp = Path(tempfile.mkdtemp(prefix="bhb-"))
    boxes: list[Sandbox] = []
    try:
        src = Sandbox(
            tmp / "src",
            server_id=1,
            options={
                "innodb_buffer_pool_size": "1G",
                "innodb_log_file_size": "256M",
                # The default (200 pages/s) makes flushing the generated data take minutes.
                "innodb_io_capacity": "20000",
                "innodb_io_capacity_max": "40000",
            },
        )
        boxes.append(src)
        src.start()
        _log(f"machine: {os.cpu_count()} CPUs, {platform.platform()}; work dir {tmp}")
        started = time.perf_counter()
        generate(src, args.size_mb)
        source_counts = _counts(src)
        _log(
            f"generated {_datadir_bytes(src.datadir) / MIB:.0f} MiB datadir "
            f"({sum(source_counts)} rows) in {time.perf_counter() - started:.1f}s"
        )

        timings = _measure(src, tmp, boxes, source_counts)
        print(json.dumps({"bench": "basebackup", "size_mb": args.size_mb, **timings}), flush=True)
        return 0
    finally:
        for box in boxes:
            try:
                box.stop()
            except Exception as exc:  # noqa: BLE001 - cleanup must go on
                print(f"stopping {box.directory}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
