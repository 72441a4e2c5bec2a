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
import secrets
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import pytest

from binhoard.domain.errors import PreconditionFailedError, TransientStorageError
from binhoard.storage.backends import open_store
from binhoard.storage.store import read_all
from binhoard.storage.wrappers import RetryingStore
from tests.support.faultproxy import FaultProxy, ProxyFaultPlan
from tests.support.s3server import S3Server

if TYPE_CHECKING:
    from obstore.store import RetryConfig

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


# ------------------------------------------------------------------ S3 through the proxy

PART_SIZE = 5 * 1024 * 1024  # the smallest S3 allows: multipart objects stay small


@dataclass
class Sample:
    key: str
    body: bytes
    one_shot: bool = False  # put as a generator instead of a replayable list


def _samples(rng: random.Random) -> list[Sample]:
    """32 objects: empty and tiny ones, some around the chunk size, and multipart-sized ones."""
    sizes = [0, 1, 17, 4096, 65_535, 65_536, 65_537, 1_048_576]
    sizes += [rng.randrange(1, 1_500_000) for _ in range(16)]
    sizes += [PART_SIZE - 1, PART_SIZE, PART_SIZE + 1, 2 * PART_SIZE + 12_345]
    sizes += [rng.randrange(PART_SIZE, 3 * PART_SIZE) for _ in range(4)]
    return [
        Sample(f"obj/{i:02d}-{size}", rng.randbytes(size), one_shot=i % 5 == 4 and size < PART_SIZE)
        for i, size in enumerate(sizes)
    ]


def _chunks(body: bytes, size: int) -> list[bytes]:
    return [body[pos : pos + size] for pos in range(0, len(body), size)]


def _one_shot(body: bytes) -> Iterator[bytes]:
    yield from _chunks(body, 100_000)


@dataclass
class RoundTrip:
    retries: int  # how many times RetryingStore backed off
    seconds: float


def _round_trip(
    s3_server: S3Server, proxy: FaultProxy, *, retry: RetryConfig | None, attempts: int
) -> RoundTrip:
    """Puts the samples through ``RetryingStore(S3 via proxy)`` and reads each back, in full
    and in ranges; all must come back byte-identical."""
    started = time.monotonic()
    config = s3_server.storage_config(prefix=f"faults-{secrets.token_hex(4)}")
    config = config.model_copy(update={"endpoint_url": proxy.url})
    backend = open_store(config, part_size=PART_SIZE, concurrency=2, retry=retry)
    backoffs: list[float] = []
    store = RetryingStore(
        backend,
        attempts=attempts,
        base_delay=0.01,
        max_delay=0.1,
        replay_buffer=PART_SIZE,
        sleep=backoffs.append,  # the faults are instant: no need to wait before retrying
        rng=random.Random(3),
    )
    rng = random.Random(2024)
    samples = _samples(rng)
    ranges = {
        s.key: [(rng.randrange(len(s.body) + 1), rng.randrange(200_000)) for _ in range(4)]
        for s in samples
    }

    def put(sample: Sample) -> None:
        data = _one_shot(sample.body) if sample.one_shot else _chunks(sample.body, 256 * 1024)
        assert store.put(sample.key, data).size == len(sample.body)

    def check(sample: Sample) -> None:
        got = read_all(store, sample.key)
        # Digests, not bytes: a failure must not print megabytes.
        assert (len(got), _sha(got)) == (len(sample.body), _sha(sample.body)), sample.key
        for offset, length in ranges[sample.key]:
            part = b"".join(store.get(sample.key, offset=offset, length=length))
            assert _sha(part) == _sha(sample.body[offset : offset + length]), (sample.key, offset)

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(put, samples))
        for i in range(3):  # small create-if-absent records, as ownership markers are
            store.put(f"owner/{i}", [b"owner-%d" % i], if_absent=True)
        list(pool.map(check, samples))

    listed = {info.key: info.size for info in store.list("obj/")}
    assert listed == {s.key: len(s.body) for s in samples}
    with pytest.raises(PreconditionFailedError):
        store.put("owner/0", [b"someone else"], if_absent=True)
    for sample in samples:
        store.delete(sample.key)
    assert list(store.list("obj/")) == []
    return RoundTrip(retries=len(backoffs), seconds=time.monotonic() - started)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


TEN_PERCENT = ProxyFaultPlan(
    rate=0.10, kinds={"slowdown": 1.0, "reset": 1.0, "truncate": 2.0}, seed=17
)


def test_s3_objects_survive_faults_with_only_our_retries(s3_server: S3Server) -> None:
    """obstore's own retries off: every injected fault reaches RetryingStore and is cured."""
    with FaultProxy(s3_server.endpoint_url, TEN_PERCENT) as proxy:
        result = _round_trip(s3_server, proxy, retry={"max_retries": 0}, attempts=15)
    counts = proxy.counts
    assert counts["slowdown"] > 0
    assert counts["reset"] > 0
    assert counts["truncate"] > 0
    # Each fault surfaced here (two parts of one upload failing together cost one retry).
    assert result.retries > proxy.faults // 2


def test_s3_objects_survive_faults_with_obstore_retries(s3_server: S3Server) -> None:
    """As in production: obstore retries requests itself (here with millisecond backoff).

    obstore cures most faults inside the call (503s, resets, and cut-off GET bodies,
    which it resumes with a ranged request), so they never reach RetryingStore: the
    proof that faults happened is the proxy's count.
    """
    quick: RetryConfig = {
        "max_retries": 10,
        "backoff": {
            "init_backoff": timedelta(milliseconds=1),
            "max_backoff": timedelta(milliseconds=20),
            "base": 2,
        },
        "retry_timeout": timedelta(seconds=60),
    }
    with FaultProxy(s3_server.endpoint_url, TEN_PERCENT) as proxy:
        result = _round_trip(s3_server, proxy, retry=quick, attempts=8)
    assert proxy.faults > 10
    assert proxy.counts["truncate"] > 0
    assert result.retries < proxy.faults


def test_s3_conditional_put_whose_answer_was_lost(s3_server: S3Server) -> None:
    """The server stores an if-absent PUT but the answer never arrives; the retry meets
    412 and must recognise the object as its own (and only its own)."""
    config = s3_server.storage_config(prefix=f"ambiguous-{secrets.token_hex(4)}")
    lose_first_put = ProxyFaultPlan(
        rate=1.0, kinds={"reset_after": 1}, methods=frozenset({"PUT"}), max_faults=1
    )
    with FaultProxy(s3_server.endpoint_url, lose_first_put) as proxy:
        backend = open_store(
            config.model_copy(update={"endpoint_url": proxy.url}),
            part_size=PART_SIZE,
            concurrency=2,
            retry={"max_retries": 0},
        )
        store = RetryingStore(backend, sleep=lambda _: None)
        info = store.put("owner", [b"writer-1"], if_absent=True)
        assert info.size == len(b"writer-1")
        assert proxy.counts["reset_after"] == 1

        proxy.set_plan(lose_first_put)
        with pytest.raises(PreconditionFailedError):
            store.put("owner", [b"writer-2"], if_absent=True)
        assert proxy.counts["reset_after"] == 2
    assert read_all(backend, "owner") == b"writer-1"


def test_an_endpoint_that_never_answers_fails_each_attempt_within_a_bound(
    s3_server: S3Server,
) -> None:
    """A listener that accepts and never answers: each request ends as transient within
    about the read timeout (30 s), not after the client's 3-minute retry window (which,
    under RetryingStore's 5 attempts, kept `backup list` silent for ~20 minutes)."""
    import socket  # noqa: PLC0415 - only this test needs a raw listener

    held: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept_and_hold() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(connection)  # read nothing, answer nothing

    thread = threading.Thread(target=accept_and_hold, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        config = s3_server.storage_config(prefix="never").model_copy(
            update={"endpoint_url": f"http://127.0.0.1:{port}"}
        )
        backend = open_store(config, part_size=PART_SIZE, concurrency=2)
        started = time.monotonic()
        with pytest.raises(TransientStorageError):
            list(backend.list("backups/"))
        assert time.monotonic() - started < 75
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()
