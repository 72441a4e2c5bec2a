"""Metrics: one registry per process, exported as Prometheus text and sent to statsd.

Names, kinds and tags come from the catalogue (``binhoard.metric_names``); the registry
refuses anything else, so ``docs/metrics.md`` lists every name that can appear.

* **Prometheus**: :meth:`Metrics.prometheus_text` is the text exposition format
  (version 0.0.4) served by the daemon's ``GET /metrics``. Dots become underscores,
  counters end in ``_total``, timings are summaries of seconds (``_count``, ``_sum``),
  tags are labels. The tags of ``statsd.tags`` are not added: a Prometheus server
  labels its targets itself.
* **statsd** (when ``statsd.host``/``port`` are set): every update is sent at once as
  UDP, fire-and-forget, in Telegraf's tag format (``name,tag=v:1|c``, what MyHoard
  sends and its users' dashboards read) or DogStatsD's (``name:1|c|#tag:v``), as
  ``statsd.format`` says, with ``statsd.tags`` added. A metrics outage never stops a
  backup: send errors are ignored.
* **Times and ages**: :meth:`Metrics.set_time` stores a moment (say, the last backup's
  end); its age ("seconds since") is computed when exported, so it grows while nothing
  happens. Prometheus computes it at each scrape. statsd has no scrape: whoever runs
  the process (the daemon's controller, ``binlog archive --follow``) calls
  :meth:`Metrics.refresh` periodically, which sends every age again.

Why not ``prometheus_client``: it would be the registry (labels declared per metric,
values behind a lock each) or only the formatter. Measured here (2 cores): an
increment costs 1.8 us through its ``labels().inc()`` against 1.0 us for a dict under
one lock, and importing it costs ~50 ms on every command's start, for a text format
of a few dozen lines of rules. It has no statsd side and no times-with-ages, so the
registry would still be ours. The exposition is written here and checked against
``prometheus_client``'s own parser in the tests (a dev dependency only).

Thread safety: one lock guards the values; it is held only to update a dict or copy
the values for an export, never while sending.
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime

from binhoard.config import StatsdSettings
from binhoard.metric_names import ERRORS, SPECS, MetricSpec

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Several lines go in one datagram (both Telegraf and DogStatsD split on newlines), kept
# under a typical MTU so that no datagram is fragmented.
MAX_DATAGRAM = 1400

Tags = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(
        self,
        statsd: StatsdSettings | None = None,
        *,
        clock: Callable[[], float] = time.time,
        specs: Mapping[str, MetricSpec] = SPECS,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._specs = specs
        self._values: dict[str, dict[Tags, float]] = {}
        self._timings: dict[str, dict[Tags, tuple[int, float]]] = {}
        self._statsd = statsd if statsd is not None and statsd.host and statsd.port else None
        self._socket: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._global_tags: Tags = ()
        if self._statsd is not None:
            self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._global_tags = tuple(sorted(self._statsd.tags.items()))
        # A counter without tags exists from the start at 0: an alert on its increase
        # then sees the first one.
        for spec in specs.values():
            if spec.kind == "counter" and not spec.tags:
                self._values[spec.name] = {(): 0.0}

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    # --- updates ----------------------------------------------------------------------
    def gauge(self, name: str, value: float, tags: Mapping[str, str] | None = None) -> None:
        key = self._key(name, "gauge", tags)
        with self._lock:
            self._values.setdefault(name, {})[key] = float(value)
        self._send([(name, value, "g", key)])

    def increment(self, name: str, value: float = 1, tags: Mapping[str, str] | None = None) -> None:
        if value < 0:
            raise ValueError(f"counter {name} cannot go down ({value})")
        key = self._key(name, "counter", tags)
        with self._lock:
            series = self._values.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value
        if value:  # the series exists now (Prometheus shows 0); statsd learns nothing
            self._send([(name, value, "c", key)])

    def timing(self, name: str, seconds: float, tags: Mapping[str, str] | None = None) -> None:
        key = self._key(name, "timing", tags)
        with self._lock:
            series = self._timings.setdefault(name, {})
            count, total = series.get(key, (0, 0.0))
            series[key] = (count + 1, total + seconds)
        self._send([(name, seconds * 1000, "ms", key)])

    def set_time(
        self, name: str, when: datetime | float | None, tags: Mapping[str, str] | None = None
    ) -> None:
        """Records a moment (an aware datetime or Unix seconds); None forgets it (say,
        no backup exists any more), so that no age is reported for it."""
        spec = self._specs.get(name)
        key = self._key(name, "time", tags)
        if when is None:
            with self._lock:
                self._values.get(name, {}).pop(key, None)
            return
        at = when.timestamp() if isinstance(when, datetime) else float(when)
        with self._lock:
            self._values.setdefault(name, {})[key] = at
        assert spec is not None and spec.age is not None  # checked by _key
        self._send([(name, at, "g", key), (spec.age, _age(self._clock(), at), "g", key)])

    def refresh(self, now: float | None = None) -> None:
        """Sends every age to statsd again, computed at ``now`` (Unix seconds; the
        clock's time if None). Prometheus needs no refresh: it gets ages when it scrapes.
        """
        if self._statsd is None:
            return
        now = self._clock() if now is None else now
        with self._lock:
            times = [(spec, dict(self._values.get(spec.name, {}))) for spec in self._times()]
        self._send(
            [
                (spec.age, _age(now, at), "g", key)
                for spec, series in times
                if spec.age is not None
                for key, at in series.items()
            ]
        )

    # --- reading ----------------------------------------------------------------------
    def value(self, name: str, tags: Mapping[str, str] | None = None) -> float | None:
        """A gauge's or counter's value, or a time's moment; None if never set."""
        key = _tags(tags)
        with self._lock:
            return self._values.get(name, {}).get(key)

    def age(
        self, name: str, tags: Mapping[str, str] | None = None, now: float | None = None
    ) -> float | None:
        """Seconds from the time ``name`` recorded to ``now`` (the clock's if None)."""
        at = self.value(name, tags)
        return None if at is None else _age(self._clock() if now is None else now, at)

    def prometheus_text(self, now: float | None = None) -> str:
        """Every metric set so far, in the Prometheus text exposition format; ages are
        computed at ``now`` (the clock's time if None)."""
        now = self._clock() if now is None else now
        with self._lock:
            values = {name: dict(series) for name, series in self._values.items() if series}
            timings = {name: dict(series) for name, series in self._timings.items() if series}
        for spec in self._times():
            if spec.name in values and spec.age is not None:
                values[spec.age] = {k: _age(now, at) for k, at in values[spec.name].items()}
        lines: list[str] = []
        for spec in sorted(self._specs.values(), key=lambda s: s.prometheus_name):
            prom = spec.prometheus_name
            if spec.name in timings:
                _family(lines, spec)
                for key, (count, total) in sorted(timings[spec.name].items()):
                    lines.append(f"{prom}_count{_labels(key)} {count}")
                    lines.append(f"{prom}_sum{_labels(key)} {_number(total)}")
            elif spec.name in values:
                _family(lines, spec)
                for key, value in sorted(values[spec.name].items()):
                    lines.append(f"{prom}{_labels(key)} {_number(value)}")
        return "\n".join(lines) + "\n" if lines else ""

    # --- internals --------------------------------------------------------------------
    def _times(self) -> list[MetricSpec]:
        return [spec for spec in self._specs.values() if spec.kind == "time"]

    def _key(self, name: str, kind: str, tags: Mapping[str, str] | None) -> Tags:
        spec = self._specs.get(name)
        if spec is None:
            raise ValueError(f"metric {name} is not in the catalogue (binhoard/metric_names.py)")
        if spec.kind != kind:
            raise ValueError(f"metric {name} is of kind {spec.kind}, not {kind}")
        key = _tags(tags)
        if tuple(k for k, _ in key) != tuple(sorted(spec.tags)):
            raise ValueError(
                f"metric {name} takes tags {list(spec.tags)}, got {sorted(tags or {})}"
            )
        return key

    def _send(self, updates: Iterable[tuple[str, float, str, Tags]]) -> None:
        if self._statsd is None or self._socket is None:
            return
        fmt = self._statsd.format
        lines = [
            line
            for name, value, kind, key in updates
            for line in statsd_lines(fmt, name, value, kind, self._merged(key))
        ]
        with contextlib.suppress(OSError):
            address = self._address or self._resolve(self._statsd)
            for datagram in _datagrams(lines):
                self._socket.sendto(datagram, address)

    def _resolve(self, statsd: StatsdSettings) -> tuple[str, int]:
        """The statsd address, looked up once (``sendto`` with a host name would ask the
        resolver for every datagram); a failed lookup is tried again on the next send."""
        infos = socket.getaddrinfo(statsd.host, statsd.port, socket.AF_INET, socket.SOCK_DGRAM)
        host, port = infos[0][4][:2]
        self._address = (str(host), int(port))
        return self._address

    def _merged(self, key: Tags) -> Tags:
        if not self._global_tags:
            return key
        return tuple(sorted({**dict(self._global_tags), **dict(key)}.items()))


def record_error(metrics: Metrics, exc: BaseException, where: str) -> None:
    """Counts ``exc`` in ``binhoard.errors``: ``kind`` is its class name (a
    ``BinhoardError`` subclass, or e.g. ``OSError`` or ``KeyError`` for a bug),
    ``where`` the command or daemon task. ``telemetry.report_error`` calls this."""
    metrics.increment(ERRORS, tags={"kind": type(exc).__name__, "where": where})


# --- formats ------------------------------------------------------------------------------


def _tags(tags: Mapping[str, str] | None) -> Tags:
    return tuple(sorted((tags or {}).items()))


def _age(now: float, at: float) -> float:
    # A moment slightly ahead of this host's clock (another host's commit time) is now.
    return max(0.0, now - at)


def _number(value: float) -> str:
    """Integral values without a decimal point (Unix times stay exact; ``:g`` would print
    1.7e+09), others as Python's shortest round-tripping form."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


_STATSD_UNSAFE = re.compile(r"[,=:|#@\s\\]")


def _statsd_safe(text: str) -> str:
    """Characters that delimit fields in either statsd format become ``_``: a tag value
    such as an ISO time (``:``) or a path with a comma must not split a line."""
    return _STATSD_UNSAFE.sub("_", text)


def statsd_lines(fmt: str, name: str, value: float, kind: str, tags: Tags) -> list[bytes]:
    """The statsd lines for one update. A negative gauge is sent as 0 then the value:
    a leading ``-`` alone means "decrease by" to statsd servers."""
    safe = [(_statsd_safe(k), _statsd_safe(v)) for k, v in tags]
    if fmt == "dogstatsd":
        suffix = "|#" + ",".join(f"{k}:{v}" for k, v in safe) if safe else ""
        head = f"{name}:"
    else:  # telegraf
        suffix = ""
        head = name + "".join(f",{k}={v}" for k, v in safe) + ":"
    values = [0.0, value] if kind == "g" and value < 0 else [value]
    return [f"{head}{_number(v)}|{kind}{suffix}".encode() for v in values]


def _datagrams(lines: list[bytes]) -> list[bytes]:
    datagrams: list[bytes] = []
    current = b""
    for line in lines:
        if current and len(current) + 1 + len(line) > MAX_DATAGRAM:
            datagrams.append(current)
            current = b""
        current = current + b"\n" + line if current else line
    if current:
        datagrams.append(current)
    return datagrams


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(key: Tags) -> str:
    if not key:
        return ""
    return "{" + ",".join(f'{k}="{_escape_label(v)}"' for k, v in key) + "}"


def _family(lines: list[str], spec: MetricSpec) -> None:
    text = spec.help.replace("\\", "\\\\").replace("\n", "\\n")
    lines.append(f"# HELP {spec.prometheus_name} {text} ({spec.unit})")
    lines.append(f"# TYPE {spec.prometheus_name} {spec.prometheus_type}")
