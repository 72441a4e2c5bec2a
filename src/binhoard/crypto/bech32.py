"""Bech32 (BIP 173), the text encoding of age keys: ``age1...`` and ``AGE-SECRET-KEY-1...``.

Only what age needs: encode and decode one byte string under a human-readable part,
with the original bech32 checksum (age predates bech32m) and no length limit (age
secret keys are longer than BIP 173's 90 characters).
"""

from __future__ import annotations

from typing import Final

_CHARSET: Final = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_VALUES: Final = {char: value for value, char in enumerate(_CHARSET)}
_GENERATOR: Final = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
_CHECKSUM_LENGTH: Final = 6


class Bech32Error(ValueError):
    """Not a valid bech32 string (the message never repeats the input: it may be a key)."""


def _polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = (checksum & 0x1FFFFFF) << 5 ^ value
        for bit, generator in enumerate(_GENERATOR):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _expand_hrp(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: bytes | list[int], source_bits: int, target_bits: int, pad: bool) -> list[int]:
    accumulator = 0
    bits = 0
    out: list[int] = []
    mask = (1 << target_bits) - 1
    for value in data:
        accumulator = (accumulator << source_bits) | value
        bits += source_bits
        while bits >= target_bits:
            bits -= target_bits
            out.append((accumulator >> bits) & mask)
    if pad:
        if bits:
            out.append((accumulator << (target_bits - bits)) & mask)
    elif bits >= source_bits or (accumulator << (target_bits - bits)) & mask:
        raise Bech32Error("non-zero padding in the data part")
    return out


def encode(hrp: str, data: bytes) -> str:
    """``hrp`` + "1" + data + checksum, in lower case."""
    words = _regroup(data, 8, 5, pad=True)
    checksum = _polymod([*_expand_hrp(hrp), *words, *([0] * _CHECKSUM_LENGTH)]) ^ 1
    tail = [(checksum >> 5 * (5 - i)) & 31 for i in range(_CHECKSUM_LENGTH)]
    return hrp + "1" + "".join(_CHARSET[w] for w in [*words, *tail])


def decode(text: str) -> tuple[str, bytes]:
    """(hrp in lower case, data) of a bech32 string; either case, but not mixed."""
    if text.lower() != text and text.upper() != text:
        raise Bech32Error("mixed upper and lower case")
    text = text.lower()
    separator = text.rfind("1")
    if separator < 1 or len(text) - separator - 1 < _CHECKSUM_LENGTH:
        raise Bech32Error("no separator, empty prefix, or too short")
    hrp, rest = text[:separator], text[separator + 1 :]
    if any(not 33 <= ord(c) <= 126 for c in hrp):
        raise Bech32Error("invalid character in the prefix")
    try:
        words = [_VALUES[c] for c in rest]
    except KeyError:
        raise Bech32Error("invalid character in the data part") from None
    if _polymod([*_expand_hrp(hrp), *words]) != 1:
        raise Bech32Error("checksum mismatch")
    return hrp, bytes(_regroup(words[:-_CHECKSUM_LENGTH], 5, 8, pad=False))
