"""``binhoard restore``: a backup into an empty datadir."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from binhoard.app import open_server, open_site, pitr_config, site_name
from binhoard.cli.common import config_option, site_option, start_telemetry
from binhoard.cli.progress import ByteProgress
from binhoard.config import Settings, load_settings
from binhoard.domain.errors import BinhoardError, UsageError
from binhoard.domain.restore_plan import parse_target
from binhoard.ops.archive import archive_end_notes
from binhoard.ops.history import fork_history
from binhoard.ops.observe import Throttle, record_restore_progress
from binhoard.ops.pitr import PitrProgress, PitrRequest, PointInTimeRestore
from binhoard.ops.restore_backup import RestoreProgress, restore_backup, start_restored_server
from binhoard.ops.sitecache import SiteCache
from binhoard.storage.store import ObjectStore


@click.command("restore")
@config_option
@site_option
@click.option(
    "--backup", "backup_id", default="latest", show_default=True, help="Backup id, or 'latest'."
)
@click.option(
    "--datadir",
    type=click.Path(path_type=Path),
    help="Empty directory to restore into (default: mysql.data_directory).",
)
@click.option(
    "--start",
    is_flag=True,
    help="Then start the configured server on it, with the snapshot's GTID state.",
)
@click.option("--to-latest", is_flag=True, help="Apply archived binlogs to the newest one.")
@click.option("--to-time", help="Stop before the first transaction committed at or after this.")
@click.option("--to-gtid", help="Stop once this GTID position is reached (0-1-100[,1-2-7]).")
@click.option(
    "--to-position",
    help="Stop after the transactions up to FILE:POS of the source (SERVER_ID/FILE:POS in a "
    "stream another node took over).",
)
@click.option(
    "--approximate",
    is_flag=True,
    help="With --to-time: apply whole binlog files up to the time (faster, not exact).",
)
@click.option("--resume", is_flag=True, help="Continue the interrupted point-in-time restore.")
@click.option(
    "--replicate-from",
    metavar="HOST:PORT",
    help="With --to-latest: then replicate from this primary and catch up with it "
    "(replication.* in the configuration).",
)
def restore_command(  # noqa: PLR0917 - click passes one parameter per option
    config_file: Path,
    site: str | None,
    backup_id: str,
    datadir: Path | None,
    start: bool,
    to_latest: bool,
    to_time: str | None,
    to_gtid: str | None,
    to_position: str | None,
    approximate: bool,
    resume: bool,
    replicate_from: str | None,
) -> None:
    """Restore a backup (with its incremental chain) into an empty datadir; with a --to-*
    option, then apply archived binlogs up to that point (point-in-time restore).

    Point-in-time restore goes into mysql.data_directory and leaves the configured server
    running, read-only, with its GTID state exactly the target's. Killed, it continues
    with --resume. Plain restore leaves the datadir ready for mariadbd (--start starts it).
    binhoard never overwrites a non-empty datadir. With --replicate-from, the restored
    server then becomes a replica of that primary and catches up (docs/failover.md).
    """
    settings = load_settings(config_file)
    name = site_name(settings, site)
    targets = {
        "to_latest": to_latest,
        "to_time": to_time,
        "to_gtid": to_gtid,
        "to_position": to_position,
    }
    # An empty --to-time '' is given (and rejected by parse_target), not absent: testing
    # truthiness here once turned it into a plain restore that exited 0.
    given = {k: v for k, v in targets.items() if v is not None and v is not False}
    if replicate_from is not None and (resume or set(given) != {"to_latest"}):
        raise UsageError("--replicate-from goes with --to-latest (and not with --resume)")
    if resume or given:
        if datadir is not None and datadir.resolve() != settings.mysql.data_directory.resolve():
            raise UsageError("point-in-time restore goes into mysql.data_directory only")
        _point_in_time(
            settings,
            name,
            None if backup_id == "latest" else backup_id,
            given,
            approximate=approximate,
            resume=resume,
            replicate_from=replicate_from,
        )
        return
    target = (datadir or settings.mysql.data_directory).resolve()
    server = open_server(settings)
    with ByteProgress("restore") as bar:

        def show(state: RestoreProgress) -> None:
            bar.update(
                state.phase,
                state.basebackup_compressed_bytes_downloaded,
                state.basebackup_compressed_bytes_total,
            )

        manifest = restore_backup(
            server,
            open_site(settings, name),
            backup_id,
            target,
            site=settings.backup_sites[name],
            temporary_directory=settings.temporary_directory,
            progress=show,
        )
    if target == settings.mysql.data_directory.resolve():
        # The configured server now holds the snapshot, an earlier point than its
        # history's end as a rule: what it commits from here is a fork (docs/format.md).
        history = fork_history(
            settings.state_directory,
            f"backup {manifest.backup_id} restored to its snapshot: a fork, whose writes "
            "start a new stream",
        )
        click.echo(f"this server's history is now {history.history_id}: {history.reason}")
    if start:
        if target != settings.mysql.data_directory.resolve():
            raise UsageError("--start needs the restore to go to mysql.data_directory")
        start_restored_server(server, manifest)
        click.echo(f"server started on {target}")
    click.echo(
        f"backup {manifest.backup_id} restored into {target}; its snapshot GTID position is "
        f"{manifest.snapshot.gtid_position or '(empty)'}"
    )


def _point_in_time(
    settings: Settings,
    name: str,
    backup_id: str | None,
    target_args: dict[str, Any],
    *,
    approximate: bool,
    resume: bool,
    replicate_from: str | None,
) -> None:
    if resume and target_args:
        raise UsageError("--resume continues the recorded target; give no --to-* option")
    if not resume:
        parse_target(**target_args)  # a bad target is refused before anything is touched
    metrics = start_telemetry(settings, "restore")
    throttle = Throttle()
    store = open_site(settings, name, metrics=metrics)
    latest = "to_latest" in target_args
    warned: list[str] = []
    with ByteProgress("restore") as bar:

        def show(p: PitrProgress) -> None:
            if latest and p.backup_id and not warned:
                # Said as soon as the stream is known, not only after hours of applying.
                warned.append(p.backup_id)
                _, warning = _archive_notes(store, p.backup_id, restore.cache)
                if warning is not None:
                    click.echo(f"WARNING: {warning}", err=True)
            phase = p.phase
            if p.phase in ("applying_binlogs", "finalizing"):
                phase = (
                    f"{p.phase} {p.binlogs_restored}/{p.binlogs_total} files, "
                    f"{p.transactions_applied}/{p.transactions_total} trx, "
                    f"{p.transactions_per_second:.0f} trx/s"
                )
            bar.update(
                phase,
                p.basebackup_compressed_bytes_downloaded + p.binlog_bytes_applied,
                p.basebackup_compressed_bytes_total + p.binlog_bytes_total,
            )
            if throttle.due(p.phase):
                record_restore_progress(metrics, p)

        restore = PointInTimeRestore(
            open_server(settings), store, pitr_config(settings), progress=show
        )
        if resume:
            result = restore.resume()
        else:
            request = PitrRequest(
                name,
                target_args,
                backup_id,
                approximate_ok=approximate,
                replicate_from=replicate_from,
            )
            result = restore.start(request)
    record_restore_progress(metrics, result)
    if latest:
        end, warning = _archive_notes(store, result.backup_id, restore.cache)
        if end:
            click.echo(end)
        if warning is not None:
            click.echo(f"WARNING: {warning}", err=True)
    click.echo(
        f"restored backup {result.backup_id} (stream {result.backup_id}) and "
        f"{result.binlogs_restored} binlog files ({result.transactions_applied} "
        f"transactions) to {result.target}; the server is running read-only at GTID "
        f"{restore.state.get('final_gtid_position') or '(empty)'}"
    )
    if restore.state.get("history"):
        click.echo(f"this server's history: {restore.state['history']}")
    for other in restore.state.get("other_histories") or ():
        click.echo(f"NOTE: {other}", err=True)
    primary = restore.state.get("replicate_from")
    if primary:
        click.echo(
            f"it replicates from {primary} and caught up with it at GTID "
            f"{restore.state.get('replicated_to')}"
        )


def _archive_notes(
    store: ObjectStore, stream_id: str, cache: SiteCache | None
) -> tuple[str, str | None]:
    """``archive_end_notes``, never failing: they inform a restore, they must not stop or
    undo it (a corrupt ``archive-status.json`` is a warning, not an error)."""
    try:
        return archive_end_notes(store, stream_id, cache)
    except BinhoardError as exc:
        return "", f"cannot read where the archive of stream {stream_id} ends: {exc.message}"
