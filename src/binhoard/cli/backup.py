"""``binhoard backup``: take, list and show backups."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from binhoard.app import open_site, site_name
from binhoard.cli.common import config_option, json_option, site_option
from binhoard.cli.progress import ByteProgress
from binhoard.config import load_settings
from binhoard.domain.manifest import BackupManifest
from binhoard.ops.backup import BackupProgress, create_backup
from binhoard.ops.site import list_backups, read_manifest


@click.group("backup")
def backup_group() -> None:
    """Take and inspect backups."""


@backup_group.command("create")
@config_option
@click.option("--incremental", is_flag=True, help="Only pages changed since the last backup.")
def create(config_file: Path, incremental: bool) -> None:
    """Take a backup of the configured server into the upload site."""
    settings = load_settings(config_file)
    store = open_site(settings)
    with ByteProgress("backup") as bar:

        def show(state: BackupProgress) -> None:
            bar.update(state.phase, state.bytes_read, state.estimated_total)

        manifest = create_backup(
            settings, store, backup_type="incremental" if incremental else "full", progress=show
        )
    click.echo(
        f"backup {manifest.backup_id} ({manifest.backup_type}) stored: "
        f"{_mb(manifest.data.plain_size)} read, {_mb(manifest.data.stored_size)} stored, "
        f"{manifest.duration_seconds:.1f} s, snapshot GTID {manifest.snapshot.gtid_position}"
    )


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def manifest_summary(manifest: BackupManifest, site: str) -> dict[str, Any]:
    return {
        "backup_id": manifest.backup_id,
        "backup_type": manifest.backup_type,
        "parent_backup_id": manifest.parent_backup_id,
        "started_at": manifest.started_at.isoformat(),
        "completed_at": manifest.completed_at.isoformat(),
        "duration_seconds": round(manifest.duration_seconds, 3),
        "server_id": manifest.server_id,
        "stored_size": manifest.data.stored_size + manifest.my_cnf.stored_size,
        "uncompressed_size": manifest.data.plain_size,
        "snapshot": {
            "binlog_file": manifest.snapshot.binlog_file,
            "binlog_pos": manifest.snapshot.binlog_pos,
            "gtid_position": manifest.snapshot.gtid_position,
        },
        "lsn": {"from": manifest.lsn.from_lsn, "to": manifest.lsn.to_lsn},
        "site": site,
    }


@backup_group.command("list")
@config_option
@site_option
@json_option
def list_command(config_file: Path, site: str | None, as_json: bool) -> None:
    """List the backups of a site, oldest first."""
    settings = load_settings(config_file)
    name = site_name(settings, site)
    backups = list_backups(open_site(settings, name))
    if as_json:
        click.echo(json.dumps([manifest_summary(b, name) for b in backups], indent=2))
        return
    if not backups:
        click.echo(f"no backups in site {name}")
        return
    table = Table(show_edge=False)
    for column in ("id", "type", "started", "duration", "size", "snapshot GTID", "site"):
        table.add_column(column)
    for b in backups:
        table.add_row(
            b.backup_id,
            b.backup_type,
            f"{b.started_at:%Y-%m-%d %H:%M:%S}",
            f"{b.duration_seconds:.1f} s",
            _mb(b.data.stored_size),
            b.snapshot.gtid_position or "-",
            name,
        )
    Console(width=200).print(table)


@backup_group.command("show")
@click.argument("backup_id")
@config_option
@site_option
def show(backup_id: str, config_file: Path, site: str | None) -> None:
    """Show everything the manifest of BACKUP_ID records, as JSON."""
    settings = load_settings(config_file)
    name = site_name(settings, site)
    manifest = read_manifest(open_site(settings, name), backup_id)
    summary = manifest_summary(manifest, name)
    summary["chain"] = list(manifest.chain)
    summary["flavour"] = manifest.flavour
    summary["server_version"] = manifest.server_version
    summary["tool_version"] = manifest.tool_version
    summary["objects"] = {"data": manifest.data.to_dict(), "my_cnf": manifest.my_cnf.to_dict()}
    click.echo(json.dumps(summary, indent=2))
