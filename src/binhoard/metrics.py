"""Metrics: gauges and counters kept for Prometheus, and sent to statsd when configured.

One registry per process. Names use dots (``binhoard.binlog.newest_stored_commit_time``);
Prometheus sees them with underscores. Sending is fire-and-forget UDP on the configured
(loopback or operator-chosen) address: a metrics outage never stops a backup.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping

from binhoard.config import StatsdSettings


class Metrics:
    def __init__(self, statsd: StatsdSettings | None = None) -> None:
        self._lock = threading.Lock()
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._statsd = statsd if statsd is not None and statsd.host is not None else None
        self._socket: socket.socket | None = None

    def gauge(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        key = (name, tuple(sorted((tags or {}).items())))
        with self._lock:
            self._gauges[key] = value
        self._send(name, value, "g", key[1])

    def increment(self, name: str, value: float = 1, tags: Mapping[str, str] | None = None) -> None:
        key = (name, tuple(sorted((tags or {}).items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0) + value
        self._send(name, value, "c", key[1])

    def value(self, name: str, tags: Mapping[str, str] | None = None) -> float | None:
        key = (name, tuple(sorted((tags or {}).items())))
        with self._lock:
            return self._gauges.get(key, self._counters.get(key))

    def prometheus(self) -> str:
        """The Prometheus text exposition format of every metric set so far."""
        lines: list[str] = []
        with self._lock:
            for kind, values in (("gauge", self._gauges), ("counter", self._counters)):
                seen: set[str] = set()
                for (name, tags), value in sorted(values.items()):
                    prom = name.replace(".", "_").replace("-", "_")
                    if prom not in seen:
                        lines.append(f"# TYPE {prom} {kind}")
                        seen.add(prom)
                    labels = ",".join(f'{k}="{_escape(v)}"' for k, v in tags)
                    lines.append(f"{prom}{{{labels}}} {value:g}" if labels else f"{prom} {value:g}")
        return "\n".join(lines) + "\n"

    def _send(self, name: str, value: float, kind: str, tags: tuple[tuple[str, str], ...]) -> None:
        if self._statsd is None or self._statsd.port is None or self._statsd.host is None:
            return
        all_tags = sorted({**self._statsd.tags, **dict(tags)}.items())
        suffix = "|#" + ",".join(f"{k}:{v}" for k, v in all_tags) if all_tags else ""
        payload = f"{name}:{value:g}|{kind}{suffix}".encode()
        with contextlib.suppress(OSError):
            if self._socket is None:
                self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._socket.sendto(payload, (self._statsd.host, self._statsd.port))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
