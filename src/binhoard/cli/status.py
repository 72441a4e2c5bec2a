"""``binhoard status``: is the configured server ready to be backed up? With a daemon
running for this configuration, what the daemon says (its HTTP API)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import click

from binhoard.app import open_server
from binhoard.cli.common import config_option, json_option
from binhoard.config import Settings, load_settings
from binhoard.domain.archiving import archive_lag
from binhoard.domain.errors import (
    ArchiveStalledError,
    AuthenticationError,
    ServerNotReadyError,
    UnavailableError,
)
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.privileges import BACKUP_PRIVILEGES, RESTORE_PRIVILEGES, Grants
from binhoard.ops.archive import status_file


def _archive_status(settings: Settings) -> dict[str, Any] | None:
    """The last archive pass on this host (``binlog-archive.json``), if any."""
    return status_file(settings.state_directory).read()


def _archive_lag(archive: dict[str, Any], gtid_binlog_pos: str) -> dict[str, Any] | None:
    """How far the newest open stream's archive is behind the server, in transactions
    (with GTID ranges) and seconds (since the newest stored commit, when behind)."""
    open_streams = [s for s in archive.get("streams", []) if not s.get("closed")]
    if not open_streams:
        return None
    end = GtidPosition.parse(str(open_streams[-1].get("end_position", "")))
    lag = archive_lag(GtidPosition.parse(gtid_binlog_pos), end)
    newest = archive.get("newest_stored_commit_time")
    seconds: int | None = 0
    if lag.transactions:
        seconds = round(time.time() - newest) if newest else None
    return {
        "archive_ends_at": end.format(),
        "transactions_behind": lag.transactions,
        "missing": list(lag.ranges),
        "seconds_behind": seconds,
        "text": lag.describe(),
    }


@click.command("status")
@config_option
@json_option
def status_command(config_file: Path, as_json: bool) -> None:
    """Show the server binhoard is configured for and whether it can be backed up.

    When a daemon runs with this configuration (it answers on http_address, http_port),
    show what the daemon says instead: its mode, backups, archive and restore.
    """
    settings = load_settings(config_file)
    daemon = daemon_status(settings)
    if daemon is not None:
        _show_daemon(daemon, as_json)
    else:
        _local_status(settings, as_json)


def _local_status(settings: Settings, as_json: bool) -> None:
    server = open_server(settings)
    facts = server.facts()
    grants = server.grants()
    user = settings.mysql.client_params.user
    problems = facts.problems(expected_server_id=settings.server_id)
    problems += _missing(grants, BACKUP_PRIVILEGES, f"user {user} lacks")
    # A server restored from these backups has this server's accounts: the same user then
    # needs these to restore to a point in time. Not needed for backing up, so only noted.
    notes = _missing(grants, RESTORE_PRIVILEGES, f"for point-in-time restore, user {user} lacks")
    archive = _archive_status(settings)
    stalled = bool(archive and archive.get("stalled"))
    lag = _archive_lag(archive, facts.gtid_binlog_pos) if archive else None
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
        "ready": not problems and not stalled,
        "problems": problems,
        "notes": notes,
        "binlog_archive": archive,
        "binlog_archive_lag": lag,
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(f"server      MariaDB {facts.version}, server_id {facts.server_id}")
        click.echo(f"gtid        {facts.gtid_current_pos or '(none yet)'}")
        click.echo(f"sites       {', '.join(f'{k} ({v})' for k, v in sites.items())}")
        click.echo(f"upload to   {settings.backup_settings.upload_site}")
        click.echo("ready       yes" if report["ready"] else "ready       NO")
        for problem in problems:
            click.echo(f"  - {problem}")
        for note in notes:
            click.echo(f"  - note: {note}")
        if archive is None:
            click.echo("archive     no archive pass yet (binhoard binlog archive)")
        else:
            if stalled:
                reasons = "; ".join(archive.get("stall_reasons", []))
                click.echo(f"archive     STALLED since {archive.get('stalled_since')}: {reasons}")
            click.echo(f"archive     last pass {archive.get('at')}")
            if lag is not None:
                behind = lag["text"]
                if lag["seconds_behind"] is not None and lag["transactions_behind"]:
                    behind += f", newest stored commit {lag['seconds_behind']} s ago"
                click.echo(f"behind      {behind}; archive ends at {lag['archive_ends_at']}")
    if problems:
        raise ServerNotReadyError("the server is not ready to be backed up", problems)
    if stalled and archive is not None:
        raise ArchiveStalledError(
            f"binlog archiving is stalled since {archive.get('stalled_since')}: "
            + "; ".join(archive.get("stall_reasons", []))
        )


def _missing(grants: Grants, required: dict[str, str], what: str) -> list[str]:
    """One line per missing privilege, with what needs it."""
    return [
        f"{what} {privilege} (needed for {required[privilege]}): GRANT {privilege} ON *.* "
        "(docs/configuration.md, Grants)"
        for privilege in grants.missing(required)
    ]


# --- a running daemon ----------------------------------------------------------------
def _daemon_url(settings: Settings, path: str) -> str:
    host = settings.http_address
    # A daemon listening on every address answers on loopback too.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104 - reaching it
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.http_port}{path}"


def _get(settings: Settings, path: str) -> dict[str, Any]:
    request = urllib.request.Request(_daemon_url(settings, path))  # noqa: S310 - http://
    token = settings.http_auth_token
    if token is not None:
        request.add_header("Authorization", f"Bearer {token.get_secret_value()}")
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - http://
        body = json.loads(answer.read())
    if not isinstance(body, dict):
        raise UnavailableError(f"{_daemon_url(settings, path)} did not answer a JSON object")
    return body


def daemon_status(settings: Settings) -> dict[str, Any] | None:
    """The running daemon's ``GET /status`` (and ``GET /status/restore`` while it
    restores); None when no daemon answers on the configured address."""
    try:
        status = _get(settings, "/status")
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise AuthenticationError(
                f"the daemon on {_daemon_url(settings, '')} refused the http_auth_token of "
                "this configuration"
            ) from None
        raise UnavailableError(f"the daemon answered GET /status with {exc.code}") from None
    except (urllib.error.URLError, OSError):
        return None  # nothing listens: no daemon, the local status follows
    if status.get("mode") == "restore":
        try:
            status["restore"] = _get(settings, "/status/restore")
        except (urllib.error.URLError, OSError):
            status["restore"] = None  # it just finished (observe) or is starting
    status["url"] = _daemon_url(settings, "")
    return status


def _show_daemon(status: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"daemon": status}, indent=2))
    else:
        click.echo(f"daemon      {status['url']}, mode {status.get('mode')}")
        paused = status.get("backups_paused_until")
        click.echo(f"last backup {status.get('last_backup_at') or '(none yet)'}")
        if paused:
            click.echo(f"paused      scheduled backups until {paused}")
        newest = status.get("newest_archived_commit_at")
        click.echo(f"archive     newest archived commit {newest or '(none yet)'}")
        if status.get("archive_stalled_reason"):
            click.echo(f"archive     STALLED: {status['archive_stalled_reason']}")
        restore = status.get("restore")
        if restore:
            click.echo(
                f"restore     phase {restore.get('phase')}, stream {restore.get('stream_id')}, "
                f"to {restore.get('target')}; {restore.get('binlogs_restored')} binlogs "
                f"restored, {restore.get('binlogs_pending')} pending"
            )
            if restore.get("error"):
                click.echo(f"  - {restore['error']}")
        if status.get("replicating_from"):
            click.echo(f"replicates  from {status['replicating_from']}")
        promotion = status.get("promotion")
        if promotion:
            click.echo(
                f"promotion   phase {promotion.get('phase')}; "
                f"{promotion.get('binlogs_applied')}/{promotion.get('binlogs_total')} binlogs, "
                f"{promotion.get('transactions_applied')} transactions applied of the archive"
            )
        if status.get("last_error"):
            click.echo(f"last error  {status['last_error']}")
    if status.get("archive_stalled_reason"):
        raise ArchiveStalledError(
            f"binlog archiving is stalled: {status['archive_stalled_reason']}"
        )
