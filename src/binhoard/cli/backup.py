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
from binhoard.cli.common import config_option, json_option, site_option, start_telemetry
from binhoard.cli.progress import ByteProgress
from binhoard.config import Settings, load_settings
from binhoard.domain.backup_decision import BackupDecision
from binhoard.domain.errors import ConflictError, DeletionRefusedError, UsageError
from binhoard.domain.manifest import BackupManifest, BackupType
from binhoard.domain.restore_plan import parse_time_target
from binhoard.domain.schedule import format_utc
from binhoard.ops.archive import deposed_streams
from binhoard.ops.backup import BackupProgress, take_backup
from binhoard.ops.catalog import read_site
from binhoard.ops.expire import Deletion, DeletionJournal, delete_backup
from binhoard.ops.history import local_history, own_streams
from binhoard.ops.marks import mark_broken, preserve
from binhoard.ops.observe import Throttle, record_backup, record_backup_progress
from binhoard.ops.site import BackupEntry, read_backups, read_manifest
from binhoard.ops.sitecache import open_cache
from binhoard.storage.store import ObjectStore


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
    metrics = start_telemetry(settings, "backup create")
    store = open_site(settings, metrics=metrics)
    _refuse_if_deposed(settings, store)
    throttle = Throttle()
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
            if throttle.due(state.phase):
                record_backup_progress(metrics, state)

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
    record_backup(metrics, manifest)
    click.echo(
        f"backup {manifest.backup_id} ({manifest.backup_type}) stored: "
        f"{_mb(manifest.data.plain_size)} read, {_mb(manifest.data.stored_size)} stored, "
        f"{manifest.duration_seconds:.1f} s, snapshot GTID {manifest.snapshot.gtid_position}"
    )


def _refuse_if_deposed(settings: Settings, store: ObjectStore) -> None:
    """A deposed primary takes no backup, as its daemon takes none (docs/failover.md,
    "The old primary"): its stream would hold what it commits after the takeover, a second
    history next to the new owner's, and would end its being deposed."""
    history = local_history(settings.state_directory)
    ours = own_streams(read_site(store).streams, history)
    deposed = deposed_streams(ours, settings.server_id)
    if deposed:
        raise ConflictError(
            f'no backup taken: {deposed[0].sentence} (docs/failover.md, "The old primary")'
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
        "preserve_until": None,
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
        # An operator's mark says when; corruption is known from when this listing saw it.
        mark = entry.broken_mark
        summary.update(
            broken_at=(now if mark is None else mark.at).isoformat(),
            broken_object=entry.broken.key,
            broken_reason=entry.broken.reason,
        )
    if entry.preserve_until is not None:
        summary["preserve_until"] = entry.preserve_until.isoformat()
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
        "preserve_until",
    )


@backup_group.command("list")
@config_option
@site_option
@json_option
def list_command(config_file: Path, site: str | None, as_json: bool) -> None:
    """List the backups of a site, oldest first.

    A broken backup (its manifest, or that of a backup it builds on, is corrupt or
    missing, or it was marked broken) is listed as BROKEN with the object to look at; it
    is never restored or built on. The listing itself succeeds (exit status 0): broken
    is a state of the backup, shown (``broken_at``, ``broken_object``, ``broken_reason``
    with --json) and repeated on stderr. A preserved backup shows until when
    (``preserve_until``).
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
        columns = ("id", "type", "started", "duration", "size", "snapshot GTID", "preserved until")
        for column in (*columns, "site"):
            table.add_column(column)
        for entry in listing.entries:
            b = entry.manifest
            until = _preserved(entry)
            if b is None:
                table.add_row(entry.backup_id, "BROKEN", "-", "-", "-", "-", until, name)
                continue
            table.add_row(
                b.backup_id,
                b.backup_type if entry.broken is None else f"{b.backup_type}, BROKEN",
                f"{b.started_at:%Y-%m-%d %H:%M:%S}",
                f"{b.duration_seconds:.1f} s",
                _mb(b.data.stored_size),
                b.snapshot.gtid_position or "-",
                until,
                name,
            )
        Console(width=200).print(table)
    for backup_id, broken in listing.broken.items():
        click.echo(f"BROKEN: backup {backup_id}: {broken.reason}", err=True)


def _preserved(entry: BackupEntry) -> str:
    if entry.preserve_unreadable is not None:
        return "UNREADABLE"
    return "-" if entry.preserve_until is None else format_utc(entry.preserve_until)


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


@backup_group.command("delete")
@click.argument("backup_id")
@config_option
@click.option(
    "--force",
    is_flag=True,
    help="Delete even the newest backup that can be restored, an open stream, a preserved "
    "backup, and the incremental backups that build on it.",
)
def delete(backup_id: str, config_file: Path, force: bool) -> None:
    """Delete BACKUP_ID and its stream (binlog records, and the binlog files no other
    stream needs) from the upload site.

    Refused, saying why, for what retention never deletes: the newest backup that can be
    restored, a stream still receiving binlogs (stop archiving into it first), a
    preserved backup, and a backup that incremental backups build on (they would go
    with it). --force deletes it anyway, incrementals included. A deletion that was
    interrupted is finished by the next delete or prune.
    """
    settings = load_settings(config_file)
    store = open_site(settings)
    with open_cache(settings.state_directory, store.describe()) as cache:
        try:
            deleted = delete_backup(
                store,
                backup_id,
                datetime.now(UTC),
                force=force,
                journal=DeletionJournal(settings.state_directory),
                cache=cache,
            )
        except DeletionRefusedError as exc:
            raise DeletionRefusedError(f"{exc.message} (--force deletes it anyway)") from None
    for done in deleted:
        click.echo(deleted_line(done))


def deleted_line(done: Deletion) -> str:
    return (
        f"deleted backup {done.backup_id}: {done.objects} objects and "
        f"{done.binlog_objects} binlog files no other stream needs"
    )


@backup_group.command("preserve")
@click.argument("backup_id")
@config_option
@click.option("--until", "until", metavar="TIME", help="ISO 8601 with a time zone, or @unix.")
@click.option("--clear", is_flag=True, help="Take an earlier preservation back.")
def preserve_command(backup_id: str, config_file: Path, until: str | None, clear: bool) -> None:
    """Keep BACKUP_ID and its stream from retention (prune) until TIME.

    The newest preservation holds: a later one with another --until replaces it, and
    --clear takes it back. `backup delete` refuses a preserved backup without --force.
    """
    if clear == (until is not None):
        raise click.UsageError("give exactly one of --until TIME and --clear")
    now = datetime.now(UTC)
    when = None
    if until is not None:
        when = datetime.fromtimestamp(parse_time_target(until, "--until").at, UTC)
        if when <= now:
            raise UsageError(f"--until {until} is in the past; --clear takes a preservation back")
    settings = load_settings(config_file)
    mark = preserve(open_site(settings), backup_id, when, now=now)
    if when is None:
        click.echo(f"backup {backup_id} is no longer preserved ({mark.key})")
    else:
        click.echo(f"backup {backup_id} is preserved until {format_utc(when)} ({mark.key})")


@backup_group.command("mark-broken")
@click.argument("backup_id")
@config_option
@click.option("--reason", help="Why, in your words (shown with the backup).")
@click.option("--clear", is_flag=True, help="Take an earlier mark back.")
def mark_broken_command(backup_id: str, config_file: Path, reason: str | None, clear: bool) -> None:
    """Mark BACKUP_ID and its stream broken: never restored, built on or archived into;
    prune deletes it once a newer backup can be restored. --clear takes it back."""
    if clear and reason is not None:
        raise click.UsageError("--reason and --clear are mutually exclusive")
    settings = load_settings(config_file)
    mark = mark_broken(
        open_site(settings),
        backup_id,
        broken=not clear,
        reason=reason,
        now=datetime.now(UTC),
    )
    state = "no longer marked broken" if clear else "marked broken"
    click.echo(f"backup {backup_id} is {state} ({mark.key})")
