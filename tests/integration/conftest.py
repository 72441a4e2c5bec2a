"""Fixtures for integration tests: real mariadbd instances (and, below, other real servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

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
