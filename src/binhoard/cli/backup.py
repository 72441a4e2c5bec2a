"""``binhoard backup``: take, list and show backups."""

from __future__ import annotations

import json
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from binhoard.app import backup_config, open_server, open_site, site_name
from binhoard.cli.common import config_option, json_option, site_option
from binhoard.cli.progress import ByteProgress
from binhoard.config import load_settings
from binhoard.domain.backup_decision import BackupDecision
from binhoard.domain.manifest import BackupManifest, BackupType
from binhoard.domain.schedule import format_utc
from binhoard.ops.backup import BackupProgress, take_backup
from binhoard.ops.site import BackupEntry, read_backups, read_manifest
from binhoard.ops.sitecache import open_cache


@click.group("backup")
def backup_group() -> None:
    """Take and inspect backups."""


@backup_group.command("create")
@config_option
@click.option("--full", is_flag=True, help="Take a full backup, whatever the schedule says.")
@click.option(
    "--incremental",
    is_flag=True,
    help="Take an incremental backup (pages changed since this server's newest backup), "
    "whatever the schedule says.",
)
@click.option(
    "--if-due",
    is_flag=True,
    help="Only if the schedule (backup_hour:backup_minute UTC, every "
    "backup_interval_minutes) has a backup due; otherwise print when the next one is and "
    "exit 0. For running from cron every few minutes.",
)
def create(config_file: Path, full: bool, incremental: bool, if_due: bool) -> None:
    """Take a backup of the configured server into the upload site.

    Without --full or --incremental the type follows backup_settings.incremental: full
    when incremental backups are disabled, when there is no earlier backup of this server,
    or on a day of full_backup_week_schedule (UTC) until that day's full backup exists;
    incremental otherwise. The reason is printed before the backup starts.
    """
    if full and incremental:
        raise click.UsageError("--full and --incremental are mutually exclusive")
    requested: BackupType | None = "full" if full else "incremental" if incremental else None
    settings = load_settings(config_file)
    store = open_site(settings)
    with ExitStack() as stack:
        bars: list[ByteProgress] = []

        def decided(decision: BackupDecision) -> None:
            _print_decision(decision)
            # The bar only once there is a backup to show: a skipped run prints one line.
            if decision.backup_type is not None:
                bars.append(stack.enter_context(ByteProgress("backup")))

        def show(state: BackupProgress) -> None:
            for bar in bars:
                bar.update(state.phase, state.bytes_read, state.estimated_total)

        manifest = take_backup(
            open_server(settings),
            store,
            backup_config(settings),
            requested=requested,
            if_due=if_due,
            on_decision=decided,
            progress=show,
        )
    if manifest is None:
        return
    click.echo(
        f"backup {manifest.backup_id} ({manifest.backup_type}) stored: "
        f"{_mb(manifest.data.plain_size)} read, {_mb(manifest.data.stored_size)} stored, "
        f"{manifest.duration_seconds:.1f} s, snapshot GTID {manifest.snapshot.gtid_position}"
    )


def _print_decision(decision: BackupDecision) -> None:
    schedule = decision.schedule
    if decision.backup_type is None:
        if schedule is None:
            click.echo(f"not due: {decision.reason}")
        else:
            click.echo(
                f"not due: next backup at {format_utc(schedule.next_at)} ({schedule.reason})"
            )
        return
    if schedule is not None:
        click.echo(f"due: {schedule.reason}")
    click.echo(f"{decision.backup_type} backup: {decision.reason}")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def manifest_summary(manifest: BackupManifest, site: str) -> dict[str, Any]:
    """A backup as ``backup list --json`` (and the HTTP API) shows it."""
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
        "broken_at": None,
        "broken_object": None,
        "broken_reason": None,
    }


def entry_summary(entry: BackupEntry, site: str, now: datetime) -> dict[str, Any]:
    """``manifest_summary``, or for a broken backup the same keys with what is known:
    ``broken_at`` (when this listing found it broken), the object to look at and why.
    A backup whose manifest cannot be read has only its id."""
    if entry.manifest is not None:
        summary = manifest_summary(entry.manifest, site)
    else:
        summary = {key: None for key in manifest_summary_keys()}
        summary.update(backup_id=entry.backup_id, site=site)
    if entry.broken is not None:
        summary.update(
            broken_at=now.isoformat(),
            broken_object=entry.broken.key,
            broken_reason=entry.broken.reason,
        )
    return summary


def manifest_summary_keys() -> tuple[str, ...]:
    return (
        "backup_id",
        "backup_type",
        "parent_backup_id",
        "started_at",
        "completed_at",
        "duration_seconds",
        "server_id",
        "stored_size",
        "uncompressed_size",
        "snapshot",
        "lsn",
        "site",
        "broken_at",
        "broken_object",
        "broken_reason",
    )


@backup_group.command("list")
@config_option
@site_option
@json_option
def list_command(config_file: Path, site: str | None, as_json: bool) -> None:
    """List the backups of a site, oldest first.

    A broken backup (its manifest, or that of a backup it builds on, is corrupt or
    missing) is listed as BROKEN with the object to look at; it is never restored or
    built on. The listing itself succeeds (exit status 0): broken is a state of the
    backup, shown (``broken_at``, ``broken_object``, ``broken_reason`` with --json) and
    repeated on stderr.
    """
    settings = load_settings(config_file)
    name = site_name(settings, site)
    store = open_site(settings, name)
    # Manifests never change once written: only those this host has not read are fetched.
    cache = open_cache(settings.state_directory, store.describe())
    listing = read_backups(store, cache)
    cache.commit()
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps([entry_summary(e, name, now) for e in listing.entries], indent=2))
    elif not listing.entries:
        click.echo(f"no backups in site {name}")
    else:
        table = Table(show_edge=False)
        for column in ("id", "type", "started", "duration", "size", "snapshot GTID", "site"):
            table.add_column(column)
        for entry in listing.entries:
            b = entry.manifest
            if b is None:
                table.add_row(entry.backup_id, "BROKEN", "-", "-", "-", "-", name)
                continue
            table.add_row(
                b.backup_id,
                b.backup_type if entry.broken is None else f"{b.backup_type}, BROKEN",
                f"{b.started_at:%Y-%m-%d %H:%M:%S}",
                f"{b.duration_seconds:.1f} s",
                _mb(b.data.stored_size),
                b.snapshot.gtid_position or "-",
                name,
            )
        Console(width=200).print(table)
    for backup_id, broken in listing.broken.items():
        click.echo(f"BROKEN: backup {backup_id}: {broken.reason}", err=True)


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
