"""Storage wrappers on MemoryStore, with faults from FaultyStore and a fake clock (no sleeps)."""

from __future__ import annotations

import logging
import random
from collections.abc import Generator, Iterable, Iterator

import pytest

from binhoard.domain.errors import (
    CancelledError,
    IntegrityError,
    ObjectNotFoundError,
    PermanentStorageError,
    PreconditionFailedError,
    TransientStorageError,
)
from binhoard.storage.store import DEFAULT_CHUNK, MemoryStore, ObjectInfo, ObjectStore, read_all
from binhoard.storage.wrappers import (
    FaultPlan,
    FaultyStore,
    ForwardingStore,
    MetricsStore,
    PutFault,
    RateLimitedStore,
    Replayable,
    RetryingStore,
    TruncatedBodyError,
)


class FakeClock:
    """Time that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds


class RecordingStore(ForwardingStore):
    """Passes calls through and records them, to see what a wrapper asked of its inner store."""

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(inner)
        self.gets: list[tuple[str, int, int | None]] = []
        self.puts: list[str] = []

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        self.puts.append(key)
        return self.inner.put(key, data, if_absent=if_absent)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        self.gets.append((key, offset, length))
        return self.inner.get(key, offset=offset, length=length)

    def describe(self) -> str:
        return "recording"


def chunked(body: bytes, size: int = 64 * 1024) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def retrying(inner: ObjectStore, clock: FakeClock, **kwargs: object) -> RetryingStore:
    options: dict[str, object] = {"attempts": 8, "base_delay": 0.1, "max_delay": 5.0}
    options.update(kwargs)
    return RetryingStore(inner, sleep=clock.sleep, rng=random.Random(7), **options)  # type: ignore[arg-type]


# ------------------------------------------------------------------ RetryingStore


def test_200_objects_round_trip_with_faults_on_every_operation() -> None:
    rng = random.Random(1234)
    memory = MemoryStore()
    plan = FaultPlan(
        seed=99,
        fail_rate=0.10,
        put_fault="mixed",
        get_fault="mixed",
        truncate_rate=0.10,
    )
    faulty = FaultyStore(memory, plan)
    clock = FakeClock()
    store = retrying(faulty, clock, attempts=10)

    objects: dict[str, bytes] = {}
    for i in range(200):
        size = rng.choice([0, 1, 100, 4096, 70_000, 300_000, DEFAULT_CHUNK + 12_345])
        body = rng.randbytes(size)
        key = f"obj/{i:03d}"
        objects[key] = body
        info = store.put(key, chunked(body), if_absent=i % 2 == 0)
        assert info.size == size

    for key, body in objects.items():
        assert b"".join(store.get(key)) == body
        assert store.stat(key).size == len(body)
    listed = [info.key for info in store.list("obj/")]
    assert listed == sorted(objects)
    for key in list(objects)[:20]:
        store.delete(key)
    assert len(list(store.list("obj/"))) == 180

    assert faulty.injected["fail"] > 50
    assert faulty.injected["truncate"] > 10
    assert clock.sleeps, "retries back off through the injected sleep"


def test_ranged_gets_resume_within_the_range() -> None:
    memory = MemoryStore()
    body = random.Random(5).randbytes(3 * DEFAULT_CHUNK)
    memory.put("k", [body])
    plan = FaultPlan(seed=3, fail_rate=0.3, get_fault="mixed", truncate_rate=0.3)
    store = retrying(FaultyStore(memory, plan), FakeClock(), attempts=20)
    rng = random.Random(6)
    for _ in range(50):
        offset = rng.randrange(len(body) + 10)
        length = rng.choice([None, 0, 1, rng.randrange(len(body) + 10)])
        got = b"".join(store.get("k", offset=offset, length=length))
        assert got == body[offset : None if length is None else offset + length]


def test_get_resumes_from_the_offset_already_delivered() -> None:
    memory = MemoryStore()
    body = bytes(range(256)) * 40_000  # 10 MB in 1 MiB chunks
    memory.put("big", [body])
    recording = RecordingStore(memory)
    faulty = FaultyStore(recording, FaultPlan(fail_calls=frozenset({1}), get_fault="midstream"))
    store = retrying(faulty, FakeClock())

    assert read_all(store, "big") == body
    assert recording.gets == [("big", 0, None), ("big", len(body) // 2, None)]


def test_a_missing_key_raises_at_the_call_and_is_not_retried() -> None:
    faulty = FaultyStore(MemoryStore(), FaultPlan())
    clock = FakeClock()
    store = retrying(faulty, clock)
    with pytest.raises(ObjectNotFoundError):
        store.get("missing")
    with pytest.raises(ObjectNotFoundError):
        store.stat("missing")
    assert faulty.calls == {"get": 1, "stat": 1}
    assert clock.sleeps == []


def test_permanent_errors_are_not_retried() -> None:
    memory = MemoryStore()
    memory.put("k", [b"x"])
    plan = FaultPlan(fail_rate=1.0, error="permanent")
    faulty = FaultyStore(memory, plan)
    clock = FakeClock()
    store = retrying(faulty, clock)
    for call in (
        lambda: store.put("k", [b"y"]),
        lambda: store.get("k"),
        lambda: store.stat("k"),
        lambda: list(store.list()),
        lambda: store.delete("k"),
    ):
        with pytest.raises(PermanentStorageError):
            call()
    assert sum(faulty.calls.values()) == 5
    assert clock.sleeps == []


def test_gives_up_after_the_attempts_with_full_jitter_backoff() -> None:
    faulty = FaultyStore(MemoryStore(), FaultPlan(fail_rate=1.0))
    clock = FakeClock()
    store = RetryingStore(
        faulty, attempts=6, base_delay=0.5, max_delay=3.0, sleep=clock.sleep, rng=random.Random(1)
    )
    with pytest.raises(TransientStorageError):
        store.stat("k")
    assert faulty.calls["stat"] == 6
    assert len(clock.sleeps) == 5
    caps = [0.5, 1.0, 2.0, 3.0, 3.0]
    assert all(0 <= delay <= cap for delay, cap in zip(clock.sleeps, caps, strict=True))
    assert len(set(clock.sleeps)) == 5, "jittered, not fixed"


def test_retries_are_logged_with_key_and_attempt(caplog: pytest.LogCaptureFixture) -> None:
    memory = MemoryStore()
    memory.put("some/key", [b"data"])
    store = retrying(FaultyStore(memory, FaultPlan(fail_calls=frozenset({1, 2}))), FakeClock())
    with caplog.at_level(logging.WARNING, logger="binhoard.storage"):
        assert store.stat("some/key").size == 4
    messages = [r.getMessage() for r in caplog.records if r.name == "binhoard.storage"]
    assert len(messages) == 2
    assert "stat some/key (attempt 2 of 8)" in messages[0]
    assert "stat some/key (attempt 3 of 8)" in messages[1]


def test_a_cancelled_put_is_neither_retried_nor_logged_as_a_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = RecordingStore(MemoryStore())
    clock = FakeClock()
    store = retrying(memory, clock, replay_buffer=1000)

    def cancelled_midway() -> Iterator[bytes]:
        yield b"part"
        raise CancelledError("cancelled")  # the daemon stops (SIGTERM)

    caplog.set_level(logging.INFO, logger="binhoard.storage")
    for data in (cancelled_midway(), Replayable(cancelled_midway)):
        with pytest.raises(CancelledError):
            store.put("k", data)
    assert memory.puts == ["k", "k"] and clock.sleeps == []  # once each, no backoff
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "put k cancelled"),
        (logging.INFO, "put k cancelled"),
    ]


def test_a_truncated_body_is_detected_by_length_when_retries_are_exhausted() -> None:
    memory = MemoryStore()
    body = b"abcdefghij" * 1000
    memory.put("k", [body])
    faulty = FaultyStore(memory, FaultPlan(seed=2, truncate_rate=1.0))
    # Without any wrapper the damage is silent: only the length shows it.
    raw = b"".join(faulty.get("k"))
    assert len(raw) < faulty.stat("k").size
    # With one attempt, the retrying store refuses to hand out short data.
    store = retrying(faulty, FakeClock(), attempts=1)
    with pytest.raises(TruncatedBodyError, match="body ended after"):
        b"".join(store.get("k"))
    with pytest.raises(TransientStorageError):
        b"".join(store.get("k", offset=10, length=5000))


def test_truncation_is_resumed_with_retries() -> None:
    memory = MemoryStore()
    body = random.Random(3).randbytes(500_000)
    memory.put("k", [body])
    faulty = FaultyStore(memory, FaultPlan(seed=4, truncate_rate=0.7))
    store = retrying(faulty, FakeClock(), attempts=30)
    for _ in range(10):
        assert read_all(store, "k") == body
    assert faulty.injected["truncate"] > 3


def test_a_corrupt_byte_keeps_the_length_so_only_checksums_catch_it() -> None:
    memory = MemoryStore()
    body = bytes(1000)
    memory.put("k", [body])
    store = retrying(FaultyStore(memory, FaultPlan(corrupt_rate=1.0)), FakeClock())
    got = read_all(store, "k")
    assert len(got) == len(body)
    assert sum(a != b for a, b in zip(got, body, strict=True)) == 1


def test_a_body_longer_than_asked_for_is_an_integrity_error() -> None:
    class Overlong(RecordingStore):
        def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
            return iter([b"0123456789"])

    store = retrying(Overlong(MemoryStore()), FakeClock())
    with pytest.raises(IntegrityError):
        b"".join(store.get("k", length=4))


def test_a_one_shot_iterator_is_retried_only_if_untouched() -> None:
    memory = MemoryStore()
    clock = FakeClock()

    before = FaultyStore(memory, FaultPlan(fail_calls=frozenset({1}), put_fault="before"))
    info = retrying(before, clock).put("a", iter([b"he", b"llo"]))
    assert info.size == 5
    assert read_all(memory, "a") == b"hello"

    after = FaultyStore(memory, FaultPlan(fail_calls=frozenset({1}), put_fault="after"))
    with pytest.raises(TransientStorageError):
        retrying(after, clock).put("b", iter([b"he", b"llo"]))
    assert after.calls["put"] == 1
    with pytest.raises(ObjectNotFoundError):
        memory.stat("b")


def test_replayable_data_is_retried_after_being_consumed() -> None:
    memory = MemoryStore()
    clock = FakeClock()
    plan = FaultPlan(fail_calls=frozenset({1, 2}), put_fault="after")
    produced: list[int] = []

    def produce() -> Iterator[bytes]:
        produced.append(1)
        yield b"abc"
        yield b"def"

    store = retrying(FaultyStore(memory, plan), clock)
    assert store.put("r", Replayable(produce)).size == 6
    assert len(produced) == 3
    assert read_all(memory, "r") == b"abcdef"

    store = retrying(FaultyStore(memory, plan), clock)
    assert store.put("b", b"raw bytes are one chunk").size == 23  # type: ignore[arg-type]
    assert read_all(memory, "b") == b"raw bytes are one chunk"

    store = retrying(FaultyStore(memory, plan), clock)
    assert store.put("t", (b"x", b"y")).size == 2


def test_the_replay_buffer_makes_small_one_shot_puts_retryable() -> None:
    memory = MemoryStore()
    clock = FakeClock()
    plan = FaultPlan(fail_calls=frozenset({1, 3}), put_fault="after")

    def gen(n: int) -> Iterator[bytes]:
        for i in range(n):
            yield bytes([i]) * 100

    store = retrying(FaultyStore(memory, plan), clock, replay_buffer=1000)
    assert store.put("small", gen(10)).size == 1000
    assert read_all(memory, "small") == b"".join(gen(10))
    with pytest.raises(TransientStorageError):
        store.put("large", gen(11))  # 1100 bytes do not fit the buffer

    # The buffer also works when the first attempt pulled only part of the data.
    class PullTwoThenFail(RecordingStore):
        failed = False

        def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
            if not self.failed:
                self.failed = True
                it = iter(data)
                next(it)
                next(it)
                raise TransientStorageError("reset")
            return self.inner.put(key, data, if_absent=if_absent)

    store = retrying(PullTwoThenFail(memory), clock, replay_buffer=10_000)
    store.put("partial", gen(5))
    assert read_all(memory, "partial") == b"".join(gen(5))


def test_if_absent_retry_recognises_its_own_earlier_write() -> None:
    memory = MemoryStore()
    clock = FakeClock()
    plan = FaultPlan(fail_calls=frozenset({1}), put_fault="after_commit")
    store = retrying(FaultyStore(memory, plan), clock)
    info = store.put("owner", [b"me", b"!"], if_absent=True)
    assert info.size == 3

    # Someone else's object under the key: the precondition failure stands.
    memory.put("taken", [b"them"])
    store = retrying(FaultyStore(memory, FaultPlan(fail_calls=frozenset({1}))), clock)
    with pytest.raises(PreconditionFailedError):
        store.put("taken", [b"me"], if_absent=True)
    store = retrying(FaultyStore(memory, FaultPlan(fail_calls=frozenset({1}))), clock)
    with pytest.raises(PreconditionFailedError):
        store.put("taken", [b"the", b"m!"], if_absent=True)
    # Without an earlier failed attempt there is nothing to check.
    with pytest.raises(PreconditionFailedError):
        retrying(memory, clock).put("taken", [b"them"], if_absent=True)


def test_if_absent_retry_with_a_buffered_one_shot_iterator() -> None:
    memory = MemoryStore()
    plan = FaultPlan(fail_calls=frozenset({1}), put_fault="after_commit")
    store = retrying(FaultyStore(memory, plan), FakeClock(), replay_buffer=100)
    assert store.put("owner", iter([b"abc", b"def"]), if_absent=True).size == 6


def test_list_resumes_after_the_last_key_without_duplicates() -> None:
    memory = MemoryStore()
    for i in range(30):
        memory.put(f"p/{i:02d}", [b"x"])
    plan = FaultPlan(seed=8, fail_rate=0.5, operations=frozenset({"list"}))
    faulty = FaultyStore(memory, plan)
    keys = [info.key for info in retrying(faulty, FakeClock(), attempts=20).list("p/")]
    assert keys == [f"p/{i:02d}" for i in range(30)]
    assert faulty.injected["fail"] > 0


def test_list_resumes_with_start_after_instead_of_listing_again() -> None:
    """A failed listing is retried from the last key delivered, not from the beginning,
    and a caller's ``start_after`` is kept."""
    memory = MemoryStore()
    for i in range(30):
        memory.put(f"p/{i:02d}", [b"x"])
    asked: list[str | None] = []

    class Listing(ForwardingStore):
        def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
            asked.append(start_after)
            return self.inner.list(prefix, start_after=start_after)

    plan = FaultPlan(fail_calls=frozenset({1}), operations=frozenset({"list"}))
    inner = Listing(FaultyStore(memory, plan))
    keys = [i.key for i in retrying(inner, FakeClock()).list("p/", start_after="p/09")]
    assert keys == [f"p/{i:02d}" for i in range(10, 30)]
    # The injected failure comes after one key (p/10): the retry starts after it.
    assert asked == ["p/09", "p/10"]


def test_invalid_attempts_are_refused() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryingStore(MemoryStore(), attempts=0)


def test_wrappers_satisfy_the_port() -> None:
    memory = MemoryStore()
    clock = FakeClock()
    for store in (
        RetryingStore(memory),
        RateLimitedStore(memory, 1000, clock=clock, sleep=clock.sleep),
        MetricsStore(memory, RecordingObserver()),
        FaultyStore(memory, FaultPlan()),
    ):
        assert isinstance(store, ObjectStore)
        assert "memory" in store.describe()


# ------------------------------------------------------------------ RateLimitedStore


def test_rate_limiter_keeps_the_average_rate_within_5_percent() -> None:
    clock = FakeClock()
    rate = 1_000_000
    store = RateLimitedStore(MemoryStore(), rate, clock=clock, sleep=clock.sleep)
    rng = random.Random(11)
    total = 0
    for i in range(10):
        body = rng.randbytes(rng.randrange(500_000, 3_000_000))
        total += len(body)
        store.put(f"k{i}", chunked(body, rng.choice([4096, 65536, 2_000_000])))
    average = total / clock.now
    assert abs(average - rate) / rate < 0.05


def test_rate_limiter_is_smooth_not_bursty_per_chunk() -> None:
    clock = FakeClock()
    rate = 100_000
    limited = RateLimitedStore(MemoryStore(), rate, clock=clock, sleep=clock.sleep)
    seen: list[tuple[float, int]] = []

    class Pacing(RecordingStore):
        def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
            for chunk in data:
                seen.append((clock.now, len(chunk)))
            return ObjectInfo(key=key, size=sum(n for _, n in seen))

    limited.inner = Pacing(MemoryStore())
    limited.put("k", [bytes(1_000_000)])  # one big chunk
    assert max(n for _, n in seen) <= limited.capacity
    # In every one-second window, no more than a second's worth plus the burst.
    for start, _ in seen:
        in_window = sum(n for t, n in seen if start <= t < start + 1.0)
        assert in_window <= rate + limited.capacity
    assert 9.8 <= clock.now <= 10.0


def test_rate_limiter_shares_one_bucket_and_refills_when_idle() -> None:
    clock = FakeClock()
    store = RateLimitedStore(MemoryStore(), 1000, burst=1.0, clock=clock, sleep=clock.sleep)
    store.put("a", [bytes(1000)])  # the initial burst
    assert clock.now == 0
    store.put("b", [bytes(1000)])  # no fresh burst for the next put
    assert clock.now == pytest.approx(1.0)
    clock.now += 10  # idle: refills, but only up to the burst
    start = clock.now
    store.put("c", [bytes(2000)])
    assert clock.now - start == pytest.approx(1.0)


def test_rate_limiter_passes_other_calls_through() -> None:
    clock = FakeClock()
    memory = MemoryStore()
    store = RateLimitedStore(memory, 10, clock=clock, sleep=clock.sleep)
    memory.put("k", [bytes(10_000)])
    assert len(read_all(store, "k")) == 10_000
    assert store.stat("k").size == 10_000
    assert [i.key for i in store.list()] == ["k"]
    store.delete("k")
    assert clock.now == 0
    with pytest.raises(ValueError, match="positive"):
        RateLimitedStore(memory, 0)


# ------------------------------------------------------------------ MetricsStore


class RecordingObserver:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, int, BaseException | None]] = []

    def on_call(
        self, operation: str, key: str, seconds: float, nbytes: int, error: BaseException | None, /
    ) -> None:
        self.calls.append((operation, key, seconds, nbytes, error))


def test_metrics_report_every_call_with_time_bytes_and_error() -> None:
    clock = FakeClock()
    observer = RecordingObserver()
    plan = FaultPlan(delay=0.25, sleep=clock.sleep)
    store = MetricsStore(FaultyStore(MemoryStore(), plan), observer, clock=clock)

    store.put("k", [b"abc", b"de"])
    stream = store.get("k")
    clock.now += 2  # the consumer is slow: the get lasts until its stream ends
    assert b"".join(stream) == b"abcde"
    store.stat("k")
    assert [i.key for i in store.list()] == ["k"]
    store.delete("k")
    with pytest.raises(ObjectNotFoundError):
        store.get("k")

    assert observer.calls == [
        ("put", "k", 0.25, 5, None),
        ("get", "k", 2.25, 5, None),
        ("stat", "k", 0.25, 0, None),
        ("list", "", 0.25, 0, None),
        ("delete", "k", 0.25, 0, None),
        ("get", "k", 0.25, 0, observer.calls[-1][4]),
    ]
    assert isinstance(observer.calls[-1][4], ObjectNotFoundError)


def test_metrics_report_failures_mid_stream_and_abandoned_streams() -> None:
    clock = FakeClock()
    observer = RecordingObserver()
    memory = MemoryStore()
    memory.put("k", [bytes(3 * DEFAULT_CHUNK)])
    plan = FaultPlan(fail_calls=frozenset({1, 3}), get_fault="midstream", put_fault="after")
    store = MetricsStore(FaultyStore(memory, plan), observer, clock=clock)

    with pytest.raises(TransientStorageError):
        b"".join(store.get("k"))
    stream = store.get("k")
    assert isinstance(stream, Generator)
    next(stream)
    stream.close()
    with pytest.raises(TransientStorageError):
        store.put("p", [b"12", b"345"])

    (op1, _, _, n1, e1), (op2, _, _, n2, e2), (op3, _, _, n3, e3) = observer.calls
    assert (op1, n1, type(e1)) == ("get", 3 * DEFAULT_CHUNK // 2, TransientStorageError)
    assert (op2, n2, e2) == ("get", DEFAULT_CHUNK, None)
    assert (op3, n3, type(e3)) == ("put", 5, TransientStorageError)


# ------------------------------------------------------------------ FaultyStore


def test_faulty_store_fails_the_nth_call_of_the_chosen_operations() -> None:
    memory = MemoryStore()
    plan = FaultPlan(fail_calls=frozenset({2, 4}), operations=frozenset({"stat", "delete"}))
    faulty = FaultyStore(memory, plan)
    memory.put("k", [b"x"])
    outcomes = []
    for call in (
        lambda: faulty.stat("k"),
        lambda: read_all(faulty, "k"),  # not counted
        lambda: faulty.stat("k"),  # 2nd counted call: fails
        lambda: faulty.delete("nothing"),
        lambda: faulty.delete("k"),  # 4th: fails
    ):
        try:
            call()
            outcomes.append("ok")
        except TransientStorageError:
            outcomes.append("fail")
    assert outcomes == ["ok", "ok", "fail", "ok", "fail"]
    assert faulty.injected["fail"] == 2
    assert faulty.calls == {"stat": 2, "get": 1, "delete": 2}


def test_faulty_store_is_reproducible_from_its_seed() -> None:
    def run(seed: int) -> list[bool]:
        memory = MemoryStore()
        memory.put("k", [b"x"])
        faulty = FaultyStore(memory, FaultPlan(seed=seed, fail_rate=0.3))
        result = []
        for _ in range(100):
            try:
                faulty.stat("k")
                result.append(True)
            except TransientStorageError:
                result.append(False)
        return result

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert 15 <= run(1).count(False) <= 45


def test_faulty_store_put_modes_and_permanent_errors() -> None:
    memory = MemoryStore()
    consumed: list[bytes] = []

    def data() -> Iterator[bytes]:
        for chunk in (b"a", b"b"):
            consumed.append(chunk)
            yield chunk

    cases: list[tuple[PutFault, bool, int]] = [
        ("before", False, 0),
        ("after", False, 2),
        ("after_commit", True, 2),
    ]
    for mode, stored, pulled in cases:
        consumed.clear()
        faulty = FaultyStore(
            memory, FaultPlan(fail_calls=frozenset({1}), put_fault=mode, error="permanent")
        )
        with pytest.raises(PermanentStorageError):
            faulty.put(mode, data())
        assert len(consumed) == pulled
        assert (mode in [i.key for i in memory.list()]) == stored


def test_the_wrappers_stack_as_documented() -> None:
    """Metrics(Retrying(RateLimited(Faulty(memory)))): one report per call, retries inside."""
    clock = FakeClock()
    observer = RecordingObserver()
    faulty = FaultyStore(MemoryStore(), FaultPlan(seed=1, fail_rate=0.3, put_fault="mixed"))
    limited = RateLimitedStore(faulty, 1_000_000, clock=clock, sleep=clock.sleep)
    store = MetricsStore(retrying(limited, clock, attempts=20), observer, clock=clock)
    body = random.Random(2).randbytes(600_000)
    for i in range(10):
        store.put(f"k{i}", chunked(body))
        assert read_all(store, f"k{i}") == body
    assert [(op, n, err) for op, _, _, n, err in observer.calls] == [
        (op, len(body), None) for _ in range(10) for op in ("put", "get")
    ]
    assert faulty.injected["fail"] > 0
    # The limiter paced at least the bytes stored (and those of retried puts on top).
    assert clock.now >= 0.95 * 10 * len(body) / 1_000_000
