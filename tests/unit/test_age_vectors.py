"""binhoard's age decryption against the C2SP/CCTV test vectors (tests/data/age-cctv).

The vectors are age's conformance suite: one file per case, each saying what decrypting
it must give (their README). Every file is either run here or listed in ``NOT_RUN`` with
the reason (a feature binhoard does not implement), so a vector added to the directory
fails this test until it passes or is listed.

Each expected outcome is one class of ``binhoard.crypto.age`` (``OUTCOMES``). All are
``AgeError``, which the storage pipeline reports as ``IntegrityError`` naming the object:
the "corrupt object" error of ``domain/errors.py`` (exit code 8). The pipeline path is
checked here too, with every vector stored as an object.

Less plaintext than the reference before a failure, on purpose. For a ``payload
failure`` the vector's ``payload`` is the sha256 of what the reference implementation
(Go) released before it failed. binhoard releases less: it holds a sealed chunk back
until the data after it says whether it is the last one, where the reference opens a
full-size chunk as a middle chunk, then as the last one, releases it, and only then
finds the data that follows it. So the test rebuilds the reference's release from the
vector's file key (``reference_release``, checked against the vector's hash) and checks
that binhoard's is a prefix of it: never more, never a byte the reference did not
authenticate. Fed in pieces of at most a sealed chunk, it is the same, or one chunk
short in the vectors ``RELEASES_A_CHUNK_LESS`` names; fed bigger pieces it may be
shorter still (one ``update`` call releases all or none of what it opens).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from binhoard.crypto.age import (
    CHUNK,
    SEALED_CHUNK,
    AgeError,
    Decryptor,
    HeaderError,
    HeaderMacError,
    Identity,
    NoMatchingKeyError,
    PayloadError,
)
from binhoard.domain.errors import IntegrityError
from binhoard.storage.pipeline import ObjectDigest, download
from binhoard.storage.store import MemoryStore

VECTORS: Final = Path(__file__).parents[1] / "data" / "age-cctv" / "testdata"

# The spec's outcomes (the vectors' ``expect``) and binhoard's class for each.
OUTCOMES: Final[dict[str, type[AgeError] | None]] = {
    "success": None,
    "header failure": HeaderError,
    "no match": NoMatchingKeyError,
    "HMAC failure": HeaderMacError,
    "payload failure": PayloadError,
}

_ARMOR: Final = "ASCII armor: binhoard stores and reads binary age files only"
_SCRYPT: Final = "scrypt (passphrase) recipients: binhoard decrypts with X25519 keys only"
_HYBRID: Final = (
    "mlkem768x25519 (post-quantum hybrid) recipients: binhoard decrypts with X25519 keys only"
)
NOT_RUN: Final[dict[str, str]] = {
    **dict.fromkeys(
        [
            "armor_crlf",
            "armor_empty",
            "armor_empty_last_line",
            "armor_empty_line_begin",
            "armor_empty_line_end",
            "armor_eol_between_padding",
            "armor_full_last_line",
            "armor_garbage_encoded",
            "armor_garbage_leading",
            "armor_garbage_trailing",
            "armor_header_crlf",
            "armor_headers",
            "armor_hybrid",
            "armor_invalid_character_header",
            "armor_invalid_character_payload",
            "armor_long_line",
            "armor_lowercase",
            "armor_no_end_line",
            "armor_no_eol",
            "armor_no_match",
            "armor_no_padding",
            "armor_not_canonical",
            "armor_pgp_checksum",
            "armor_scrypt",
            "armor_short_line",
            "armor_whitespace_begin",
            "armor_whitespace_end",
            "armor_whitespace_eol",
            "armor_whitespace_last_line",
            "armor_whitespace_line_start",
            "armor_whitespace_outside",
            "armor_wrong_type",
            "armor_x25519",
        ],
        _ARMOR,
    ),
    **dict.fromkeys(
        [
            "scrypt",
            "scrypt_bad_tag",
            "scrypt_double",
            "scrypt_extra_argument",
            "scrypt_long_file_key",
            "scrypt_no_match",
            "scrypt_not_canonical_body",
            "scrypt_not_canonical_salt",
            "scrypt_salt_long",
            "scrypt_salt_missing",
            "scrypt_salt_short",
            "scrypt_uppercase",
            "scrypt_work_factor_23",
            "scrypt_work_factor_hex",
            "scrypt_work_factor_leading_garbage",
            "scrypt_work_factor_leading_plus",
            "scrypt_work_factor_leading_zero_decimal",
            "scrypt_work_factor_leading_zero_octal",
            "scrypt_work_factor_missing",
            "scrypt_work_factor_negative",
            "scrypt_work_factor_overflow",
            "scrypt_work_factor_trailing_garbage",
            "scrypt_work_factor_wrong",
            "scrypt_work_factor_zero",
        ],
        _SCRYPT,
    ),
    "scrypt_and_x25519": _SCRYPT
    + " (the failure expected is the scrypt identity's rule that an scrypt stanza stand"
    " alone; binhoard's X25519 key opens no stanza of this file: no match)",
    **dict.fromkeys(
        [
            "hybrid",
            "hybrid_and_x25519",
            "hybrid_bad_tag",
            "hybrid_currupted_enc_mlkem",
            "hybrid_currupted_enc_x25519",
            "hybrid_extra_argument",
            "hybrid_grease",
            "hybrid_identity",
            "hybrid_long_file_key",
            "hybrid_long_share",
            "hybrid_low_order",
            "hybrid_multiple_recipients",
            "hybrid_no_match",
            "hybrid_not_canonical_body",
            "hybrid_not_canonical_enc",
            "hybrid_short_share",
            "hybrid_uppercase",
        ],
        _HYBRID,
    ),
}

# Vectors run with their X25519 keys only: the other keys are of a kind binhoard does
# not implement, and the case is about the X25519 stanza.
X25519_KEYS_ONLY: Final[dict[str, str]] = {
    "hybrid_x25519_arg": "an X25519 stanza whose share is a 1120-byte hybrid one",
}

# The payload failures where binhoard, fed in pieces, releases a chunk less than the
# reference: a full-size chunk that is the last one the file has (stream_no_final_full)
# or is followed by data it cannot be followed by (the others); the reference released
# it before it found out.
RELEASES_A_CHUNK_LESS: Final = {
    "stream_no_final_full",
    "stream_no_final_two_chunks_full",
    "stream_trailing_garbage_long",
    "stream_trailing_garbage_short",
    "stream_two_final_chunks",
    "stream_two_final_chunks_full",
    "stream_two_final_chunks_second",
}

_HEADER_KEYS: Final = {
    "expect",
    "payload",
    "file key",
    "identity",
    "passphrase",
    "armored",
    "compressed",
    "comment",
}


@dataclass(frozen=True)
class Vector:
    name: str
    expect: str
    payload_sha256: str | None
    file_key: bytes | None
    identities: tuple[str, ...]
    passphrases: tuple[str, ...]
    armored: bool
    data: bytes  # the age file, decompressed

    @property
    def unimplemented(self) -> bool:
        """Whether it needs armor, a passphrase or a post-quantum key."""
        post_quantum = any(i.startswith("AGE-SECRET-KEY-PQ-") for i in self.identities)
        return self.armored or bool(self.passphrases) or post_quantum


def read_vector(name: str) -> Vector:
    head, _, data = (VECTORS / name).read_bytes().partition(b"\n\n")
    fields: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    unknown = set(fields) - _HEADER_KEYS
    assert not unknown, f"{name}: header keys this test does not know: {sorted(unknown)}"
    if "compressed" in fields:
        assert fields["compressed"] == ["zlib"], f"{name}: unknown compression"
        data = zlib.decompress(data)
    (expect,) = fields["expect"]
    assert expect in OUTCOMES or expect == "armor failure", f"{name}: unknown outcome"
    return Vector(
        name=name,
        expect=expect,
        payload_sha256=fields.get("payload", [None])[0],
        file_key=bytes.fromhex(fields["file key"][0]) if "file key" in fields else None,
        identities=tuple(fields.get("identity", [])),
        passphrases=tuple(fields.get("passphrase", [])),
        armored=fields.get("armored") == ["yes"],
        data=data,
    )


ALL: Final = sorted(path.name for path in VECTORS.iterdir())
RUN: Final = [name for name in ALL if name not in NOT_RUN]


def identities_of(vector: Vector) -> list[Identity]:
    keys = vector.identities
    if vector.name in X25519_KEYS_ONLY:
        keys = tuple(k for k in keys if not k.startswith("AGE-SECRET-KEY-PQ-"))
    assert not (vector.unimplemented and vector.name not in X25519_KEYS_ONLY), (
        f"{vector.name} needs a feature binhoard does not implement: list it in NOT_RUN"
    )
    # A vector without a key fails before any key is needed; decrypting needs one.
    return [Identity.parse(k) for k in keys] or [Identity.generate()]


def decrypt(data: bytes, identities: list[Identity], piece: int) -> tuple[bytes, AgeError | None]:
    """What binhoard releases when fed ``data`` in ``piece``-byte pieces, and its error."""
    released = bytearray()
    decryptor = Decryptor(identities)
    try:
        for start in range(0, len(data), piece):
            released += decryptor.update(data[start : start + piece])
        released += decryptor.finish()
    except AgeError as exc:
        return bytes(released), exc
    return bytes(released), None


def _payload_key(file_key: bytes, nonce: bytes) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=b"payload")
    return hkdf.derive(file_key)


def reference_release(vector: Vector) -> bytes:
    """The plaintext the reference implementation releases before it fails on a payload,
    rebuilt from the vector's file key the way it reads (filippo.io/age, stream.go).

    It reads a sealed chunk's worth at a time: a short read is the last chunk (and may be
    empty only as the first); a full one is opened as a middle chunk, else as the last
    one. It releases each chunk it opens, and stops at the first it cannot open or after
    the last (data after it is the error, found once that chunk is released).
    """
    assert vector.file_key is not None
    header_end = vector.data.index(b"\n", vector.data.index(b"\n---") + 1) + 1
    nonce = vector.data[header_end : header_end + 16]
    aead = ChaCha20Poly1305(_payload_key(vector.file_key, nonce))
    payload = vector.data[header_end + 16 :]
    released = bytearray()
    for counter, start in enumerate(range(0, len(payload), SEALED_CHUNK)):
        sealed = payload[start : start + SEALED_CHUNK]
        short = len(sealed) < SEALED_CHUNK
        if short and counter > 0 and len(sealed) == 16:
            break  # an empty last chunk after data
        for last in [True] if short else [False, True]:
            try:
                plain = aead.decrypt(counter.to_bytes(11, "big") + bytes([last]), sealed, None)
            except InvalidTag:
                continue
            released += plain
            break
        else:
            break
        if last:
            break
    return bytes(released)


def test_every_vector_is_run_or_listed_as_not_implemented() -> None:
    assert len(ALL) >= 143
    assert set(NOT_RUN) <= set(ALL), f"listed but gone: {sorted(set(NOT_RUN) - set(ALL))}"
    assert set(X25519_KEYS_ONLY) | RELEASES_A_CHUNK_LESS <= set(RUN)
    # The list may hide no vector binhoard could run: each needs what binhoard lacks.
    runnable = [name for name in NOT_RUN if not read_vector(name).unimplemented]
    assert not runnable, f"listed as not implemented, but X25519 only: {runnable}"


@pytest.mark.parametrize("name", RUN)
def test_a_vector_gives_its_expected_outcome(name: str) -> None:
    vector = read_vector(name)
    identities = identities_of(vector)
    expected = OUTCOMES[vector.expect]
    reference = reference_release(vector) if vector.expect == "payload failure" else b""
    if vector.expect == "payload failure":
        assert hashlib.sha256(reference).hexdigest() == vector.payload_sha256, (
            "reference_release does not rebuild what the reference released"
        )
    # Whole, in pieces smaller than a chunk, and byte by byte for the small files (the
    # header and nonce arrive in any split).
    pieces = [max(len(vector.data), 1), 4096] + ([1] if len(vector.data) <= 4096 else [])
    for piece in pieces:
        released, error = decrypt(vector.data, identities, piece)
        got = None if error is None else type(error)
        assert got is expected, f"fed in {piece}-byte pieces: {error!r}"
        if error is None:
            assert hashlib.sha256(released).hexdigest() == vector.payload_sha256
            continue
        assert str(error)  # a message that says what is wrong
        assert reference.startswith(released), f"fed in {piece}-byte pieces"
        if piece <= SEALED_CHUNK:
            withheld = len(reference) - len(released)
            assert withheld == (CHUNK if name in RELEASES_A_CHUNK_LESS else 0), (
                f"fed in {piece}-byte pieces"
            )


@pytest.mark.parametrize("name", RUN)
def test_a_vector_stored_as_an_object_reads_or_is_a_corrupt_object(name: str) -> None:
    vector = read_vector(name)
    identities = identities_of(vector)
    store = MemoryStore()
    key = f"cctv/{name}.age"  # .age: no compression inside
    store.put(key, [vector.data])
    plain, error = decrypt(vector.data, identities, len(vector.data) or 1)
    expected = ObjectDigest(
        plain_size=len(plain),
        plain_sha256=vector.payload_sha256 or hashlib.sha256(plain).hexdigest(),
        stored_size=len(vector.data),
        stored_sha256=hashlib.sha256(vector.data).hexdigest(),
    )
    released = bytearray()
    if error is None:
        released += b"".join(download(store, key, expected=expected, identities=identities))
        assert hashlib.sha256(released).hexdigest() == vector.payload_sha256
        return
    with pytest.raises(IntegrityError) as caught:
        for piece in download(store, key, expected=expected, identities=identities):
            released += piece
    assert key in caught.value.message
    if isinstance(error, NoMatchingKeyError):
        assert "can decrypt it" in caught.value.message
    else:
        assert "corrupt or truncated" in caught.value.message
    if vector.expect == "payload failure":
        assert reference_release(vector).startswith(released)
    else:
        assert not released
