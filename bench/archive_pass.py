"""What one idle archive pass costs over a long history: requests and time, with the local
cache of the site's documents (ops/sitecache.py) against without it, in the same run.

Usage::

    .venv/bin/python bench/archive_pass.py [--records 5000] [--streams 14] [--rounds 5] [--no-s3]
        [--server-files 2000]

Builds a site of ``--streams`` daily backups of one server whose streams hold
``--records`` binlog records between them (5-minute rotations: 14 days are ~4,000), the
newest stream open and the older ones closed, as ``tests/support/sites.py`` writes them:
in a local directory, and on the SeaweedFS S3 server of ``tests/support/s3server.py``
when ``weed`` is installed. Then, per destination, times one archive pass
(``BinlogArchiver.archive_files``) against a server whose every closed file is archived (an
idle pass: the daemon's usual one) in rounds, ``cache`` and ``no-cache`` alternating
which goes first; ``cache`` is warmed by one untimed pass first. It reports the best and
the median of ``--rounds`` (other jobs share the machine), and the requests of one pass:
the store calls (a listing counts once), and for S3 the HTTP requests counted on the
wire by ``tests/support/faultproxy.py`` (a listing counts once per 1,000 keys).
The last line is one JSON object::

    {"bench": "archive_pass", "local": {...}, "s3": {...}, "ratio": ...}

``ratio`` is the no-cache time over the cache time of an idle pass to S3 (local if
``--no-s3``).

``index`` is the cost of the pass's walk over a long server binlog index: the same idle
pass on the local site (cache on) against a server whose index lists ``--server-files``
files (a server rotating every 5 minutes with 7 days of binlogs keeps ~2,000), with the
walk as it is (``fast``) and as it was before ``ServerFiles`` (``scan``: every stream's
next file found by a scan of the whole index, for every file of the index;
``tests/support/archiving_reference.py``), alternating which goes first round by round.
``index.ratio`` is ``scan`` over ``fast`` (best times).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (sites, the S3 server) lives beside src/

from tests.support.archiving_reference import ReferenceArchiver  # noqa: E402
from tests.support.faultproxy import FaultProxy  # noqa: E402
from tests.support.s3server import s3_server, weed_binary  # noqa: E402
from tests.support.sites import (  # noqa: E402
    SERVER_ID,
    CountingObserver,
    SiteBuilder,
    binlog_name,
    site_config,
)

from binhoard.app import archive_config, open_server  # noqa: E402
from binhoard.config import Settings, parse_settings  # noqa: E402
from binhoard.ops.archive import BinlogArchiver  # noqa: E402
from binhoard.ports.server import ServerBinlogs  # noqa: E402
from binhoard.storage.backends import LocalStore, open_store  # noqa: E402
from binhoard.storage.store import ObjectInfo, ObjectStore  # noqa: E402
from binhoard.storage.wrappers import ForwardingStore, MetricsStore  # noqa: E402

MODES = ("cache", "no-cache")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _ParallelPuts(ForwardingStore):
    """Sends the builder's puts from a thread pool: 5,000 small PUTs one by one to S3
    would take most of the run. ``drain`` waits for them all."""

    def __init__(self, inner: ObjectStore, pool: ThreadPoolExecutor) -> None:
        super().__init__(inner)
        self.pool = pool
        self.pending: list[Any] = []

    def put(self, key: str, data: Any, *, if_absent: bool = False) -> ObjectInfo:
        body = b"".join(data)
        self.pending.append(self.pool.submit(self.inner.put, key, [body], if_absent=if_absent))
        return ObjectInfo(key=key, size=len(body))

    def drain(self) -> None:
        for future in self.pending:
            future.result()
        self.pending.clear()


class _SameSite(ForwardingStore):
    """The site through the counting proxy, described as the site itself so that it
    uses the same cache rows (the cache is keyed by ``describe()``)."""

    def __init__(self, inner: ObjectStore, description: str, proxy: FaultProxy) -> None:
        super().__init__(inner)
        self.description = description
        self.proxy = proxy

    def describe(self) -> str:
        return self.description


def build_site(
    store: ObjectStore,
    records: int,
    streams: int,
    *,
    server_id: int = SERVER_ID,
    last_closed: bool = False,
) -> SiteBuilder:
    """``streams`` backups of ``server_id``, each stream archived until the next backup
    (one file in both, as the archiver does while the new one catches up), the last one
    open, or with ``last_closed`` closed too (by a backup since deleted: the history of
    a server whose next backup opens the only open stream)."""
    with ThreadPoolExecutor(16) as pool:
        parallel = _ParallelPuts(store, pool)
        build = SiteBuilder(parallel, server_id=server_id)
        per_stream = max(1, records // streams)
        ids = [f"2024050{1 + i // 10}T{i % 10:02d}0000Z-{i:08x}" for i in range(streams)]
        for index, backup_id in enumerate(ids):
            build.backup(backup_id)
            count = per_stream if index < streams - 1 else records - per_stream * (streams - 1)
            build.archive(backup_id, count)
            if index:
                build.mark(ids[index - 1], closed_by=backup_id)
        build.mark(ids[-1], closed_by=ids[0] if last_closed else None)
        parallel.drain()
    build.store = store
    return build


def settings_for(directory: Path) -> Settings:
    return parse_settings(site_config(directory), source="bench")


def idle_server(build: SiteBuilder) -> ServerBinlogs:
    """The server's binlog index: the last file archived and the active one after it.
    (A real server keeps more, up to its expiry; the pass's own walk of the index is
    not what is measured here.)"""
    names = (binlog_name(build.files), binlog_name(build.files + 1))
    return ServerBinlogs(directory=Path("/nonexistent"), names=names, active=names[-1])


def long_index(build: SiteBuilder, count: int) -> ServerBinlogs:
    """An idle server that still lists its last ``count`` files, the active one last."""
    first = max(1, build.files + 2 - count)
    names = tuple(binlog_name(n) for n in range(first, build.files + 2))
    return ServerBinlogs(directory=Path("/nonexistent"), names=names, active=names[-1])


def measure_index(
    store: ObjectStore, build: SiteBuilder, settings: Settings, rounds: int, count: int
) -> dict[str, Any]:
    server = long_index(build, count)
    archivers = {
        "fast": archiver_of(settings, store),
        "scan": archiver_of(settings, store, archiver_class=ReferenceArchiver),
    }
    one_pass(archivers["fast"], server)  # fills the cache: both then read the same
    times: dict[str, list[float]] = {mode: [] for mode in archivers}
    for round_ in range(rounds):
        order = ("fast", "scan") if round_ % 2 == 0 else ("scan", "fast")
        for mode in order:
            times[mode].append(one_pass(archivers[mode], server))
    result: dict[str, Any] = {"server_files": len(server.names)}
    for mode, seconds in times.items():
        result[mode] = {
            "best_s": round(min(seconds), 4),
            "median_s": round(statistics.median(seconds), 4),
        }
    result["ratio"] = round(result["scan"]["best_s"] / result["fast"]["best_s"], 1)
    return result


def archiver_of(
    settings: Settings,
    store: ObjectStore,
    *,
    archiver_class: type[BinlogArchiver] = BinlogArchiver,
    use_cache: bool = True,
) -> BinlogArchiver:
    """The production archiver (``app.open_server``: an idle pass reads no binlog and
    runs no SQL, the index is given)."""
    server = open_server(settings)
    return archiver_class(server, store, archive_config(settings), use_cache=use_cache)


def one_pass(archiver: BinlogArchiver, server: ServerBinlogs) -> float:
    started = time.perf_counter()
    report = archiver.archive_files(server)
    elapsed = time.perf_counter() - started
    if report.problems or not report.streams:
        raise RuntimeError(f"the pass found problems: {report.problems}")
    return elapsed


def measure(
    store: ObjectStore,
    build: SiteBuilder,
    settings: Settings,
    rounds: int,
    counted_store: ObjectStore | None = None,
) -> dict[str, Any]:
    server = idle_server(build)
    archivers = {
        "cache": archiver_of(settings, store),
        "no-cache": archiver_of(settings, store, use_cache=False),
    }
    one_pass(archivers["cache"], server)  # fills the cache (and writes the markers)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(rounds):
        order = MODES if round_ % 2 == 0 else MODES[::-1]
        for mode in order:
            times[mode].append(one_pass(archivers[mode], server))
    result: dict[str, Any] = {}
    for mode in MODES:
        observer = CountingObserver()
        archiver = archiver_of(settings, MetricsStore(store, observer), use_cache=mode == "cache")
        one_pass(archiver, server)
        result[mode] = {
            "best_s": round(min(times[mode]), 4),
            "median_s": round(statistics.median(times[mode]), 4),
            "store_calls": observer.take(),
        }
        if counted_store is not None:
            result[mode]["http_requests"] = http_requests(counted_store, build, settings, mode)
    result["ratio"] = round(result["no-cache"]["best_s"] / result["cache"]["best_s"], 1)
    return result


def http_requests(
    counted_store: ObjectStore, build: SiteBuilder, settings: Settings, mode: str
) -> int:
    assert isinstance(counted_store, _SameSite)
    proxy = counted_store.proxy
    before = proxy.counts.get("requests", 0)
    archiver = archiver_of(settings, counted_store, use_cache=mode == "cache")
    one_pass(archiver, idle_server(build))
    return proxy.counts.get("requests", 0) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=14)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-s3", action="store_true")
    parser.add_argument("--server-files", type=int, default=2000)
    args = parser.parse_args()
    out: dict[str, Any] = {"bench": "archive_pass", "records": args.records}
    with tempfile.TemporaryDirectory(prefix="bh-bench-") as tmp:
        work = Path(tmp)
        _log(f"building a local site: {args.records} records in {args.streams} streams")
        store = LocalStore(work / "site")
        started = time.perf_counter()
        build = build_site(store, args.records, args.streams)
        _log(f"built in {time.perf_counter() - started:.1f} s")
        out["local"] = measure(store, build, settings_for(work / "local"), args.rounds)
        _log(f"local: {json.dumps(out['local'])}")
        out["index"] = measure_index(
            store, build, settings_for(work / "local"), args.rounds, args.server_files
        )
        _log(f"index: {json.dumps(out['index'])}")
        if not args.no_s3:
            weed_binary()
            with s3_server(work / "s3") as server:
                config = server.storage_config("bench")
                s3 = open_store(config, part_size=8 * 1024 * 1024, concurrency=4)
                started = time.perf_counter()
                build = build_site(s3, args.records, args.streams)
                _log(f"built on S3 in {time.perf_counter() - started:.1f} s")
                with FaultProxy(server.endpoint_url) as proxy:
                    proxied = open_store(
                        config.model_copy(update={"endpoint_url": proxy.url}),
                        part_size=8 * 1024 * 1024,
                        concurrency=4,
                    )
                    proxied = _SameSite(proxied, s3.describe(), proxy)
                    out["s3"] = measure(
                        s3, build, settings_for(work / "s3state"), args.rounds, proxied
                    )
                _log(f"s3: {json.dumps(out['s3'])}")
    out["ratio"] = out["s3" if "s3" in out else "local"]["ratio"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
