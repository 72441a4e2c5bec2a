"""Options shared by commands."""

from __future__ import annotations

from pathlib import Path

import click

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
