"""The streaming pipeline between plaintext and stored objects.

Upload: plaintext chunks -> sha256 -> compress -> age-encrypt -> sha256 -> object store.
Download: object store -> sha256 -> age-decrypt -> decompress -> sha256 -> plaintext.

A stored object is a standard age file (binary, X25519 recipients) whose plaintext is the
compressed stream (docs/format.md, "Object framing"), so an operator can always fall back
to ``age -d -i key.txt obj | zstd -d``. The sizes and sha256 of both the stored bytes and
the plaintext are returned as an ``ObjectDigest``; the caller records them in whatever
references the object (manifest, catalog) and hands them back to ``download``.

Memory stays bounded whatever the object size: nothing is collected whole, chunks of at
most a few MiB flow through bounded queues. zstd's worker threads add their own buffers
(20-25 MiB at level 3 with two workers, see ``_ZstdCompressor``).

Threads. Encryption is age (``binhoard.storage.age``, on OpenSSL's ChaCha20-Poly1305),
which, like hashing, compression and I/O, releases the GIL, so the stages overlap:

* upload: a worker iterates the caller's chunks, hashes, compresses (zstd in its own
  worker threads) and encrypts; the caller's thread (the store's ``put``) hashes the
  result and writes it;
* download: one worker fetches, hashes and decrypts, a second decompresses, and the
  caller's thread uses the plaintext (and hashes it, if asked to).

A worker is told to stop (through its queue and a cancel flag) when the consumer goes
away early; its exceptions are re-raised in the consumer's thread.

Verification on download: age authenticates every 64 KiB chunk before it releases it and
detects truncation at the end, so only authenticated bytes reach the decompressor. The
recorded size and sha256 of the stored bytes, the plaintext size and the compression
format's own check (zstd's content checksum, xz's CRC64, snappy's CRC32C per chunk) are
checked; so is the plaintext sha256 unless the caller opts out (``verify_plaintext``):
the stored sha256 already pins the exact bytes, decryption and decompression are
deterministic, and the format checks cover the plaintext end to end, so a caller whose
data carries checks of its own (xbstream's CRC32 per chunk, InnoDB page checksums) can
skip its 0.6 CPU s/GiB. The last plaintext chunk is held back until every check has
passed, so a consumer that stops at a format's own end marker (a tar or xbstream reader)
never completes on unverified data. Everything before it has been handed on already: a
streaming consumer must be able to roll back (extract into a directory that is
discarded on failure). Consumers that cannot, use ``download_to_file``.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import queue
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, Literal, Protocol, cast, get_args

import cramjam
import zstandard

from binhoard.crypto.age import (
    AgeError,
    Decryptor,
    Encryptor,
    Identity,
    NoMatchingKeyError,
    Recipient,
)
from binhoard.domain.errors import IntegrityError, UsageError
from binhoard.storage.store import ObjectStore

Algorithm = Literal["zstd", "snappy", "lzma", "none"]
ALGORITHMS: Final[tuple[Algorithm, ...]] = get_args(Algorithm)

# Plaintext chunk types accepted by ``encode``; anything with the buffer protocol that
# hashlib and the compressors take.
Chunk = bytes | bytearray | memoryview

_SUFFIXES: Final[dict[Algorithm, str]] = {
    "zstd": ".zst.age",
    "snappy": ".snappy.age",
    "lzma": ".xz.age",
    "none": ".age",
}
_DEFAULT_LEVELS: Final[dict[Algorithm, int]] = {"zstd": 3, "lzma": 6}
_ZSTD_MIN_LEVEL: Final = -(1 << 17)
_ZSTD_JOB: Final = 1024 * 1024  # zstd raises it to the overlap where that is larger

# Sizes. Large enough that per-chunk Python overhead is negligible next to the C work,
# small enough that a handful of them in flight is still "a few MiB".
_MIB: Final = 1024 * 1024
_PLAIN_SLICE: Final = _MIB  # the most plaintext fed to a compressor in one call
_STORED_CHUNK: Final = _MIB  # encrypted output is coalesced to this before it is queued
_DECRYPTED_CHUNK: Final = 256 * 1024  # decrypted (compressed) bytes, coalesced likewise
_PLAIN_OUT: Final = 512 * 1024  # the most plaintext one decompression step produces
_QUEUE_DEPTH: Final = 4
_POLL_SECONDS: Final = 0.1  # how quickly a blocked worker notices that it was cancelled
_JOIN_SECONDS: Final = 10.0

_XZ_MEMLIMIT: Final = 256 * 1024 * 1024
_SNAPPY_STREAM_ID: Final = b"\xff\x06\x00\x00sNaPpY"
_SNAPPY_BATCH: Final = 16  # chunks (data ones hold <= 64 KiB of plaintext) per decompress call


def suffix(algorithm: Algorithm) -> str:
    """The key suffix of an object stored with ``algorithm``: ``.zst.age``, ``.age``, ..."""
    return _SUFFIXES[algorithm]


def algorithm_for_key(key: str) -> Algorithm:
    """The compression of an object, from its key's suffix (see ``suffix``)."""
    for algorithm, ending in _SUFFIXES.items():
        if algorithm != "none" and key.endswith(ending):
            return algorithm
    if key.endswith(_SUFFIXES["none"]):
        return "none"
    raise UsageError(f"cannot tell the compression of {key}: its name does not end in .age")


@dataclass(frozen=True)
class ObjectDigest:
    """Sizes and sha256 (lowercase hex) of an object's stored bytes and of its plaintext."""

    plain_size: int
    plain_sha256: str
    stored_size: int
    stored_sha256: str


# Structural views of the settings (``binhoard.config``): storage may import only the
# domain (docs/architecture.md), and these are all the pipeline needs of them.
class CompressionSettingsLike(Protocol):
    @property
    def algorithm(self) -> str: ...
    @property
    def level(self) -> int | None: ...
    @property
    def threads(self) -> int: ...


class SecretLike(Protocol):
    def get_secret_value(self) -> str: ...


class EncryptionKeysLike(Protocol):
    @property
    def public(self) -> Sequence[str]: ...
    @property
    def private(self) -> Sequence[SecretLike]: ...


class BackupSiteLike(Protocol):
    @property
    def compression(self) -> CompressionSettingsLike: ...
    @property
    def encryption_keys(self) -> EncryptionKeysLike: ...


@dataclass(frozen=True)
class Codec:
    """How new objects are written: compression and the age recipients to encrypt to.

    ``level`` None means the algorithm's default (zstd 3, lzma 6). ``threads`` follows
    ``compression.threads``: 0 = one zstd worker per usable core, -1 = no worker threads,
    n = n workers. Invalid combinations fail here, before any data is read.
    """

    algorithm: Algorithm
    recipients: tuple[str, ...]
    level: int | None = None
    threads: int = 0
    _parsed: tuple[Recipient, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise UsageError(f"unknown compression algorithm {self.algorithm!r}")
        if not self.recipients:
            raise UsageError("at least one age recipient (public key) is needed to encrypt")
        if self.threads < -1:
            raise UsageError(f"compression threads must be -1, 0 or more; got {self.threads}")
        _check_level(self.algorithm, self.level)
        parsed: list[Recipient] = []
        for recipient in self.recipients:
            try:
                parsed.append(Recipient.parse(recipient))
            except AgeError as exc:
                raise UsageError(f"not an age X25519 recipient: {recipient!r}") from exc
        object.__setattr__(self, "_parsed", tuple(parsed))

    @classmethod
    def from_site(cls, site: BackupSiteLike) -> Codec:
        """The codec of a backup site's ``compression`` and ``encryption_keys.public``."""
        compression = site.compression
        return cls(
            algorithm=cast(Algorithm, compression.algorithm),
            recipients=tuple(site.encryption_keys.public),
            level=compression.level,
            threads=compression.threads,
        )

    @property
    def suffix(self) -> str:
        return suffix(self.algorithm)

    @property
    def zstd_workers(self) -> int:
        """zstd worker threads, in zstandard's terms (0 = compress in the calling thread)."""
        if self.threads == -1:
            return 0
        if self.threads == 0:
            return _usable_cores()
        return self.threads

    @property
    def age_recipients(self) -> tuple[Recipient, ...]:
        """The recipients, parsed once, when the codec was made."""
        return self._parsed


def decryption_identities(keys: EncryptionKeysLike) -> list[Identity]:
    """The age identities of ``encryption_keys.private``."""
    identities = []
    for position, secret in enumerate(keys.private):
        try:
            identities.append(Identity.parse(secret.get_secret_value()))
        except AgeError as exc:
            # Never show the value: it is a private key.
            raise UsageError(
                f"encryption_keys.private[{position}] is not an age X25519 identity"
            ) from exc
    return identities


def identities_from_site(site: BackupSiteLike) -> list[Identity]:
    """The age identities a site's objects are decrypted with (may be empty)."""
    return decryption_identities(site.encryption_keys)


def _check_level(algorithm: Algorithm, level: int | None) -> None:
    if level is None:
        return
    if algorithm == "zstd" and not _ZSTD_MIN_LEVEL <= level <= zstandard.MAX_COMPRESSION_LEVEL:
        raise UsageError(
            f"zstd compression level must be {_ZSTD_MIN_LEVEL}..{zstandard.MAX_COMPRESSION_LEVEL};"
            f" got {level}"
        )
    if algorithm == "lzma" and not 0 <= level <= 9:
        raise UsageError(f"lzma compression level must be 0..9; got {level}")
    if algorithm in ("snappy", "none"):
        # Ignoring it would hide a mistake: the operator expected a level to matter.
        raise UsageError(f"compression {algorithm!r} has no levels; remove compression.level")


def _usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------
# Worker plumbing shared by both directions


class _CancelledError(Exception):
    """Raised in a worker once its consumer has gone, to end it quietly."""


@dataclass
class _Finished:
    error: BaseException | None


class _Pump:
    """One worker thread feeding one consumer through a bounded queue.

    The worker blocks when the queue is full (that is the memory bound) but polls the
    cancel flag meanwhile, so a consumer that stops early never leaves it stuck. Whatever
    the worker raises is delivered after the chunks it produced and re-raised by ``take``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.cancelled = threading.Event()
        self._queue: queue.Queue[bytes | _Finished] = queue.Queue(maxsize=_QUEUE_DEPTH)
        self._thread: threading.Thread | None = None
        self._finished = False

    def start(self, work: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(work,), name=self.name)
        self._thread.daemon = True  # a worker stuck in the caller's input must not block exit
        self._thread.start()

    def emit(self, chunk: bytes) -> None:
        """Called by the worker: hands a chunk to the consumer (blocking while it is busy)."""
        self._put(chunk)

    def take(self, cancelled: threading.Event | None = None) -> bytes | None:
        """Called by the consumer: the next chunk, or None at the end; re-raises errors.

        A consumer that is itself a worker passes its own ``cancelled``: this worker may
        have been stopped without a last word, and the wait must end then too.
        """
        if self._finished:
            return None
        while True:
            try:
                item = self._queue.get(timeout=None if cancelled is None else _POLL_SECONDS)
                break
            except queue.Empty:
                if cancelled is not None and cancelled.is_set():
                    raise _CancelledError from None
        if isinstance(item, _Finished):
            self._finished = True
            if item.error is not None:
                raise item.error
            return None
        return item

    def chunks(self, cancelled: threading.Event | None = None) -> Iterator[bytes]:
        while (chunk := self.take(cancelled)) is not None:
            yield chunk

    def cancel(self) -> None:
        """Stops the worker and waits (a bounded time) for it to end."""
        self.cancelled.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_SECONDS)

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except _CancelledError:
            return  # the consumer is gone; nobody is waiting for a result
        except BaseException as exc:  # noqa: BLE001 - not swallowed: re-raised by take()
            with contextlib.suppress(_CancelledError):
                self._put(_Finished(exc))
            return
        with contextlib.suppress(_CancelledError):
            self._put(_Finished(None))

    def _put(self, item: bytes | _Finished) -> None:
        while True:
            if self.cancelled.is_set():
                raise _CancelledError
            try:
                self._queue.put(item, timeout=_POLL_SECONDS)
            except queue.Full:
                continue
            return


class _Coalescer:
    """Gathers a stage's small outputs into chunks of at least ``target`` for the pump."""

    def __init__(self, pump: _Pump, target: int) -> None:
        self._pump = pump
        self._target = target
        self._parts: list[bytes] = []
        self._size = 0

    def write(self, data: bytes) -> None:
        if not data:
            return
        self._parts.append(data)
        self._size += len(data)
        if self._size >= self._target:
            self._emit()

    def close(self) -> None:
        if self._parts:
            self._emit()

    def _emit(self) -> None:
        chunk = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        self._parts = []
        self._size = 0
        self._pump.emit(chunk)


# --------------------------------------------------------------------------------------
# Compressors (plaintext -> compressed stream), each fed at most _PLAIN_SLICE at a time


class _Compressor(Protocol):
    """Each call returns the compressed bytes it produced, in pieces of bounded size."""

    def compress(self, data: bytes) -> Iterable[bytes]: ...
    def flush(self) -> Iterable[bytes]: ...


class _ZstdCompressor:
    """A zstd frame with content checksum, compressed by ``workers`` threads of zstd's own.

    Memory, measured with incompressible input, where all of it is touched (figures in
    docs/benchmarks.md, "Incompressible data"):

    * Output goes through a ``chunker`` of _STORED_CHUNK pieces, not ``compressobj``.
      zstd's workers hold each job's output until it is flushed, in order, and
      ``compressobj.compress`` keeps calling zstd until its input is consumed, appending
      whatever is flushed meanwhile to one bytes object, grown by realloc: a 1 MiB call
      returned up to 12 MiB (two jobs' output), and the stages behind it (age, the
      queue of 4, the store) each held such pieces. A 256 MiB upload to a directory
      grew peak RSS by 334 MiB; to S3 a 2 GiB binlog peaked at 492 MiB. Not the
      allocator: MALLOC_ARENA_MAX=1 or 2, or glibc's default thresholds, changed it by
      a few MiB.
    * Jobs are 1 MiB. What zstd keeps is then its input ring (5 jobs with 2 workers)
      and the output of the 4 jobs in flight, about 9 x the job size plus the workers'
      tables, whatever the level's window: standalone +23 MiB with 2 MiB jobs, +39 with
      4, +58 with 6 (the ``zstd`` command with -B6M: 57 MiB); through the pipeline to a
      directory +26-29 MiB with 1 MiB jobs, +40 with 2, +66 with 4. An S3 upload adds
      its parts (16 MiB x 5 by default) and the interpreter ~63 MiB: 178 MiB peak with
      1 MiB jobs, 191 MiB with 2 (over 200 MB), 217 MiB with 4. Against 6 MiB jobs, 1
      MiB ones store 0.7% more on backup-like data (ratio 3.013 instead of 3.034) for
      the same CPU time and speed within the noise of a shared machine.
    * At high levels zstd raises the job size to the overlap between jobs (the whole
      window at 19+), so those levels need more memory than the defaults.
    """

    def __init__(self, level: int, workers: int) -> None:
        options: dict[str, int] = {}
        if workers > 0:
            options["job_size"] = _zstd_job_size()
        params = zstandard.ZstdCompressionParameters.from_level(
            level, threads=workers, write_checksum=1, write_content_size=0, **options
        )
        cctx = zstandard.ZstdCompressor(compression_params=params)
        self._chunker = cctx.chunker(chunk_size=_STORED_CHUNK)

    def compress(self, data: bytes) -> Iterable[bytes]:
        return cast("Iterable[bytes]", self._chunker.compress(data))

    def flush(self) -> Iterable[bytes]:
        # zstandard's stubs leave finish() untyped; it yields bytes like compress().
        return cast("Iterable[bytes]", self._chunker.finish())  # type: ignore[no-untyped-call]


def _zstd_job_size() -> int:
    """The input zstd gives each worker (see ``_ZstdCompressor``); a function for bench/."""
    return _ZSTD_JOB


class _SnappyCompressor:
    """The snappy *framing* format (CRC32C per chunk), which ``snzip``/python-snappy read."""

    def __init__(self) -> None:
        self._obj = cramjam.snappy.Compressor()
        self._written = False

    def compress(self, data: bytes) -> Iterable[bytes]:
        self._obj.compress(data)
        out = bytes(self._obj.flush())
        self._written = self._written or bool(out)
        return (out,)

    def flush(self) -> Iterable[bytes]:
        out = bytes(self._obj.finish())
        if not self._written and not out:
            # cramjam writes nothing for empty input; a framed stream needs its identifier.
            return (_SNAPPY_STREAM_ID,)
        return (out,)


class _LzmaCompressor:
    def __init__(self, level: int) -> None:
        self._obj = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=level)

    def compress(self, data: bytes) -> Iterable[bytes]:
        return (self._obj.compress(data),)

    def flush(self) -> Iterable[bytes]:
        return (self._obj.flush(),)


class _NoCompressor:
    def compress(self, data: bytes) -> Iterable[bytes]:
        return (data,)

    def flush(self) -> Iterable[bytes]:
        return ()


def _compressor(codec: Codec) -> _Compressor:
    level = codec.level if codec.level is not None else _DEFAULT_LEVELS.get(codec.algorithm, 0)
    if codec.algorithm == "zstd":
        return _ZstdCompressor(level, codec.zstd_workers)
    if codec.algorithm == "snappy":
        return _SnappyCompressor()
    if codec.algorithm == "lzma":
        return _LzmaCompressor(level)
    return _NoCompressor()


# --------------------------------------------------------------------------------------
# Encode


def _close(chunks: Iterator[Any]) -> None:
    """Closes an abandoned input if it can be (a generator's ``finally`` then runs)."""
    close = getattr(chunks, "close", None)
    if callable(close):
        close()


class _PlainSource:
    """The caller's chunks, hashed and compressed: what the upload worker encrypts.

    Runs in the worker thread, so the caller's iterable is consumed there; it is closed
    there too (``close()``, if it has one) when the stream is abandoned, so a generator's
    ``finally`` runs.
    """

    def __init__(
        self, chunks: Iterable[Chunk], compressor: _Compressor, cancelled: threading.Event
    ) -> None:
        self._chunks = iter(chunks)
        self._compressor = compressor
        self._cancelled = cancelled
        self.sha256 = hashlib.sha256()
        self.size = 0

    def compressed(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            for piece in _slices(chunk):
                if self._cancelled.is_set():
                    raise _CancelledError
                self.sha256.update(piece)
                self.size += len(piece)
                yield from self._compressor.compress(piece)
        yield from self._compressor.flush()

    def close_input(self) -> None:
        _close(self._chunks)


def _slices(chunk: Chunk) -> Iterator[bytes]:
    """``chunk`` as bytes of at most _PLAIN_SLICE, copying only when it must."""
    if isinstance(chunk, bytes) and len(chunk) <= _PLAIN_SLICE:
        if chunk:
            yield chunk
        return
    view = memoryview(chunk).cast("B")
    for start in range(0, len(view), _PLAIN_SLICE):
        yield view[start : start + _PLAIN_SLICE].tobytes()


class _EncodeWorker:
    """What the upload worker thread runs: plaintext -> hash -> compress -> encrypt -> queue.

    Kept apart from ``EncodedStream`` so that the thread holds no reference to the
    stream: a stream its consumer drops is collected, and its ``__del__`` stops this.
    """

    def __init__(self, chunks: Iterable[Chunk], codec: Codec) -> None:
        self.pump = _Pump("binhoard-encode")
        self.source = _PlainSource(chunks, _compressor(codec), self.pump.cancelled)
        self.recipients = codec.age_recipients

    def run(self) -> None:
        out = _Coalescer(self.pump, _STORED_CHUNK)
        finished = False
        try:
            encryptor = Encryptor(self.recipients)
            for compressed in self.source.compressed():
                out.write(encryptor.update(compressed))
            out.write(encryptor.finish())
            finished = True
        finally:
            if not finished:
                self.source.close_input()
        out.close()


class EncodedStream(Iterator[bytes]):
    """The stored bytes of one object, produced while it is iterated.

    Iterate it once, from one thread at a time (an ``ObjectStore.put`` does); ``digest``
    is available once it is exhausted. ``close()`` (or leaving a ``with`` block) stops
    the worker if the consumer gives up early. The stored bytes are hashed here, in the
    consumer's thread, which otherwise only writes them: that takes work off the worker,
    which feeds the compressor.
    """

    def __init__(self, chunks: Iterable[Chunk], codec: Codec) -> None:
        self._worker = _EncodeWorker(chunks, codec)
        self._started = False
        self._digest: ObjectDigest | None = None
        self._failed = False
        self._sha256 = hashlib.sha256()
        self._size = 0

    @property
    def digest(self) -> ObjectDigest:
        if self._digest is None:
            raise RuntimeError("the encoded stream has not been read to its end")
        return self._digest

    def __next__(self) -> bytes:
        if self._digest is not None or self._failed:
            raise StopIteration
        pump = self._worker.pump
        if not self._started:
            self._started = True
            pump.start(self._worker.run)
        try:
            chunk = pump.take()
        except BaseException:
            self._failed = True
            raise
        if chunk is None:
            # The worker has ended without error (its end was queued after its data), so
            # the plaintext digest is complete.
            source = self._worker.source
            self._digest = ObjectDigest(
                plain_size=source.size,
                plain_sha256=source.sha256.hexdigest(),
                stored_size=self._size,
                stored_sha256=self._sha256.hexdigest(),
            )
            raise StopIteration
        self._sha256.update(chunk)
        self._size += len(chunk)
        return chunk

    def close(self) -> None:
        """Stops the worker if the stream was not read to its end, and closes the input.

        Waits for the worker at most ``_JOIN_SECONDS``: it notices at once unless it is
        blocked inside the caller's iterator, which only that iterator can end.
        """
        if self._digest is None:
            self._failed = True
        self._worker.pump.cancel()

    def __enter__(self) -> EncodedStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # An abandoned stream must not leave its worker blocked on a full queue forever.
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.pump.cancelled.set()


def encode(chunks: Iterable[Chunk], codec: Codec) -> EncodedStream:
    """Compresses, encrypts and hashes ``chunks`` into the bytes to store, lazily.

    Nothing happens until the result is iterated. The plaintext is consumed in a worker
    thread (see the module's docstring).
    """
    return EncodedStream(chunks, codec)


def upload(
    store: ObjectStore,
    key: str,
    chunks: Iterable[Chunk],
    codec: Codec,
    *,
    if_absent: bool = False,
) -> ObjectDigest:
    """Encodes ``chunks`` and stores them under ``key``; returns what to record of it."""
    with encode(chunks, codec) as stream:
        info = store.put(key, stream, if_absent=if_absent)
        digest = stream.digest
    if info.size != digest.stored_size:
        raise IntegrityError(
            key, f"the store reports {info.size} bytes stored, but {digest.stored_size} were sent"
        )
    return digest


# --------------------------------------------------------------------------------------
# Decode


class _FormatError(Exception):
    """The decrypted compressed stream is malformed (mapped to IntegrityError)."""


class _StoredBytes:
    """The stored bytes as they arrive, counted and hashed.

    Stops as soon as the object grows past its recorded size: there is no point in
    downloading the rest of an object already known to be wrong.
    """

    def __init__(self, key: str, chunks: Iterator[bytes], limit: int) -> None:
        self._key = key
        self._chunks = chunks
        self._limit = limit
        self.sha256 = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.size += len(chunk)
            if self.size > self._limit:
                raise IntegrityError(
                    self._key, f"it is larger than the recorded {self._limit} bytes"
                )
            self.sha256.update(chunk)
            yield chunk

    def close_input(self) -> None:
        _close(self._chunks)


def _decrypt_failure(key: str, exc: AgeError) -> IntegrityError:
    if isinstance(exc, NoMatchingKeyError):
        return IntegrityError(
            key,
            f"none of the {exc.identities} configured private key(s) can decrypt it: it was"
            " encrypted to other public keys, or its age header is corrupt",
        )
    return IntegrityError(key, f"age decryption failed, the object is corrupt or truncated: {exc}")


_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
_ZSTD_MAX_BLOCK: Final = 128 * 1024


class _ZstdFrameEnd:
    """Finds where a zstd frame ends by walking its block headers, without decoding.

    zstandard's bounded-output API (``read_to_iter``) does not say how much of its last
    input it used, so on its own it cannot tell a frame followed by extra bytes from a
    clean end. The frame structure can: a header, then blocks each announcing its size
    and whether it is the last (3 bytes per <= 128 KiB block), then an optional checksum.
    """

    def __init__(self) -> None:
        self._header = bytearray()
        self._want = 5  # bytes to collect into _header: magic + frame header descriptor
        self._skip = 0  # bytes to pass over: header fields, block contents, checksum
        self._last_block_seen = False
        self._checksum = False
        self.done = False

    def feed(self, data: bytes) -> int:
        """How many leading bytes of ``data`` belong to the frame (all, until it ends)."""
        pos = 0
        while pos < len(data) and not self.done:
            if self._skip:
                step = min(self._skip, len(data) - pos)
                pos += step
                self._skip -= step
                self.done = self._last_block_seen and not self._skip
                continue
            take = min(self._want - len(self._header), len(data) - pos)
            self._header += data[pos : pos + take]
            pos += take
            if len(self._header) == self._want:
                self._parse()
        return pos

    def _parse(self) -> None:
        header = bytes(self._header)
        self._header.clear()
        if self._want == 5:
            if header[:4] != _ZSTD_MAGIC:
                raise _FormatError("not a zstd frame")
            descriptor = header[4]
            if descriptor & 0x08:
                raise _FormatError("zstd frame header uses a reserved bit")
            single_segment = bool(descriptor & 0x20)
            self._checksum = bool(descriptor & 0x04)
            content_size_bytes = (int(single_segment), 2, 4, 8)[descriptor >> 6]
            self._skip = (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
            self._skip += content_size_bytes
            self._want = 3
            return
        value = int.from_bytes(header, "little")
        block_type = (value >> 1) & 3
        size = value >> 3
        if block_type == 3 or size > _ZSTD_MAX_BLOCK:
            raise _FormatError("corrupt zstd block header")
        self._skip = 1 if block_type == 1 else size  # an RLE block stores one byte
        if value & 1:
            self._last_block_seen = True
            self._skip += 4 if self._checksum else 0
            self.done = not self._skip


class _ZstdFrameReader:
    """``read(n)`` over the decrypted chunks for ``read_to_iter``, ending with the frame."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._frame = _ZstdFrameEnd()
        self._buf = b""
        self._pos = 0
        self.starved = False  # read_to_iter asked for more than the frame holds
        self.trailing = False  # bytes were seen after the end of the frame

    def read(self, size: int = -1) -> bytes:
        while self._pos >= len(self._buf):
            chunk = next(self._chunks, None) if not self._frame.done else None
            if chunk is None:
                self.starved = True
                return b""
            self._buf = chunk
            self._pos = 0
        end = len(self._buf) if size < 0 else self._pos + size
        piece = self._buf[self._pos : end] if self._pos or end < len(self._buf) else self._buf
        self._pos += len(piece)
        used = self._frame.feed(piece)
        if used < len(piece):
            self.trailing = True
            piece = piece[:used]
        return piece

    def rest_is_empty(self) -> bool:
        return not self.trailing and self._pos >= len(self._buf)


def _zstd_decode(chunks: Iterator[bytes]) -> Iterator[bytes]:
    reader = _ZstdFrameReader(chunks)
    dctx = zstandard.ZstdDecompressor()
    # read_to_iter bounds each output piece (a frame of zeros expands ~30000-fold: a
    # whole-input decompress() could need gigabytes) and checks the frame's checksum;
    # it returns at the end of the frame, without asking for more input.
    yield from dctx.read_to_iter(
        cast(BinaryIO, reader), read_size=_DECRYPTED_CHUNK, write_size=_PLAIN_OUT
    )
    if reader.starved:
        raise _FormatError("the zstd frame is truncated")
    if not reader.rest_is_empty():
        raise _FormatError("data follows the end of the zstd frame")


def _lzma_decode(chunks: Iterator[bytes]) -> Iterator[bytes]:
    # xz -9e needs 65 MiB; a stream asking for more was not written by us (the format
    # allows dictionaries of up to 4 GiB).
    obj = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=_XZ_MEMLIMIT)
    for chunk in chunks:
        if not chunk:
            continue
        if obj.eof:
            raise _FormatError("data follows the end of the xz stream")
        yield obj.decompress(chunk, max_length=_PLAIN_OUT)
        while not obj.eof and not obj.needs_input:
            yield obj.decompress(b"", max_length=_PLAIN_OUT)
        if obj.eof and obj.unused_data:
            raise _FormatError("data follows the end of the xz stream")
    if not obj.eof:
        raise _FormatError("the xz stream is truncated")


def _snappy_decode(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Splits the framing format into whole chunks and decompresses a few at a time.

    cramjam's streaming decompressor needs the whole stream; its one-shot ``decompress``
    verifies CRC32C and takes any run of whole chunks after a stream identifier, which
    bounds each output to _SNAPPY_BATCH x 64 KiB.
    """
    buf = bytearray()
    pos = 0
    batch: list[bytes] = []
    seen_header = False
    for chunk in chunks:
        buf += chunk
        while len(buf) - pos >= 4:
            length = int.from_bytes(buf[pos + 1 : pos + 4], "little")
            end = pos + 4 + length
            if end > len(buf):
                break
            frame = bytes(buf[pos:end])
            pos = end
            if not seen_header:
                if frame != _SNAPPY_STREAM_ID:
                    raise _FormatError("not a snappy framed stream (no stream identifier)")
                seen_header = True
                continue
            batch.append(frame)
            if len(batch) >= _SNAPPY_BATCH:
                yield _snappy_batch(batch)
                batch = []
        del buf[:pos]
        pos = 0
    if buf:
        raise _FormatError("the snappy stream is truncated")
    if not seen_header:
        raise _FormatError("not a snappy framed stream (empty)")
    if batch:
        yield _snappy_batch(batch)


def _snappy_batch(frames: list[bytes]) -> bytes:
    return bytes(cramjam.snappy.decompress(b"".join([_SNAPPY_STREAM_ID, *frames])))


def _raw_decode(chunks: Iterator[bytes]) -> Iterator[bytes]:
    return chunks


_DECODERS: Final[dict[Algorithm, Callable[[Iterator[bytes]], Iterator[bytes]]]] = {
    "zstd": _zstd_decode,
    "snappy": _snappy_decode,
    "lzma": _lzma_decode,
    "none": _raw_decode,
}
_DECODE_ERRORS: Final = (
    _FormatError,
    zstandard.ZstdError,
    lzma.LZMAError,
    cramjam.DecompressionError,
)


def download(
    store: ObjectStore,
    key: str,
    *,
    expected: ObjectDigest,
    identities: Sequence[Identity],
    compression: Algorithm | None = None,
    verify_plaintext: bool = True,
) -> Iterator[bytes]:
    """The plaintext of ``key``, verified against ``expected`` while it streams.

    ``identities`` come from ``decryption_identities``; ``compression`` defaults to what
    the key's suffix says. ``verify_plaintext=False`` skips the plaintext sha256 (see
    the module's docstring for what is still checked). A missing object raises
    ``ObjectNotFoundError`` here, if the store reports it eagerly (the stores in this
    package do), else on the first ``next()``.

    Raises ``IntegrityError`` naming ``key`` if anything does not match: decryption
    (wrong key, corruption, truncation), decompression, or the recorded sizes and
    sha256. Only plaintext from authenticated age chunks is yielded, and the last chunk
    only after every check has passed; the chunks before it may already have been
    consumed, so a streaming consumer must be able to discard its output when this
    raises (else use ``download_to_file``). Storage errors propagate unchanged (a
    ``TransientStorageError`` may be retried, with a new call).
    """
    algorithm = compression if compression is not None else algorithm_for_key(key)
    if algorithm not in _DECODERS:
        raise UsageError(f"unknown compression algorithm {algorithm!r}")
    ids = list(identities)
    if not ids:
        raise UsageError(
            f"cannot decrypt {key}: no private key is configured (encryption_keys.private)"
        )
    source = iter(store.get(key))
    return _download(key, source, expected, ids, algorithm, verify_plaintext=verify_plaintext)


def decode_unrecorded(
    store: ObjectStore, key: str, *, identities: Sequence[Identity]
) -> Iterator[bytes]:
    """The plaintext of an object no record describes (a leftover), checked by what the
    object carries itself: age's authentication of every chunk and of the end, and the
    compression format's own check. Raises ``IntegrityError`` naming ``key``."""
    ids = list(identities)
    if not ids:
        raise UsageError(
            f"cannot decrypt {key}: no private key is configured (encryption_keys.private)"
        )
    unbounded = ObjectDigest(0, "", sys.maxsize, "")
    stages = _DownloadStages(key, iter(store.get(key)), unbounded, ids, algorithm_for_key(key))
    try:
        yield from stages.start()
    finally:
        stages.stop()


class _DownloadStages:
    """The two worker stages of a download: fetch + hash + decrypt, and decompress.

    With the consumer's thread (whatever the consumer does with the data, and the
    plaintext hash) that makes three stages, so that the work spreads over two cores.
    """

    def __init__(
        self,
        key: str,
        source: Iterator[bytes],
        expected: ObjectDigest,
        identities: list[Identity],
        algorithm: Algorithm,
    ) -> None:
        self.key = key
        self.algorithm = algorithm
        self.identities = identities
        self.decrypting = _Pump("binhoard-decrypt")
        self.decompressing = _Pump("binhoard-decompress")
        self.stored = _StoredBytes(key, source, expected.stored_size)

    def start(self) -> Iterator[bytes]:
        """Starts both workers; returns the plaintext pieces."""
        self.decrypting.start(self._decrypt)
        self.decompressing.start(self._decompress)
        return self.decompressing.chunks()

    def stop(self) -> None:
        self.decompressing.cancel()
        self.decrypting.cancel()

    def _decrypt(self) -> None:
        out = _Coalescer(self.decrypting, _DECRYPTED_CHUNK)
        cancelled = self.decrypting.cancelled
        finished = False
        try:
            decryptor = Decryptor(self.identities)
            for chunk in self.stored:
                if cancelled.is_set():
                    raise _CancelledError
                out.write(decryptor.update(chunk))
            out.write(decryptor.finish())
            finished = True
        except AgeError as exc:
            raise _decrypt_failure(self.key, exc) from None
        finally:
            if not finished:
                self.stored.close_input()
        out.close()

    def _decompress(self) -> None:
        compressed = self.decrypting.chunks(self.decompressing.cancelled)
        try:
            for piece in _DECODERS[self.algorithm](compressed):
                if piece:
                    self.decompressing.emit(piece)
            for extra in compressed:
                if extra:
                    raise _FormatError(f"data follows the end of the {self.algorithm} stream")
        except _DECODE_ERRORS as exc:
            raise IntegrityError(self.key, f"{self.algorithm} decompression failed: {exc}") from exc


def _download(
    key: str,
    source: Iterator[bytes],
    expected: ObjectDigest,
    identities: list[Identity],
    algorithm: Algorithm,
    *,
    verify_plaintext: bool,
) -> Iterator[bytes]:
    stages = _DownloadStages(key, source, expected, identities, algorithm)
    try:
        plain_sha256 = hashlib.sha256() if verify_plaintext else None
        plain_size = 0
        held: bytes | None = None
        for piece in stages.start():
            plain_size += len(piece)
            if plain_size > expected.plain_size:
                raise IntegrityError(
                    key, f"its plaintext is larger than the recorded {expected.plain_size} bytes"
                )
            if plain_sha256 is not None:
                plain_sha256.update(piece)
            if held is not None:
                yield held
            held = piece
        # Both workers have finished without error (their ends were queued after their
        # data), so the stored digest is complete and safe to read here.
        _check_size(key, "stored", expected.stored_size, stages.stored.size)
        _check_sha256(key, "stored", expected.stored_sha256, stages.stored.sha256.hexdigest())
        _check_size(key, "plaintext", expected.plain_size, plain_size)
        if plain_sha256 is not None:
            _check_sha256(key, "plaintext", expected.plain_sha256, plain_sha256.hexdigest())
        if held is not None:
            yield held
    finally:
        stages.stop()


def _check_size(key: str, what: str, recorded: int, got: int) -> None:
    if got != recorded:
        raise IntegrityError(key, f"{what} size is {got} bytes, {recorded} were recorded")


def _check_sha256(key: str, what: str, recorded: str, got: str) -> None:
    if got != recorded.lower():
        raise IntegrityError(key, f"{what} sha256 is {got}, {recorded} was recorded")


def download_to_file(
    store: ObjectStore,
    key: str,
    path: Path | str,
    *,
    expected: ObjectDigest,
    identities: Sequence[Identity],
    compression: Algorithm | None = None,
) -> None:
    """Writes the plaintext of ``key`` to ``path`` only once it is verified whole.

    For consumers that cannot roll back: the data goes to a temporary file beside
    ``path`` (same filesystem, so the rename is atomic), which is fsynced, verified and
    only then renamed over ``path``; on any failure it is removed and ``path`` is left
    as it was. The file is created with mode 0600 (backups hold database content).
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in download(
                store, key, expected=expected, identities=identities, compression=compression
            ):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Makes a rename in ``directory`` durable (POSIX needs the directory synced too)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
