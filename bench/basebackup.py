"""Base backup and restore throughput: binhoard against mariabackup | zstd, same run.

Usage::

    .venv/bin/python bench/basebackup.py [--size-mb 1024] [--rounds 3] [--no-warm] [--keep]

Generates a dataset of ``--size-mb`` MiB (InnoDB files) in a sandbox MariaDB, then, in
each of ``--rounds`` rounds, times

* baseline backup: ``mariabackup --backup --stream=xbstream | zstd -3 -T2 > file``
* binhoard backup: ``create_backup`` into a local-directory site (zstd + age encryption)
* baseline restore: ``zstd -d | mbstream -x``, ``mariabackup --prepare``, ``--move-back``
* binhoard restore: ``restore_backup`` (download, verify, decrypt, decompress, mbstream,
  prepare, move-back), then starts the restored server and checks the row counts

The two tools alternate which goes first from round to round. Before every backup the
server's dirty pages are flushed, untimed (``quiesce``), and before every timed step
an untimed warm-up writes and deletes a scratch file (``warm_memory``: on the virtual
development machines, memory left free for a few seconds is handed back to the host and
costs ~2 CPU s/GiB to touch again). Throughput is the uncompressed stream size (the
manifest's ``plain_size``) over the wall-clock seconds; CPU is user + system seconds of
the bench process and its children (mariabackup, zstd, mbstream) per GiB of stream. The
source server stays up, idle, during the restores. Page caches are not dropped (that
needs root and a quiet machine): both tools read the freshly written dataset from the
page cache. The last line printed is one JSON object: best-of-rounds throughputs and
``*_ratio`` (baseline's best seconds / ours), ``*_ratio_median`` (of the medians) and
the ratio of each round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import binhoard.app
import binhoard.config
import binhoard.ops.backup
import binhoard.ops.restore_backup
from benchlib import warm_memory  # bench/ is on sys.path: the scripts run from it
from binhoard.allocator import keep_freed_memory
from binhoard.crypto.age import Identity
from binhoard.domain.manifest import BackupManifest
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
    # Background work after the load (persistent statistics, purge) dirties a few pages
    # again within a second or two, and binhoard's flush then waits for InnoDB's page
    # cleaner, which runs once a second: that cost ~1 s of the first binhoard backup.
    # So flush until no page has been dirtied for two seconds.
    quiesce(box, settle=2.0)


def quiesce(box: Sandbox, *, settle: float = 0.5) -> None:
    """Flushes InnoDB's dirty pages until none has been dirtied for ``settle`` seconds.

    Run untimed before every backup, for both tools: binhoard's backup starts with the
    same flush (so that the next incremental starts from a recent checkpoint), and when
    anything was written in the last second or two (the other tool's mariabackup run
    leaves a few dirty pages) that flush waits for InnoDB's page cleaner: 1-2.5 s for 7
    dirty pages, measured. That is a fixed cost per backup, reported apart from the
    throughput (docs/benchmarks.md), not part of what this compares.
    """
    conn = box.connect()
    try:
        for _ in range(30):
            sql.flush_dirty_pages(conn, timeout=600)
            time.sleep(settle)
            rows = sql.query(conn, "SHOW GLOBAL STATUS LIKE 'Innodb_buffer_pool_pages_dirty'")
            if int(rows[0][1]) == 0:
                return
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


class Phases:
    """When each phase of a restore began: where the time goes, printed beside the totals."""

    def __init__(self) -> None:
        self._marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        if not self._marks or self._marks[-1][0] != name:
            self._marks.append((name, time.perf_counter()))

    def describe(self) -> str:
        spans = zip(self._marks, self._marks[1:], strict=False)
        return "  ".join(f"{a}={b_at - a_at:.2f}s" for (a, a_at), (_, b_at) in spans)


# binhoard's restore phases, by the names the bench prints for both tools.
_OUR_PHASES = {
    "restoring_basebackup": "extract",
    "preparing_basebackup": "prepare",
    "moving_basebackup": "move",
    "basebackup_restored": "end",
}


def baseline_restore(archive: Path, box: Sandbox, work: Path, phases: Phases) -> None:
    """``zstd -d | mbstream -x``, ``--prepare``, ``--move-back`` into ``box``'s datadir."""
    phases.mark("extract")
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
    phases.mark("prepare")
    _run(["mariabackup", "--prepare", f"--target-dir={target}"], log)
    phases.mark("move")
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
    phases.mark("end")


def _counts(box: Sandbox) -> list[int]:
    return [int(box.query(f"SELECT COUNT(*) FROM bench.t{i}")[0][0]) for i in range(TABLES)]


def _mbps(size: int, seconds: float) -> float:
    return round(size / MIB / seconds, 1)


def _cpu_seconds() -> float:
    """User + system seconds of this process and of its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _Timer:
    """Wall-clock and CPU seconds of one step, after an untimed memory warm-up."""

    def __init__(self, tmp: Path, warm_bytes: int) -> None:
        self._tmp = tmp
        self._warm_bytes = warm_bytes

    def run(
        self, step: Callable[[], object], before: Callable[[], None] | None = None
    ) -> tuple[float, float]:
        if before is not None:
            before()
        if self._warm_bytes:
            warm_memory(self._tmp, self._warm_bytes)
        cpu = _cpu_seconds()
        started = time.perf_counter()
        step()
        return time.perf_counter() - started, _cpu_seconds() - cpu


def _round(
    round_no: int,
    *,
    src: Sandbox,
    tmp: Path,
    timer: _Timer,
    settings: binhoard.config.Settings,
    boxes: list[Sandbox],
    source_counts: list[int],
) -> dict[str, tuple[float, float]]:
    """One round: both backups, then both restores, in an order that alternates by round."""
    work = tmp / f"round{round_no}"
    base_work = work / "base"
    base_work.mkdir(parents=True)
    store = binhoard.app.open_site(settings)
    order = ("baseline", "binhoard") if round_no % 2 else ("binhoard", "baseline")
    times: dict[str, tuple[float, float]] = {}
    archive = base_work / "backup.xbstream.zst"
    manifests: list[BackupManifest] = []
    for tool in order:
        if tool == "baseline":
            times["backup baseline"] = timer.run(
                lambda: baseline_backup(src, base_work), before=lambda: quiesce(src)
            )
        else:
            times["backup binhoard"] = timer.run(
                lambda: manifests.append(
                    binhoard.ops.backup.create_backup(
                        binhoard.app.open_server(settings),
                        store,
                        binhoard.app.backup_config(settings),
                    )
                ),
                before=lambda: quiesce(src),
            )
    manifest = manifests[0]
    for tool in order:
        dst = Sandbox(work / f"dst-{tool}", server_id=2 if tool == "binhoard" else 3)
        boxes.append(dst)
        dst.create(initialize=False)
        phases = Phases()
        if tool == "baseline":
            times["restore baseline"] = timer.run(
                lambda: baseline_restore(archive, dst, base_work, phases)  # noqa: B023
            )
        else:
            times["restore binhoard"] = timer.run(
                lambda: binhoard.ops.restore_backup.restore_backup(
                    binhoard.app.open_server(settings),
                    store,
                    manifest.backup_id,
                    dst.datadir,  # noqa: B023 - called at once
                    site=settings.backup_sites["default"],
                    temporary_directory=settings.temporary_directory,
                    progress=lambda state: phases.mark(  # noqa: B023 - called at once
                        _OUR_PHASES.get(state.phase, state.phase)
                    ),
                )
            )
            dst.start()
            restored_counts = _counts(dst)
            dst.stop()
            if restored_counts != source_counts:
                raise RuntimeError(f"row counts differ: {source_counts} vs {restored_counts}")
        _log(f"round {round_no}  restore {tool} phases: {phases.describe()}")
        shutil.rmtree(dst.directory, ignore_errors=True)
        boxes.remove(dst)
    times["stored"] = (float(manifest.data.stored_size), float(archive.stat().st_size))
    times["plain"] = (float(manifest.data.plain_size), 0.0)
    shutil.rmtree(work, ignore_errors=True)
    return times


def _measure(
    src: Sandbox,
    tmp: Path,
    boxes: list[Sandbox],
    source_counts: list[int],
    *,
    rounds: int,
    warm_bytes: int,
) -> dict[str, object]:
    """``rounds`` rounds of both backups and both restores; returns the figures."""
    identity = Identity.generate()
    data = src.binhoard_config(
        site_directory=tmp / "site",
        public_key=str(identity.recipient),
        private_key=identity.secret_text(),
        work_dir=tmp / "bh",
    )
    settings = binhoard.config.parse_settings(data, source="bench")
    timer = _Timer(tmp, warm_bytes)
    seconds: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    plain = stored = base_stored = 0
    for round_no in range(1, rounds + 1):
        times = _round(
            round_no,
            src=src,
            tmp=tmp,
            timer=timer,
            settings=settings,
            boxes=boxes,
            source_counts=source_counts,
        )
        plain = int(times.pop("plain")[0])
        stored, base_stored = (int(x) for x in times.pop("stored"))
        for label, (wall, used) in times.items():
            seconds.setdefault(label, []).append(wall)
            cpu.setdefault(label, []).append(used / (plain / 2**30))
            _log(
                f"round {round_no}  {label:17} {wall:6.2f} s {_mbps(plain, wall):7.1f} MiB/s"
                f"  CPU {used / (plain / 2**30):5.2f} s/GiB"
            )
    _log(
        f"stream {plain / MIB:.1f} MiB; stored: binhoard {stored / MIB:.1f} MiB, baseline"
        f" {base_stored / MIB:.1f} MiB (ratio {plain / base_stored:.2f})"
    )
    _log(f"restored servers answer; row counts match ({sum(source_counts)} rows)")
    figures: dict[str, object] = {}
    for kind in ("backup", "restore"):
        ours, base = seconds[f"{kind} binhoard"], seconds[f"{kind} baseline"]
        per_round = [round(b / o, 3) for b, o in zip(base, ours, strict=True)]
        figures |= {
            f"ours_{kind}_mbps": _mbps(plain, min(ours)),
            f"baseline_{kind}_mbps": _mbps(plain, min(base)),
            f"{kind}_ratio": round(min(base) / min(ours), 3),
            f"{kind}_ratio_median": round(statistics.median(base) / statistics.median(ours), 3),
            f"{kind}_ratio_rounds": per_round,
            f"ours_{kind}_cpu_s_per_gib": round(statistics.median(cpu[f"{kind} binhoard"]), 2),
            f"baseline_{kind}_cpu_s_per_gib": round(statistics.median(cpu[f"{kind} baseline"]), 2),
        }
    figures["stored_mb"] = round(stored / MIB, 1)
    figures["baseline_stored_mb"] = round(base_stored / MIB, 1)
    figures["rounds"] = rounds
    figures["warm_up"] = bool(warm_bytes)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mb", type=int, default=1024, help="dataset size (MiB)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each step (default 3)")
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="skip the untimed memory warm-up before each step (see warm_memory)",
    )
    args = parser.parse_args(argv)
    keep_freed_memory()  # as the binhoard command does (the baselines run as subprocesses)
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

        load_before = os.getloadavg()[0]
        timings = _measure(
            src,
            tmp,
            boxes,
            source_counts,
            rounds=args.rounds,
            warm_bytes=0 if args.no_warm else args.size_mb * MIB * 3 // 2,
        )
        # Other jobs share the development machines: say how busy it was.
        timings["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
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
