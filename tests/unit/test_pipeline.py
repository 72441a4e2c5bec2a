"""The storage pipeline: round trips, digests, and that corruption is caught, by key.

The stored object is an age file whose plaintext is the compressed stream; age
authenticates it in 64 KiB chunks (plus 16 bytes of tag each), which is what the
"nothing unauthenticated" tests below count in.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from binhoard.config import BackupSite
from binhoard.crypto.age import Identity
from binhoard.domain.errors import (
    IntegrityError,
    ObjectNotFoundError,
    PreconditionFailedError,
    TransientStorageError,
    UsageError,
)
from binhoard.storage import pipeline
from binhoard.storage.pipeline import (
    ALGORITHMS,
    Algorithm,
    Codec,
    ObjectDigest,
    algorithm_for_key,
    decryption_identities,
    download,
    download_to_file,
    encode,
    identities_from_site,
    suffix,
    upload,
)
from binhoard.storage.store import MemoryStore, ObjectInfo

IDENTITY = Identity.generate()
PUBLIC = str(IDENTITY.recipient)
AGE_CHUNK = 64 * 1024
AGE_STORED_CHUNK = AGE_CHUNK + 16


def codec_for(algorithm: Algorithm, *recipients: str) -> Codec:
    # lzma's default (6) is slow for no benefit in tests; zstd uses its worker threads.
    level = 0 if algorithm == "lzma" else None
    return Codec(algorithm, recipients or (PUBLIC,), level=level)


def backup_like(size: int, seed: int = 1) -> bytes:
    """Text-like pages mixed with random ones: compressible, but not trivially."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(300)]
    parts: list[bytes] = []
    total = 0
    while total < size:
        random_page = rng.random() < 0.2
        part = rng.randbytes(4096) if random_page else b" ".join(rng.choices(words, k=600))
        parts.append(part)
        total += len(part)
    return b"".join(parts)[:size]


def split(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


def digest_of(data: bytes, stored: bytes) -> ObjectDigest:
    return ObjectDigest(
        plain_size=len(data),
        plain_sha256=hashlib.sha256(data).hexdigest(),
        stored_size=len(stored),
        stored_sha256=hashlib.sha256(stored).hexdigest(),
    )


def stored_bytes(store: MemoryStore, key: str) -> bytes:
    return b"".join(store.get(key))


def consume(chunks: Iterator[bytes]) -> tuple[bytes, BaseException | None]:
    """Everything a consumer received before the iterator raised, and what it raised."""
    received: list[bytes] = []
    try:
        for chunk in chunks:
            received.append(chunk)
    except Exception as exc:  # noqa: BLE001 - returned to the test, which checks it
        return b"".join(received), exc
    return b"".join(received), None


def workers_alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("binhoard-")]


def wait_for_no_workers() -> None:
    for thread in workers_alive():
        thread.join(5)
    assert workers_alive() == []


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_round_trip_and_digests_match_hashlib(algorithm: Algorithm) -> None:
    store = MemoryStore()
    data = backup_like(700_000)
    key = f"obj/data{suffix(algorithm)}"
    digest = upload(store, key, split(data, [100_000] * 10), codec_for(algorithm))
    stored = stored_bytes(store, key)
    assert digest == digest_of(data, stored)
    assert stored.startswith(b"age-encryption.org/v1\n")
    if algorithm != "none":
        assert digest.stored_size < digest.plain_size  # it did compress
    out = b"".join(download(store, key, expected=digest, identities=[IDENTITY]))
    assert out == data
    wait_for_no_workers()


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_empty_input_round_trips(algorithm: Algorithm) -> None:
    store = MemoryStore()
    key = f"empty{suffix(algorithm)}"
    for chunks in ([], [b"", b""]):
        digest = upload(store, key, chunks, codec_for(algorithm))
        assert digest.plain_size == 0
        assert digest.plain_sha256 == hashlib.sha256(b"").hexdigest()
        assert digest == digest_of(b"", stored_bytes(store, key))
        assert list(download(store, key, expected=digest, identities=[IDENTITY])) == []


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_odd_chunk_sizes_and_buffer_types(algorithm: Algorithm) -> None:
    store = MemoryStore()
    data = backup_like(3_500_000, seed=2)
    # One byte, primes, exactly an age chunk, and one chunk larger than the 1 MiB slices.
    pieces = list(split(data, [1, 7, 65_536, 65_537, 3, 2_600_000, 13]))
    chunks: list[Any] = [
        bytearray(p) if i % 3 == 1 else memoryview(p) if i % 3 == 2 else p
        for i, p in enumerate(pieces)
    ]
    key = f"odd{suffix(algorithm)}"
    digest = upload(store, key, chunks, codec_for(algorithm))
    assert digest.plain_sha256 == hashlib.sha256(data).hexdigest()
    assert b"".join(download(store, key, expected=digest, identities=[IDENTITY])) == data


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    algorithm=st.sampled_from(ALGORITHMS),
    data=st.binary(max_size=200_000) | st.builds(backup_like, st.integers(0, 400_000)),
    sizes=st.lists(st.integers(1, 150_000), max_size=20),
)
def test_any_data_in_any_chunks_round_trips(
    algorithm: Algorithm, data: bytes, sizes: list[int]
) -> None:
    store = MemoryStore()
    key = f"h{suffix(algorithm)}"
    digest = upload(store, key, split(data, sizes), codec_for(algorithm))
    assert digest == digest_of(data, stored_bytes(store, key))
    assert b"".join(download(store, key, expected=digest, identities=[IDENTITY])) == data


def test_every_recipient_decrypts_alone() -> None:
    identities = [Identity.generate() for _ in range(3)]
    codec = Codec("zstd", tuple(str(i.recipient) for i in identities))
    store = MemoryStore()
    data = backup_like(200_000)
    digest = upload(store, "multi.zst.age", [data], codec)
    for identity in identities:
        assert b"".join(
            download(store, "multi.zst.age", expected=digest, identities=[identity])
        ) == (data)
    # Several configured private keys: the matching one is used, whatever its position.
    stranger = Identity.generate()
    out = download(store, "multi.zst.age", expected=digest, identities=[stranger, identities[2]])
    assert b"".join(out) == data


def test_zeros_decompress_in_bounded_pieces() -> None:
    """A frame of zeros expands thousands of times; no piece may be a big allocation."""
    store = MemoryStore()
    data = bytes(64 * 1024 * 1024)
    digest = upload(store, "zeros.zst.age", split(data, [4 << 20] * 16), codec_for("zstd"))
    assert digest.stored_size < 100_000
    largest = 0
    total = 0
    for piece in download(store, "zeros.zst.age", expected=digest, identities=[IDENTITY]):
        largest = max(largest, len(piece))
        total += len(piece)
    assert total == len(data)
    assert largest <= 1024 * 1024


def test_incompressible_input_is_encoded_in_bounded_pieces() -> None:
    """zstd's workers finish jobs of several MiB at once; what leaves the encoder stays small.

    With ``compressobj`` one call returned two jobs' output (up to 12 MiB) on random
    input, and each stage behind it held such a piece, several times over.
    """
    data = random.Random(7).randbytes(40 * 1024 * 1024)
    largest = 0
    with encode(split(data, [1 << 20] * 40), Codec("zstd", (PUBLIC,), threads=2)) as stream:
        for chunk in stream:
            largest = max(largest, len(chunk))
    # One compressed piece (1 MiB) and the age chunks it completes, coalesced.
    assert largest <= 2 * 1024 * 1024


# Uploads 256 MiB of random bytes through the real pipeline (default settings, as the
# command applies them) to a local directory, and prints the growth of peak RSS.
_RSS_CHILD = """
import random, sys
from binhoard.allocator import keep_freed_memory
from binhoard.crypto.age import Identity
from binhoard.storage.backends import LocalStore
from binhoard.storage.pipeline import Codec, upload

def kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

keep_freed_memory()
rng = random.Random(1)
chunks = (rng.randbytes(1 << 20) for _ in range(256))
codec = Codec("zstd", (str(Identity.generate().recipient),), level=3, threads=2)
before = kib("VmRSS")
upload(LocalStore(sys.argv[1]), "random.zst.age", chunks, codec)
print(kib("VmHWM") - before)
"""
# Measured on the development machine (docs/benchmarks.md): 26-29 MiB with 1 MiB zstd
# jobs and 1 MiB output pieces; 40 MiB with 2 MiB jobs, 66 MiB with 4 MiB, 334 MiB with
# ``compressobj`` and 6 MiB jobs. The S3 store's parts (80 MiB by default) and the
# interpreter leave the pipeline about this much under the 200 MB bound.
_RSS_GROWTH_BOUND_MIB = 40


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_upload_of_incompressible_data_stays_within_its_memory_bound(tmp_path: Path) -> None:
    """Peak RSS of a process uploading random bytes grows by a bounded amount.

    VmHWM rather than ``ru_maxrss``, which a child inherits from the process that spawned
    it (here pytest, already larger than the bound). Run in a fresh process so that the
    figure is the upload's alone.
    """
    done = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    growth_mib = int(done.stdout.split()[-1]) / 1024
    assert growth_mib < _RSS_GROWTH_BOUND_MIB, f"peak RSS grew by {growth_mib:.0f} MiB"


# --- corruption ----------------------------------------------------------------------


def stored_object(
    algorithm: Algorithm, data: bytes, key: str = "site/obj"
) -> tuple[MemoryStore, str, ObjectDigest, bytes]:
    store = MemoryStore()
    full_key = key + suffix(algorithm)
    digest = upload(store, full_key, [data], codec_for(algorithm))
    return store, full_key, digest, stored_bytes(store, full_key)


def body_start(stored: bytes) -> int:
    """Where the age payload starts: after the header's MAC line and the 16-byte nonce."""
    return stored.index(b"\n", stored.index(b"\n---")) + 1 + 16


def flipped(stored: bytes, position: int) -> bytes:
    changed = bytearray(stored)
    changed[position] ^= 0x01
    return bytes(changed)


def assert_rejected(
    store: MemoryStore, key: str, digest: ObjectDigest, data: bytes
) -> tuple[bytes, IntegrityError]:
    received, error = consume(download(store, key, expected=digest, identities=[IDENTITY]))
    assert isinstance(error, IntegrityError), error
    assert key in str(error)
    assert error.key == key
    assert data.startswith(received)
    assert len(received) < len(data)
    return received, error


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("where", ["first", "header-mac", "nonce", "middle", "last"])
def test_a_flipped_byte_anywhere_is_rejected(algorithm: Algorithm, where: str) -> None:
    data = backup_like(600_000, seed=3)
    store, key, digest, stored = stored_object(algorithm, data)
    start = body_start(stored)
    position = {
        "first": 0,
        "header-mac": stored.index(b"\n---") + 10,
        "nonce": start - 1,
        "middle": (start + len(stored)) // 2,
        "last": len(stored) - 1,
    }[where]
    store.replace_raw(key, flipped(stored, position))
    received, _ = assert_rejected(store, key, digest, data)
    if where in ("first", "header-mac", "nonce"):
        assert received == b""


def test_only_authenticated_chunks_reach_the_consumer() -> None:
    """Uncompressed, plaintext offsets are age offsets: count what was handed on."""
    data = os.urandom(10 * AGE_CHUNK + 1000)
    store, key, digest, stored = stored_object("none", data)
    start = body_start(stored)
    for bad_chunk in (0, 1, 4, 10):
        position = start + bad_chunk * AGE_STORED_CHUNK + 100
        store.replace_raw(key, flipped(stored, position))
        received, error = assert_rejected(store, key, digest, data)
        assert len(received) <= bad_chunk * AGE_CHUNK
        assert "age decryption failed" in str(error)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("cut", [1, 16, AGE_STORED_CHUNK, "to-a-chunk-boundary", "to-header"])
def test_a_cut_tail_is_rejected(algorithm: Algorithm, cut: int | str) -> None:
    data = backup_like(900_000, seed=4) if algorithm != "none" else os.urandom(5 * AGE_CHUNK)
    store, key, digest, stored = stored_object(algorithm, data)
    start = body_start(stored)
    if cut == "to-a-chunk-boundary":
        chunks = (len(stored) - start) // AGE_STORED_CHUNK
        length = start + max(1, chunks - 1) * AGE_STORED_CHUNK
    elif cut == "to-header":
        length = start
    else:
        assert isinstance(cut, int)
        length = len(stored) - cut
    store.replace_raw(key, stored[:length])
    assert_rejected(store, key, digest, data)


def test_appended_bytes_are_rejected_before_they_are_downloaded() -> None:
    data = backup_like(300_000)
    store, key, digest, stored = stored_object("zstd", data)
    store.replace_raw(key, stored + b"x" * 100)
    _, error = assert_rejected(store, key, digest, data)
    assert "larger than the recorded" in str(error)


def test_another_valid_object_fails_the_final_check_and_the_last_chunk_is_held() -> None:
    """age cannot tell a swapped object; the recorded digests can, before the end."""
    data = backup_like(2_000_000)
    store, key, digest, _ = stored_object("zstd", data)
    # Change one byte near the end, trying positions until the stored size is the same,
    # so that only the sha256 can tell.
    for back in range(1, 2000):
        other = bytearray(data)
        other[-back] ^= 1
        if upload(store, key, [bytes(other)], codec_for("zstd")).stored_size == digest.stored_size:
            break
    else:
        pytest.fail("no one-byte change kept the stored size")
    received, error = assert_rejected(store, key, digest, data)
    assert "sha256" in str(error)
    # Everything but the held-back last piece went through (it was authentic age).
    assert len(received) >= len(data) - 1024 * 1024


@pytest.mark.parametrize("field", ["plain_size", "plain_sha256", "stored_size", "stored_sha256"])
def test_a_wrong_recorded_digest_is_rejected(field: str) -> None:
    data = backup_like(300_000)
    store, key, digest, _ = stored_object("zstd", data)
    values = dict(digest.__dict__)
    values[field] = values[field] + 1 if "size" in field else "0" * 64
    _, error = assert_rejected(store, key, ObjectDigest(**values), data)
    assert ("size" in str(error)) if "size" in field else ("sha256" in str(error))


def test_a_wrong_private_key_says_so() -> None:
    data = b"secret rows" * 1000
    store, key, digest, _ = stored_object("zstd", data)
    stranger = Identity.generate()
    received, error = consume(download(store, key, expected=digest, identities=[stranger]))
    assert received == b""
    assert isinstance(error, IntegrityError)
    assert key in str(error)
    assert "none of the 1 configured private key(s) can decrypt it" in str(error)


def test_no_private_key_is_a_usage_error() -> None:
    store, key, digest, _ = stored_object("zstd", b"x")
    with pytest.raises(UsageError, match="no private key is configured"):
        download(store, key, expected=digest, identities=[])


def test_a_missing_object_is_not_found_not_corrupt() -> None:
    digest = digest_of(b"", b"")
    with pytest.raises(ObjectNotFoundError):
        download(MemoryStore(), "nope.zst.age", expected=digest, identities=[IDENTITY])


def test_corrupt_compressed_stream_inside_valid_age_is_an_integrity_error() -> None:
    """Someone with the public key can write a valid age file of garbage."""
    store = MemoryStore()
    garbage = b"\x28\xb5\x2f\xfd" + os.urandom(5000)
    upload(store, "bad.zst.age", [garbage], codec_for("none"))
    stored = stored_bytes(store, "bad.zst.age")
    digest = digest_of(b"whatever", stored)
    _, error = consume(download(store, "bad.zst.age", expected=digest, identities=[IDENTITY]))
    assert isinstance(error, IntegrityError)
    assert "zstd decompression failed" in str(error)


@pytest.mark.parametrize("algorithm", ["zstd", "snappy", "lzma"])
def test_data_after_the_compressed_stream_is_rejected(algorithm: Algorithm) -> None:
    data = backup_like(200_000)
    store = MemoryStore()
    key = f"t{suffix(algorithm)}"
    # A well-formed compressed stream plus trailing bytes, stored as if uncompressed.
    compressor = pipeline._compressor(codec_for(algorithm))
    compressed = b"".join([*compressor.compress(data), *compressor.flush()]) + b"\x00" * (
        AGE_CHUNK * 3
    )
    upload(store, key, [compressed], codec_for("none"))
    digest = digest_of(data, stored_bytes(store, key))
    _, error = consume(download(store, key, expected=digest, identities=[IDENTITY]))
    assert isinstance(error, IntegrityError)
    assert "data follows the end" in str(error) or "decompression failed" in str(error)


# --- threads: early stops and errors --------------------------------------------------


def test_input_errors_propagate_unchanged_and_the_worker_ends() -> None:
    class BoomError(Exception):
        pass

    def chunks() -> Iterator[bytes]:
        yield b"a" * 3_000_000
        raise BoomError("mariabackup died")

    with pytest.raises(BoomError, match="mariabackup died"):
        upload(MemoryStore(), "x.zst.age", chunks(), codec_for("zstd"))
    wait_for_no_workers()


def test_a_consumer_that_stops_early_stops_the_worker_and_closes_the_input() -> None:
    closed = threading.Event()

    def endless() -> Iterator[bytes]:
        try:
            while True:
                yield os.urandom(1 << 20)
        finally:
            closed.set()

    stream = encode(endless(), codec_for("zstd"))
    next(stream)
    next(stream)
    stream.close()
    wait_for_no_workers()
    assert closed.is_set()
    with pytest.raises(RuntimeError):
        _ = stream.digest


def test_a_failing_put_cancels_the_worker() -> None:
    store = MemoryStore()
    upload(store, "k.zst.age", [b"first"], codec_for("zstd"))
    with pytest.raises(PreconditionFailedError):
        upload(store, "k.zst.age", [os.urandom(5 << 20)], codec_for("zstd"), if_absent=True)
    wait_for_no_workers()


class FlakyStore(MemoryStore):
    """Fails with a transient error after the first chunk of every read."""

    def get(self, key: str, *, offset: int = 0, length: int | None = None) -> Iterator[bytes]:
        inner = super().get(key, offset=offset, length=length)

        def chunks() -> Iterator[bytes]:
            yield next(inner)
            raise TransientStorageError("connection reset")

        return chunks()


def test_storage_errors_while_downloading_propagate_unchanged() -> None:
    store = FlakyStore()
    data = os.urandom(3 << 20)
    digest = upload(store, "f.age", [data], codec_for("none"))
    received, error = consume(download(store, "f.age", expected=digest, identities=[IDENTITY]))
    assert isinstance(error, TransientStorageError)
    assert data.startswith(received)
    wait_for_no_workers()


def test_a_consumer_that_stops_downloading_early_stops_the_worker() -> None:
    store = MemoryStore()
    data = os.urandom(8 << 20)
    digest = upload(store, "big.age", [data], codec_for("none"))
    chunks = download(store, "big.age", expected=digest, identities=[IDENTITY])
    next(chunks)
    chunks.close()  # type: ignore[attr-defined]
    wait_for_no_workers()


def test_a_store_that_does_not_read_everything_is_noticed() -> None:
    class LazyStore(MemoryStore):
        def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
            next(iter(data))
            return ObjectInfo(key=key, size=1)

    with pytest.raises(RuntimeError, match="not been read to its end"):
        upload(LazyStore(), "l.zst.age", [b"x" * 100], codec_for("zstd"))
    wait_for_no_workers()


# --- download_to_file ----------------------------------------------------------------


def test_download_to_file_writes_only_a_verified_file(tmp_path: Path) -> None:
    data = backup_like(1_500_000)
    store, key, digest, stored = stored_object("zstd", data)
    target = tmp_path / "my.cnf"
    download_to_file(store, key, target, expected=digest, identities=[IDENTITY])
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.cnf"]

    target.write_bytes(b"previous content")
    store.replace_raw(key, flipped(stored, len(stored) // 2))
    with pytest.raises(IntegrityError, match=key):
        download_to_file(store, key, target, expected=digest, identities=[IDENTITY])
    assert target.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my.cnf"]


# --- codec and keys ------------------------------------------------------------------


def site(**compression: Any) -> BackupSite:
    return BackupSite.model_validate(
        {
            "object_storage": {"storage_type": "local", "directory": "/tmp/site"},
            "encryption_keys": {"public": [PUBLIC], "private": [IDENTITY.secret_text()]},
            "compression": compression,
        }
    )


def test_codec_and_identities_from_site_settings() -> None:
    codec = Codec.from_site(site())
    assert (codec.algorithm, codec.level, codec.recipients) == ("zstd", None, (PUBLIC,))
    assert codec.suffix == ".zst.age"
    assert codec.zstd_workers >= 1  # 0 = one per core
    assert Codec.from_site(site(threads=-1)).zstd_workers == 0
    assert Codec.from_site(site(threads=3)).zstd_workers == 3
    lzma = Codec.from_site(site(algorithm="lzma", level=1))
    assert (lzma.algorithm, lzma.level, lzma.suffix) == ("lzma", 1, ".xz.age")
    identities = identities_from_site(site())
    assert [i.secret_text() for i in identities] == [IDENTITY.secret_text()]
    assert decryption_identities(site().encryption_keys)[0].secret_text() == IDENTITY.secret_text()


@pytest.mark.parametrize(
    ("algorithm", "level", "message"),
    [
        ("zstd", 23, "zstd compression level"),
        ("lzma", 10, "lzma compression level must be 0..9"),
        ("snappy", 1, "has no levels"),
        ("none", 1, "has no levels"),
    ],
)
def test_invalid_levels_fail_before_any_data(
    algorithm: Algorithm, level: int, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        Codec(algorithm, (PUBLIC,), level=level)


def test_recipients_are_checked() -> None:
    with pytest.raises(UsageError, match="at least one age recipient"):
        Codec("zstd", ())
    with pytest.raises(UsageError, match="not an age X25519 recipient"):
        Codec("zstd", ("age1notakey",))


def test_suffixes_name_the_compression() -> None:
    assert [suffix(a) for a in ALGORITHMS] == [".zst.age", ".snappy.age", ".xz.age", ".age"]
    for algorithm in ALGORITHMS:
        assert algorithm_for_key(f"backups/x/data.xbstream{suffix(algorithm)}") == algorithm
    with pytest.raises(UsageError):
        algorithm_for_key("backups/x/manifest.json")


# --- standard tools ------------------------------------------------------------------

needs_age = pytest.mark.skipif(shutil.which("age") is None, reason="the age CLI is not installed")


@needs_age
@pytest.mark.parametrize(("algorithm", "tool"), [("zstd", "zstd"), ("lzma", "xz"), ("none", None)])
def test_standard_tools_read_stored_objects(
    tmp_path: Path, algorithm: Algorithm, tool: str | None
) -> None:
    if tool is not None and shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")
    data = backup_like(2_000_000)
    _, _, _, stored = stored_object(algorithm, data)
    key_file = tmp_path / "key.txt"
    key_file.write_text(IDENTITY.secret_text() + "\n")
    decrypted = subprocess.run(
        ["age", "-d", "-i", str(key_file)], input=stored, capture_output=True, check=True
    ).stdout
    plain = (
        decrypted
        if tool is None
        else subprocess.run(
            [tool, "-d", "-c"], input=decrypted, capture_output=True, check=True
        ).stdout
    )
    assert plain == data


@needs_age
@pytest.mark.skipif(shutil.which("zstd") is None, reason="the zstd CLI is not installed")
def test_objects_written_by_standard_tools_are_read() -> None:
    data = backup_like(1_000_000)
    compressed = subprocess.run(
        ["zstd", "-3", "-c", "--check"], input=data, capture_output=True, check=True
    ).stdout
    stored = subprocess.run(
        ["age", "-r", PUBLIC], input=compressed, capture_output=True, check=True
    ).stdout
    store = MemoryStore()
    store.replace_raw("cli.zst.age", stored)
    digest = digest_of(data, stored)
    assert b"".join(download(store, "cli.zst.age", expected=digest, identities=[IDENTITY])) == data


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(max_size=300_000) | st.builds(backup_like, st.integers(0, 600_000)),
    level=st.sampled_from([-5, 1, 3, 12]),
    threads=st.sampled_from([0, 2]),
    content_size=st.booleans(),
    checksum=st.booleans(),
    cuts=st.lists(st.integers(1, 70_000), max_size=30),
)
def test_the_zstd_frame_walker_finds_the_exact_end(
    *, data: bytes, level: int, threads: int, content_size: bool, checksum: bool, cuts: list[int]
) -> None:
    """Whatever the frame's options, the block walk ends where the frame does."""
    cctx = zstandard.ZstdCompressor(
        level=level, threads=threads, write_content_size=content_size, write_checksum=checksum
    )
    frame = cctx.compress(data)
    walker = pipeline._ZstdFrameEnd()
    used = 0
    for piece in split(frame + b"trailing bytes", cuts):
        used += walker.feed(piece)
    assert walker.done
    assert used == len(frame)


def test_an_abandoned_stream_stops_its_worker() -> None:
    closed = threading.Event()

    def endless() -> Iterator[bytes]:
        try:
            while True:
                yield os.urandom(1 << 20)
        finally:
            closed.set()

    stream = encode(endless(), codec_for("zstd"))
    next(stream)
    del stream  # neither closed nor exhausted
    wait_for_no_workers()
    assert closed.is_set()


@pytest.mark.parametrize(("level", "threads"), [(-5, 0), (1, -1), (19, 2), (3, 1)])
def test_zstd_levels_and_worker_counts(level: int, threads: int) -> None:
    store = MemoryStore()
    data = backup_like(3_000_000)
    codec = Codec("zstd", (PUBLIC,), level=level, threads=threads)
    digest = upload(store, "l.zst.age", [data], codec)
    assert b"".join(download(store, "l.zst.age", expected=digest, identities=[IDENTITY])) == data


FLIP_DATA = os.urandom(6 * AGE_CHUNK + 333)


@settings(max_examples=60, deadline=None)
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7))
def test_any_flipped_bit_is_caught_and_only_earlier_chunks_were_handed_on(
    where: float, bit: int
) -> None:
    store, key, digest, stored = stored_object("none", FLIP_DATA)
    position = int(where * len(stored))
    changed = bytearray(stored)
    changed[position] ^= 1 << bit
    store.replace_raw(key, bytes(changed))
    received, _ = assert_rejected(store, key, digest, FLIP_DATA)
    start = body_start(stored)
    # Chunks wholly before the damaged one may have been handed on; nothing from it or after.
    intact_chunks = (position - start) // AGE_STORED_CHUNK if position >= start else 0
    assert len(received) <= intact_chunks * AGE_CHUNK
