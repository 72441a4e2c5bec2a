"""A real node stepped by the test: a MariaDB sandbox with the daemon's ``Controller``
and its real doers (``OpsDoers``) against the real server and site, its jobs held by a
``ManualExecutor`` until the test runs them, on the test's thread, at a scripted
clock. Several such nodes interleave exactly as the test says.

A node's site writes can be interrupted: a ``Hook`` runs another node's work right
before the first write whose key it matches (e.g. between a promoter's read of a
stream and its promotion record), on the same thread, so the interleaving is a test
parameter rather than a race."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pymysql

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.daemon.controller import ARCHIVE_INTERVAL
from binhoard.daemon.jobs import ARCHIVE, RESTORE
from binhoard.daemon.port import Command, RotateBinlog, SetMode, Ticket
from binhoard.daemon.workers import OpsDoers
from binhoard.metrics import Metrics
from binhoard.server.sandbox import Sandbox
from binhoard.storage.store import ObjectInfo, ObjectStore
from binhoard.storage.wrappers import ForwardingStore
from tests.support.daemon import ScriptedClock, SteppedController
from tests.support.workload import write_rows


@dataclass
class Hook:
    """``action`` runs once, right before the first write of a key ``matches`` accepts."""

    matches: Callable[[str], bool]
    action: Callable[[], None]
    fired: bool = False


class HookedStore(ForwardingStore):
    def __init__(self, inner: ObjectStore, hooks: list[Hook]) -> None:
        super().__init__(inner)
        self.hooks = hooks

    def put(self, key: str, data: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        for hook in self.hooks:
            if not hook.fired and hook.matches(key):
                hook.fired = True
                hook.action()
        return self.inner.put(key, data, if_absent=if_absent)


class SteppedNode(SteppedController):
    """``box`` with its daemon's controller; nothing runs unless the test steps it."""

    def __init__(self, box: Sandbox, config: dict[str, Any], clock: ScriptedClock) -> None:
        self.box = box
        self.hooks: list[Hook] = []

        def open_store(*args: Any, **kwargs: Any) -> ObjectStore:
            return HookedStore(open_site(*args, **kwargs), self.hooks)

        settings = parse_settings(config, source="test")
        super().__init__(settings, OpsDoers(settings, Metrics(), open_store=open_store), clock)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.box.port}"

    def command(self, command: Command) -> Ticket:
        """Submits ``command`` and settles; raises the refusal, if any."""
        ticket = self.controller.submit(command)
        self.settle()
        if ticket.error is not None:
            raise ticket.error
        return ticket

    def set_mode(self, mode: str, **fields: Any) -> None:
        self.command(SetMode(mode, **fields))  # type: ignore[arg-type]

    def archive_pass(self, *, rotate: bool = False) -> None:
        """One archive pass (after flushing the binlog with ``rotate``): the clock moves
        on by the archive interval, the job runs; no other job of the node runs."""
        self.clock.advance(seconds=ARCHIVE_INTERVAL.total_seconds())
        if rotate:
            self.controller.submit(RotateBinlog())
        self.step()
        self.run(ARCHIVE)

    def promote(self, **fields: Any) -> None:
        """``PUT /status {"mode": "promote"}``: the promotion job runs at once."""
        self.controller.submit(SetMode("promote", **fields))
        self.step()
        self.run(RESTORE)

    def last_error(self) -> str | None:
        return self.controller.snapshot().status.last_error


class Load:
    """Transactions on a server from a thread of their own until stopped, or until the
    server dies under it (``expect_death``)."""

    def __init__(self, box: Sandbox, seed: int) -> None:
        self.box = box
        self.seed = seed
        self.commits = 0
        self.error: BaseException | None = None
        self.expect_death = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                write_rows(self.box, 10, seed=self.seed, payload=100)
                self.seed += 1
                self.commits += 1
        except pymysql.MySQLError as exc:
            if not self.expect_death:
                self.error = exc
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self) -> None:
        """Waits for the thread; fails with what the load ran into, if anything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            assert not self._thread.is_alive(), "the write load did not stop within 60 s"
        if self.error is not None:
            raise AssertionError(f"the write load failed: {self.error!r}")


@contextmanager
def load_on(box: Sandbox, seed: int) -> Iterator[Load]:
    load = Load(box, seed)
    load.start()
    try:
        yield load
    finally:
        load.stop()
