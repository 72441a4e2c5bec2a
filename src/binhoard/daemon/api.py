"""The daemon's HTTP API: MyHoard's routes (and a few marked extensions), served by
uvicorn from a thread of the daemon.

The handlers only read the controller's latest ``Snapshot`` and submit ``Command``s
(``daemon/port.py``); they run on one asyncio event loop and never block it: a request
that waits for a decision or for work parks on the ticket's wake-up callback, with a
deadline. So however busy the controller is, reads answer at once. Errors are all
``{"message": ...}``, with the status ``domain/errors.py`` gives each error.
docs/http-api.md documents every route.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Path, Query
from fastapi.responses import PlainTextResponse, Response

from binhoard import __version__
from binhoard.config import is_loopback_address
from binhoard.daemon import api_models as m
from binhoard.daemon.api_edges import (
    Gate,
    describe,
    handle_errors,
    no_unknown_query_parameters,
)
from binhoard.daemon.port import (
    BackupView,
    Command,
    Daemon,
    MarkBroken,
    PauseBackups,
    Preserve,
    RequestBackup,
    RotateBinlog,
    RunRestoreTest,
    SetMode,
    SetReplicationState,
    Ticket,
)
from binhoard.domain.errors import BinhoardError, NotFoundError, UnavailableError, UsageError

log = logging.getLogger("binhoard.http")

# How long a request waits for the controller to accept or refuse its command. Its
# steps are short (long work runs in workers), so this is only reached when it is stuck.
DECISION_TIMEOUT = 10.0

MYHOARD = "MyHoard"
EXTENSION = "binhoard extension"
DESCRIPTION = """\
Drives a binhoard daemon. The routes, their fields and status codes follow Aiven
MyHoard's HTTP API, so that its users' automation works unchanged; what MyHoard does
not have is tagged and described as a *binhoard extension*. Every error is
`{"message": "..."}`; invalid requests (malformed JSON, wrong types, unknown fields)
are answered 400. docs/http-api.md has examples and the differences from MyHoard.
"""
_ERRORS: dict[int | str, dict[str, Any]] = {
    "default": {"model": m.ErrorBody, "description": "an error, with a message saying why"}
}


class _Waits:
    """Requests parked on tickets. Lives on the event loop's thread; ``stop`` wakes
    every one of them so that a stopping server does not wait out their deadlines."""

    def __init__(self) -> None:
        self.stopping = False
        self._events: set[asyncio.Event] = set()

    def stop(self) -> None:
        self.stopping = True
        for event in self._events:
            event.set()

    async def until(self, ticket: Ticket, condition: Callable[[], bool], timeout: float) -> bool:
        """Whether ``condition()`` became true within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        woken = asyncio.Event()

        def wake() -> None:  # runs in the controller's thread
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(woken.set)

        self._events.add(woken)
        try:
            ticket.add_callback(wake)
            deadline = loop.time() + timeout
            while True:
                woken.clear()
                if condition():
                    return True
                if self.stopping:
                    raise UnavailableError("the daemon's HTTP server is stopping")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await woken.wait()
        finally:
            self._events.discard(woken)


class _BackupListing:
    """``GET /backup``'s body, serialised once per published list: a site can hold
    thousands of streams, and automation polls the list."""

    def __init__(self) -> None:
        self._source: tuple[BackupView, ...] | None = None
        self._order: str | None = None
        self._body = b""

    def body(self, backups: tuple[BackupView, ...] | None, order: str | None) -> bytes:
        if backups is None:
            return m.BackupList(backups=None).model_dump_json().encode()
        if backups is not self._source or order != self._order:
            views = list(backups)
            if order is not None:  # as MyHoard: sorted by stream id, which sorts by time
                views.sort(key=lambda view: view.stream_id, reverse=order == "desc")
            listing = m.BackupList(backups=[m.BackupOut.model_validate(view) for view in views])
            self._source, self._order = backups, order
            self._body = listing.model_dump_json().encode()
        return self._body


StreamId = Annotated[str, Path(min_length=1, max_length=255, description="a stream id")]
OrderQuery = Annotated[
    m.Order | None, Query(description="sort by stream_id (time); as listed if absent")
]


class _Routes:
    """The handlers: each reads the snapshot or submits a command, nothing else."""

    def __init__(
        self, daemon: Daemon, metrics_text: Callable[[], str], decision_timeout: float
    ) -> None:
        self.daemon = daemon
        self.metrics_text = metrics_text
        self.decision_timeout = decision_timeout
        self.waits = _Waits()
        self.listing = _BackupListing()

    async def decide(self, command: Command) -> Ticket:
        ticket = self.daemon.submit(command)
        if not await self.waits.until(ticket, lambda: ticket.is_decided, self.decision_timeout):
            raise UnavailableError(
                f"the daemon did not decide within {self.decision_timeout:g} s (its "
                "controller is busy); the request stays queued and may still be carried out"
            )
        if ticket.error is not None:
            raise ticket.error
        return ticket

    async def finish(self, ticket: Ticket, seconds: float) -> bool:
        done = await self.waits.until(ticket, lambda: ticket.is_done, seconds)
        if ticket.error is not None:
            raise ticket.error
        return done

    def known_stream(self, stream_id: str) -> None:
        backups = self.daemon.snapshot().backups
        # Before the first listing only the controller can tell; it refuses with 404.
        if backups is not None and all(view.stream_id != stream_id for view in backups):
            raise NotFoundError(f"no stream {stream_id!r}: GET /backup lists them")

    async def list_backups(self, order: OrderQuery = None) -> Response:
        body = self.listing.body(self.daemon.snapshot().backups, order)
        return Response(body, media_type="application/json")

    async def create_backup(self, body: m.BackupRequest) -> m.BackupCreated:
        if body.backup_type == "basebackup":
            await self.decide(RequestBackup(incremental=body.incremental))
            return m.BackupCreated()
        ticket = await self.decide(RotateBinlog())
        if body.wait_for_upload and not await self.finish(ticket, body.wait_for_upload):
            return m.BackupCreated(upload_pending=True)
        return m.BackupCreated()

    async def update_backup_settings(self, body: m.BackupSettingsUpdate) -> m.Success:
        _in_the_future(body.paused_until, "paused_until")
        await self.decide(PauseBackups(until=body.paused_until))
        return m.Success(success=True)

    async def update_stream(self, stream_id: StreamId, body: m.StreamUpdate) -> m.Success:
        self.known_stream(stream_id)
        ticket = await self.decide(MarkBroken(stream_id, broken=body.broken))
        wait = body.expire_after_seconds
        if wait and not await self.finish(ticket, wait):
            raise UnavailableError(
                f"marking stream {stream_id} broken={str(body.broken).lower()} was not "
                f"applied within {wait:g} s; it stays queued"
            )
        return m.Success(success=True)

    async def preserve_stream(
        self, stream_id: StreamId, body: m.PreserveRequest
    ) -> m.PreserveResult:
        self.known_stream(stream_id)
        _in_the_future(body.preserve_until, "preserve_until")
        ticket = await self.decide(Preserve(stream_id, until=body.preserve_until))
        wait = body.wait_for_applied_preservation
        if wait and not await self.finish(ticket, wait):
            return m.PreserveResult(success=False, preservation_is_still_pending=True)
        return m.PreserveResult(success=True)

    async def test_stream(self, stream_id: StreamId) -> m.Success:
        self.known_stream(stream_id)
        await self.decide(RunRestoreTest(stream_id))
        return m.Success(success=True)

    async def set_replication_state(self, body: m.ReplicationState) -> dict[str, dict[str, str]]:
        state = body.as_stored()
        await self.decide(SetReplicationState(state))
        return state

    async def show_status(self) -> m.StatusOut:
        return m.StatusOut.model_validate(self.daemon.snapshot().status)

    async def update_status(self, body: m.StatusUpdate) -> m.ModeOut:
        await self.decide(
            SetMode(
                mode=body.mode,
                site=body.site,
                stream_id=body.stream_id,
                target_time=body.target_time,
                target_time_approximate_ok=bool(body.target_time_approximate_ok),
                target_gtid=body.target_gtid,
                target_position=body.target_position,
                force=bool(body.force),
                replicate_from=body.replicate_from,
            )
        )
        # As MyHoard: the mode switched to (promote moves on to active by itself).
        return m.ModeOut(mode=body.mode)

    async def show_restore_status(self) -> m.RestoreStatusOut:
        snapshot = self.daemon.snapshot()
        mode = snapshot.status.mode
        if mode != "restore":
            raise UsageError(f"Mode is {mode}, restore status is not available")
        view = snapshot.restore
        if view is None:
            raise UnavailableError("the restore is starting: its status follows shortly")
        return m.RestoreStatusOut.model_validate(view)

    async def metrics(self) -> PlainTextResponse:
        return PlainTextResponse(self.metrics_text(), media_type="text/plain; version=0.0.4")

    async def healthz(self) -> m.Health:
        return m.Health()


def _in_the_future(when: datetime | None, name: str) -> None:
    if when is not None and when <= datetime.now(UTC):
        raise UsageError(f"{name} is in the past: give a future time, or null")


def build_app(
    daemon: Daemon,
    *,
    auth_token: str | None,
    metrics_text: Callable[[], str] | None = None,
    decision_timeout: float = DECISION_TIMEOUT,
) -> FastAPI:
    """The ASGI application; ``app.state.waits`` is its ``_Waits`` (``HttpServer.stop``)."""
    app = FastAPI(
        title="binhoard daemon",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # the interactive pages load scripts from a CDN
        redoc_url=None,
        redirect_slashes=False,  # as MyHoard: /backup/ is not /backup
        # Like MyHoard, a JSON body without a Content-Type is read as JSON (Gate refuses
        # other types, 415).
        strict_content_type=False,
        dependencies=[Depends(no_unknown_query_parameters)],
    )
    routes = _Routes(daemon, metrics_text or daemon.metrics_text, decision_timeout)
    app.state.waits = routes.waits

    def add(
        method: str, path: str, handler: Callable[..., Any], model: Any, tag: str, **extra: Any
    ) -> None:
        responses = dict(_ERRORS)
        if model is None:  # plain text; errors are JSON all the same
            error_schema = {"schema": {"$ref": "#/components/schemas/ErrorBody"}}
            responses[200] = {"content": {"text/plain": {}}}
            responses["default"] = {
                "description": _ERRORS["default"]["description"],
                "content": {"application/json": error_schema},
            }
        app.add_api_route(
            path,
            handler,
            methods=[method],
            response_model=model,
            tags=[tag],
            responses=responses,
            **extra,
        )

    # MyHoard's routes, in its order; "exclude none" leaves out unset extension fields.
    add("GET", "/backup", routes.list_backups, m.BackupList, MYHOARD)
    add("POST", "/backup", routes.create_backup, m.BackupCreated, MYHOARD,
        response_model_exclude_none=True)  # fmt: skip
    add("PATCH", "/backup/settings", routes.update_backup_settings, m.Success, MYHOARD)
    add("PATCH", "/backup/{stream_id}", routes.update_stream, m.Success, MYHOARD)
    add("PUT", "/backup/{stream_id}/preserve", routes.preserve_stream, m.PreserveResult, MYHOARD,
        response_model_exclude_none=True)  # fmt: skip
    add("POST", "/backup/{stream_id}/test", routes.test_stream, m.Success, EXTENSION,
        description="Queues a restore test of the stream's backup and binlogs into a "
        "scratch server; GET /backup shows its result (restore_test).")  # fmt: skip
    add("PUT", "/replication_state", routes.set_replication_state, dict[str, dict[str, str]],
        MYHOARD)  # fmt: skip
    add("GET", "/status", routes.show_status, m.StatusOut, MYHOARD)
    add("PUT", "/status", routes.update_status, m.ModeOut, MYHOARD)
    add("GET", "/status/restore", routes.show_restore_status, m.RestoreStatusOut, MYHOARD)
    add("GET", "/metrics", routes.metrics, None, EXTENSION, response_class=PlainTextResponse,
        description="The daemon's metrics in the Prometheus text format.")  # fmt: skip
    add("GET", "/healthz", routes.healthz, m.Health, EXTENSION,
        description="Answers while the HTTP server runs; needs no token.")  # fmt: skip
    handle_errors(app)
    describe(
        app,
        with_token=auth_token is not None,
        tags=[
            {"name": MYHOARD, "description": "as MyHoard's HTTP API"},
            {"name": EXTENSION, "description": "binhoard's own; MyHoard lacks these"},
        ],
    )
    app.add_middleware(Gate, token=auth_token)
    return app


class _Server(uvicorn.Server):
    """uvicorn's server, telling ``HttpServer.start`` when it serves."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()


class HttpServer:
    """The HTTP API in its own (daemon) thread of the daemon process."""

    def __init__(
        self,
        daemon: Daemon,
        *,
        address: str,
        port: int,
        auth_token: str | None,
        metrics_text: Callable[[], str] | None = None,
        decision_timeout: float = DECISION_TIMEOUT,
    ) -> None:
        if auth_token is None and not is_loopback_address(address):
            raise UsageError(
                f"http_address {address!r} is not a loopback address: set http_auth_token"
            )
        self._address = address
        self._requested_port = port
        self._app = build_app(
            daemon,
            auth_token=auth_token,
            metrics_text=metrics_text,
            decision_timeout=decision_timeout,
        )
        self._socket: socket.socket | None = None
        self._bound_port = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def port(self) -> int:
        """The bound port once started (port 0 asks for an ephemeral one)."""
        return self._bound_port or self._requested_port

    def start(self) -> None:
        """Binds and serves in a daemon thread; returns once listening."""
        if self._thread is not None:
            raise BinhoardError("the HTTP server was already started")
        self._socket = self._listen()
        self._bound_port = int(self._socket.getsockname()[1])
        config = uvicorn.Config(
            self._app,
            http="h11",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,  # the daemon's logging, not uvicorn's own set-up
            access_log=False,  # Gate logs each request (never its headers)
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = self._server = _Server(config)
        self._thread = threading.Thread(target=self._run, name="binhoard-http", daemon=True)
        self._thread.start()
        server.ready.wait()
        if not server.started:
            self._thread.join()
            raise BinhoardError(f"the HTTP server on {self._where()} did not start (see the log)")
        log.info("HTTP API listening on %s", self._where(self.port))

    def stop(self, timeout: float = 5.0) -> None:
        """Wakes waiting requests (they answer 503), stops serving, joins the thread."""
        if self._thread is None or self._server is None:
            return
        if self._loop is not None:
            waits: _Waits = self._app.state.waits
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(waits.stop)
        self._server.should_exit = True
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the HTTP server did not stop within %g s; forcing it", timeout)
            self._server.force_exit = True
            self._thread.join(1.0)

    def _run(self) -> None:
        assert self._server is not None and self._socket is not None
        server, sock = self._server, self._socket

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            await server.serve(sockets=[sock])

        try:
            asyncio.run(serve())
        except BaseException:  # SystemExit included: uvicorn exits on startup failures
            log.exception("the HTTP server failed")
        finally:
            server.ready.set()
            sock.close()

    def _listen(self) -> socket.socket:
        try:
            family, kind, proto, _, where = socket.getaddrinfo(
                self._address, self._requested_port, type=socket.SOCK_STREAM
            )[0]
        except (socket.gaierror, UnicodeError) as exc:
            raise BinhoardError(f"cannot listen on {self._where()}: {exc}") from None
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(where)
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise BinhoardError(
                f"cannot listen on {self._where()} (http_address, http_port): {exc.strerror or exc}"
            ) from None
        return sock

    def _where(self, port: int | None = None) -> str:
        port = self._requested_port if port is None else port
        host = f"[{self._address}]" if ":" in self._address else self._address
        return f"{host}:{port}"
