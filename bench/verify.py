"""``binhoard verify`` throughput on a site of a few hundred MB, against reading the same
stored bytes and computing their sha256 (the least any check of them costs), in the
same run.

Usage::

    .venv/bin/python bench/verify.py [--data-mb 512] [--binlogs 40] [--binlog-mb 4]
        [--rounds 3] [--keep DIR]

Builds once, in a local directory, a site that is binhoard's format in every object: a
full backup whose data object is ``--data-mb`` MiB of backup-like pages
(``bench/storage.py``'s generator, zstd -3 ~3x) and its ``my.cnf``, and a stream of
``--binlogs`` binlog records, each naming a data object of ``--binlog-mb`` MiB of the
same pages; all written through the real pipeline (zstd, age), the documents sealed.
Then, in rounds whose order alternates, each in a fresh child process:

* ``sha256``: every object of the site ``get`` from the store and hashed (the baseline);
* ``full``: ``verify_site(full=True)``: every object read, decrypted, decompressed and
  checked (stored and plaintext sizes and sha256, documents), streams checked;
* ``again``: ``verify_site`` after an earlier verify: only listings, everything skipped.

Throughput is stored bytes over wall-clock seconds (MB/s, 10^6); CPU is user + system;
peak RSS is the child's VmHWM. Before each timed step, untimed, the child writes and
deletes a scratch file of the site's size (``warm_memory``). The last line is one JSON
object::

    {"bench": "verify", "verify_mbps": ..., "sha256_mbps": ..., "ratio": ..., ...}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (SiteBuilder) lives beside src/

from tests.support.sites import SiteBuilder  # noqa: E402

from benchlib import MIB, run_in_child, warm_memory  # noqa: E402  (bench/ is on sys.path: run from it)
from binhoard.allocator import keep_freed_memory  # noqa: E402
from binhoard.crypto.age import Identity  # noqa: E402
from binhoard.ops.backup import object_ref  # noqa: E402
from binhoard.ops.sitecache import open_cache  # noqa: E402
from binhoard.ops.verify import VerifyRequest, verify_site  # noqa: E402
from binhoard.storage.backends import LocalStore  # noqa: E402
from binhoard.storage.pipeline import Codec, upload  # noqa: E402
from binhoard.storage.store import MemoryStore  # noqa: E402
from storage import make_dataset  # noqa: E402

MODES = ("sha256", "full", "again")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _slices(path: Path, start: int, size: int) -> Any:
    with path.open("rb") as file:
        file.seek(start)
        left = size
        while left:
            chunk = file.read(min(MIB, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def build_site(directory: Path, data: Path, args: argparse.Namespace, identity: Identity) -> None:
    """The site: SiteBuilder's documents (on a scratch store), their references replaced
    by real objects uploaded through the pipeline."""
    store = LocalStore(directory)
    codec = Codec("zstd", (str(identity.recipient),), level=3, threads=2)
    plan = SiteBuilder(MemoryStore())
    manifest = plan.backup("20260101T000000Z-00000001")
    records = plan.archive(manifest.backup_id, args.binlogs)
    plan.mark(manifest.backup_id)
    sid = manifest.backup_id

    def put(key: str, start: int, size: int) -> Any:
        return object_ref(key, codec, upload(store, key, _slices(data, start, size), codec))

    data_ref = put(f"backups/{sid}/data.xbstream.zst.age", 0, args.data_mb * MIB)
    cnf_ref = put(f"backups/{sid}/my.cnf.zst.age", 0, 4096)
    for record in records:
        start = (record.seq * args.binlog_mb * MIB) % (args.data_mb * MIB)
        key = f"binlogs/101/{record.name}-1-000000000000-{record.seq:016x}.binlog.zst.age"
        ref = put(key, start, args.binlog_mb * MIB)
        store.put(record.key, [replace(record, object=ref).to_bytes()])
    for key in ("streams/" + sid + "/completed.json",):
        store.put(key, [b"".join(plan.store.get(key))])
    store.put(
        f"backups/{sid}/manifest.json",
        [replace(manifest, data=data_ref, my_cnf=cnf_ref).to_bytes()],
    )


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def child(spec: dict[str, Any]) -> dict[str, Any]:
    keep_freed_memory()  # as the binhoard command does
    store = LocalStore(spec["site"])
    identity = Identity.parse(os.environ["BENCH_AGE_IDENTITY"])
    warm_memory(Path(spec["scratch"]), spec["warm_bytes"])
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result: dict[str, Any] = {}
    if spec["mode"] == "sha256":
        total = 0
        for info in store.list(""):
            digest = hashlib.sha256()
            for chunk in store.get(info.key):
                digest.update(chunk)
            total += info.size
        result["bytes"] = total
    else:
        state = Path(spec["state"])
        with open_cache(state, store.describe()) as cache:
            report = verify_site(
                store, [identity], VerifyRequest(full=spec["mode"] == "full"), cache=cache
            )
        if report.error() is not None:
            raise RuntimeError(f"the bench site does not verify: {report.error()}")
        result["bytes"] = report.bytes_read
        result["counts"] = report.counts
    result["seconds"] = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["peak_rss_mib"] = round(_peak_rss_kib() / 1024, 1)
    return result


def _measure(spec: dict[str, Any], identity: Identity) -> dict[str, Any]:
    return run_in_child(__file__, spec, {"BENCH_AGE_IDENTITY": identity.secret_text()})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-mb", type=int, default=512)
    parser.add_argument("--binlogs", type=int, default=40)
    parser.add_argument("--binlog-mb", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="Build (or reuse) the site here.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    key_file = work / "identity.txt"
    if not key_file.exists():
        key_file.write_text(Identity.generate().secret_text())
    identity = Identity.parse(key_file.read_text().strip())
    site = work / "site"
    if not site.exists():
        data = work / "pages.bin"
        make_dataset(data, args.data_mb * MIB)
        _log("building the site ...")
        build_site(site, data, args, identity)
        data.unlink()
    stored = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
    _log(f"site: {stored / 1e6:.1f} MB stored in {sum(1 for _ in site.rglob('*.*'))} objects")
    base = {"site": str(site), "scratch": str(work), "warm_bytes": min(stored, 1024 * MIB)}
    state = work / "state"
    # An earlier verify, so that "again" finds everything proved.
    _measure({**base, "mode": "full", "state": str(state)}, identity)
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for number in range(args.rounds):
        order = MODES if number % 2 == 0 else tuple(reversed(MODES))
        for mode in order:
            result = _measure({**base, "mode": mode, "state": str(state)}, identity)
            results[mode].append(result)
            mbps = result["bytes"] / 1e6 / result["seconds"] if result["bytes"] else 0.0
            _log(
                f"round {number + 1} {mode}: {result['seconds']:.2f} s, {mbps:.0f} MB/s, "
                f"{result['cpu']:.2f} CPU s, {result['peak_rss_mib']} MiB"
            )

    def best(mode: str) -> float:
        return max(stored / 1e6 / r["seconds"] for r in results[mode])

    def median(mode: str, field: str) -> float:
        return float(statistics.median(r[field] for r in results[mode]))

    summary = {
        "bench": "verify",
        "stored_mb": round(stored / 1e6, 1),
        "objects": results["full"][0]["counts"]["ok"],
        "verify_mbps": round(best("full"), 1),
        "sha256_mbps": round(best("sha256"), 1),
        "ratio": round(best("full") / best("sha256"), 3),
        "verify_median_seconds": round(median("full", "seconds"), 3),
        "sha256_median_seconds": round(median("sha256", "seconds"), 3),
        "verify_cpu_seconds": round(median("full", "cpu"), 2),
        "sha256_cpu_seconds": round(median("sha256", "cpu"), 2),
        "verify_peak_rss_mib": max(r["peak_rss_mib"] for r in results["full"]),
        "again_seconds": round(median("again", "seconds"), 3),
        "again_skipped": results["again"][0]["counts"]["skipped"],
        "rounds": args.rounds,
        "load_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
