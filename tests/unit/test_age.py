"""binhoard's age implementation against the reference ones (rage via pyrage, and the
``age`` command line), and against every way a stored object can be damaged."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pyrage
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binhoard.crypto import bech32
from binhoard.crypto.age import (
    CHUNK,
    SEALED_CHUNK,
    AgeError,
    Decryptor,
    Encryptor,
    HeaderError,
    HeaderMacError,
    Identity,
    NoMatchingKeyError,
    PayloadError,
    Recipient,
)

IDENTITY = Identity.generate()
RAGE_IDENTITY = pyrage.x25519.Identity.from_str(IDENTITY.secret_text())
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 17]


def encrypt(data: bytes, recipients: list[Recipient] | None = None, step: int = 1 << 20) -> bytes:
    encryptor = Encryptor(recipients or [IDENTITY.recipient])
    parts = [encryptor.update(data[i : i + step]) for i in range(0, len(data), step)]
    return b"".join([*parts, encryptor.finish()])


def decrypt(data: bytes, identities: list[Identity] | None = None, step: int = 1 << 20) -> bytes:
    decryptor = Decryptor(identities or [IDENTITY])
    parts = [decryptor.update(data[i : i + step]) for i in range(0, len(data), step)]
    return b"".join([*parts, decryptor.finish()])


# --------------------------------------------------------------------------------------
# Keys


def test_keys_are_the_same_as_rage_s() -> None:
    assert str(RAGE_IDENTITY) == IDENTITY.secret_text()
    assert str(RAGE_IDENTITY.to_public()) == str(IDENTITY.recipient)
    theirs = pyrage.x25519.Identity.generate()
    ours = Identity.parse(str(theirs))
    assert str(ours.recipient) == str(theirs.to_public())
    assert Recipient.parse(str(theirs.to_public())) == ours.recipient


def test_a_private_key_is_never_shown() -> None:
    secret = IDENTITY.secret_text()
    assert secret not in repr(IDENTITY)
    assert secret not in str(IDENTITY)
    damaged = secret[:-1] + ("Q" if secret[-1] != "Q" else "P")
    with pytest.raises(AgeError) as caught:
        Identity.parse(damaged)
    assert damaged not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "age1",  # nothing after the prefix
        "AGE1QYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQSZQGPQYQS3290GQ",  # upper case
        "age-secret-key-1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs0z9ghn",  # wrong hrp
        "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gr",  # bad checksum
        "age1qyqszqgpqyqszqgp",  # too short for a key
        "not a key",
    ],
)
def test_invalid_recipients_are_refused(text: str) -> None:
    with pytest.raises(AgeError, match="not an age X25519 recipient"):
        Recipient.parse(text)


def test_a_public_key_is_not_a_private_key() -> None:
    with pytest.raises(AgeError, match="not an age X25519 identity"):
        Identity.parse(str(IDENTITY.recipient))
    with pytest.raises(AgeError, match="not an age X25519 identity"):
        Identity.parse(IDENTITY.secret_text().lower())


@pytest.mark.parametrize(
    "valid",
    [  # BIP 173's test vectors
        "A12UEL5L",
        "an83characterlonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1tt5tgs",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
        "11" + "q" * 82 + "c8247j",
        "split1checkupstagehandshakeupstreamerranterredcaperred2y9e3w",
    ],
)
def test_bech32_accepts_bip173_vectors(valid: str) -> None:
    hrp, _ = bech32.decode(valid)
    assert hrp == valid.lower()[: valid.rfind("1")]


@pytest.mark.parametrize(
    "invalid",
    [
        "pzry9x0s0muk",
        "1pzry9x0s0muk",
        "x1b4n0q5v",
        "li1dgmt3",
        "A1G7SGD8",
        "10a06t8",
        "1qzzfhee",
        "A12uEL5L",
        "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxx",
    ],
)
def test_bech32_refuses_bip173_invalid_vectors(invalid: str) -> None:
    with pytest.raises(bech32.Bech32Error):
        bech32.decode(invalid)


@given(st.binary(max_size=64))
def test_bech32_round_trips(data: bytes) -> None:
    assert bech32.decode(bech32.encode("age", data)) == ("age", data)


# --------------------------------------------------------------------------------------
# Interoperability


@pytest.mark.parametrize("size", SIZES)
def test_rage_decrypts_what_we_encrypt(size: int) -> None:
    data = os.urandom(size)
    others = [Identity.generate().recipient for _ in range(2)]
    stored = encrypt(data, [others[0], IDENTITY.recipient, others[1]], step=CHUNK // 3 or 1)
    assert pyrage.decrypt(stored, [RAGE_IDENTITY]) == data


@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_what_rage_encrypts(size: int) -> None:
    data = os.urandom(size)
    recipients = [pyrage.x25519.Identity.generate().to_public(), RAGE_IDENTITY.to_public()]
    stored = pyrage.encrypt(data, recipients)
    assert decrypt(stored, [Identity.generate(), IDENTITY]) == data


@settings(max_examples=40, deadline=None)
@given(
    size=st.integers(0, 4 * CHUNK),
    write_step=st.integers(1, 3 * CHUNK),
    read_step=st.integers(1, 3 * SEALED_CHUNK),
)
def test_any_split_of_the_stream_gives_the_same_bytes(
    size: int, write_step: int, read_step: int
) -> None:
    data = os.urandom(size)
    stored = encrypt(data, step=write_step)
    assert pyrage.decrypt(stored, [RAGE_IDENTITY]) == data
    assert decrypt(stored, step=read_step) == data


@pytest.fixture(scope="module")
def age_cli() -> str:
    path = shutil.which("age")
    assert path is not None, "the age command line (Debian package age) is not installed"
    return path


def test_the_age_command_line_decrypts_what_we_encrypt(age_cli: str, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 5)
    key_file = tmp_path / "key.txt"
    key_file.write_text(IDENTITY.secret_text() + "\n")
    (tmp_path / "obj.age").write_bytes(encrypt(data))
    result = subprocess.run(
        [age_cli, "-d", "-i", str(key_file), str(tmp_path / "obj.age")],
        capture_output=True,
        check=True,
    )
    assert result.stdout == data


def test_we_decrypt_what_the_age_command_line_encrypts(age_cli: str, tmp_path: Path) -> None:
    data = os.urandom(2 * CHUNK)
    (tmp_path / "plain").write_bytes(data)
    subprocess.run(
        [
            age_cli,
            "-r",
            str(IDENTITY.recipient),
            "-o",
            str(tmp_path / "obj.age"),
            str(tmp_path / "plain"),
        ],
        check=True,
    )
    assert decrypt((tmp_path / "obj.age").read_bytes()) == data


# --------------------------------------------------------------------------------------
# Damage


STORED = encrypt(os.urandom(2 * CHUNK + 100))


def header_length(stored: bytes) -> int:
    return stored.index(b"\n---") + len(b"\n--- ") + 43 + 1


@settings(max_examples=150, deadline=None)
@given(position=st.integers(0, len(STORED) - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_fails(position: int, bit: int) -> None:
    damaged = bytearray(STORED)
    damaged[position] ^= 1 << bit
    with pytest.raises(AgeError):
        decrypt(bytes(damaged))


@settings(max_examples=100, deadline=None)
@given(length=st.integers(0, len(STORED) - 1))
def test_any_truncation_fails(length: int) -> None:
    with pytest.raises(AgeError):
        decrypt(STORED[:length])


@pytest.mark.parametrize("length", [SEALED_CHUNK, 2 * SEALED_CHUNK])
def test_a_cut_at_a_chunk_boundary_fails(length: int) -> None:
    start = header_length(STORED) + 16
    with pytest.raises(AgeError, match="last chunk"):
        decrypt(STORED[: start + length])


def test_a_tampered_header_fails_its_mac() -> None:
    # A second stanza that the key cannot open changes nothing in what is decrypted,
    # but the header MAC covers it.
    stored = encrypt(b"rows", [IDENTITY.recipient, Identity.generate().recipient])
    lines = stored.split(b"\n")
    # Swap the two recipient stanzas (each is two lines): same stanzas, another header.
    swapped = b"\n".join([lines[0], lines[3], lines[4], lines[1], lines[2], *lines[5:]])
    with pytest.raises(HeaderMacError, match="MAC"):
        decrypt(swapped)


@pytest.mark.parametrize(
    ("closing", "message"),
    [
        (b"---", "closing line"),
        (b"---AAAA", "closing line"),
        (b"--- ", "MAC is 0 bytes"),
        (b"--- AAAA", "MAC is 3 bytes"),
    ],
)
def test_a_malformed_closing_line_is_a_header_error_whatever_the_key(
    closing: bytes, message: str
) -> None:
    # The whole header is parsed before any key is tried (the spec's order): a damaged
    # closing line is reported as such, not as a MAC mismatch or as the wrong key.
    start = STORED.index(b"\n---") + 1
    damaged = STORED[:start] + closing + STORED[STORED.index(b"\n", start) :]
    for identities in ([IDENTITY], [Identity.generate()]):
        with pytest.raises(HeaderError, match=message):
            decrypt(damaged, identities)


def test_a_missing_nonce_is_named() -> None:
    with pytest.raises(HeaderError, match="payload nonce"):
        decrypt(STORED[: header_length(STORED) + 15])


def test_data_after_the_last_chunk_fails() -> None:
    with pytest.raises(PayloadError):
        decrypt(STORED + b"x")
    with pytest.raises(PayloadError):
        decrypt(STORED + STORED[-SEALED_CHUNK:])


def test_the_wrong_key_says_so() -> None:
    with pytest.raises(NoMatchingKeyError) as caught:
        decrypt(STORED, [Identity.generate(), Identity.generate()])
    assert (caught.value.identities, caught.value.stanzas) == (2, 1)


def test_not_an_age_file() -> None:
    with pytest.raises(AgeError, match="not an age"):
        decrypt(b"\x28\xb5\x2f\xfd" + os.urandom(100_000))
    with pytest.raises(AgeError, match="not an age"):
        decrypt(b"x" * 70_000)
