"""Network faults between binhoard and S3, injected by a loopback proxy.

First the proxy itself, against a tiny stdlib upstream that records what reaches it:
it must forward requests faithfully and inject exactly the faults it counts. Then the
real thing: the S3 backend (obstore) talking to SeaweedFS through the proxy, wrapped in
``RetryingStore``, must read back every object byte-identical although a tenth of the
requests fail.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.faultproxy import FaultProxy, ProxyFaultPlan

# ------------------------------------------------------------------ the proxy alone


@dataclass
class Seen:
    method: str
    path: str
    headers: list[tuple[str, str]]
    raw_body: bytes


@dataclass
class Upstream:
    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"


def _body(n: int) -> bytes:
    return bytes(random.Random(n).randbytes(n))


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """Records each request with its raw body (chunk framing included) and answers by path.

    ``GET /bytes/N`` answers N deterministic bytes; ``GET /chunked/N`` the same, chunked;
    anything else answers the SHA-256 of the decoded body.
    """
    state: list[Seen] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _raw_body(self) -> tuple[bytes, bytes]:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                raw, decoded = b"", b""
                while True:
                    line = self.rfile.readline()
                    raw += line
                    size = int(line.split(b";")[0], 16)
                    data = self.rfile.read(size + 2)
                    raw += data
                    decoded += data[:size]
                    if size == 0:
                        return raw, decoded
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            return data, data

        def do_GET(self) -> None:
            raw, decoded = self._raw_body()
            state.append(Seen(self.command, self.path, list(self.headers.items()), raw))
            parts = self.path.strip("/").split("/")
            if parts[0] in ("bytes", "chunked"):
                body = _body(int(parts[1]))
            else:
                body = hashlib.sha256(decoded).hexdigest().encode()
            self.send_response(200)
            if parts[0] == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for pos in range(0, len(body), 1000):
                    piece = body[pos : pos + 1000]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        do_PUT = do_POST = do_HEAD = do_DELETE = do_GET  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Upstream(server, state)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _connect(proxy: FaultProxy) -> http.client.HTTPConnection:
    host, port = proxy.url.removeprefix("http://").split(":")
    return http.client.HTTPConnection(host, int(port), timeout=10)


def test_proxy_forwards_requests_byte_for_byte(upstream: Upstream) -> None:
    with FaultProxy(upstream.url) as proxy:
        conn = _connect(proxy)
        body = _body(300_000)
        headers = {
            "X-Amz-Date": "20260101T000000Z",
            "Authorization": "AWS4-HMAC-SHA256 Credential=x, SignedHeaders=host, Signature=0",
            "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
        }
        conn.request("PUT", "/bucket/key%20with%20space?partNumber=1&uploadId=a", body, headers)
        response = conn.getresponse()
        assert response.read() == hashlib.sha256(body).hexdigest().encode()

        # A streamed body of unknown length goes through chunked, framing and all.
        pieces = [b"a" * 10, b"b" * 70_000, b"c"]
        conn.request("POST", "/stream", iter(pieces), encode_chunked=True)
        assert conn.getresponse().read() == hashlib.sha256(b"".join(pieces)).hexdigest().encode()

        # Responses come back whole, with a length or chunked, on the same connection.
        conn.request("GET", "/bytes/1000000")
        assert conn.getresponse().read() == _body(1_000_000)
        conn.request("GET", "/chunked/54321")
        assert conn.getresponse().read() == _body(54_321)
        conn.request("HEAD", "/bytes/77")
        head = conn.getresponse()
        assert head.read() == b""
        assert head.getheader("Content-Length") == "77"
        conn.close()

    put, post = upstream.seen[0], upstream.seen[1]
    assert put.method == "PUT"
    assert put.path == "/bucket/key%20with%20space?partNumber=1&uploadId=a"
    assert put.raw_body == body
    # Every header arrives as sent, in order; Host is the proxy's, as the client signed it.
    sent = [(k.lower(), v) for k, v in put.headers if k.lower() not in ("accept-encoding",)]
    assert sent[0] == ("host", proxy.url.removeprefix("http://"))
    assert sent[1:] == [
        ("content-length", str(len(body))),
        ("x-amz-date", headers["X-Amz-Date"]),
        ("authorization", headers["Authorization"]),
        ("x-amz-content-sha256", headers["x-amz-content-sha256"]),
    ]
    assert ("Transfer-Encoding", "chunked") in post.headers
    framed = b"".join(b"%X\r\n%s\r\n" % (len(piece), piece) for piece in pieces)
    assert post.raw_body == framed + b"0\r\n\r\n"  # http.client writes uppercase hex
    assert proxy.counts["requests"] == 5
    assert proxy.faults == 0


def test_proxy_answers_slowdown_without_forwarding(upstream: Upstream) -> None:
    with FaultProxy(upstream.url, ProxyFaultPlan(rate=1.0, kinds={"slowdown": 1})) as proxy:
        conn = _connect(proxy)
        for _ in range(3):  # the connection stays usable
            conn.request("PUT", "/k", b"x" * 5000)
            response = conn.getresponse()
            assert response.status == 503
            assert b"<Code>SlowDown</Code>" in response.read()
    assert upstream.seen == []
    assert proxy.counts["slowdown"] == 3


@pytest.mark.parametrize(
    ("kind", "reaches_upstream"), [("reset", False), ("reset_after", True), ("truncate", True)]
)
def test_proxy_breaks_connections(upstream: Upstream, kind: str, reaches_upstream: bool) -> None:
    with FaultProxy(upstream.url, ProxyFaultPlan(rate=1.0, kinds={kind: 1})) as proxy:
        conn = _connect(proxy)
        conn.request("GET", "/bytes/200000")
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            conn.getresponse().read()
        conn.close()
    assert len(upstream.seen) == (1 if reaches_upstream else 0)
    assert proxy.counts[kind] == 1
    assert proxy.faults == 1


def test_proxy_truncates_only_bodies(upstream: Upstream) -> None:
    with FaultProxy(upstream.url, ProxyFaultPlan(rate=1.0, kinds={"truncate": 1})) as proxy:
        conn = _connect(proxy)
        conn.request("PUT", "/k", b"abc")  # not a GET: no fault drawn
        assert conn.getresponse().read() == hashlib.sha256(b"abc").hexdigest().encode()
        conn.request("GET", "/bytes/0")  # empty body: nothing to cut
        assert conn.getresponse().read() == b""
    assert proxy.faults == 0


def test_proxy_stalls_then_forwards(upstream: Upstream) -> None:
    plan = ProxyFaultPlan(rate=1.0, kinds={"stall": 1}, stall_seconds=0.01)
    with FaultProxy(upstream.url, plan) as proxy:
        conn = _connect(proxy)
        conn.request("GET", "/bytes/10")
        assert conn.getresponse().read() == _body(10)
    assert proxy.counts["stall"] == 1


def test_proxy_faults_follow_the_seed_and_rate(upstream: Upstream) -> None:
    def run(seed: int) -> list[int]:
        plan = ProxyFaultPlan(rate=0.3, kinds={"slowdown": 1}, seed=seed)
        with FaultProxy(upstream.url, plan) as proxy:
            conn = _connect(proxy)
            statuses = []
            for _ in range(100):
                conn.request("GET", "/bytes/1")
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
            assert proxy.counts["slowdown"] == statuses.count(503)
            return statuses

    first = run(5)
    assert first == run(5)
    assert first != run(6)
    assert 15 <= first.count(503) <= 45


def test_proxy_reports_an_unreachable_upstream_as_502() -> None:
    with FaultProxy("http://127.0.0.1:9") as proxy:
        conn = _connect(proxy)
        conn.request("GET", "/x")
        assert conn.getresponse().status == 502


def test_proxy_plan_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown fault kinds"):
        ProxyFaultPlan(kinds={"explode": 1})
