"""The age v1 file format (https://age-encryption.org/v1), X25519 recipients only.

Why not pyrage, which binhoard used first: pyrage (rage) decrypts at ~1.25 CPU s per GiB
of ciphertext and holds the GIL meanwhile; ChaCha20-Poly1305 from OpenSSL, through
``cryptography``, does the same work at ~0.3 s/GiB and releases the GIL (measured here:
two threads run twice as fast as one). On 2 cores that difference decides whether a
restore keeps up with ``zstd -d | mbstream -x`` (docs/benchmarks.md). The format is
unchanged: objects written here decrypt with the ``age`` and ``rage`` tools and the
other way round (tests/unit/test_age.py checks both against pyrage and the ``age`` CLI).

The format, in short:

* header: ``age-encryption.org/v1``, one stanza per recipient (``-> X25519 <ephemeral
  share>`` and the 16-byte file key wrapped with ChaCha20-Poly1305 under
  HKDF-SHA256(X25519 shared secret, share || recipient, "age-encryption.org/v1/X25519")),
  then ``--- <HMAC-SHA256 of the header under HKDF(file key, "header")>``;
* payload: a 16-byte nonce, then the plaintext in chunks of 64 KiB, each sealed with
  ChaCha20-Poly1305 under HKDF(file key, nonce, "payload"), nonce = 11-byte big-endian
  chunk counter || 1 if it is the last chunk else 0. Only the last chunk may be short,
  and it is empty only when the whole plaintext is.

So every chunk is authenticated before it is released, and a stream cut at any point
(even at a chunk boundary: the last chunk is marked) fails.

Decryption checks what the spec says in the spec's order, and each failure has its class
(the outcomes of the C2SP/CCTV test vectors, tests/unit/test_age_vectors.py): the header
is parsed whole first (``HeaderError``), then a stanza is opened (``NoMatchingKeyError``),
then the header MAC is checked (``HeaderMacError``), then the payload (``PayloadError``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Callable, Sequence
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from binhoard.crypto import bech32

_VERSION_LINE: Final = b"age-encryption.org/v1\n"
_CLOSING: Final = b"---"  # the start of the header's last line
_MAC_PREFIX: Final = b"--- "
_STANZA_PREFIX: Final = b"-> "
_X25519_LABEL: Final = b"age-encryption.org/v1/X25519"
_PUBLIC_HRP: Final = "age"
_SECRET_HRP: Final = "age-secret-key-"  # noqa: S105 - the prefix, not a key
_FILE_KEY_SIZE: Final = 16
_NONCE_SIZE: Final = 16
_TAG_SIZE: Final = 16
_KEY_SIZE: Final = 32
_MAC_SIZE: Final = 32  # HMAC-SHA256
_COLUMNS: Final = 64  # base64 characters per stanza body line
_MAX_HEADER: Final = 64 * 1024  # binhoard writes ~100 bytes per recipient
CHUNK: Final = 64 * 1024  # plaintext bytes per payload chunk
SEALED_CHUNK: Final = CHUNK + _TAG_SIZE
_LAST_CHUNK: Final = 0x01


class AgeError(Exception):
    """The data is not an age file this module can decrypt; the message says why."""


class HeaderError(AgeError):
    """The age header is malformed or cut short (or the payload nonce after it is)."""


class HeaderMacError(AgeError):
    """A private key opened a stanza, but the header's MAC does not match: the header
    was modified after it was written."""


class PayloadError(AgeError):
    """The payload does not authenticate: a chunk was modified, the payload is cut short,
    or data follows its last chunk."""


class NoMatchingKeyError(AgeError):
    """No recipient stanza of the header opens with any of the given identities."""

    def __init__(self, identities: int, stanzas: int) -> None:
        super().__init__(
            f"none of the {identities} private key(s) opens any of its {stanzas} X25519"
            " recipient stanza(s)"
        )
        self.identities = identities
        self.stanzas = stanzas


def _hkdf(secret: bytes, salt: bytes | None, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=_KEY_SIZE, salt=salt, info=info).derive(secret)


def _b64encode(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _b64decode(text: bytes) -> bytes:
    """Canonical unpadded base64, as age requires (no padding, no stray bits)."""
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise HeaderError("invalid base64 in the age header") from None
    if _b64encode(data) != text:
        raise HeaderError("non-canonical base64 in the age header")
    return data


# --------------------------------------------------------------------------------------
# Keys


class Recipient:
    """An X25519 public key, ``age1...``."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != _KEY_SIZE:
            raise AgeError("an X25519 recipient is 32 bytes")
        self.raw = raw
        self._key = X25519PublicKey.from_public_bytes(raw)

    @classmethod
    def parse(cls, text: str) -> Recipient:
        try:
            hrp, raw = bech32.decode(text.strip())
        except bech32.Bech32Error as exc:
            raise AgeError(f"not an age X25519 recipient: {exc}") from None
        if hrp != _PUBLIC_HRP or text.strip() != text.strip().lower():
            raise AgeError("not an age X25519 recipient: it must start with age1, in lower case")
        return cls(raw)

    def __str__(self) -> str:
        return bech32.encode(_PUBLIC_HRP, self.raw)

    def __repr__(self) -> str:
        return f"Recipient({self})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipient) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


class Identity:
    """An X25519 private key, ``AGE-SECRET-KEY-1...``. Its repr never shows the key."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != _KEY_SIZE:
            raise AgeError("an X25519 identity is 32 bytes")
        self._raw = raw
        self._key = X25519PrivateKey.from_private_bytes(raw)
        self.recipient = Recipient(self._key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> Identity:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    @classmethod
    def parse(cls, text: str) -> Identity:
        """Never echoes ``text`` in its errors: it is a private key."""
        stripped = text.strip()
        try:
            hrp, raw = bech32.decode(stripped)
        except bech32.Bech32Error as exc:
            raise AgeError(f"not an age X25519 identity: {exc}") from None
        if hrp != _SECRET_HRP or stripped != stripped.upper():
            raise AgeError(
                "not an age X25519 identity: it must start with AGE-SECRET-KEY-1, in upper case"
            )
        return cls(raw)

    def secret_text(self) -> str:
        """The key as age writes it (``AGE-SECRET-KEY-1...``): handle with care."""
        return bech32.encode(_SECRET_HRP, self._raw).upper()

    def __repr__(self) -> str:
        return f"Identity(recipient={self.recipient})"

    def unwrap(self, share: bytes, body: bytes) -> bytes | None:
        """The file key of an X25519 stanza, or None if it is not addressed to this key."""
        try:
            shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:  # an all-zero shared secret: a low-order point
            raise HeaderError("an X25519 stanza's ephemeral share is a low-order point") from None
        wrap_key = _hkdf(shared, share + self.recipient.raw, _X25519_LABEL)
        try:
            return ChaCha20Poly1305(wrap_key).decrypt(bytes(12), body, None)
        except InvalidTag:
            return None


def identity_from_file_text(text: str) -> Identity:
    """The one identity of an identity file as ``age-keygen`` (and ``binhoard keys
    generate``) writes it: comment lines, then one ``AGE-SECRET-KEY-1...`` line. Errors
    never contain the key."""
    keys = [
        line.strip() for line in text.splitlines() if line.strip().startswith("AGE-SECRET-KEY-")
    ]
    if len(keys) != 1:
        raise AgeError(f"expected exactly one AGE-SECRET-KEY line, found {len(keys)}")
    try:
        return Identity.parse(keys[0])
    except AgeError:
        raise AgeError("the AGE-SECRET-KEY line is not a valid age identity") from None


def _wrap(recipient: Recipient, file_key: bytes) -> bytes:
    ephemeral = X25519PrivateKey.generate()
    share = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(recipient._key)
    wrap_key = _hkdf(shared, share + recipient.raw, _X25519_LABEL)
    body = ChaCha20Poly1305(wrap_key).encrypt(bytes(12), file_key, None)
    return b"-> X25519 " + _b64encode(share) + b"\n" + _b64encode(body) + b"\n"


# --------------------------------------------------------------------------------------
# Payload


class _Chunks:
    """Seals or opens numbered payload chunks; the counter is the chunk's position."""

    def __init__(self, file_key: bytes, nonce: bytes) -> None:
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self.counter = 0

    def _nonce(self, last: bool) -> bytes:
        if self.counter >= 1 << 88:
            raise AgeError("age payload too long")  # unreachable in practice
        nonce = self.counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")
        self.counter += 1
        return nonce

    def seal(self, plain: memoryview, last: bool) -> bytes:
        return self._aead.encrypt(self._nonce(last), plain, None)

    def open_into(self, sealed: memoryview, out: memoryview, last: bool) -> bool:
        try:
            self._aead.decrypt_into(self._nonce(last), sealed, None, out)
        except InvalidTag:
            return False
        return True


def _whole_pieces(pending: bytearray, data: memoryview, size: int) -> list[memoryview]:
    """The ``size``-byte pieces of ``pending + data`` that are surely not the last one.

    Holds back at least one byte (the last piece may be a whole one: only the end of the
    stream says) and leaves what is held back in ``pending``. Whole pieces of ``data``
    are returned as views, not copied; only a piece straddling ``pending`` is.
    """
    pieces: list[memoryview] = []
    if pending:
        fill = min(size - len(pending), len(data))
        pending += data[:fill]
        data = data[fill:]
        if len(pending) < size or not data:
            return pieces
        pieces.append(memoryview(bytes(pending)))
        pending.clear()
    whole = (len(data) - 1) // size if data else 0
    pieces.extend(data[i * size : (i + 1) * size] for i in range(whole))
    pending += data[whole * size :]
    return pieces


def _as_view(data: bytes | bytearray | memoryview) -> memoryview:
    return memoryview(data).cast("B")


class Encryptor:
    """Encrypts a stream to ``recipients``: ``update`` as data comes, ``finish`` once.

    The output of ``update`` is the header (first call) and every whole chunk but the
    last: a full chunk is held back until more data, or the end, says whether it is the
    last one.
    """

    def __init__(
        self, recipients: Sequence[Recipient], *, random: Callable[[int], bytes] = os.urandom
    ) -> None:
        if not recipients:
            raise AgeError("at least one recipient is needed to encrypt")
        file_key = random(_FILE_KEY_SIZE)
        header = _VERSION_LINE + b"".join(_wrap(r, file_key) for r in recipients) + b"---"
        mac = hmac.digest(_hkdf(file_key, None, b"header"), header, "sha256")
        nonce = random(_NONCE_SIZE)
        self._head = header + b" " + _b64encode(mac) + b"\n" + nonce
        self._chunks = _Chunks(file_key, nonce)
        self._pending = bytearray()
        self._finished = False

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._finished:
            raise AgeError("the encryptor has finished")
        return self._seal(_whole_pieces(self._pending, _as_view(data), CHUNK), last=False)

    def finish(self) -> bytes:
        """The rest: the last chunk (empty only if the whole plaintext was)."""
        if self._finished:
            raise AgeError("the encryptor has finished")
        self._finished = True
        out = self._seal([memoryview(bytes(self._pending))], last=True)
        self._pending.clear()
        return out

    def _seal(self, pieces: list[memoryview], *, last: bool) -> bytes:
        head, self._head = self._head, b""
        final = len(pieces) - 1 if last else -1
        # One bytes object per chunk, joined once: chunk-sized allocations come from the
        # heap and are reused, where one large output buffer per call is a fresh mapping
        # that costs page faults (measured: +0.3 CPU s/GiB of system time).
        sealed = [self._chunks.seal(piece, index == final) for index, piece in enumerate(pieces)]
        return b"".join([head, *sealed]) if head else b"".join(sealed)


# --------------------------------------------------------------------------------------
# Decryption


def _split_header(data: bytes) -> tuple[int, int] | None:
    """(end of the closing line, its start) once the whole header has arrived.

    The first line that starts with "---" closes the header, whatever follows on it
    (``_mac`` then checks that line), as in the reference implementation. Data that
    does not start with the version line is refused as soon as that shows.
    """
    if not _VERSION_LINE.startswith(data[: len(_VERSION_LINE)]):
        raise HeaderError("not an age v1 file (the first line is not age-encryption.org/v1)")
    search = 0
    while True:
        newline = data.find(b"\n", search)
        if newline < 0:
            if len(data) > _MAX_HEADER:
                raise HeaderError("no age header end in the first 64 KiB: not an age file")
            return None
        if data.startswith(_CLOSING, search):
            return newline + 1, search
        search = newline + 1


def _mac(closing_line: bytes) -> bytes:
    """The MAC of the closing line (without its newline): "--- " and 32 bytes of base64."""
    if not closing_line.startswith(_MAC_PREFIX):
        raise HeaderError('malformed age header: the closing line is not "--- " and a MAC')
    mac = _b64decode(closing_line[len(_MAC_PREFIX) :])
    if len(mac) != _MAC_SIZE:
        raise HeaderError(f"malformed age header: the MAC is {len(mac)} bytes, not {_MAC_SIZE}")
    return mac


def _parse_stanzas(lines: list[bytes]) -> list[tuple[list[bytes], bytes]]:
    """(arguments, body) of each stanza; bodies are wrapped at 64 columns."""
    stanzas: list[tuple[list[bytes], bytes]] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.startswith(_STANZA_PREFIX):
            raise HeaderError("malformed age header: a line that is not a stanza")
        args = line[len(_STANZA_PREFIX) :].split(b" ")
        if not args or any(not arg or not all(33 <= c <= 126 for c in arg) for arg in args):
            raise HeaderError("malformed age header: bad stanza arguments")
        body_lines = []
        index += 1
        while True:
            if index >= len(lines):
                raise HeaderError("malformed age header: a stanza body is not terminated")
            body_line = lines[index]
            index += 1
            if len(body_line) > _COLUMNS:
                raise HeaderError("malformed age header: a stanza body line is too long")
            body_lines.append(body_line)
            if len(body_line) < _COLUMNS:
                break
        stanzas.append((args, _b64decode(b"".join(body_lines))))
    return stanzas


def _open_header(header: bytes, closing: int, identities: Sequence[Identity]) -> bytes:
    """The file key of ``header`` (up to the end of its closing line, which starts at
    ``closing``), checked in the spec's order: syntax, then stanzas, then the MAC."""
    mac = _mac(header[closing:-1])
    stanzas = _parse_stanzas(header[len(_VERSION_LINE) : closing].split(b"\n")[:-1])
    file_key = _file_key(stanzas, identities)
    expected = hmac.digest(_hkdf(file_key, None, b"header"), header[: closing + 3], "sha256")
    if not hmac.compare_digest(mac, expected):
        raise HeaderMacError("the age header's MAC does not match: the header was modified")
    return file_key


def _file_key(stanzas: list[tuple[list[bytes], bytes]], identities: Sequence[Identity]) -> bytes:
    x25519_stanzas = 0
    for args, body in stanzas:
        if args[0] != b"X25519":
            continue  # other recipient types (and grease) are skipped, as the spec says
        x25519_stanzas += 1
        if len(args) != 2:
            raise HeaderError(f"an X25519 stanza has {len(args) - 1} arguments, not 1")
        share = _b64decode(args[1])
        if len(share) != _KEY_SIZE:
            raise HeaderError(f"an X25519 stanza's share is {len(share)} bytes, not {_KEY_SIZE}")
        if len(body) != _FILE_KEY_SIZE + _TAG_SIZE:
            # Checked before decrypting, as the spec asks: a file key is 16 bytes.
            raise HeaderError(
                f"an X25519 stanza's body is {len(body)} bytes, not"
                f" {_FILE_KEY_SIZE + _TAG_SIZE} (a wrapped 16-byte file key)"
            )
        for identity in identities:
            file_key = identity.unwrap(share, body)
            if file_key is not None:
                return file_key
    raise NoMatchingKeyError(len(identities), x25519_stanzas)


class Decryptor:
    """Decrypts a stream: ``update`` as stored bytes come, ``finish`` at their end.

    Only authenticated plaintext is returned. The last sealed chunk is held back until
    ``finish``, since only the end of the data says it must carry the "last" flag.
    """

    def __init__(self, identities: Sequence[Identity]) -> None:
        if not identities:
            raise AgeError("no private key to decrypt with")
        self._identities = list(identities)
        self._header = bytearray()
        self._pending = bytearray()
        self._file_key: bytes | None = None  # once the header is read and checked
        self._chunks: _Chunks | None = None  # once the payload nonce is read too
        self._finished = False

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        if self._finished:
            raise AgeError("the decryptor has finished")
        view = _as_view(data)
        if self._chunks is None:
            self._header += view
            if not self._read_header():
                return b""
            view = memoryview(bytes(self._header))  # what followed the header
            self._header = bytearray()
        pieces = _whole_pieces(self._pending, view, SEALED_CHUNK)
        return self._open(pieces, last=False)

    def finish(self) -> bytes:
        """The last chunk's plaintext; raises if the stream was cut short."""
        if self._finished:
            raise AgeError("the decryptor has finished")
        self._finished = True
        if self._file_key is None:
            raise HeaderError("truncated: the age header is incomplete")
        if self._chunks is None:
            raise HeaderError("truncated: the age file ends inside its 16-byte payload nonce")
        if len(self._pending) < _TAG_SIZE:
            raise PayloadError("truncated: the age payload ends before its last chunk")
        out = self._open([memoryview(bytes(self._pending))], last=True)
        self._pending.clear()
        return out

    def _read_header(self) -> bool:
        """Checks the header once it is complete, then reads the payload nonce; keeps
        what follows them."""
        buffer = self._header
        if self._file_key is None:
            found = _split_header(bytes(buffer[: _MAX_HEADER + 1]))
            if found is None:
                return False
            end, closing = found
            self._file_key = _open_header(bytes(buffer[:end]), closing, self._identities)
            del buffer[:end]
        if len(buffer) < _NONCE_SIZE:
            return False
        self._chunks = _Chunks(self._file_key, bytes(buffer[:_NONCE_SIZE]))
        del buffer[:_NONCE_SIZE]
        return True

    def _open(self, pieces: list[memoryview], *, last: bool) -> bytes:
        assert self._chunks is not None
        return _open_chunks(self._chunks, pieces, last)


def _open_chunks(chunks: _Chunks, pieces: list[memoryview], last: bool) -> bytes:
    """Opens consecutive sealed chunks; with ``last``, the final one is the stream's last."""
    if not pieces:
        return b""
    out = bytearray(sum(len(p) for p in pieces) - len(pieces) * _TAG_SIZE)
    view = memoryview(out)
    pos = 0
    for index, piece in enumerate(pieces):
        is_last = last and index == len(pieces) - 1
        if is_last and len(piece) == _TAG_SIZE and chunks.counter > 0:
            raise PayloadError(
                f"payload chunk {chunks.counter} is an empty last chunk after data, which age"
                " never writes: the object is modified"
            )
        position = chunks.counter
        end = pos + len(piece) - _TAG_SIZE
        if not chunks.open_into(piece, view[pos:end], is_last):
            raise PayloadError(_chunk_failure(position, is_last))
        pos = end
    return bytes(out)


def _chunk_failure(position: int, last: bool) -> str:
    if last:
        return (
            f"payload chunk {position} does not authenticate as the last chunk: the object"
            " is truncated or modified"
        )
    return f"payload chunk {position} does not authenticate: the object is modified"
