"""Fixtures for integration tests: real mariadbd instances (and, below, other real servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import s3server
from tests.support.daemon_process import DaemonProcess
from tests.support.s3server import S3Server
from tests.support.sandboxes import SandboxFactory, sandbox_factory


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def sandboxes() -> Iterator[SandboxFactory]:
    """``sandboxes.new()`` starts a MariaDB sandbox; all are stopped and removed afterwards."""
    with sandbox_factory() as factory:
        yield factory


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One SeaweedFS S3 server for the session (about a second to start); tests isolate
    themselves with their own key prefixes (``s3_server.storage_config(prefix)``)."""
    with s3server.s3_server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def daemons() -> Iterator[list[DaemonProcess]]:
    """``binhoard daemon`` processes a test appends here are killed at its end, whatever
    happened."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.close()
