"""Cryptographic formats: age (encryption of stored objects) and bech32 (its keys)."""
