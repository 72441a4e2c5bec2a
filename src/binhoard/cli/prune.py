"""``binhoard prune``: retention on the upload site, each decision with its reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import click

from binhoard.app import open_site
from binhoard.cli.backup import deleted_line
from binhoard.cli.common import config_option, json_option
from binhoard.config import load_settings
from binhoard.ops.expire import DeletionJournal, PruneReport, prune, retention_policy
from binhoard.ops.sitecache import open_cache


@click.command("prune")
@config_option
@click.option("--dry-run", is_flag=True, help="Print the decisions; delete nothing.")
@json_option
def prune_command(config_file: Path, dry_run: bool, as_json: bool) -> None:
    """Delete the backups (with their streams) that retention no longer keeps, and
    finish deletions that were interrupted.

    Every backup of the upload site gets a decision, keep or delete, and the reason
    (backup_settings.backup_count_min, backup_count_max, backup_age_days_max,
    retention.*; see docs/configuration.md). Never deleted: the newest backup that can
    be restored, a stream still receiving binlogs, a preserved backup, a backup a kept
    incremental builds on.
    """
    settings = load_settings(config_file)
    store = open_site(settings)
    with open_cache(settings.state_directory, store.describe()) as cache:
        report = prune(
            store,
            retention_policy(settings.backup_settings),
            datetime.now(UTC),
            journal=DeletionJournal(settings.state_directory),
            cache=cache,
            dry_run=dry_run,
        )
    if as_json:
        click.echo(json.dumps(_as_json(report, dry_run), indent=2))
        return
    if not report.decisions:
        click.echo("no backups")
    for d in report.decisions:
        action = "would delete" if dry_run and not d.keep else d.action
        click.echo(f"{action} {d.backup_id}: {d.reason}")
    for done in report.finished:
        click.echo(f"finished removing what backup {done.backup_id} left ({done.objects} objects)")
    for backup_id in report.leftovers:
        click.echo(
            f"left alone for now: objects of backup {backup_id} without a manifest (another "
            "host may be writing them; removed once untouched for 24 hours)"
        )
    for done in report.deleted:
        click.echo(deleted_line(done))


def _as_json(report: PruneReport, dry_run: bool) -> dict[str, object]:
    return {
        "dry_run": dry_run,
        "decisions": [
            {"backup_id": d.backup_id, "action": d.action, "rule": d.rule, "reason": d.reason}
            for d in report.decisions
        ],
        "deleted": [
            {"backup_id": d.backup_id, "objects": d.objects, "binlog_objects": d.binlog_objects}
            for d in report.deleted
        ],
        "finished_leftovers": [d.backup_id for d in report.finished],
        "waiting_leftovers": report.leftovers,
    }
