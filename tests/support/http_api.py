"""The daemon's HTTP API served for real (``HttpServer``, its own thread, an ephemeral
port on 127.0.0.1) in front of a fake controller, and a client for it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from binhoard.daemon.api import HttpServer
from binhoard.daemon.port import Daemon

TOKEN = "test-token_0123456789abcdef"


@contextmanager
def serving(
    daemon: Daemon, *, token: str | None = None, decision_timeout: float = 10.0
) -> Iterator[tuple[HttpServer, httpx.Client]]:
    """A started server and a client of it that sends the token, if there is one."""
    server = HttpServer(
        daemon,
        address="127.0.0.1",
        port=0,
        auth_token=token,
        decision_timeout=decision_timeout,
    )
    server.start()
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{server.port}", headers=headers, timeout=30
        ) as client:
            yield server, client
    finally:
        server.stop()
