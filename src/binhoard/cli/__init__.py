"""The ``binhoard`` command line: one module per command group, errors mapped once here."""

from __future__ import annotations

import logging
import sys

import click

from binhoard import __version__
from binhoard.allocator import keep_freed_memory
from binhoard.cli.backup import backup_group
from binhoard.cli.binlog import binlog_group
from binhoard.cli.common import report_command_error, stop_telemetry
from binhoard.cli.config_cmd import config_group
from binhoard.cli.daemon import daemon_command
from binhoard.cli.keys import keys_group
from binhoard.cli.prune import prune_command
from binhoard.cli.restore import restore_command
from binhoard.cli.sandbox import sandbox_group
from binhoard.cli.status import status_command
from binhoard.cli.verify import verify_command
from binhoard.domain.errors import BinhoardError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="binhoard")
@click.option("-v", "--verbose", is_flag=True, help="Log what is done (INFO) on stderr.")
def cli(verbose: bool) -> None:
    """Backup and point-in-time recovery of MariaDB to object storage."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


cli.add_command(sandbox_group)
cli.add_command(config_group)
cli.add_command(keys_group)
cli.add_command(status_command)
cli.add_command(backup_group)
cli.add_command(restore_command)
cli.add_command(binlog_group)
cli.add_command(prune_command)
cli.add_command(daemon_command)
cli.add_command(verify_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs a command; a ``BinhoardError`` becomes a message and its exit code."""
    keep_freed_memory()
    try:
        cli.main(args=argv, prog_name="binhoard", standalone_mode=False)
    except BinhoardError as exc:
        report_command_error(exc)
        click.echo(f"binhoard: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("binhoard: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except OSError as exc:
        # The local file system refused (a state or temporary directory that cannot be
        # created, a permission): one line naming the path, never a traceback. Space
        # (ENOSPC) is mapped where it happens, with what the step needs (DiskFullError).
        report_command_error(exc)
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"binhoard: error: {where}{exc.strerror or exc}", err=True)
        sys.exit(1)
    except Exception as exc:
        report_command_error(exc)  # a bug: counted, sent to Sentry, and its traceback shown
        raise
    finally:
        stop_telemetry()
