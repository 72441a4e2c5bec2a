"""What a running ``binhoard daemon`` costs: CPU and memory with nothing to do, how fast
its API answers while a backup runs, and the object-storage requests of an idle archive
pass over a long history.

Usage::

    .venv/bin/python bench/daemon.py [--size-mb 256] [--records 5000] [--streams 14]
        [--window 30] [--rounds 3]

A real daemon (``tests/support/daemon_process.py``) over a sandbox MariaDB holding
``--size-mb`` of generated InnoDB data (``bench/basebackup.py``'s generator) and a local
site that already holds ``--streams`` closed backup streams of this server with
``--records`` binlog records between them (``tests/support/sites.py``'s ``SiteBuilder``),
so that every listing and pass has that history to (not) read.

- ``idle`` and ``active``: the daemon process's CPU (user + system, from /proc, in % of
  one core) over ``--window`` seconds with no request sent, and its RSS at the end
  (``VmRSS``; ``VmHWM`` the peak). ``active`` is measured once the first backup is
  taken and archived: a daemon in active mode with nothing to do.
- ``requests``: ``binhoard_storage_requests_total`` from ``GET /metrics`` before and
  after another ``--window`` seconds in active mode, divided by the archive passes that
  ended in between (``binhoard_binlog_last_pass_time`` polled once a second).
- ``latency``: ``GET /status`` and ``GET /backup`` one after the other, in rounds:
  while a requested base backup runs (``busy``: from ``POST /backup`` until the backup
  is listed) and, as the baseline, for as many requests with nothing running
  (``quiet``); the two alternate which goes first, round by round. p50 / p99 / max in
  milliseconds over all rounds.

Targets (issue 13): CPU < 1% of a core, RSS < 150 MB, p99 < 50 ms. The last line is one
JSON object: ``{"bench": "daemon", ..., "ratio": busy p99 / quiet p99 of GET /status}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support and bench.* live beside src/

from bench.archive_pass import build_site  # noqa: E402
from bench.basebackup import generate  # noqa: E402
from tests.support.configs import config_for  # noqa: E402
from tests.support.daemon_process import DaemonProcess  # noqa: E402
from tests.support.sandboxes import sandbox_factory  # noqa: E402
from tests.support.waiting import wait_for  # noqa: E402

from binhoard.app import open_site  # noqa: E402
from binhoard.config import parse_settings  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
ROUTES = ("/status", "/backup")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process itself (not of the tools it runs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mb(pid: int) -> dict[str, float]:
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": found["VmRSS"], "peak_rss_mb": found["VmHWM"]}


def at_rest(daemon: DaemonProcess, window: float) -> dict[str, Any]:
    """CPU over ``window`` seconds with no request sent, then the memory."""
    assert daemon.process is not None
    pid = daemon.process.pid
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(window)  # the measurement itself: nothing may touch the daemon meanwhile
    used, elapsed = cpu_seconds(pid) - before, time.monotonic() - started
    return {"cpu_percent": round(100 * used / elapsed, 2), **memory_mb(pid)}


def metric_values(daemon: DaemonProcess, name: str) -> dict[str, float]:
    """The samples of ``name`` on ``GET /metrics``, by their label text."""
    text = daemon.client.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith(name):
            labels, _, value = line[len(name) :].rpartition(" ")
            found[labels] = float(value)
    return found


def requests_per_pass(daemon: DaemonProcess, window: float) -> dict[str, Any]:
    counter = "binhoard_storage_requests_total"
    before = metric_values(daemon, counter)
    passes: set[float] = set()
    first = metric_values(daemon, "binhoard_binlog_last_pass_time").get("", 0.0)
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        time.sleep(1)  # polling cadence; a pass comes every 5 s
        passes.add(metric_values(daemon, "binhoard_binlog_last_pass_time").get("", 0.0))
    after = metric_values(daemon, counter)
    passes.discard(first)
    calls = {k: int(after[k] - before.get(k, 0)) for k in after if after[k] != before.get(k, 0)}
    total = sum(calls.values())
    return {
        "window_s": window,
        "passes": len(passes),
        "requests": calls,
        "per_pass": round(total / len(passes), 2) if passes else None,
    }


def timed_get(daemon: DaemonProcess, route: str) -> float:
    started = time.perf_counter()
    answer = daemon.client.get(route)
    elapsed = time.perf_counter() - started
    if answer.status_code != 200:
        raise RuntimeError(f"{route}: {answer.status_code} {answer.text}")
    return elapsed * 1000


def busy_round(daemon: DaemonProcess, samples: dict[str, list[float]]) -> int:
    """Requests while one requested base backup runs; how many rounds of both routes."""
    listed = len(daemon.backups())
    daemon.send("POST", "/backup", {"backup_type": "basebackup"})
    count = 0
    while True:
        for route in ROUTES:
            samples[route].append(timed_get(daemon, route))
        count += 1
        if len(daemon.backups()) > listed:
            return count


def quiet_round(daemon: DaemonProcess, samples: dict[str, list[float]], count: int) -> None:
    for _ in range(count):
        for route in ROUTES:
            samples[route].append(timed_get(daemon, route))
        daemon.backups()  # the same requests as a busy round


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(ordered[-1], 2),
    }


def latency(daemon: DaemonProcess, rounds: int) -> dict[str, Any]:
    busy: dict[str, list[float]] = {route: [] for route in ROUTES}
    quiet: dict[str, list[float]] = {route: [] for route in ROUTES}
    backup_s = []
    for round_ in range(rounds):
        started = time.monotonic()
        if round_ % 2 == 0:
            count = busy_round(daemon, busy)
            backup_s.append(time.monotonic() - started)
            quiet_round(daemon, quiet, count)
        else:
            # The baseline first: as many requests as the previous busy round made.
            quiet_round(daemon, quiet, count)
            started = time.monotonic()
            count = busy_round(daemon, busy)
            backup_s.append(time.monotonic() - started)
        _log(f"round {round_ + 1}: backup {backup_s[-1]:.1f} s, {count} request pairs")
    return {
        "backup_s": [round(s, 1) for s in backup_s],
        "busy": {route: summary(v) for route, v in busy.items()},
        "quiet": {route: summary(v) for route, v in quiet.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=14)
    parser.add_argument("--window", type=float, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    out: dict[str, Any] = {"bench": "daemon", "size_mb": args.size_mb, "records": args.records}
    with sandbox_factory() as sandboxes, tempfile.TemporaryDirectory(prefix="bh-bench-") as tmp:
        box = sandboxes.new("bench")
        _log(f"generating {args.size_mb} MiB")
        generate(box, args.size_mb)
        config = config_for(box, Path(tmp) / "site")
        settings = parse_settings(config, source="bench")
        _log(f"building a site history: {args.records} records in {args.streams} streams")
        build_site(
            open_site(settings),
            args.records,
            args.streams,
            server_id=box.server_id,
            last_closed=True,
        )
        daemon = DaemonProcess(Path(tmp) / "daemon", config)
        try:
            daemon.start()
            wait_for("the first listing", lambda: daemon.get("/backup")["backups"] is not None)
            out["idle"] = at_rest(daemon, args.window)
            _log(f"idle: {out['idle']}")
            daemon.send("PUT", "/status", {"mode": "active"})
            history = len(daemon.backups())
            wait_for("the first backup", lambda: len(daemon.backups()) > history, timeout=300)
            wait_for(
                "the new stream archived",
                lambda: daemon.get("/backup")["backups"][-1]["restorable_window"] is not None,
                timeout=60,
            )
            out["active"] = at_rest(daemon, args.window)
            _log(f"active: {out['active']}")
            out["archive_pass"] = requests_per_pass(daemon, args.window)
            _log(f"archive pass: {out['archive_pass']}")
            out["latency"] = latency(daemon, args.rounds)
            _log(f"latency: {out['latency']}")
            out["after"] = memory_mb(daemon.process.pid) if daemon.process else {}
            out["load_1min"] = round(os.getloadavg()[0], 1)
        finally:
            daemon.close()
    lat = out["latency"]
    out["ratio"] = round(lat["busy"]["/status"]["p99_ms"] / lat["quiet"]["/status"]["p99_ms"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
