"""``binhoard verify``: read a site's objects whole and check them (docs/verify.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from binhoard.app import open_site, site_name
from binhoard.cli.common import config_option, json_option, site_option
from binhoard.config import load_settings
from binhoard.domain.errors import UsageError, format_bytes
from binhoard.domain.verify import VerifyReport
from binhoard.ops.sitecache import open_cache
from binhoard.ops.verify import VerifyRequest, verify_site
from binhoard.storage.pipeline import identities_from_site


@click.command("verify")
@config_option
@site_option
@click.option(
    "--backup",
    "backups",
    multiple=True,
    metavar="ID",
    help="Only this backup and its stream (and its chain's backups); repeatable.",
)
@click.option("--all", "whole_site", is_flag=True, help="The whole site (the default).")
@click.option("--full", is_flag=True, help="Also read what an earlier verify proved unchanged.")
@json_option
def verify_command(
    *,
    config_file: Path,
    site: str | None,
    backups: tuple[str, ...],
    whole_site: bool,
    full: bool,
    as_json: bool,
) -> None:
    """Read every object of the site whole and check it: documents by their checksum,
    data by the sizes and sha256 its manifest or binlog record holds, decrypted and
    decompressed (nothing is written to disk); then each stream's GTID chain from its
    snapshot to its newest transaction (gaps, overlaps, fencing).

    Objects an earlier verify read whole are skipped while the site describes them the
    same way (etag and Last-Modified; a local file's mtime, ctime and inode); --full
    reads them too. Exits 8 if an object is corrupt or missing (each one named), 9 if
    a stream has a gap, 0 if everything verified.
    """
    if backups and whole_site:
        raise UsageError("--backup and --all exclude each other")
    settings = load_settings(config_file)
    name = site_name(settings, site)
    identities = identities_from_site(settings.backup_sites[name])
    if not identities:
        raise UsageError(
            f"verify decrypts every object: backup site {name!r} needs "
            "encryption_keys.private in this configuration"
        )
    store = open_site(settings, name)
    request = VerifyRequest(backups or None, full=full)
    with open_cache(settings.state_directory, store.describe()) as cache:
        report = verify_site(store, identities, request, cache=cache)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print(report)
    error = report.error()
    if error is not None:
        raise error


def _print(report: VerifyReport) -> None:
    for result in report.bad:
        click.echo(f"{result.status.upper()} {result.key} ({result.kind}): {result.detail}")
    for problem in report.stream_problems:
        click.echo(f"GAP {problem}")
    for result in report.objects:
        if result.status == "unreferenced":
            click.echo(f"note: {result.key}: {result.detail}")
    counts = report.counts
    read = counts["ok"] + counts["corrupt"] + counts["unreferenced"]
    click.echo(
        f"{report.location}: {read} object(s) read ({format_bytes(report.bytes_read)}) in "
        f"{report.seconds:.1f} s, {counts['skipped']} skipped (proved unchanged by an "
        f"earlier verify; --full reads them), {counts['corrupt']} corrupt, "
        f"{counts['missing']} missing, {len(report.streams)} stream(s) checked, "
        f"{len(report.stream_problems)} problem(s)"
    )
