"""``binhoard config``: check a configuration file."""

from __future__ import annotations

from pathlib import Path

import click

from binhoard.app import open_server
from binhoard.config import load_settings
from binhoard.domain.errors import BinhoardError
from binhoard.domain.restore_target import target_problems


@click.group("config")
def config_group() -> None:
    """Work with configuration files."""


@config_group.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def check(file: Path) -> None:
    """Validate FILE (.json or .toml); print every problem with its key path.

    Secrets (passwords, private keys) are never printed.
    """
    settings = load_settings(file)
    sites = ", ".join(
        f"{name} ({site.object_storage.storage_type})"
        for name, site in sorted(settings.backup_sites.items())
    )
    click.echo(f"{file}: OK")
    click.echo(
        f"  server_id {settings.server_id}; upload site {settings.backup_settings.upload_site}"
    )
    click.echo(f"  backup sites: {sites}")
    # Not an error: a host that only takes backups need not be a restore target.
    try:
        problems = target_problems(open_server(settings).restore_target())
    except BinhoardError as exc:
        problems = [exc.message]
    if problems:
        click.echo("  point-in-time restore into this server would fail:")
        for problem in problems:
            click.echo(f"    {problem}")
    else:
        click.echo("  point-in-time restore into this server: its my.cnf is ready")
