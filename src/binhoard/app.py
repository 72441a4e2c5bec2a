"""Composition root: the only place that builds concrete adapters from settings.

The CLI (and the daemon) load the settings, get their ports here (``open_server``,
``open_site``) and the small configurations the ops take (``backup_config``, ...), and
call the ops with them. A second server flavour plugs in at ``open_server`` only.
"""

from __future__ import annotations

from binhoard.config import Settings
from binhoard.domain.backup_decision import BackupSchedule
from binhoard.domain.errors import UsageError
from binhoard.domain.replica import PrimaryAddress
from binhoard.metrics import Metrics
from binhoard.ops.archive import ArchiveConfig
from binhoard.ops.backup import BackupConfig
from binhoard.ops.observe import StorageMetrics
from binhoard.ops.pitr import PitrConfig
from binhoard.ops.restore_test import RestoreTestConfig
from binhoard.ops.seed import SeedSettings
from binhoard.ports.server import ReplicaCredentials, ScratchServers, Server
from binhoard.server.mariadb import MariaDBServer
from binhoard.server.scratch import MariaDBScratchServers
from binhoard.storage.backends import open_store
from binhoard.storage.store import ObjectStore
from binhoard.storage.wrappers import MetricsStore, RateLimitedStore, RetryingStore


def site_name(settings: Settings, name: str | None) -> str:
    chosen = name or settings.backup_settings.upload_site
    if chosen not in settings.backup_sites:
        known = ", ".join(sorted(settings.backup_sites))
        raise UsageError(f"no backup site {chosen!r} in the configuration (known: {known})")
    return chosen


def open_site(
    settings: Settings, name: str | None = None, *, metrics: Metrics | None = None
) -> ObjectStore:
    """The object store of a backup site, with retries and the site's bandwidth limit;
    with ``metrics``, every call is counted there (``binhoard.storage.*``), once
    whatever the retries, as the caller saw it."""
    site = settings.backup_sites[site_name(settings, name)]
    store: ObjectStore = open_store(
        site.object_storage,
        part_size=site.part_size,
        concurrency=site.upload_concurrency,
        state_directory=settings.state_directory,
    )
    if site.upload_rate_limit is not None:
        store = RateLimitedStore(store, site.upload_rate_limit)
    # A put smaller than one part is sent whole and can be replayed from this buffer;
    # larger ones are multipart, whose parts the backend retries itself.
    store = RetryingStore(store, replay_buffer=site.part_size + 1024 * 1024)
    return store if metrics is None else MetricsStore(store, StorageMetrics(metrics))


def open_server(settings: Settings) -> Server:
    """The configured server (``mysql``), of its flavour. Connects to nothing yet: every
    call of the port connects when it needs to."""
    mysql = settings.mysql
    # The one place a flavour is chosen (``mysql.flavour``; only "mariadb" exists).
    match mysql.flavour:
        case "mariadb":
            return MariaDBServer(
                mysql,
                state_directory=settings.state_directory,
                apply_threads=settings.apply_threads,
                start_command=settings.start_command,
            )


def backup_config(settings: Settings) -> BackupConfig:
    """What ``ops.backup`` needs of the settings: the upload site, the schedule."""
    bs = settings.backup_settings
    return BackupConfig(
        site_name=bs.upload_site,
        site=settings.upload_site,
        schedule=BackupSchedule(
            hour=bs.backup_hour,
            minute=bs.backup_minute,
            interval_minutes=bs.backup_interval_minutes,
            incremental_enabled=bs.incremental.enabled,
            full_backup_days=bs.incremental.full_backup_days,
        ),
        server_id=settings.server_id,
        state_directory=settings.state_directory,
        temporary_directory=settings.temporary_directory,
        write_marker=settings.restore_test.write_marker,
    )


def archive_config(settings: Settings) -> ArchiveConfig:
    """What ``ops.archive`` needs of the settings: the upload site, the rotation interval."""
    return ArchiveConfig(
        server_id=settings.server_id,
        site=settings.upload_site,
        state_directory=settings.state_directory,
        rotation_interval=settings.backup_settings.forced_binlog_rotation_interval,
    )


def pitr_config(settings: Settings) -> PitrConfig:
    """What ``ops.pitr`` needs of the settings: the sites' keys, the local directories."""
    return PitrConfig(
        sites=dict(settings.backup_sites),
        state_directory=settings.state_directory,
        temporary_directory=settings.temporary_directory,
        data_directory=settings.mysql.data_directory,
        server_config_file=settings.mysql.config_file_name,
        max_binlog_bytes=settings.restore_max_binlog_bytes,
        seed=seed_settings(settings),
        allowed_primaries=tuple(settings.replication.primaries),
    )


def restore_test_config(settings: Settings, site: str | None = None) -> RestoreTestConfig:
    """What ``ops.restore_test`` needs of the settings: ``restore_test``'s bounds, the
    site (the upload site unless named) and its keys."""
    rt = settings.restore_test
    return RestoreTestConfig(
        site_name=site_name(settings, site),
        sites=dict(settings.backup_sites),
        scratch_directory=settings.scratch_directory,
        max_disk_bytes=rt.max_disk_bytes,
        time_limit=rt.time_limit,
        max_binlog_bytes=settings.restore_max_binlog_bytes,
    )


def scratch_servers(settings: Settings) -> ScratchServers:
    """Scratch servers for restore tests, of the configured flavour, on 127.0.0.1 at
    ``restore_test.port`` (else a free port)."""
    match settings.mysql.flavour:
        case "mariadb":
            return MariaDBScratchServers(
                port=settings.restore_test.port, apply_threads=settings.apply_threads
            )


def seed_settings(settings: Settings) -> SeedSettings | None:
    """The replication account of ``replication.*``; None when no user is configured."""
    replication = settings.replication
    if replication.user is None:
        return None
    client = settings.mysql.client_params
    return SeedSettings(
        ReplicaCredentials(replication.user, replication.password.get_secret_value()),
        catch_up_timeout=replication.catch_up_timeout,
        own_address=None if client.unix_socket else PrimaryAddress(client.host, client.port),
        own_server_id=settings.server_id,
    )
