"""A loopback HTTP reverse proxy that injects network faults between a client and an S3 server.

Unit tests inject faults at the ``ObjectStore`` boundary (``FaultyStore``); this proxy
injects them where they really happen, on the wire, so that the real S3 client (obstore)
and the real server see 503s, reset connections, stalls and cut-off bodies.

The request is forwarded byte for byte: method, path and query, every header in order
(``Host`` included, and ``Transfer-Encoding: chunked`` bodies with their framing), so
SigV4 signatures stay valid. The client signs for the proxy's host and port; S3 servers
check the signature against the ``Host`` header they receive, which is the same string.

Which requests fail is decided by a seeded RNG, so a failing run can be replayed (up
to thread scheduling when the client sends requests concurrently). ``counts`` tells
how many of each fault were injected, so a test can prove faults happened even when
the client's own retries hid them.

Standard library only: ``http.server`` to accept, ``http.client`` to forward.
"""

from __future__ import annotations

import http.client
import logging
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

log = logging.getLogger("binhoard.tests.faultproxy")

FAULT_KINDS = ("slowdown", "reset", "reset_after", "stall", "truncate")
_BUFFER = 64 * 1024
_SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>faultproxy</RequestId></Error>"
)


@dataclass(frozen=True)
class ProxyFaultPlan:
    """Which faults to inject, on what fraction of requests.

    ``rate`` is the fraction of requests that get a fault; ``kinds`` weighs the kinds
    against each other:

    * ``slowdown``: answer ``503 SlowDown`` without forwarding (the body is read first).
    * ``reset``: reset the connection (TCP RST) before forwarding.
    * ``reset_after``: forward, let the server act, then reset instead of answering:
      the client cannot tell whether its request took effect.
    * ``stall``: wait ``stall_seconds`` before forwarding (a slow network).
    * ``truncate``: forward, then send the response headers and only part of the body
      before resetting. Only for requests whose response has a body (GET); a request
      that draws it but gets an empty response is forwarded unharmed.

    ``methods`` restricts faults to those HTTP methods (None: all); after ``max_faults``
    faults drawn (None: no limit) every request is forwarded unharmed, which makes "the first
    PUT loses its answer" expressible with ``rate=1.0, max_faults=1``.
    """

    rate: float = 0.0
    kinds: Mapping[str, float] = field(
        default_factory=lambda: {"slowdown": 1.0, "reset": 1.0, "truncate": 1.0}
    )
    seed: int = 0
    stall_seconds: float = 0.2
    methods: frozenset[str] | None = None
    max_faults: int | None = None

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")


class FaultProxy:
    """A threaded reverse proxy on ``127.0.0.1``; use as a context manager or start()/stop()."""

    def __init__(self, upstream: str, plan: ProxyFaultPlan | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"upstream must be an http:// URL: {upstream}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._stopping = threading.Event()
        self.set_plan(plan or ProxyFaultPlan())
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def set_plan(self, plan: ProxyFaultPlan) -> None:
        """Switches to another plan (and its seed) for the requests that follow."""
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)  # reproducible faults, not crypto
            self._drawn = 0  # faults chosen under this plan, for max_faults

    @property
    def counts(self) -> dict[str, int]:
        """Requests seen (``requests``), forwarded (``forwarded``) and faults by kind."""
        with self._lock:
            return dict(self._counts)

    @property
    def faults(self) -> int:
        """How many faults were injected in all."""
        with self._lock:
            return sum(self._counts[kind] for kind in FAULT_KINDS)

    def count(self, what: str) -> None:
        with self._lock:
            self._counts[what] += 1

    def choose(self, method: str) -> str | None:
        """The fault for this request, or None to forward it unharmed."""
        with self._lock:
            self._counts["requests"] += 1
            plan = self.plan
            if plan.methods is not None and method not in plan.methods:
                return None
            if plan.max_faults is not None and self._drawn >= plan.max_faults:
                return None
            if self._rng.random() >= plan.rate:
                return None
            kinds = {k: w for k, w in plan.kinds.items() if w > 0}
            if method != "GET":
                kinds.pop("truncate", None)
            if not kinds:
                return None
            self._drawn += 1
            return self._rng.choices(list(kinds), weights=list(kinds.values()))[0]

    def cut_point(self, length: int) -> int:
        with self._lock:
            return self._rng.randrange(length)

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="faultproxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops accepting; open keep-alive connections are dropped with the daemon threads."""
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()

    def stall(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Do not wait for handler threads at close: idle keep-alive connections may hold them.
    block_on_close = False
    proxy: FaultProxy


class _ResetError(Exception):
    """Ends the handling of a connection with a TCP reset."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # idle keep-alive connections end eventually
    # Headers and body go out in separate writes: without this, Nagle's algorithm and
    # delayed ACKs add 40 ms to every response.
    disable_nagle_algorithm = True
    server: _Server

    # -- plumbing

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)

    def handle(self) -> None:
        try:
            super().handle()
        except _ResetError:
            self._reset()
        except (ConnectionError, TimeoutError):
            self.close_connection = True  # the client went away: nothing to answer

    def _reset(self) -> None:
        """Closes the client connection with RST instead of FIN (SO_LINGER 0)."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError as exc:
            log.debug("reset: %s", exc)

    # -- every method is proxied the same way

    def do_GET(self) -> None:
        self._proxy()

    # http.server dispatches on these names.
    do_HEAD = do_PUT = do_POST = do_DELETE = do_OPTIONS = do_PATCH = do_GET  # noqa: N815

    def _proxy(self) -> None:
        proxy = self.server.proxy
        fault = proxy.choose(self.command)
        if fault == "reset":
            proxy.count("reset")
            raise _ResetError
        if fault == "slowdown":
            self._read_body(None)
            proxy.count("slowdown")
            self._slowdown()
            return
        if fault == "stall":
            proxy.count("stall")
            proxy.stall(proxy.plan.stall_seconds)

        # A new upstream connection per request: a reused one that the server closed
        # while idle would fail in ways that are not injected faults.
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            try:
                response = self._forward(conn)
            except (OSError, http.client.HTTPException) as exc:
                self._bad_gateway(exc)
                return
            proxy.count("forwarded")
            if fault == "reset_after":
                response.read()
                proxy.count("reset_after")
                raise _ResetError
            self._relay(response, truncate=fault == "truncate")
        finally:
            conn.close()

    def _forward(self, conn: http.client.HTTPConnection) -> http.client.HTTPResponse:
        """Sends the request upstream exactly as received and returns the response."""
        conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        self._read_body(conn)
        return conn.getresponse()

    def _read_body(self, sink: http.client.HTTPConnection | None) -> None:
        """Reads the request body, passing it to ``sink`` as received (framing included)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(_BUFFER)
                _send(sink, line)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while True:  # trailers, up to the blank line
                        trailer = self.rfile.readline(_BUFFER)
                        _send(sink, trailer)
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                self._copy(size + 2, sink)  # the data and its CRLF
        else:
            self._copy(int(self.headers.get("Content-Length", "0") or "0"), sink)

    def _copy(self, length: int, sink: http.client.HTTPConnection | None) -> None:
        while length > 0:
            data = self.rfile.read(min(length, _BUFFER))
            if not data:
                raise ConnectionResetError("client closed the connection mid-body")
            _send(sink, data)
            length -= len(data)

    def _relay(self, response: http.client.HTTPResponse, *, truncate: bool) -> None:
        """Sends the upstream response to the client, or only part of its body."""
        proxy = self.server.proxy
        headers = response.getheaders()
        chunked = any(
            name.lower() == "transfer-encoding" and "chunked" in value.lower()
            for name, value in headers
        )
        length = response.length  # None when chunked or delimited by close
        if response.will_close and not chunked:
            self.close_connection = True
        self.send_response_only(response.status, response.reason)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD" or response.status in (204, 304):
            return

        cut = proxy.cut_point(length) if truncate and length else None
        sent = 0
        while True:
            data = response.read1(_BUFFER) if length != 0 else b""
            if cut is not None and sent + len(data) >= cut:
                self.wfile.write(data[: cut - sent])
                self.wfile.flush()
                proxy.count("truncate")
                raise _ResetError
            if not data:
                break
            sent += len(data)
            # http.client removed the chunk framing: put it back for the client.
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _slowdown(self) -> None:
        self.send_response_only(503, "Slow Down")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(_SLOWDOWN_BODY)))
        self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(_SLOWDOWN_BODY)
        self.wfile.flush()

    def _bad_gateway(self, exc: BaseException) -> None:
        body = f"faultproxy: upstream failed: {exc}".encode()
        self.close_connection = True
        self.send_response_only(502, "Bad Gateway")
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()


def _send(sink: http.client.HTTPConnection | None, data: bytes) -> None:
    if sink is not None and data:
        sink.send(data)
