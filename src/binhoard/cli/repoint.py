"""``binhoard repoint``: after a failover, a replica of the old primary replicates from
the new one (``ops/seed.py`` ``repoint``), for operators without the daemon. With a
daemon running for this configuration, the daemon does it (``PUT /status``)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from binhoard.app import open_server, seed_settings
from binhoard.cli.common import config_option, json_option
from binhoard.cli.status import daemon_status
from binhoard.config import load_settings
from binhoard.domain.errors import ConflictError
from binhoard.ops.seed import check_primary, repoint


@click.command("repoint")
@config_option
@click.option(
    "--replicate-from",
    "replicate_from",
    required=True,
    metavar="HOST:PORT",
    help="The new primary (a loopback address, or one listed in replication.primaries).",
)
@json_option
def repoint_command(config_file: Path, replicate_from: str, as_json: bool) -> None:
    """Point this replica at a new primary after a failover.

    Checks the server's GTID state against the new primary's binlog state first: a
    server with transactions the new primary lacks (or other ones at the same sequence
    numbers) is refused (exit code 4) and must be re-seeded from the new primary's
    stream. Then CHANGE MASTER TO the new primary, MASTER_USE_GTID=slave_pos, with the
    replication section's account, and START SLAVE.
    """
    settings = load_settings(config_file)
    seed = seed_settings(settings)
    primary = check_primary(replicate_from, seed=seed, allowed=settings.replication.primaries)
    assert seed is not None  # check_primary refuses without the account
    daemon = daemon_status(settings)
    if daemon is not None:
        raise ConflictError(
            f"a daemon runs for this configuration ({daemon['url']}, mode {daemon['mode']}): "
            f're-point through it, PUT /status {{"mode": "observe", "replicate_from": '
            f'"{replicate_from}"}}, so that it knows its primary'
        )
    done = repoint(open_server(settings), primary, seed)
    if as_json:
        result = {
            "primary": done.primary,
            "position": done.position.format(),
            "changed": done.changed,
        }
        click.echo(json.dumps(result, indent=2))
        return
    if done.changed:
        click.echo(
            f"re-pointed: the server replicates from {done.primary}, from GTID "
            f"{done.position or '(empty)'}"
        )
    else:
        click.echo(f"the server already replicates from {done.primary}; replication is started")
