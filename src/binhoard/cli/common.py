"""Options shared by commands."""

from __future__ import annotations

from pathlib import Path

import click

from binhoard.config import Settings
from binhoard.metrics import Metrics
from binhoard.telemetry import init_sentry, report_error, shutdown_sentry

config_option = click.option(
    "-c",
    "--config",
    "config_file",
    required=True,
    type=click.Path(path_type=Path),
    envvar="BINHOARD_CONFIG",
    help="Configuration file (.json or .toml); or $BINHOARD_CONFIG.",
)
site_option = click.option("--site", help="Backup site name (default: the upload site).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")


# The command's telemetry, once it has started it: the error mapping in
# ``cli/__init__.py`` reports the error a command ends with through it.
_telemetry: tuple[Metrics, str] | None = None


def start_telemetry(settings: Settings, command: str) -> Metrics:
    """For a command that reports what it does (a backup, a restore, archiving): the
    process's metrics registry (statsd, as configured) and Sentry if ``sentry_dsn`` is
    set. ``command`` is the ``where`` of the errors it ends with."""
    global _telemetry  # noqa: PLW0603 - one command per process
    metrics = Metrics(settings.statsd)
    init_sentry(settings)
    _telemetry = (metrics, command)
    return metrics


def report_command_error(exc: BaseException) -> None:
    """Counts (and sends to Sentry, if set up) the error the command ends with; nothing
    for a command that started no telemetry."""
    if _telemetry is not None:
        metrics, command = _telemetry
        report_error(exc, metrics, command)


def stop_telemetry() -> None:
    """When the command is over: sends what Sentry has queued and forgets the command's
    telemetry (``main`` runs one command per call, tests run several per process)."""
    global _telemetry  # noqa: PLW0603 - see start_telemetry
    if _telemetry is not None:
        _telemetry[0].close()
        _telemetry = None
    shutdown_sentry()
