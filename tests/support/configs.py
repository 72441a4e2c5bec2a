"""binhoard settings for a sandbox with a local site, encrypted to an age key pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from binhoard.config import Settings, parse_settings
from binhoard.crypto.age import Identity
from binhoard.server.sandbox import Sandbox


def config_for(
    box: Sandbox,
    site: Path,
    *,
    identity: Identity | None = None,
    **site_overrides: Any,
) -> dict[str, Any]:
    """The configuration as data; a new key pair unless ``identity`` is given (servers
    that share a site, e.g. a source and its restore, must share the key)."""
    identity = identity or Identity.generate()
    data = box.binhoard_config(
        site_directory=site,
        public_key=str(identity.recipient),
        private_key=identity.secret_text(),
        work_dir=box.directory / "binhoard",
    )
    data["backup_sites"]["default"].update(site_overrides)
    return data


def settings_for(
    box: Sandbox,
    site: Path,
    *,
    identity: Identity | None = None,
    **site_overrides: Any,
) -> Settings:
    return parse_settings(config_for(box, site, identity=identity, **site_overrides), source="test")
