"""``binhoard daemon``: run the service (modes, schedule, archiving, restores, HTTP API)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from binhoard.cli.common import config_option, start_telemetry
from binhoard.config import load_settings
from binhoard.daemon import service


@click.command("daemon")
@config_option
def daemon_command(config_file: Path) -> None:
    """Run binhoard as a service, driven over HTTP (http_address, http_port).

    It starts in the mode it was last in (idle the first time). SIGTERM or SIGINT stop
    it within 10 s, leaving only resumable work; SIGHUP reloads the configuration, or
    logs which changed keys need a restart. docs/http-api.md describes the API.
    """
    logging.getLogger().setLevel(logging.INFO)  # a service: say what it does
    settings = load_settings(config_file)
    service.run(config_file, settings, start_telemetry(settings, "daemon"))
