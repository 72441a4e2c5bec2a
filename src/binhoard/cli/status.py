"""``binhoard status``: is the configured server ready to be backed up?"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from binhoard.cli.common import config_option, json_option
from binhoard.config import Settings, load_settings
from binhoard.domain.errors import ServerNotReadyError
from binhoard.domain.privileges import BACKUP_PRIVILEGES, RESTORE_PRIVILEGES, Grants
from binhoard.ops.archive import status_file
from binhoard.server import sql


def _archive_status(settings: Settings) -> dict[str, Any] | None:
    """The last archive pass on this host (``binlog-archive.json``), if any."""
    return status_file(settings).read()


@click.command("status")
@config_option
@json_option
def status_command(config_file: Path, as_json: bool) -> None:
    """Show the server binhoard is configured for and whether it can be backed up."""
    settings = load_settings(config_file)
    conn = sql.connect(settings.mysql.client_params)
    try:
        facts = sql.server_facts(conn)
        grants = sql.grants(conn)
    finally:
        conn.close()
    user = settings.mysql.client_params.user
    problems = facts.problems(expected_server_id=settings.server_id)
    problems += _missing(grants, BACKUP_PRIVILEGES, f"user {user} lacks")
    # A server restored from these backups has this server's accounts: the same user then
    # needs these to restore to a point in time. Not needed for backing up, so only noted.
    notes = _missing(grants, RESTORE_PRIVILEGES, f"for point-in-time restore, user {user} lacks")
    sites = {name: site.object_storage.storage_type for name, site in settings.backup_sites.items()}
    report: dict[str, Any] = {
        "server": {
            "version": facts.version,
            "server_id": facts.server_id,
            "read_only": facts.read_only,
            "gtid_current_pos": facts.gtid_current_pos,
            "gtid_binlog_pos": facts.gtid_binlog_pos,
        },
        "backup_sites": sites,
        "upload_site": settings.backup_settings.upload_site,
        "ready": not problems,
        "problems": problems,
        "notes": notes,
        "binlog_archive": _archive_status(settings),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"server      MariaDB {facts.version}, server_id {facts.server_id}")
        click.echo(f"gtid        {facts.gtid_current_pos or '(none yet)'}")
        click.echo(f"sites       {', '.join(f'{k} ({v})' for k, v in sites.items())}")
        click.echo(f"upload to   {settings.backup_settings.upload_site}")
        click.echo("ready       yes" if not problems else "ready       NO")
        for problem in problems:
            click.echo(f"  - {problem}")
        for note in notes:
            click.echo(f"  - note: {note}")
        archive = _archive_status(settings)
        if archive is None:
            click.echo("archive     no archive pass yet (binhoard binlog archive)")
        else:
            newest = archive.get("newest_stored_commit_time")
            lag = f", newest stored commit {time.time() - newest:.0f} s ago" if newest else ""
            click.echo(f"archive     last pass {archive.get('at')}{lag}")
            for problem in archive.get("problems", []):
                click.echo(f"  - GAP: {problem}")
    if problems:
        raise ServerNotReadyError("the server is not ready to be backed up", problems)


def _missing(grants: Grants, required: dict[str, str], what: str) -> list[str]:
    """One line per missing privilege, with what needs it."""
    return [
        f"{what} {privilege} (needed for {required[privilege]}): GRANT {privilege} ON *.* "
        "(docs/configuration.md, Grants)"
        for privilege in grants.missing(required)
    ]
