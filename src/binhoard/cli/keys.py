"""``binhoard keys``: age key pairs for encrypting backups."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import click

from binhoard.crypto.age import AgeError, Identity, identity_from_file_text
from binhoard.domain.errors import UsageError


def generate_key_file(path: Path) -> str:
    """Writes a new age X25519 identity to ``path`` (mode 0600, never overwritten).

    The file has the format of ``age-keygen``, so the standard ``age -d -i FILE`` can
    decrypt any object binhoard stored. Returns the public key (recipient).
    """
    identity = Identity.generate()
    recipient = str(identity.recipient)
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    text = f"# created: {created}\n# public key: {recipient}\n{identity.secret_text()}\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    return recipient


def read_identity_file(path: Path) -> Identity:
    """Reads an age identity file (comments allowed, as age-keygen writes them)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror}") from None
    try:
        return identity_from_file_text(text)
    except AgeError as exc:  # its message never holds the key
        raise UsageError(f"{path}: {exc}") from None


@click.group("keys")
def keys_group() -> None:
    """Manage encryption keys."""


@keys_group.command("generate")
@click.argument("file", type=click.Path(path_type=Path))
def generate(file: Path) -> None:
    """Write a new private key to FILE and print its public key.

    Put the public key in backup_sites.<name>.encryption_keys.public on every host that
    takes backups; the private key is only needed where backups are restored.
    """
    recipient = generate_key_file(file)
    click.echo(f"private key written to {file} (keep it safe: without it nothing can be restored)")
    click.echo(f"public key: {recipient}")
