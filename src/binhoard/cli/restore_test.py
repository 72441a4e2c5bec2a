"""``binhoard restore-test``: a backup and its binlogs restored into a scratch server,
checked, then removed (``ops/restore_test.py``), for operators without the daemon."""

from __future__ import annotations

import json
from pathlib import Path

import click

from binhoard.app import open_site, restore_test_config, scratch_servers
from binhoard.cli.common import config_option, json_option, site_option, start_telemetry
from binhoard.config import load_settings
from binhoard.domain.errors import RestoreTestFailedError, RestoreTestRefusedError
from binhoard.ops.observe import record_restore_test
from binhoard.ops.restore_test import run_restore_test


@click.command("restore-test")
@config_option
@site_option
@click.option("--stream", "stream_id", help="The stream (backup id) to test; default: the newest.")
@json_option
def restore_test_command(
    config_file: Path, site: str | None, stream_id: str | None, as_json: bool
) -> None:
    """Restore a backup and its binlogs into a scratch server, check every table and
    the backup's marker row, print the RTO and the GTID reached, remove the copy.

    The scratch server lives in restore_test.scratch_directory on 127.0.0.1, never in
    the server's datadir. Exit 0 when the test passed, 12 when it failed, 13 when it
    was refused (restore_test.max_disk_bytes, free space).
    """
    settings = load_settings(config_file)
    metrics = start_telemetry(settings, "restore-test")
    report = run_restore_test(
        open_site(settings, site, metrics=metrics),
        restore_test_config(settings, site),
        scratch_servers(settings),
        stream_id=stream_id,
    )
    record_restore_test(metrics, report)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        rto = "-" if report.rto_seconds is None else f"{report.rto_seconds:.1f} s"
        click.echo(f"restore test of {report.stream_id} ({report.site}): {report.outcome}")
        click.echo(f"  RTO {rto}, GTID {report.gtid or '-'}, {report.tables_checked} tables")
        click.echo(f"  {report.reason}")
    if report.outcome == "failed":
        raise RestoreTestFailedError(f"restore test of {report.stream_id} failed: {report.reason}")
    if report.outcome == "refused":
        raise RestoreTestRefusedError(f"restore test of {report.stream_id} {report.reason}")
