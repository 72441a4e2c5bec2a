"""Sandbox MariaDB instances for tests: each in its own short temp dir, always cleaned up."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from binhoard.server.sandbox import Sandbox


class SandboxFactory:
    """Starts sandboxes on demand and stops and removes every one of them at the end."""

    def __init__(self) -> None:
        # Short paths: a unix socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="bh-"))
        self.created: list[Sandbox] = []
        self._next_server_id = 101

    def new(self, name: str = "db", *, start: bool = True, **kwargs: Any) -> Sandbox:
        if "server_id" not in kwargs:
            kwargs["server_id"] = self._next_server_id
            self._next_server_id += 1
        box = Sandbox(self.root / f"{name}{len(self.created)}", **kwargs)
        self.created.append(box)
        if start:
            box.start()
        return box

    def cleanup(self) -> None:
        errors: list[BaseException] = []
        for box in self.created:
            try:
                box.stop(timeout=30)
            except Exception as exc:  # noqa: BLE001 - keep cleaning the others, then re-raise
                errors.append(exc)
                box.kill()
        shutil.rmtree(self.root, ignore_errors=True)
        if errors:
            raise errors[0]


@contextmanager
def sandbox_factory() -> Iterator[SandboxFactory]:
    factory = SandboxFactory()
    try:
        yield factory
    finally:
        factory.cleanup()
