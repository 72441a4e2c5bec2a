"""``binhoard binlog``: archive binlogs, rotate and wait, list a stream's archive, purge."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from binhoard.app import archive_config, open_server, open_site, site_name
from binhoard.cli.common import config_option, json_option, site_option, start_telemetry
from binhoard.config import Settings, load_settings
from binhoard.daemon.api_models import ReplicationState
from binhoard.daemon.state import FILE_NAME as STATE_FILE
from binhoard.daemon.state import DaemonState, StateStore
from binhoard.domain.documents import CorruptDocumentError
from binhoard.domain.errors import BinhoardError, NotFoundError, UsageError
from binhoard.metrics import Metrics
from binhoard.ops.archive import (
    ArchiveLoop,
    ArchiveReport,
    BinlogArchiver,
    flush_and_wait,
    publish,
    raise_if_stalled,
    read_archive_status,
)
from binhoard.ops.catalog import StreamState, read_site
from binhoard.ops.history import local_history, without_other_histories
from binhoard.ops.purge import BinlogPurger
from binhoard.ops.site import BackupEntry
from binhoard.ops.sitecache import open_cache
from binhoard.storage.store import ObjectStore


@click.group("binlog")
def binlog_group() -> None:
    """Archive the server's binlogs and inspect the archive."""


def _print_report(report: ArchiveReport) -> None:
    for name in report.uploaded:
        click.echo(f"archived {name}")
    for stream in report.streams:
        state = "closed" if stream.closed else "completed" if stream.completed else "open"
        click.echo(
            f"stream {stream.stream_id}: {stream.records} files, {state}, "
            f"archive reaches {stream.end_position or '(empty)'}"
        )
    for stream in report.streams:
        if stream.error:
            click.echo(f"ERROR: stream {stream.stream_id}: {stream.error}", err=True)
    for problem in report.problems:
        click.echo(f"PROBLEM: {problem}", err=True)


@binlog_group.command("archive")
@config_option
@click.option("--follow", is_flag=True, help="Keep archiving (and rotating) until interrupted.")
@click.option(
    "--interval", default=2.0, show_default=True, help="Seconds between passes with --follow."
)
def archive(config_file: Path, follow: bool, interval: float) -> None:
    """Archive the server's closed binlogs into every open stream of the upload site.

    Exits with status 9 if archiving is stalled: a stream has a gap, a file could not be
    stored, the pass failed, or there is no open stream (no backup yet). With --follow it
    keeps going through failed passes, logging each at ERROR, and when stopped (SIGTERM,
    SIGINT) exits with status 9 if its last pass was stalled, else 0.
    """
    settings = load_settings(config_file)
    metrics = start_telemetry(settings, "binlog archive")
    with _archiver(settings, metrics) as archiver:
        _archive(archiver, metrics, follow, interval)


def _archiver(settings: Settings, metrics: Metrics) -> BinlogArchiver:
    store = open_site(settings, metrics=metrics)
    return BinlogArchiver(open_server(settings), store, archive_config(settings))


def _archive(archiver: BinlogArchiver, metrics: Metrics, follow: bool, interval: float) -> None:
    state_directory = archiver.config.state_directory
    if not follow:
        try:
            report = archiver.archive_once()
        except BinhoardError as exc:
            failed = ArchiveReport(at=archiver.now().isoformat(), failure=exc.message)
            publish(state_directory, failed, metrics)
            raise
        publish(state_directory, report, metrics)
        _print_report(report)
        raise_if_stalled(report)
        return
    logging.getLogger().setLevel(logging.INFO)  # a long-running process: say what it does
    loop = ArchiveLoop(archiver, metrics)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    last: ArchiveReport | None = None
    while not stop.is_set():
        last = loop.tick()
        metrics.refresh()  # statsd gets the ages ("seconds since") again
        stop.wait(interval)
    if last is not None:
        raise_if_stalled(last)


@binlog_group.command("flush")
@config_option
@click.option(
    "--wait",
    "wait_seconds",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds to wait for the closed file to be stored.",
)
def flush(config_file: Path, wait_seconds: float) -> None:
    """Rotate the binlog now and return once the file just closed is stored."""
    settings = load_settings(config_file)
    metrics = start_telemetry(settings, "binlog flush")
    started = time.monotonic()
    with _archiver(settings, metrics) as archiver:
        name, report = flush_and_wait(archiver, timeout=wait_seconds)
    if report is not None:
        publish(settings.state_directory, report, metrics)
    click.echo(f"{name} is stored ({time.monotonic() - started:.1f} s)")


def _time(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{datetime.fromtimestamp(value, UTC):%Y-%m-%d %H:%M:%S}"


def _stream_json(stream: StreamState) -> dict[str, Any]:
    return {
        "stream_id": stream.stream_id,
        "snapshot_gtid": stream.backup.snapshot.gtid_position,
        "completed_at": stream.completed.at.isoformat() if stream.completed else None,
        "closed_at": stream.closed.at.isoformat() if stream.closed else None,
        "successor": stream.closed.successor if stream.closed else None,
        "broken_object": stream.broken.key if stream.broken else None,
        "broken_reason": stream.broken.reason if stream.broken else None,
        "problems": stream.problems(),
        # A deposed owner's records (docs/format.md, "Promotions and fencing"): never
        # used, listed so that an operator can find its divergent transactions.
        "owner_server_id": stream.owner,
        "fenced": [
            {"seq": r.seq, "name": r.name, "server_id": r.server_id, "key": r.object.key}
            for r in stream.fenced
        ],
        "binlogs": [
            {
                "seq": r.seq,
                "name": r.name,
                "server_id": r.server_id,
                "size": r.size,
                "stored_size": r.object.stored_size,
                "gtid_list_at_start": r.gtid_list_at_start.format(),
                "gtid_position_at_end": r.gtid_position_at_end.format(),
                "first_gtid": r.first_gtid.format() if r.first_gtid else None,
                "last_gtid": r.last_gtid.format() if r.last_gtid else None,
                "first_commit_time": r.first_commit_time,
                "last_commit_time": r.last_commit_time,
                "transactions": r.transactions,
                "start_offset": r.start_offset,
                "key": r.object.key,
            }
            for r in stream.records
        ],
    }


def _stalls(store: ObjectStore, streams: list[StreamState]) -> dict[str, str]:
    """Open streams whose archiver's last pass failed (``archive-status.json``)."""
    found: dict[str, str] = {}
    for stream in streams:
        try:
            status = None if stream.closed else read_archive_status(store, stream.stream_id)
        except CorruptDocumentError as exc:  # one report must not hide the listing
            found[stream.stream_id] = f"archive status unknown: {exc.message}"
            continue
        if status is not None and status.stalled:
            found[stream.stream_id] = (
                f"archive stalled since {status.since.isoformat()}: {status.reason}"
            )
    return found


@binlog_group.command("list")
@config_option
@site_option
@click.option("--stream", "stream_id", help="Only this stream (a backup id, or 'latest').")
@json_option
def list_command(config_file: Path, site: str | None, stream_id: str | None, as_json: bool) -> None:
    """List the archived binlogs of each stream, with GTID ranges and commit times.

    A broken stream (a record or marker corrupt or missing, or its backup broken) is
    listed up to the problem, which names the object. Exits with status 9 if a stream
    has a gap, is broken, or its archiver's last pass failed.
    """
    settings = load_settings(config_file)
    store = open_site(settings, site_name(settings, site))
    cache = open_cache(settings.state_directory, store.describe())
    try:
        site_state = read_site(store, cache)
    finally:
        cache.close()
    streams = list(site_state.streams)
    unreadable = [e for e in site_state.backups.entries if e.manifest is None and e.broken]
    if stream_id == "latest":
        streams, unreadable = streams[-1:], []
    elif stream_id is not None:
        streams = [s for s in streams if s.stream_id == stream_id]
        unreadable = [e for e in unreadable if e.backup_id == stream_id]
        if not streams and not unreadable:
            raise NotFoundError(f"no stream {stream_id}")
    problems = [p for s in streams for p in s.problems()]
    problems += [f"stream {e.backup_id}: broken: {e.broken.reason}" for e in unreadable if e.broken]
    stalls = _stalls(store, streams)
    if as_json:
        click.echo(json.dumps(_listing_json(streams, stalls, unreadable), indent=2))
    else:
        _print_listing(streams, stalls, unreadable)
    if problems or stalls:
        sys.exit(9)


def _listing_json(
    streams: list[StreamState], stalls: dict[str, str], unreadable: list[BackupEntry]
) -> list[dict[str, Any]]:
    docs = [_stream_json(s) for s in streams]
    for doc in docs:
        doc["archive_stalled"] = stalls.get(doc["stream_id"])
    return docs + [
        {
            "stream_id": e.backup_id,
            "broken_object": e.broken.key,
            "broken_reason": e.broken.reason,
            "problems": [f"broken: {e.broken.reason}"],
            "binlogs": [],
        }
        for e in unreadable
        if e.broken
    ]


def _print_listing(
    streams: list[StreamState], stalls: dict[str, str], unreadable: list[BackupEntry]
) -> None:
    console = Console(width=200)
    for stream in streams:
        state = "closed" if stream.closed else "completed" if stream.completed else "open"
        console.print(
            f"stream {stream.stream_id} ({state}), snapshot "
            f"{stream.backup.snapshot.binlog_file}:{stream.backup.snapshot.binlog_pos} "
            f"GTID {stream.backup.snapshot.gtid_position or '(empty)'}"
        )
        table = Table(show_edge=False)
        for column in ("seq", "file", "size", "trx", "first GTID", "last GTID", "commits"):
            table.add_column(column)
        for r in stream.records:
            table.add_row(
                str(r.seq),
                r.name,
                f"{r.size / 1e6:.1f} MB",
                str(r.transactions),
                r.first_gtid.format() if r.first_gtid else "-",
                r.last_gtid.format() if r.last_gtid else "-",
                f"{_time(r.first_commit_time)} .. {_time(r.last_commit_time)}",
            )
        console.print(table)
        for problem in stream.problems():
            console.print(f"[red]PROBLEM[/red]: {problem}")
        if stream.stream_id in stalls:
            console.print(f"[red]STALLED[/red]: {stalls[stream.stream_id]}")
    for entry in unreadable:
        if entry.broken:
            console.print(f"stream {entry.backup_id} ([red]BROKEN[/red]): {entry.broken.reason}")


@binlog_group.command("purge")
@config_option
@click.option("--dry-run", is_flag=True, help="Print the decisions; purge nothing.")
@click.option(
    "--observe",
    is_flag=True,
    help="Judge as a node observing another node's streams (default: as the daemon's "
    "mode says, else as the node that archives its own binlogs).",
)
@click.option(
    "--replication-state",
    "replication_json",
    help="What the other nodes applied, as PUT /replication_state takes it (JSON); "
    "default: what the daemon was last given.",
)
def purge_command(
    config_file: Path, dry_run: bool, observe: bool, replication_json: str | None
) -> None:
    """Purge the local binlogs that are stored in every open stream, old enough and
    applied on every reported node: one bounded step (binlog_purge_settings), as the
    daemon does. Prints each decision with its reason."""
    settings = load_settings(config_file)
    metrics = start_telemetry(settings, "binlog purge")
    daemon_state = _daemon_state(settings)
    observing = observe or (daemon_state is not None and daemon_state.mode == "observe")
    state: Mapping[str, Mapping[str, str]] = {}
    reported_at: Mapping[str, float] = {}
    if replication_json is not None:
        state = _replication_state(replication_json)
        reported_at = {node: time.time() for node in state}
    elif daemon_state is not None:
        state = daemon_state.control.replication_state
        reported_at = daemon_state.control.replication_reported_at
    if not state:
        click.echo("no node reported a position: only the streams and the age decide")
    store = open_site(settings, metrics=metrics)
    with open_cache(settings.state_directory, store.describe()) as cache:
        site = read_site(store, cache)
    history = local_history(settings.state_directory)
    site = without_other_histories(site, settings.server_id, history)
    purger = BinlogPurger(
        open_server(settings), settings.server_id, settings.binlog_purge_settings, metrics
    )
    report = purger.run(
        site, state, reported_at, observing=observing, now=datetime.now(UTC), dry_run=dry_run
    )
    verb = "would purge" if dry_run else "purge"
    for binlog in report.decision.purge:
        click.echo(f"{verb} {binlog.name} ({binlog.size} bytes)")
    if not dry_run:
        click.echo(f"purged {len(report.purged)} files ({report.purged_bytes} bytes)")
    click.echo(f"keep {report.decision.kept or '-'}: {report.blocked_by}")
    for node in report.decision.stale_nodes:
        click.echo(f"STALE: node {node}'s report is older than max_replication_state_age")


def _daemon_state(settings: Settings) -> DaemonState | None:
    """The daemon's state on this host, if it has run here (read only)."""
    if not (settings.state_directory / STATE_FILE).exists():
        return None
    store = StateStore.open(settings.state_directory)
    try:
        return store.load()
    finally:
        store.close()


def _replication_state(text: str) -> dict[str, dict[str, str]]:
    try:
        return ReplicationState.model_validate_json(text).as_stored()
    except ValidationError as exc:
        raise UsageError(f"--replication-state: {exc.errors()[0]['msg']}") from None
