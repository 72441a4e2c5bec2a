"""``binhoard restore``: a backup into an empty datadir."""

from __future__ import annotations

from pathlib import Path

import click

from binhoard.app import open_site, site_name
from binhoard.cli.common import config_option, site_option
from binhoard.cli.progress import ByteProgress
from binhoard.config import load_settings
from binhoard.domain.errors import UsageError
from binhoard.ops.restore_backup import RestoreProgress, restore_backup, start_restored_server


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
def restore_command(
    config_file: Path, site: str | None, backup_id: str, datadir: Path | None, start: bool
) -> None:
    """Restore a backup (with its incremental chain) into an empty datadir.

    The datadir is then ready for mariadbd; binhoard never overwrites a non-empty one.
    """
    settings = load_settings(config_file)
    name = site_name(settings, site)
    target = (datadir or settings.mysql.data_directory).resolve()
    with ByteProgress("restore") as bar:

        def show(state: RestoreProgress) -> None:
            bar.update(
                state.phase,
                state.basebackup_compressed_bytes_downloaded,
                state.basebackup_compressed_bytes_total,
            )

        manifest = restore_backup(
            settings, open_site(settings, name), backup_id, target, site_name=name, progress=show
        )
    if start:
        if target != settings.mysql.data_directory.resolve():
            raise UsageError("--start needs the restore to go to mysql.data_directory")
        start_restored_server(settings, manifest)
        click.echo(f"server started on {target}")
    click.echo(
        f"backup {manifest.backup_id} restored into {target}; its snapshot GTID position is "
        f"{manifest.snapshot.gtid_position or '(empty)'}"
    )
