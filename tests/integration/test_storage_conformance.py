"""One conformance suite for every ObjectStore backend: memory, local and S3 (SeaweedFS).

Every test runs against each backend through the port alone, so a backend that passes
can stand in for any other. Data is pseudo-random and compared by hash: a test can only
pass if the bytes really made the round trip.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from binhoard.config import LocalStorage
from binhoard.domain.errors import (
    ObjectNotFoundError,
    PermanentStorageError,
    PreconditionFailedError,
    TransientStorageError,
)
from binhoard.storage.backends import ObstoreStore, open_store
from binhoard.storage.store import DEFAULT_CHUNK, MemoryStore, ObjectStore, read_all
from tests.support.faultproxy import FaultProxy, ProxyFaultPlan
from tests.support.s3server import S3Server

if TYPE_CHECKING:
    from obstore.store import RetryConfig

MiB = 1024 * 1024
PART = 5 * MiB  # the smallest part S3 allows, so multipart tests stay small
CONCURRENCY = 4
BACKENDS = ["memory", "local", "s3"]


def _open(kind: str, request: pytest.FixtureRequest, tmp_path: Path, name: str) -> ObjectStore:
    if kind == "memory":
        return MemoryStore()
    if kind == "local":
        config = LocalStorage(storage_type="local", directory=tmp_path / name)
        return open_store(config, part_size=PART, concurrency=CONCURRENCY)
    server: S3Server = request.getfixturevalue("s3_server")
    # Each test (and each store in it) gets its own prefix in the shared bucket.
    prefix = f"conformance/{uuid.uuid4().hex[:12]}/{name}"
    return open_store(server.storage_config(prefix), part_size=PART, concurrency=CONCURRENCY)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return _open(backend, request, tmp_path, "site")


def stream(size: int, seed: int, digest: Any = None) -> Iterator[bytes]:
    """``size`` pseudo-random bytes in irregular chunks, as a one-shot generator.

    Chunk sizes do not line up with parts or with the read chunk size, and include empty
    chunks, which a producer is allowed to yield.
    """
    rng = random.Random(seed)
    sent = 0
    while sent < size:
        n = min(size - sent, rng.choice((0, 1, 7, 4096, 65_537, MiB + 3, 3 * MiB - 1)))
        chunk = rng.randbytes(n)
        if digest is not None:
            digest.update(chunk)
        sent += n
        yield chunk


def body(size: int, seed: int) -> bytes:
    return b"".join(stream(size, seed))


def sha256_of(chunks: Iterator[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    for chunk in chunks:
        digest.update(chunk)
        total += len(chunk)
    return digest.hexdigest(), total


# --------------------------------------------------------------------------- put / get


@pytest.mark.parametrize(
    "size",
    [0, 1, 1000, PART, PART + 1, 40 * MiB],
    ids=["empty", "1B", "1kB", "one-part", "part+1", "40MiB"],
)
def test_streamed_put_then_get_returns_the_same_bytes(
    store: ObjectStore, backend: str, size: int
) -> None:
    sent = hashlib.sha256()
    info = store.put("obj/data.bin", stream(size, seed=size, digest=sent))

    assert info.key == "obj/data.bin"
    assert info.size == size
    assert store.stat("obj/data.bin").size == size
    assert sha256_of(store.get("obj/data.bin")) == (sent.hexdigest(), size)
    if backend == "s3":
        # S3 ETags of multipart objects end in "-<parts>": proves which path was taken.
        etag = (info.etag or "").strip('"')
        if size > PART:
            assert etag.endswith(f"-{-(-size // PART)}"), etag
        else:
            assert "-" not in etag, etag


def test_put_accepts_bytes_lists_and_bytearrays(store: ObjectStore) -> None:
    store.put("a", [b"abc", bytearray(b"def"), memoryview(b"ghi")])
    store.put("b", [b"x" * 10])
    assert read_all(store, "a") == b"abcdefghi"
    assert read_all(store, "b") == b"x" * 10


def test_put_overwrites_when_not_conditional(store: ObjectStore) -> None:
    store.put("k", [b"first"])
    store.put("k", stream(PART + 10, seed=3))
    assert read_all(store, "k") == body(PART + 10, seed=3)
    store.put("k", [b"third"])
    assert read_all(store, "k") == b"third"


@pytest.mark.parametrize("fail_after", [100, 12 * MiB], ids=["first-part", "after-parts"])
def test_a_failing_producer_propagates_and_leaves_no_object(
    store: ObjectStore, fail_after: int
) -> None:
    class ProducerError(Exception):
        pass

    def failing() -> Iterator[bytes]:
        yield from stream(fail_after, seed=9)
        raise ProducerError("compression failed")

    with pytest.raises(ProducerError):
        store.put("partial", failing())
    with pytest.raises(ObjectNotFoundError):
        store.stat("partial")
    assert [i.key for i in store.list()] == []


def test_ranged_get(store: ObjectStore) -> None:
    size = 3 * DEFAULT_CHUNK + 123
    data = body(size, seed=1)
    store.put("r", iter([data]))
    cases = [
        (0, None),
        (0, 10),
        (5, 0),
        (100, 1000),
        (DEFAULT_CHUNK - 1, DEFAULT_CHUNK + 2),
        (size - 10, None),
        (size - 10, 100),  # past the end: what there is
        (size, None),
        (size, 10),
        (size + 5, None),
        (0, size),
        (1, size + 1000),
    ]
    for offset, length in cases:
        expected = data[offset:] if length is None else data[offset : offset + length]
        got = b"".join(store.get("r", offset=offset, length=length))
        assert len(got) == len(expected), (offset, length)
        assert got == expected, (offset, length)


def test_get_of_an_empty_object(store: ObjectStore) -> None:
    store.put("empty", iter(()))
    assert read_all(store, "empty") == b""
    assert b"".join(store.get("empty", offset=0, length=5)) == b""


def test_stat(store: ObjectStore) -> None:
    store.put("dir/file", [b"12345"])
    info = store.stat("dir/file")
    assert (info.key, info.size) == ("dir/file", 5)
    assert info.last_modified is not None


# --------------------------------------------------------------------------- errors


def test_missing_key_errors_name_the_key(store: ObjectStore) -> None:
    key = "no/such/object.json"
    for call in (
        lambda: store.get(key),  # raised by the call itself, before any iteration
        lambda: store.get(key, offset=3, length=4),
        lambda: store.get(key, offset=0, length=0),
        lambda: store.stat(key),
    ):
        with pytest.raises(ObjectNotFoundError) as raised:
            call()
        assert raised.value.key == key
        assert key in str(raised.value)


INVALID_KEYS = ["", "/a", "a/", "a//b", "a/../b", "..", ".", "./a", "a\\b", "a\0b"]


@pytest.mark.parametrize("key", INVALID_KEYS)
def test_invalid_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(PermanentStorageError):
        store.put(key, [b"x"])
    with pytest.raises(PermanentStorageError):
        store.get(key)
    with pytest.raises(PermanentStorageError):
        store.stat(key)
    with pytest.raises(PermanentStorageError):
        store.delete(key)
    assert list(store.list()) == []


def test_keys_with_unusual_characters_round_trip(store: ObjectStore) -> None:
    keys = ["sp ace", "pl+us", "per%20cent", "q?mark", "h#sh", "ünï/cödé", "t~lde", "a/.hidden"]
    for n, key in enumerate(keys):
        store.put(key, [key.encode(), bytes([n])])
    for n, key in enumerate(keys):
        assert read_all(store, key) == key.encode() + bytes([n])
    assert [i.key for i in store.list()] == sorted(keys)


# --------------------------------------------------------------------------- list


# "a/b/..." sorts after "a/b c" and "a/b-c" ("/" is 0x2f): a store that lists directory
# by directory gets this wrong.
LIST_KEYS = [
    "a/b/c",
    "a/b/d/e",
    "a/b c",
    "a/b-c",
    "a/b.c",
    "a/bc",
    "a/b0",
    "a/ü",
    "ab",
    "b/x",
    "binlogs/000001",
    "binlogs/000002",
    "binlogs/0000020",
]


@pytest.fixture
def listed(store: ObjectStore) -> ObjectStore:
    for n, key in enumerate(LIST_KEYS):
        store.put(key, [b"x" * n])
    return store


@pytest.mark.parametrize(
    "prefix",
    ["", "a", "a/", "a/b", "a/b/", "a/b/d/", "a/bc", "b", "binlogs/000002", "zzz", "a/b/c"],
)
def test_list_by_prefix_is_sorted_and_exact(listed: ObjectStore, prefix: str) -> None:
    infos = list(listed.list(prefix))
    expected = sorted(k for k in LIST_KEYS if k.startswith(prefix))
    assert [i.key for i in infos] == expected
    assert [i.size for i in infos] == [LIST_KEYS.index(k) for k in expected]


@pytest.mark.parametrize(
    ("prefix", "start_after"),
    [
        ("", "a/b/c"),
        ("a/", "a/b c"),
        ("a/b", "a/b/d/e"),
        ("binlogs/", "binlogs/000001"),
        ("binlogs/", "binlogs/0000015"),  # not a key: what sorts after it
        ("binlogs/", "a"),  # before the prefix: the whole prefix
        ("binlogs/", "binlogs/0000020"),  # the last key: nothing
        ("a/b/", "zzz"),
    ],
)
def test_list_starts_after_a_key(listed: ObjectStore, prefix: str, start_after: str) -> None:
    infos = list(listed.list(prefix, start_after=start_after))
    expected = sorted(k for k in LIST_KEYS if k.startswith(prefix) and k > start_after)
    assert [i.key for i in infos] == expected
    assert [i.size for i in infos] == [LIST_KEYS.index(k) for k in expected]


def test_list_after_delete(listed: ObjectStore) -> None:
    listed.delete("a/b/d/e")
    listed.delete("binlogs/000001")
    assert [i.key for i in listed.list("a/b/")] == ["a/b/c"]
    assert [i.key for i in listed.list("binlogs/")] == ["binlogs/000002", "binlogs/0000020"]


def test_list_pages_through_more_than_1000_objects(
    store: ObjectStore, backend: str, request: pytest.FixtureRequest
) -> None:
    """S3 answers at most 1000 keys per request; the store must follow the continuation."""
    keys = [f"many/{n:05d}" for n in range(1100)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, [k.encode()]), keys))
    store.put("many0", [b"outside the prefix"])
    store.put("man", [b"outside the prefix"])

    infos = list(store.list("many/"))
    assert [i.key for i in infos] == keys
    assert all(i.size == len(i.key) for i in infos)
    assert len(list(store.list())) == 1102
    assert [i.key for i in store.list("many/", start_after="many/01097")] == keys[-2:]

    if backend == "s3":
        # Prove that pages happened: count the requests of one listing on the wire.
        server: S3Server = request.getfixturevalue("s3_server")
        assert isinstance(store, ObstoreStore)
        config = server.storage_config(store.native.prefix or "")
        with FaultProxy(server.endpoint_url) as proxy:
            proxied = open_store(
                config.model_copy(update={"endpoint_url": proxy.url}),
                part_size=PART,
                concurrency=CONCURRENCY,
            )
            assert [i.key for i in proxied.list("many/")] == keys
            assert proxy.counts["requests"] == 2
            # Starting after a key skips the pages before it on the server: one request.
            tail = [i.key for i in proxied.list("many/", start_after="many/01097")]
            assert tail == keys[-2:]
            assert proxy.counts["requests"] == 3


def test_stores_with_different_prefixes_are_isolated(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Two sites side by side ("one", "one-two"): neither sees the other's objects."""
    if backend == "memory":
        pytest.skip("a MemoryStore has no location to share")
    one = _open(backend, request, tmp_path, "one")
    two = _open(backend, request, tmp_path, "one-two")
    one.put("x/1", [b"one"])
    two.put("x/1", [b"two"])
    two.put("x/2", [b"two"])

    assert [i.key for i in one.list()] == ["x/1"]
    assert [i.key for i in two.list("x/")] == ["x/1", "x/2"]
    assert read_all(one, "x/1") == b"one"
    one.delete("x/1")
    assert read_all(two, "x/1") == b"two"
    with pytest.raises(ObjectNotFoundError):
        one.stat("x/2")


# --------------------------------------------------------------------------- delete


def test_delete(store: ObjectStore) -> None:
    store.put("d/e/f", [b"1"])
    store.put("d/g", [b"2"])
    store.delete("d/e/f")
    with pytest.raises(ObjectNotFoundError):
        store.stat("d/e/f")
    with pytest.raises(ObjectNotFoundError):
        store.get("d/e/f")
    assert [i.key for i in store.list()] == ["d/g"]
    store.delete("d/e/f")  # deleting a missing key is fine
    store.delete("never/existed")
    store.put("d/e/f", [b"again"])
    assert read_all(store, "d/e/f") == b"again"


# --------------------------------------------------------------------------- if_absent


def test_if_absent_refuses_an_existing_key(store: ObjectStore) -> None:
    info = store.put("owner.json", stream(1000, seed=5), if_absent=True)
    assert info.size == 1000
    with pytest.raises(PreconditionFailedError) as raised:
        store.put("owner.json", [b"intruder"], if_absent=True)
    assert raised.value.key == "owner.json"
    assert "owner.json" in str(raised.value)
    assert read_all(store, "owner.json") == body(1000, seed=5)


def test_if_absent_after_delete_succeeds(store: ObjectStore) -> None:
    store.put("p", [b"1"], if_absent=True)
    store.delete("p")
    store.put("p", [b"2"], if_absent=True)
    assert read_all(store, "p") == b"2"


def test_if_absent_with_racing_writers_has_exactly_one_winner(store: ObjectStore) -> None:
    # SeaweedFS makes concurrent conditional PUTs of one key queue for a lock it polls
    # once a second: more racers or rounds make this test slow there, not stronger.
    racers = 6
    for round_ in range(3):
        key = f"promotions/{round_}.json"
        barrier = threading.Barrier(racers)

        def race(n: int, key: str = key, barrier: threading.Barrier = barrier) -> int | None:
            payload = f"racer {n} ".encode() * 1000
            barrier.wait()
            try:
                store.put(key, [payload], if_absent=True)
            except PreconditionFailedError:
                return None
            return n

        with ThreadPoolExecutor(racers) as pool:
            winners = [n for n in pool.map(race, range(racers)) if n is not None]
        assert len(winners) == 1, winners
        assert read_all(store, key) == f"racer {winners[0]} ".encode() * 1000


# --------------------------------------------------------------------------- s3 only


def test_s3_with_a_wrong_secret_is_a_permanent_error(s3_server: S3Server) -> None:
    wrong = "not-" + s3_server.secret_key[4:]
    store = open_store(
        s3_server.storage_config("wrong-secret", secret_key=wrong),
        part_size=PART,
        concurrency=CONCURRENCY,
    )
    for call in (
        lambda: store.put("k", [b"x"]),
        lambda: store.put("k", stream(PART + 1, seed=1)),
        lambda: store.put("k", [b"x"], if_absent=True),
        lambda: store.get("k"),
        lambda: store.stat("k"),
        lambda: list(store.list()),
        lambda: store.delete("k"),
    ):
        with pytest.raises(PermanentStorageError) as raised:
            call()
        message = str(raised.value)
        assert "SignatureDoesNotMatch" in message or "403" in message, message
        assert wrong not in message
        assert s3_server.secret_key not in message
        assert wrong not in store.describe()


def test_s3_missing_bucket_is_a_permanent_error(s3_server: S3Server) -> None:
    config = s3_server.storage_config().model_copy(update={"bucket": "no-such-bucket"})
    store = open_store(config, part_size=PART, concurrency=CONCURRENCY)
    with pytest.raises(PermanentStorageError) as raised:
        store.put("k", [b"x"])
    assert "does not exist" in str(raised.value)
    with pytest.raises(PermanentStorageError):
        list(store.list())


def test_s3_conditional_put_whose_answer_was_lost_is_a_transient_error(
    s3_server: S3Server,
) -> None:
    """The server stores an if-absent PUT but the connection drops before the answer.
    obstore does not retry that (the request was sent), so the backend must call it
    transient, never "already exists" nor success: ``RetryingStore`` then retries and
    recognises its own bytes (tests/integration/test_storage_faults.py)."""
    lose_first_put = ProxyFaultPlan(
        rate=1.0, kinds={"reset_after": 1}, methods=frozenset({"PUT"}), max_faults=1
    )
    quick: RetryConfig = {"max_retries": 3, "backoff": {"init_backoff": timedelta(milliseconds=10)}}
    config = s3_server.storage_config(f"lost-answer/{uuid.uuid4().hex[:12]}")
    with FaultProxy(s3_server.endpoint_url, lose_first_put) as proxy:
        store = open_store(
            config.model_copy(update={"endpoint_url": proxy.url}),
            part_size=PART,
            concurrency=CONCURRENCY,
            retry=quick,
        )
        with pytest.raises(TransientStorageError):
            store.put("owner", [b"writer-1"], if_absent=True)
        assert proxy.counts["reset_after"] == 1
        with pytest.raises(PreconditionFailedError):
            store.put("owner", [b"writer-1"], if_absent=True)
    assert read_all(store, "owner") == b"writer-1"


_MEASURE_UPLOAD = """
import json, os, resource, sys
from binhoard.config import S3Storage
from binhoard.storage.backends import open_store

config = S3Storage.model_validate_json(os.environ["BH_CONFIG"])
store = open_store(config, part_size=5 * 2**20, concurrency=2)
block = os.urandom(2**20)
def fresh(n):  # a new object per chunk, as a real producer makes
    for _ in range(n):
        yield bytes(memoryview(block))
store.put("warm-up", fresh(1))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
info = store.put("big", fresh(150))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"size": info.size, "grew_kib": after - before}))
"""


def test_s3_streamed_upload_memory_is_bounded_by_parts(s3_server: S3Server) -> None:
    """150 MiB through 5 MiB parts, 2 in flight: the process grows by a few parts, not by
    the object (about part_size x (concurrency + 1) is expected)."""
    config = s3_server.storage_config(f"memory/{uuid.uuid4().hex[:12]}")
    payload = config.model_dump(mode="json")
    payload["aws_secret_access_key"] = s3_server.secret_key  # dumped masked otherwise
    env = {**os.environ, "BH_CONFIG": json.dumps(payload)}
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE_UPLOAD],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result = json.loads(done.stdout)
    assert result["size"] == 150 * MiB
    assert result["grew_kib"] * 1024 < 8 * PART, result


def test_s3_one_shot_multipart_upload_survives_failing_parts(s3_server: S3Server) -> None:
    """A generator cannot be replayed, so failed parts must be retried below the port:
    obstore does it (parts are idempotent), for 503s and connections reset before or
    after the part was sent."""
    plan = ProxyFaultPlan(
        rate=0.3,
        kinds={"slowdown": 1, "reset": 1, "reset_after": 1},
        methods=frozenset({"PUT"}),
        seed=7,
    )
    quick: RetryConfig = {"max_retries": 5, "backoff": {"init_backoff": timedelta(milliseconds=10)}}
    config = s3_server.storage_config(f"part-faults/{uuid.uuid4().hex[:12]}")
    with FaultProxy(s3_server.endpoint_url, plan) as proxy:
        store = open_store(
            config.model_copy(update={"endpoint_url": proxy.url}),
            part_size=PART,
            concurrency=CONCURRENCY,
            retry=quick,
        )
        sent = hashlib.sha256()
        info = store.put("big", stream(6 * PART + 123, seed=11, digest=sent))
        assert proxy.faults >= 2, proxy.counts
    assert info.size == 6 * PART + 123
    direct = open_store(config, part_size=PART, concurrency=CONCURRENCY)
    assert sha256_of(direct.get("big")) == (sent.hexdigest(), 6 * PART + 123)
