"""The metrics registry: exact statsd bytes (Telegraf and DogStatsD) as a statsd server
receives them over UDP, the Prometheus text as Prometheus' own parser reads it, times
with their ages, and updates from many threads."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from binhoard.config import StatsdSettings
from binhoard.domain.errors import StorageError
from binhoard.metric_names import (
    BACKUP_DURATION,
    BACKUP_LAST_COMPLETED_AGE,
    BACKUP_LAST_COMPLETED_TIME,
    BINLOG_ARCHIVE_PASS_FAILURES,
    BINLOG_PENDING_BYTES,
    ERRORS,
    SPECS,
    STORAGE_BYTES,
    MetricSpec,
)
from binhoard.metrics import MAX_DATAGRAM, Metrics, record_error

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def statsd_server() -> Iterator[socket.socket]:
    """A UDP socket on loopback standing for the statsd server."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(10)  # a datagram that never comes fails the test, not hangs it
    yield server
    server.close()


def statsd_settings(server: socket.socket, fmt: str, **tags: str) -> StatsdSettings:
    port = server.getsockname()[1]
    return StatsdSettings.model_validate(
        {"host": "127.0.0.1", "port": port, "tags": tags, "format": fmt}
    )


def received(server: socket.socket, count: int) -> list[bytes]:
    return [server.recv(65536) for _ in range(count)]


def test_telegraf_lines_carry_tags_in_the_name_as_myhoard_sends_them(
    statsd_server: socket.socket,
) -> None:
    clock = Clock(T0 + 90)
    metrics = Metrics(statsd_settings(statsd_server, "telegraf", host="db1"), clock=clock)
    metrics.increment(ERRORS, tags={"kind": "StorageError", "where": "backup create"})
    metrics.gauge(BINLOG_PENDING_BYTES, 1048576)
    metrics.timing(BACKUP_DURATION, 1.5, tags={"type": "full"})
    metrics.increment(STORAGE_BYTES, 12.5, tags={"operation": "put", "data": "binlog"})
    metrics.set_time(BACKUP_LAST_COMPLETED_TIME, datetime.fromtimestamp(T0, UTC))
    metrics.refresh(now=T0 + 3600)
    assert received(statsd_server, 6) == [
        b"binhoard.errors,host=db1,kind=StorageError,where=backup_create:1|c",
        b"binhoard.binlog.pending_bytes,host=db1:1048576|g",
        b"binhoard.backup.duration,host=db1,type=full:1500|ms",
        b"binhoard.storage.bytes,data=binlog,host=db1,operation=put:12.5|c",
        # A time and its age go in one datagram; the age is computed with the clock.
        b"binhoard.backup.last_completed_time,host=db1:1767225600|g\n"
        b"binhoard.backup.last_completed_age,host=db1:90|g",
        b"binhoard.backup.last_completed_age,host=db1:3600|g",
    ]
    metrics.close()


def test_dogstatsd_lines_carry_tags_after_a_hash(statsd_server: socket.socket) -> None:
    metrics = Metrics(statsd_settings(statsd_server, "dogstatsd", host="db1"), clock=Clock(T0))
    metrics.increment(ERRORS, tags={"kind": "StorageError", "where": "backup create"})
    metrics.gauge(BINLOG_PENDING_BYTES, 0)
    metrics.timing(BACKUP_DURATION, 0.25, tags={"type": "incremental"})
    assert received(statsd_server, 3) == [
        b"binhoard.errors:1|c|#host:db1,kind:StorageError,where:backup_create",
        b"binhoard.binlog.pending_bytes:0|g|#host:db1",
        b"binhoard.backup.duration:250|ms|#host:db1,type:incremental",
    ]
    metrics.close()


def test_a_tag_of_the_call_wins_over_a_configured_one_and_untagged_lines_have_none(
    statsd_server: socket.socket,
) -> None:
    metrics = Metrics(statsd_settings(statsd_server, "dogstatsd", where="config"))
    metrics.increment(ERRORS, tags={"kind": "KeyError", "where": "archive"})
    plain = Metrics(statsd_settings(statsd_server, "dogstatsd"))
    plain.gauge(BINLOG_PENDING_BYTES, 3)
    assert received(statsd_server, 2) == [
        b"binhoard.errors:1|c|#kind:KeyError,where:archive",
        b"binhoard.binlog.pending_bytes:3|g",
    ]
    metrics.close()
    plain.close()


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("telegraf", b"binhoard.errors,kind=a_b_c_d_e_f_g_h_i_j,where=x_y:1|c"),
        ("dogstatsd", b"binhoard.errors:1|c|#kind:a_b_c_d_e_f_g_h_i_j,where:x_y"),
    ],
)
def test_characters_that_delimit_statsd_fields_are_replaced_in_tags(
    statsd_server: socket.socket, fmt: str, expected: bytes
) -> None:
    metrics = Metrics(statsd_settings(statsd_server, fmt))
    metrics.increment(ERRORS, tags={"kind": "a,b=c:d|e#f g\nh@i\\j", "where": "x\ty"})
    assert received(statsd_server, 1) == [expected]
    metrics.close()


def test_a_negative_gauge_is_sent_as_zero_then_the_value(statsd_server: socket.socket) -> None:
    """``-5|g`` alone means "decrease by 5" to a statsd server."""
    level = MetricSpec("binhoard.test.level", "gauge", "count", "A level.")
    metrics = Metrics(statsd_settings(statsd_server, "telegraf"), specs={level.name: level})
    metrics.gauge(level.name, -5)
    assert received(statsd_server, 1) == [b"binhoard.test.level:0|g\nbinhoard.test.level:-5|g"]
    metrics.close()


def test_many_lines_are_packed_into_datagrams_under_the_mtu(statsd_server: socket.socket) -> None:
    times = {
        f"binhoard.test.t{i}": MetricSpec(
            f"binhoard.test.t{i}", "time", "s", "t", tags=("site",), age=f"binhoard.test.a{i}"
        )
        for i in range(40)
    }
    ages = {
        spec.age: MetricSpec(spec.age, "age", "s", "a", tags=("site",))
        for spec in times.values()
        if spec.age
    }
    metrics = Metrics(statsd_settings(statsd_server, "telegraf"), specs={**times, **ages})
    for name in times:
        metrics.set_time(name, T0, tags={"site": "x" * 20})
    received(statsd_server, len(times))  # one datagram per set_time
    metrics.refresh(now=T0 + 1)
    lines: list[bytes] = []
    while len(lines) < len(times):
        datagram = statsd_server.recv(65536)
        assert len(datagram) <= MAX_DATAGRAM
        lines += datagram.split(b"\n")
    assert sorted(lines) == sorted(
        f"binhoard.test.a{i},site={'x' * 20}:1|g".encode() for i in range(40)
    )
    metrics.close()


def test_no_statsd_configured_sends_nothing_and_keeps_values() -> None:
    metrics = Metrics(StatsdSettings())
    metrics.gauge(BINLOG_PENDING_BYTES, 7)
    metrics.refresh()
    assert metrics.value(BINLOG_PENDING_BYTES) == 7


def families(text: str) -> dict[str, tuple[str, str, list[Sample]]]:
    return {
        f.name: (f.type, f.documentation, f.samples) for f in text_string_to_metric_families(text)
    }


def test_prometheus_text_as_prometheus_parses_it() -> None:
    clock = Clock(T0 + 600)
    metrics = Metrics(clock=clock)
    metrics.increment(ERRORS, tags={"kind": "StorageError", "where": 'say "hi"\\\n'})
    metrics.increment(ERRORS, tags={"kind": "StorageError", "where": 'say "hi"\\\n'})
    metrics.gauge(BINLOG_PENDING_BYTES, 1048576)
    metrics.timing(BACKUP_DURATION, 1.5, tags={"type": "full"})
    metrics.timing(BACKUP_DURATION, 0.25, tags={"type": "full"})
    metrics.set_time(BACKUP_LAST_COMPLETED_TIME, T0)
    text = metrics.prometheus_text()
    found = families(text)

    kind, doc, samples = found["binhoard_errors"]
    assert kind == "counter" and doc.startswith(SPECS[ERRORS].help)
    assert samples == [
        Sample("binhoard_errors_total", {"kind": "StorageError", "where": 'say "hi"\\\n'}, 2.0)
    ]
    assert found["binhoard_binlog_pending_bytes"][2] == [
        Sample("binhoard_binlog_pending_bytes", {}, 1048576.0)
    ]
    kind, _, samples = found["binhoard_backup_duration_seconds"]
    assert kind == "summary"
    assert {(s.name, s.value) for s in samples} == {
        ("binhoard_backup_duration_seconds_count", 2.0),
        ("binhoard_backup_duration_seconds_sum", 1.75),
    }
    assert found["binhoard_backup_last_completed_time"][2][0].value == T0
    assert found["binhoard_backup_last_completed_age"][2][0].value == 600
    # A counter without tags is there from the start, at 0.
    assert found["binhoard_binlog_archive_pass_failures"][2] == [
        Sample("binhoard_binlog_archive_pass_failures_total", {}, 0.0)
    ]
    # The age grows with every scrape while nothing happens.
    clock.now += 60
    again = families(metrics.prometheus_text())
    assert again["binhoard_backup_last_completed_age"][2][0].value == 660
    at_five = families(metrics.prometheus_text(now=T0 + 5))
    assert at_five["binhoard_backup_last_completed_age"][2][0].value == 5


def test_prometheus_text_escapes_labels_and_prints_exact_numbers() -> None:
    metrics = Metrics(clock=Clock(T0))
    metrics.increment(ERRORS, tags={"kind": "K", "where": 'a"b\\c\nd'})
    metrics.set_time(BACKUP_LAST_COMPLETED_TIME, T0 + 0.5)
    text = metrics.prometheus_text()
    assert 'binhoard_errors_total{kind="K",where="a\\"b\\\\c\\nd"} 1\n' in text
    assert "binhoard_backup_last_completed_time 1767225600.5\n" in text
    assert "binhoard_backup_last_completed_age 0\n" in text  # never negative
    assert "# TYPE binhoard_errors_total counter\n" in text
    assert text.endswith("\n")


def test_a_forgotten_time_has_no_age() -> None:
    metrics = Metrics(clock=Clock(T0))
    metrics.set_time(BACKUP_LAST_COMPLETED_TIME, T0)
    metrics.set_time(BACKUP_LAST_COMPLETED_TIME, None)
    assert metrics.value(BACKUP_LAST_COMPLETED_TIME) is None
    assert metrics.age(BACKUP_LAST_COMPLETED_TIME) is None
    assert "last_completed" not in metrics.prometheus_text()


def test_only_what_the_catalogue_declares_is_accepted() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="not in the catalogue"):
        metrics.gauge("binhoard.no.such", 1)
    with pytest.raises(ValueError, match="is of kind counter, not gauge"):
        metrics.gauge(ERRORS, 1)
    with pytest.raises(ValueError, match="takes tags"):
        metrics.increment(ERRORS, tags={"kind": "x"})
    with pytest.raises(ValueError, match="takes tags"):
        metrics.gauge(BINLOG_PENDING_BYTES, 1, tags={"site": "x"})
    with pytest.raises(ValueError, match="is of kind age, not gauge"):
        metrics.gauge(BACKUP_LAST_COMPLETED_AGE, 1)
    with pytest.raises(ValueError, match="cannot go down"):
        metrics.increment(BINLOG_ARCHIVE_PASS_FAILURES, -1)


def test_record_error_counts_by_class_and_place() -> None:
    metrics = Metrics()
    record_error(metrics, StorageError("down"), "archive")
    record_error(metrics, KeyError("x"), "archive")
    record_error(metrics, StorageError("down again"), "archive")
    assert metrics.value(ERRORS, {"kind": "StorageError", "where": "archive"}) == 2
    assert metrics.value(ERRORS, {"kind": "KeyError", "where": "archive"}) == 1


def test_updates_from_many_threads_are_all_counted() -> None:
    metrics = Metrics(clock=Clock(T0))
    threads_count, per_thread = 8, 5000
    start = threading.Barrier(threads_count + 1)
    texts: list[str] = []

    def work(n: int) -> None:
        start.wait()
        for i in range(per_thread):
            metrics.increment(ERRORS, tags={"kind": f"K{n % 2}", "where": "w"})
            metrics.timing(BACKUP_DURATION, 0.5, tags={"type": "full"})
            metrics.gauge(BINLOG_PENDING_BYTES, i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for thread in threads:
        thread.start()
    start.wait()
    for _ in range(50):  # exports while the updates run
        texts.append(metrics.prometheus_text())
    for thread in threads:
        thread.join()
    total = sum(metrics.value(ERRORS, {"kind": k, "where": "w"}) or 0 for k in ("K0", "K1"))
    assert total == threads_count * per_thread
    final = families(metrics.prometheus_text())
    count = next(
        s.value for s in final["binhoard_backup_duration_seconds"][2] if s.name.endswith("_count")
    )
    assert count == threads_count * per_thread
    for text in texts:
        families(text)  # every export in between is well formed


def test_a_host_name_is_resolved_and_a_zero_increment_is_not_sent(
    statsd_server: socket.socket,
) -> None:
    settings = StatsdSettings(host="localhost", port=statsd_server.getsockname()[1])
    metrics = Metrics(settings)
    metrics.increment(BINLOG_ARCHIVE_PASS_FAILURES, 0)
    metrics.gauge(BINLOG_PENDING_BYTES, 1)
    assert received(statsd_server, 1) == [b"binhoard.binlog.pending_bytes:1|g"]
    metrics.close()
