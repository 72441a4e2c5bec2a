"""Composition root: the only place that builds concrete adapters from settings."""

from __future__ import annotations

from binhoard.config import Settings
from binhoard.domain.errors import UsageError
from binhoard.metrics import Metrics
from binhoard.ops.observe import StorageMetrics
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
