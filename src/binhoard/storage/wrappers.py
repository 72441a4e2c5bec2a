"""Cross-cutting behaviour around any ``ObjectStore``: retry, bandwidth limit, metrics, faults.

Each wrapper implements the ``ObjectStore`` protocol by delegating to another store, so
they stack in any order and backends stay free of policy. A typical composition is::

    store = MetricsStore(RetryingStore(RateLimitedStore(backend, rate)), observer)

Metrics outermost sees what the caller saw (one call, however many retries); the rate
limiter innermost also paces bytes that a retry sends again, since those use the
link too. ``FaultyStore`` goes right above the backend in tests and benchmarks.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from binhoard.domain.errors import (
    CancelledError,
    IntegrityError,
    PermanentStorageError,
    PreconditionFailedError,
    TransientStorageError,
)
from binhoard.storage.store import ObjectInfo, ObjectStore

log = logging.getLogger("binhoard.storage")

T = TypeVar("T")

OPERATIONS = frozenset({"put", "get", "stat", "list", "delete"})


def is_retryable(exc: BaseException) -> bool:
    """True for errors that declare ``retryable = True`` (``TransientStorageError`` and kin).

    The flag lives on the error classes (``binhoard.domain.errors``) so that one place
    decides what is worth retrying; backends map their native errors onto those classes.
    A ``CancelledError`` is retryable for the daemon (later, once it runs again), never
    here: the work was asked to stop.
    """
    return getattr(exc, "retryable", False) is True and not isinstance(exc, CancelledError)


# --------------------------------------------------------------------------- retry


class Replayable:
    """Data for ``put`` that can be produced again from the start, so a failed put can be retried.

    ``Replayable(lambda: read_chunks(path))`` calls the factory once per attempt. Plain
    ``bytes`` and lists / tuples of ``bytes`` are replayable as they are; a generator or
    any other one-shot iterator is not.
    """

    def __init__(self, factory: Callable[[], Iterable[bytes]]) -> None:
        self._factory = factory

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._factory())


def replayable(data: Iterable[bytes]) -> Iterable[bytes] | None:
    """``data`` in a form that can be iterated again from the start, or None if it cannot.

    ``bytes`` (which iterate as ints) become a one-chunk tuple.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return (bytes(data),)
    if isinstance(data, Sequence | Replayable):
        return data
    return None


def transform_chunks(
    data: Iterable[bytes], transform: Callable[[Iterable[bytes]], Iterator[bytes]]
) -> Iterable[bytes]:
    """``transform(data)``, kept replayable if ``data`` was.

    Wrappers that sit above ``RetryingStore`` and wrap the put data (metrics counting,
    pacing) must use this: a generator around a list would hide from ``RetryingStore``
    that the data can be sent again.
    """
    again = replayable(data)
    if again is None:
        return transform(data)
    return Replayable(lambda: transform(again))


class TruncatedBodyError(TransientStorageError):
    """A get body ended before the expected length: the connection dropped without an error."""


class _TrackingIterator:
    """Wraps one-shot put data: remembers whether it was touched and keeps a bounded copy.

    A put whose data was never pulled can be retried with the same iterator. With a
    replay buffer, one whose data fitted in the buffer (every chunk pulled so far is
    kept) can be retried from the copy followed by the rest of the source.
    """

    def __init__(self, source: Iterator[bytes], buffer_limit: int) -> None:
        self._source = source
        self._limit = buffer_limit
        self.touched = False
        self.buffer: list[bytes] | None = [] if buffer_limit > 0 else None
        self._buffered = 0

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self.touched = True
        chunk = next(self._source)
        if self.buffer is not None:
            self._buffered += len(chunk)
            if self._buffered > self._limit:
                self.buffer = None  # too big to replay: stop copying
            else:
                self.buffer.append(bytes(chunk))
        return chunk

    def replay(self) -> Iterator[bytes] | None:
        """A fresh iterator over everything, or None if the data can no longer be produced."""
        if not self.touched:
            return self
        if self.buffer is None:
            return None
        return _Resumed(list(self.buffer), self)


class _Resumed:
    """The buffered head of a one-shot iterator, then the rest of it (still tracked)."""

    def __init__(self, head: list[bytes], rest: _TrackingIterator) -> None:
        self._head = iter(head)
        self._rest = rest

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        for chunk in self._head:
            return chunk
        return next(self._rest)


class RetryingStore:
    """Retries retryable failures with exponential backoff and full jitter.

    Only errors with ``retryable = True`` are retried: a permanent error, a missing
    object or a failed precondition is raised at once. The delay before retry *n*
    (1-based) is uniform in ``[0, min(max_delay, base_delay * 2**(n-1))]`` ("full
    jitter"), which spreads out clients that failed together.

    ``get`` returns one stream that survives failures: when the inner stream raises a
    retryable error or ends short of the expected length (the requested ``length``, or
    the size from ``stat``), it is reopened with a ranged get from the byte already
    delivered, so the consumer sees one complete, byte-identical stream or an error,
    never silently short data. Checking the length costs a ``stat`` after each get
    without ``length``; ``verify_length=False`` skips it for backends known to raise
    on a short body themselves (then only raised errors resume). The attempt count
    restarts whenever bytes arrived, so a long download survives any number of
    separate drops, but not a stuck one.

    ``put`` cannot replay what it cannot read again. It is retried when:

    * ``data`` is replayable: ``bytes``, a list or tuple of ``bytes``, or a
      ``Replayable``; or
    * the failure came before any chunk was pulled from a one-shot iterator; or
    * every chunk pulled so far fits in ``replay_buffer`` bytes, kept in memory for that
      purpose (0 disables it). ``ObstoreStore`` reads up to one part before it decides
      between a single PUT and a multipart upload, so ``part_size`` plus one chunk
      makes every single-PUT object retryable, at the cost of a copy of that much data.

    Otherwise the original error is raised: the caller must produce the data again
    (for example, by redoing the backup step). Multipart backends retry individual
    part uploads themselves; this layer only ever sees the whole put.

    A retried ``put(if_absent=True)`` may meet its own first attempt, which reached the
    store but lost its answer. When a retry then gets ``PreconditionFailedError``, the
    stored object is compared with the data (which is replayable, since it was
    retried); if identical, the put succeeded and its ``ObjectInfo`` is returned.

    ``list`` resumes after the last key it yielded (listings are sorted by key);
    ``stat`` and ``delete`` (idempotent) are simply retried.
    """

    def __init__(
        self,
        inner: ObjectStore,
        *,
        attempts: int = 5,
        base_delay: float = 0.2,
        max_delay: float = 20.0,
        replay_buffer: int = 0,
        verify_length: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.inner = inner
        self.attempts = attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.replay_buffer = replay_buffer
        self.verify_length = verify_length
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not crypto
        self._rng_lock = threading.Lock()

    # -- helpers

    def _backoff(self, operation: str, key: str, failures: int, exc: BaseException) -> None:
        """Sleeps before retry number ``failures``, or re-raises when the attempts are used up."""
        if failures >= self.attempts:
            log.warning("%s %s failed after %d attempts: %s", operation, key, self.attempts, exc)
            raise exc
        with self._rng_lock:
            delay = self._rng.uniform(0, min(self.max_delay, self.base_delay * 2 ** (failures - 1)))
        log.warning(
            "retrying %s %s (attempt %d of %d) in %.2fs after: %s",
            operation,
            key,
            failures + 1,
            self.attempts,
            delay,
            exc,
        )
        self._sleep(delay)

    def _call(self, operation: str, key: str, fn: Callable[[], T]) -> T:
        failures = 0
        while True:
            try:
                return fn()
            except BaseException as exc:
                if not is_retryable(exc):
                    raise
                failures += 1
                self._backoff(operation, key, failures, exc)

    # -- the port

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        reusable = replayable(data)
        tracker: _TrackingIterator | None = None
        attempt_data: Iterable[bytes]
        if reusable is not None:
            attempt_data = reusable
        else:
            tracker = attempt_data = _TrackingIterator(iter(data), self.replay_buffer)

        failures = 0
        while True:
            try:
                return self.inner.put(key, attempt_data, if_absent=if_absent)
            except PreconditionFailedError:
                if failures == 0:
                    raise
                # An earlier attempt may have stored the object and lost the answer.
                retry_data = reusable if reusable is not None else _buffered(tracker)
                if retry_data is None or not self._same_content(key, retry_data):
                    raise
                log.info("put %s: an earlier attempt had stored it", key)
                return self.stat(key)
            except CancelledError:
                log.info("put %s cancelled", key)  # not a storage failure
                raise
            except BaseException as exc:
                if not is_retryable(exc):
                    raise
                if tracker is not None:
                    again = tracker.replay()
                    if again is None:
                        log.warning(
                            "put %s failed after its data was consumed; not retryable: %s",
                            key,
                            exc,
                        )
                        raise
                    attempt_data = again
                failures += 1
                self._backoff("put", key, failures, exc)

    def _same_content(self, key: str, data: Iterable[bytes]) -> bool:
        """Whether the stored object is exactly ``data``, compared as both stream by."""
        expected = iter(data)
        pending = memoryview(b"")
        for chunk in self.get(key):
            view = memoryview(chunk)
            while view:
                if not pending:
                    following = next(expected, None)
                    if following is None:
                        return False  # the stored object is longer
                    pending = memoryview(following)
                    continue
                n = min(len(pending), len(view))
                if pending[:n] != view[:n]:
                    return False
                pending = pending[n:]
                view = view[n:]
        return not pending and not any(expected)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        # Opened eagerly so that a missing key raises here, as the port promises.
        first = self._call(
            "get", key, lambda: iter(self.inner.get(key, offset=offset, length=length))
        )
        return self._resuming(key, offset, length, first)

    def _resuming(
        self, key: str, offset: int, length: int | None, stream: Iterator[bytes] | None
    ) -> Iterator[bytes]:
        delivered = 0
        failures = 0
        size: int | None = None
        try:
            while True:
                try:
                    if stream is None:
                        remaining = None if length is None else length - delivered
                        stream = iter(
                            self.inner.get(key, offset=offset + delivered, length=remaining)
                        )
                    for chunk in stream:
                        if not chunk:
                            continue
                        if length is not None and delivered + len(chunk) > length:
                            raise IntegrityError(key, f"more than the {length} bytes asked for")
                        delivered += len(chunk)
                        failures = 0
                        yield chunk
                    _close(stream)
                    stream = None
                    if not self.verify_length or (length is not None and delivered == length):
                        return
                    if size is None:
                        size = self._call("get", key, lambda: self.inner.stat(key).size)
                    end = size if length is None else min(size, offset + length)
                    want = max(0, end - offset)
                    if delivered == want:
                        return
                    if delivered > want:
                        raise IntegrityError(key, f"{delivered} bytes read, object has {want}")
                    raise TruncatedBodyError(
                        f"get {key}: body ended after {delivered} of {want} bytes"
                    )
                except BaseException as exc:
                    if not is_retryable(exc):
                        raise
                    _close(stream)
                    stream = None
                    failures += 1
                    self._backoff("get", f"{key}@{offset + delivered}", failures, exc)
        finally:
            _close(stream)

    def stat(self, key: str) -> ObjectInfo:
        return self._call("stat", key, lambda: self.inner.stat(key))

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        last = start_after
        failures = 0
        while True:
            try:
                # A retry lists only what follows the last key already delivered.
                for info in self.inner.list(prefix, start_after=last):
                    if last is not None and info.key <= last:
                        continue
                    last = info.key
                    failures = 0
                    yield info
                return
            except BaseException as exc:
                if not is_retryable(exc):
                    raise
                failures += 1
                where = f"{prefix}* after {last}" if last else f"{prefix}*"
                self._backoff("list", where, failures, exc)

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def describe(self) -> str:
        return self.inner.describe()


def _buffered(tracker: _TrackingIterator | None) -> Iterable[bytes] | None:
    """The whole of a tracked one-shot put's data, if it is all in the replay buffer."""
    if tracker is None or tracker.buffer is None:
        return None
    try:
        next(tracker)
    except StopIteration:
        return list(tracker.buffer) if tracker.buffer is not None else None
    return None  # the source had more than the buffer holds: cannot compare


def _close(stream: Iterator[bytes] | None) -> None:
    """Closes an abandoned inner stream, so that its connection goes back or away at once."""
    close = getattr(stream, "close", None)
    if callable(close):
        close()


# --------------------------------------------------------------------------- rate limit


class ForwardingStore:
    """Passes every call to ``inner``: a base for wrappers that change only some calls."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        return self.inner.put(key, data, if_absent=if_absent)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        return self.inner.get(key, offset=offset, length=length)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after=start_after)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def describe(self) -> str:
        return self.inner.describe()


class RateLimitedStore(ForwardingStore):
    """Limits the bytes uploaded by ``put`` to ``bytes_per_second``, across all concurrent puts.

    A token bucket holding at most ``burst`` seconds' worth of bytes. Chunks larger than
    the bucket are handed on in slices, each waiting for its own tokens, so the inner
    put pulls data at an even pace instead of a large chunk at once and then a long
    pause. Tokens are reserved under a lock (the balance may go negative) and the wait
    happens outside it, so concurrent uploads share the rate fairly in arrival order.

    Downloads are not limited: the configuration only bounds uploads
    (``upload_rate_limit``), which compete with the database for the network.
    """

    def __init__(
        self,
        inner: ObjectStore,
        bytes_per_second: float,
        *,
        burst: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        super().__init__(inner)
        self.rate = float(bytes_per_second)
        self.capacity = max(1.0, self.rate * burst)
        self._slice = max(1, int(self.capacity))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._last = clock()

    def _acquire(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)

    def _paced(self, data: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in data:
            if len(chunk) <= self._slice:
                self._acquire(len(chunk))
                yield chunk
                continue
            view = memoryview(chunk)
            for pos in range(0, len(view), self._slice):
                piece = view[pos : pos + self._slice]
                self._acquire(len(piece))
                yield bytes(piece)

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        return self.inner.put(key, transform_chunks(data, self._paced), if_absent=if_absent)


# --------------------------------------------------------------------------- metrics


class StoreObserver(Protocol):
    """Receives one report per store call; statsd, Prometheus or a test implement it.

    Arguments are positional: operation (``put``, ``get``, ``stat``, ``list``,
    ``delete``), key (the prefix for ``list``), seconds the call took (for ``get`` and
    ``list``, until the stream ended or was closed), bytes moved, and the error that
    ended the call or None.
    """

    def on_call(
        self,
        operation: str,
        key: str,
        seconds: float,
        nbytes: int,
        error: BaseException | None,
        /,
    ) -> None: ...


class MetricsStore:
    """Reports every call to a ``StoreObserver``, so metrics hook in without the store knowing.

    Errors raised by the observer propagate: it is in-process code, and a broken metric
    should be seen rather than silently lost.
    """

    def __init__(
        self,
        inner: ObjectStore,
        observer: StoreObserver,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.inner = inner
        self.observer = observer
        self._clock = clock

    def _timed(
        self, operation: str, key: str, fn: Callable[[], T], nbytes: Callable[[T], int]
    ) -> T:
        start = self._clock()
        try:
            result = fn()
        except BaseException as exc:
            self.observer.on_call(operation, key, self._clock() - start, 0, exc)
            raise
        self.observer.on_call(operation, key, self._clock() - start, nbytes(result), None)
        return result

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        start = self._clock()
        sent = 0

        def counted(chunks: Iterable[bytes]) -> Iterator[bytes]:
            nonlocal sent
            sent = 0  # a replay starts over
            for chunk in chunks:
                sent += len(chunk)
                yield chunk

        try:
            info = self.inner.put(key, transform_chunks(data, counted), if_absent=if_absent)
        except BaseException as exc:
            self.observer.on_call("put", key, self._clock() - start, sent, exc)
            raise
        self.observer.on_call("put", key, self._clock() - start, info.size, None)
        return info

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        start = self._clock()
        try:
            stream = iter(self.inner.get(key, offset=offset, length=length))
        except BaseException as exc:
            self.observer.on_call("get", key, self._clock() - start, 0, exc)
            raise
        return self._observed_get(key, start, stream)

    def _observed_get(self, key: str, start: float, stream: Iterator[bytes]) -> Iterator[bytes]:
        received = 0
        error: BaseException | None = None
        try:
            for chunk in stream:
                received += len(chunk)
                yield chunk
        except GeneratorExit:
            raise  # the consumer stopped reading: not an error of the store
        except BaseException as exc:
            error = exc
            raise
        finally:
            _close(stream)
            self.observer.on_call("get", key, self._clock() - start, received, error)

    def stat(self, key: str) -> ObjectInfo:
        return self._timed("stat", key, lambda: self.inner.stat(key), lambda info: 0)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        start = self._clock()
        error: BaseException | None = None
        try:
            yield from self.inner.list(prefix, start_after=start_after)
        except GeneratorExit:
            raise
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.observer.on_call("list", prefix, self._clock() - start, 0, error)

    def delete(self, key: str) -> None:
        self._timed("delete", key, lambda: self.inner.delete(key), lambda _: 0)

    def describe(self) -> str:
        return self.inner.describe()


# --------------------------------------------------------------------------- faults

PutFault = Literal["before", "after", "after_commit"]


@dataclass
class FaultPlan:
    """What ``FaultyStore`` breaks, reproducibly (all randomness comes from ``seed``).

    * ``fail_calls``: 1-based numbers of the calls (counting only ``operations``) that
      fail with ``error``.
    * ``fail_rate``: fraction of the other calls that fail the same way.
    * ``put_fault``: how a failing put fails: ``before`` reading any data, ``after``
      reading all of it without storing it, ``after_commit`` storing it and then
      failing (the answer was lost); ``mixed`` picks one per failure.
    * ``get_fault``: how a failing get fails: ``open`` (raises from the call itself),
      ``midstream`` (raises after about half the body), or ``mixed``.
    * ``truncate_rate`` / ``corrupt_rate``: fraction of get bodies that end early
      without an error / have one byte flipped (decided separately from failures).
    * ``delay`` seconds are slept (through ``sleep``) before a fraction ``delay_rate``
      of calls.

    A get body that is damaged (midstream failure, truncation, corruption) is read
    whole into memory first, so the damage lands on real bytes; undamaged bodies
    stream through untouched. Keep damaged objects to test-sized ones.
    """

    seed: int = 0
    operations: frozenset[str] = OPERATIONS
    fail_calls: frozenset[int] = frozenset()
    fail_rate: float = 0.0
    error: Literal["transient", "permanent"] = "transient"
    put_fault: PutFault | Literal["mixed"] = "before"
    get_fault: Literal["open", "midstream", "mixed"] = "open"
    truncate_rate: float = 0.0
    corrupt_rate: float = 0.0
    delay: float = 0.0
    delay_rate: float = 1.0
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)


class FaultyStore:
    """Injects the failures of a ``FaultPlan`` into calls to another store; for tests.

    ``injected`` counts what was injected, by kind (``fail``, ``truncate``, ``corrupt``,
    ``delay``), and ``calls`` counts calls by operation, so tests can check that faults
    really happened.
    """

    def __init__(self, inner: ObjectStore, plan: FaultPlan) -> None:
        self.inner = inner
        self.plan = plan
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._rng = random.Random(plan.seed)  # noqa: S311 - reproducible faults, not crypto
        self._lock = threading.Lock()
        self._count = 0

    def _decide(self, operation: str) -> bool:
        """Counts the call, applies the delay and says whether it fails."""
        plan = self.plan
        with self._lock:
            self.calls[operation] += 1
            if operation not in plan.operations:
                return False
            self._count += 1
            fail = self._count in plan.fail_calls or self._rng.random() < plan.fail_rate
            delay = plan.delay > 0 and self._rng.random() < plan.delay_rate
            if fail:
                self.injected["fail"] += 1
            if delay:
                self.injected["delay"] += 1
        if delay:
            plan.sleep(plan.delay)
        return fail

    def _error(self, operation: str, key: str) -> Exception:
        message = f"injected fault: {operation} {key}"
        if self.plan.error == "permanent":
            return PermanentStorageError(message)
        return TransientStorageError(message)

    def _pick(self, choice: str, options: tuple[str, ...]) -> str:
        if choice != "mixed":
            return choice
        with self._lock:
            return self._rng.choice(options)

    def _chance(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        if not self._decide("put"):
            return self.inner.put(key, data, if_absent=if_absent)
        mode = self._pick(self.plan.put_fault, ("before", "after", "after_commit"))
        if mode == "after":
            for _ in data:
                pass
        elif mode == "after_commit":
            self.inner.put(key, data, if_absent=if_absent)
        raise self._error("put", key)

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        fail = self._decide("get")
        mode = self._pick(self.plan.get_fault, ("open", "midstream")) if fail else ""
        if mode == "open":
            raise self._error("get", key)
        stream = self.inner.get(key, offset=offset, length=length)
        truncate = self._chance(self.plan.truncate_rate)
        corrupt = self._chance(self.plan.corrupt_rate)
        if not (fail or truncate or corrupt):
            return stream
        return self._damaged(key, stream, fail=fail, truncate=truncate, corrupt=corrupt)

    def _damaged(
        self, key: str, stream: Iterable[bytes], *, fail: bool, truncate: bool, corrupt: bool
    ) -> Iterator[bytes]:
        """The body with the chosen damage, decided on the whole body so it hits real bytes."""
        body = b"".join(stream)
        if corrupt and body:
            with self._lock:
                pos = self._rng.randrange(len(body))
                self.injected["corrupt"] += 1
            body = body[:pos] + bytes([body[pos] ^ 0xFF]) + body[pos + 1 :]
        if fail:
            yield body[: len(body) // 2]
            raise self._error("get", key)
        if truncate and body:
            with self._lock:
                cut = self._rng.randrange(len(body))
                self.injected["truncate"] += 1
            body = body[:cut]
        if body:
            yield body

    def stat(self, key: str) -> ObjectInfo:
        if self._decide("stat"):
            raise self._error("stat", key)
        return self.inner.stat(key)

    def list(self, prefix: str = "", *, start_after: str | None = None) -> Iterator[ObjectInfo]:
        fail = self._decide("list")
        for index, info in enumerate(self.inner.list(prefix, start_after=start_after)):
            if fail and index == 1:
                raise self._error("list", prefix)
            yield info
        if fail:  # fewer than two objects: fail at the end instead
            raise self._error("list", prefix)

    def delete(self, key: str) -> None:
        if self._decide("delete"):
            raise self._error("delete", key)
        self.inner.delete(key)

    def describe(self) -> str:
        return f"faulty {self.inner.describe()}"
