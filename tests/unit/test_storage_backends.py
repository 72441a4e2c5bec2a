"""Backend behaviour the conformance suite cannot reach: construction, error mapping,
secrets in messages, and the local store's file-system details. No servers needed."""

from __future__ import annotations

import gc
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import obstore.exceptions as obe
import pytest
from obstore.store import MemoryStore as NativeMemoryStore

from binhoard.config import AzureStorage, GCSStorage, LocalStorage, S3Storage
from binhoard.domain.errors import (
    ObjectNotFoundError,
    PermanentStorageError,
    PreconditionFailedError,
    TransientStorageError,
)
from binhoard.localstate import ProcessId, host_name
from binhoard.storage.backends import LocalStore, ObstoreStore, open_store
from binhoard.storage.store import ObjectStore, read_all

MiB = 1024 * 1024
SIZES = {"part_size": 5 * MiB, "concurrency": 2}


def _obstore(store: ObjectStore) -> ObstoreStore:
    assert isinstance(store, ObstoreStore)
    return store


# --------------------------------------------------------------------------- construction


def test_s3_construction_keeps_credentials_out_of_describe() -> None:
    config = S3Storage(
        storage_type="s3",
        bucket="backups",
        prefix="/site-a/",
        endpoint_url="https://user:pw@minio.example:9000",
        aws_access_key_id="AKIAEXAMPLE",
        aws_secret_access_key="s3cr3t-value",
        aws_session_token="t0ken-value",
    )
    store = _obstore(open_store(config, **SIZES))
    description = store.describe()
    assert description == "s3://backups/site-a/ at https://minio.example:9000"
    for secret in ("s3cr3t-value", "t0ken-value", "pw"):
        assert secret not in description
    # Virtual-hosted style: obstore wants the bucket in the endpoint's host name.
    assert store.native.config["endpoint"] == "https://user:pw@backups.minio.example:9000"
    assert store.native.prefix == "site-a"
    assert (store.part_size, store.concurrency) == (5 * MiB, 2)


def test_s3_path_style_endpoint_is_used_as_given() -> None:
    config = S3Storage(
        storage_type="s3",
        bucket="backups",
        endpoint_url="http://127.0.0.1:9000",
        virtual_hosted_style_request=False,
        allow_http=True,
    )
    store = _obstore(open_store(config, **SIZES))
    assert store.native.config["endpoint"] == "http://127.0.0.1:9000"
    assert store.describe() == "s3://backups/ at http://127.0.0.1:9000"


def test_gcs_construction_with_a_service_account_file(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throwaway RSA key")
    key_pem = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    account = {
        "type": "service_account",
        "project_id": "binhoard-test",
        "private_key_id": "0123456789abcdef",
        "private_key": key_pem,
        "client_email": "backup@binhoard-test.iam.gserviceaccount.com",
    }
    credentials = tmp_path / "sa.json"
    credentials.write_text(json.dumps(account))
    config = GCSStorage.model_validate(
        {"storage_type": "gcs", "bucket": "bkt", "prefix": "a/b", "credentials_file": credentials},
        context={"base_dir": tmp_path},
    )
    store = _obstore(open_store(config, **SIZES))
    assert store.describe() == "gs://bkt/a/b/"
    assert "PRIVATE KEY" not in store.describe()
    assert store.native.prefix == "a/b"


def test_gcs_construction_with_application_default_credentials() -> None:
    store = _obstore(open_store(GCSStorage(storage_type="gcs", bucket="bkt"), **SIZES))
    assert store.describe() == "gs://bkt/"


def test_gcs_unreadable_credentials_file_is_a_permanent_error(tmp_path: Path) -> None:
    config = GCSStorage(storage_type="gcs", bucket="bkt", credentials_file=tmp_path / "none.json")
    with pytest.raises(PermanentStorageError, match="gcs storage configuration"):
        open_store(config, **SIZES)


def test_azure_construction_with_an_account_key() -> None:
    config = AzureStorage(
        storage_type="azure",
        account_name="acct",
        container="backups",
        prefix="site",
        account_key="c2VjcmV0LWFjY291bnQta2V5",
        endpoint_url="http://127.0.0.1:10000/acct",
    )
    store = _obstore(open_store(config, **SIZES))
    assert store.describe() == "azure://acct/backups/site/ at http://127.0.0.1:10000/acct"
    assert "c2VjcmV0" not in store.describe()
    assert store.native.config["account_key"] == "c2VjcmV0LWFjY291bnQta2V5"


def test_azure_construction_with_a_sas_token() -> None:
    config = AzureStorage(
        storage_type="azure",
        account_name="acct",
        container="backups",
        sas_token="?sv=2022-11-02&ss=b&sig=SIGNATURE%3D",
    )
    store = _obstore(open_store(config, **SIZES))
    assert store.describe() == "azure://acct/backups/"
    assert store.native.config["sas_key"] == "sv=2022-11-02&ss=b&sig=SIGNATURE%3D"
    # A SAS token travels in URLs, so error texts can carry it: it is masked.
    with pytest.raises(TransientStorageError) as raised:
        store.raise_mapped(
            obe.GenericError(
                "Error performing GET https://acct.blob.core.windows.net/backups/k"
                "?sv=2022-11-02&sig=SIGNATURE%3D in 3ms - HTTP error: error sending request"
            ),
            "get",
            "k",
        )
    assert "SIGNATURE" not in str(raised.value)


def test_invalid_prefix_is_rejected() -> None:
    config = S3Storage(storage_type="s3", bucket="b", prefix="a/../b")
    with pytest.raises(PermanentStorageError, match="invalid storage prefix"):
        open_store(config, **SIZES)


def test_local_construction(tmp_path: Path) -> None:
    store = open_store(LocalStorage(storage_type="local", directory=tmp_path / "site"), **SIZES)
    assert isinstance(store, LocalStore)
    assert store.describe() == f"local:{tmp_path / 'site'}"


# --------------------------------------------------------------------------- error mapping


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_a_transient_error() -> None:
    config = S3Storage(
        storage_type="s3",
        bucket="b",
        endpoint_url=f"http://127.0.0.1:{_free_port()}",
        virtual_hosted_style_request=False,
        allow_http=True,
        aws_access_key_id="AK",
        aws_secret_access_key="very-secret",
    )
    store = open_store(config, **SIZES, retry={"max_retries": 0})
    started = time.monotonic()
    for call in (
        lambda: store.get("k"),
        lambda: store.put("k", [b"x"]),
        lambda: store.put("k", [b"x" * (6 * MiB)]),
        lambda: store.stat("k"),
        lambda: list(store.list()),
    ):
        with pytest.raises(TransientStorageError) as raised:
            call()
        assert "Connection refused" in str(raised.value)
        assert "very-secret" not in str(raised.value)
    assert time.monotonic() - started < 10


S3_ERROR = (
    "Generic S3 error: Error performing PUT http://h/b/k in 1ms - Server returned non-2xx"
    ' status code: {status}: <?xml version="1.0"?><Error><Code>{code}</Code>'
    "<Message>{message}</Message></Error>\n\nDebug source:\nGeneric {{ status: {num} }}"
)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        ("503 Service Unavailable", "SlowDown", TransientStorageError),
        ("500 Internal Server Error", "InternalError", TransientStorageError),
        ("429 Too Many Requests", "TooManyRequests", TransientStorageError),
        ("408 Request Timeout", "RequestTimeout", TransientStorageError),
        ("400 Bad Request", "InvalidArgument", PermanentStorageError),
        ("403 Forbidden", "AccessDenied", PermanentStorageError),
        ("405 Method Not Allowed", "MethodNotAllowed", PermanentStorageError),
    ],
)
def test_http_status_decides_transient_or_permanent(
    status: str, code: str, expected: type[Exception]
) -> None:
    store = _obstore(open_store(S3Storage(storage_type="s3", bucket="b"), **SIZES))
    text = S3_ERROR.format(status=status, code=code, message="it failed", num=status[:3])
    with pytest.raises(expected) as raised:
        store.raise_mapped(obe.GenericError(text), "put", "k")
    message = str(raised.value)
    assert message == f"s3://b/: put k: HTTP {status} {code} it failed"
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


@pytest.mark.parametrize(
    ("native", "expected"),
    [
        (obe.AlreadyExistsError("exists"), PreconditionFailedError),
        (obe.PreconditionError("412"), PreconditionFailedError),
        (FileNotFoundError("Object at location k not found"), ObjectNotFoundError),
        (FileNotFoundError("404 <Code>NoSuchBucket</Code>"), PermanentStorageError),
        (obe.PermissionDeniedError("403"), PermanentStorageError),
        (obe.UnauthenticatedError("401"), PermanentStorageError),
        (obe.InvalidPathError("bad path"), PermanentStorageError),
        (obe.NotSupportedError("nope"), PermanentStorageError),
        (obe.GenericError("HTTP error: error sending request"), TransientStorageError),
        (TimeoutError("timed out"), TransientStorageError),
    ],
)
def test_native_errors_map_to_typed_errors(
    native: BaseException, expected: type[Exception]
) -> None:
    store = _obstore(open_store(S3Storage(storage_type="s3", bucket="b"), **SIZES))
    with pytest.raises(expected):
        store.raise_mapped(native, "get", "k")


def test_messages_drop_url_credentials_and_queries() -> None:
    config = S3Storage(
        storage_type="s3",
        bucket="b",
        aws_access_key_id="AK",
        aws_secret_access_key="hunter2hunter2",
    )
    store = _obstore(open_store(config, **SIZES))
    native = obe.GenericError(
        "Error performing GET https://admin:pw@h/b/k?X-Amz-Signature=abc in 1ms"
        " - HTTP error: hunter2hunter2 leaked somehow"
    )
    with pytest.raises(TransientStorageError) as raised:
        store.raise_mapped(native, "get", "k")
    message = str(raised.value)
    assert "hunter2hunter2" not in message
    assert "admin:pw" not in message
    assert "X-Amz-Signature" not in message


# --------------------------------------------------------------------------- obstore logic


def _memory_backed(**kwargs: int) -> ObstoreStore:
    return ObstoreStore(NativeMemoryStore(), description="memory://", **kwargs)


def test_conditional_put_is_limited_to_what_fits_in_memory() -> None:
    store = _memory_backed(part_size=5 * MiB, concurrency=1, conditional_put_limit=MiB)
    store.put("small", [b"x" * MiB], if_absent=True)
    with pytest.raises(PermanentStorageError, match="limited to 1048576 bytes"):
        store.put("big", [b"x" * MiB, b"y"], if_absent=True)
    with pytest.raises(ObjectNotFoundError):
        store.stat("big")
    with pytest.raises(PreconditionFailedError):
        store.put("small", [b"z"], if_absent=True)


def test_multipart_put_reports_size_and_keeps_producer_errors() -> None:
    store = _memory_backed(part_size=5 * MiB, concurrency=2)
    info = store.put("big", (bytes([n]) * MiB for n in range(12)))
    assert info.size == 12 * MiB
    assert read_all(store, "big") == b"".join(bytes([n]) * MiB for n in range(12))

    def failing() -> Iterator[bytes]:
        yield b"a" * (6 * MiB)
        raise FileNotFoundError("the producer's own file")  # not an ObjectNotFoundError

    with pytest.raises(FileNotFoundError, match="producer's own"):
        store.put("fail", failing())


def test_negative_ranges_are_programming_errors(tmp_path: Path) -> None:
    for store in (_memory_backed(), LocalStore(tmp_path)):
        store.put("k", [b"abc"])
        with pytest.raises(ValueError, match="invalid range"):
            store.get("k", offset=-1)
        with pytest.raises(ValueError, match="invalid range"):
            store.get("k", length=-1)


# --------------------------------------------------------------------------- local details


def test_local_temp_files_are_invisible_and_reserved(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    (tmp_path / ".binhoard-tmp" / "put-leftover").write_bytes(b"half")
    store.put("k", [b"v"])
    assert [i.key for i in store.list()] == ["k"]
    assert [i.key for i in store.list(".binhoard-tmp/")] == []
    with pytest.raises(PermanentStorageError, match="reserved"):
        store.put(".binhoard-tmp/x", [b"v"])
    assert [p.name for p in (tmp_path / ".binhoard-tmp").iterdir()] == ["put-leftover"]


def test_local_stale_temp_files_are_removed_on_open(tmp_path: Path) -> None:
    LocalStore(tmp_path)
    stale = tmp_path / ".binhoard-tmp" / "put-stale"
    fresh = tmp_path / ".binhoard-tmp" / "put-fresh"
    stale.write_bytes(b"")
    fresh.write_bytes(b"")
    old = time.time() - 2 * 24 * 3600
    os.utime(stale, (old, old))
    LocalStore(tmp_path)
    assert not stale.exists()
    assert fresh.exists()


def test_local_temp_files_of_this_hosts_dead_writers_are_removed_at_once(tmp_path: Path) -> None:
    LocalStore(tmp_path)
    tmp = tmp_path / ".binhoard-tmp"
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid no longer runs
    me = ProcessId.current()
    host = host_name()
    names = {
        "dead writer": f"put-{gone.pid}-1234-{host}~aaaaaaaa",
        "pid now another process": f"put-{me.pid}-{int(me.start) + 1}-{host}~bbbbbbbb",
        "live writer": f"put-{me.tag()}-{host}~cccccccc",
        "other host": f"put-{gone.pid}-1234-elsewhere.example~dddddddd",
        "unnamed": "put-eeeeeeee",
    }
    for name in names.values():
        (tmp / name).write_bytes(b"half")
    LocalStore(tmp_path)
    left = {what for what, name in names.items() if (tmp / name).exists()}
    # Other hosts' writers cannot be checked from here: theirs wait for the grace period.
    assert left == {"live writer", "other host", "unnamed"}


_PUT_FOREVER = """
import sys, threading
from binhoard.storage.backends import LocalStore
def data():
    yield b"x" * 4096
    print("ready", flush=True)
    threading.Event().wait()
LocalStore(sys.argv[1]).put("big", data())
"""


def test_local_temp_file_of_a_killed_put_is_removed_by_the_next_open(tmp_path: Path) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", _PUT_FOREVER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "ready\n"
        temp = list((tmp_path / ".binhoard-tmp").iterdir())
        assert len(temp) == 1
        LocalStore(tmp_path)  # the writer still runs: its file stays
        assert temp[0].exists()
    finally:
        writer.kill()
        writer.wait()
    assert temp[0].exists()
    LocalStore(tmp_path)
    assert not temp[0].exists()


def test_process_id_tells_a_live_process_from_a_dead_one() -> None:
    me = ProcessId.current()
    assert me.start.isdigit()
    assert me.alive()
    assert ProcessId.from_tag(me.tag()) == me
    child = subprocess.Popen(["true"])
    child.wait()
    assert not ProcessId(child.pid, me.start).alive()
    assert not ProcessId(me.pid, str(int(me.start) + 1)).alive()  # the pid, reused
    assert ProcessId(child.pid, "").alive()  # unknown start: assumed alive
    assert ProcessId.from_tag("12-x") is None
    assert ProcessId.from_tag("nope") is None


def test_local_key_cannot_be_both_object_and_prefix(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a", [b"1"])
    with pytest.raises(PermanentStorageError, match="cannot also be a key prefix"):
        store.put("a/b", [b"2"])
    store.put("c/d", [b"3"])
    with pytest.raises(PermanentStorageError, match="already a prefix"):
        store.put("c", [b"4"])
    with pytest.raises(PermanentStorageError, match="already a prefix"):
        store.put("c", [b"4"], if_absent=True)
    with pytest.raises(ObjectNotFoundError):
        store.stat("c")


def test_local_delete_prunes_empty_directories(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("a/b/c", [b"1"])
    store.put("a/x", [b"2"])
    store.delete("a/b/c")
    assert not (tmp_path / "a" / "b").exists()
    assert (tmp_path / "a").is_dir()
    store.put("a/b", [b"now an object"])
    assert read_all(store, "a/b") == b"now an object"


def test_local_files_are_private_and_complete(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    info = store.put("x/y", [b"a" * 10, b"b" * 5])
    assert info.size == 15
    path = tmp_path / "x" / "y"
    assert path.read_bytes() == b"a" * 10 + b"b" * 5
    assert path.stat().st_mode & 0o077 == 0
    assert list((tmp_path / ".binhoard-tmp").iterdir()) == []


def test_local_unconsumed_get_closes_its_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k", [b"v" * 10])
    # Garbage that earlier tests left is collected first: only this test's may count.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = store.get("k")
        del stream
        partial = store.get("k", length=3)
        assert next(iter(partial)) == b"vvv"
        del partial
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


class _RetryMeetsItself:
    """obstore's memory store, but a conditional put reports what a retried PUT would
    report after its lost first attempt had been stored: 412 after ``retries`` retries."""

    def __init__(self, retries: int, stored: bytes | None = None) -> None:
        self.inner = NativeMemoryStore()
        self.retries = retries
        self.stored = stored

    def put(self, key: str, body: bytes, **kwargs: object) -> object:
        self.inner.put(key, self.stored if self.stored is not None else body)
        raise obe.AlreadyExistsError(
            f"Object at location {key} already exists\n\nDebug source:\n"
            f"AlreadyExists {{ source: RetryError {{ retries: {self.retries}, max_retries: 10 }} }}"
        )

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


@pytest.mark.parametrize(
    ("retries", "stored", "wins"),
    [(1, None, True), (3, b"someone else", False), (0, None, False)],
    ids=["retry-met-own-bytes", "retry-met-other-bytes", "first-attempt"],
)
def test_conditional_put_recognises_its_own_write_after_a_retry(
    retries: int, stored: bytes | None, wins: bool
) -> None:
    native = _RetryMeetsItself(retries, stored)
    store = ObstoreStore(native, description="fake://")  # type: ignore[arg-type]
    if wins:
        assert store.put("owner", [b"me"], if_absent=True).size == 2
    else:
        with pytest.raises(PreconditionFailedError):
            store.put("owner", [b"me"], if_absent=True)


def test_a_local_objects_change_id_changes_with_any_write_even_with_its_mtime_set_back(
    tmp_path: Path,
) -> None:
    store = LocalStore(tmp_path)
    written = store.put("a/b.json", [b"one"], if_absent=True)
    (listed,) = store.list("a/")
    assert written.change_id is not None and written.change_id == listed.change_id
    assert store.stat("a/b.json").change_id == written.change_id

    path = tmp_path / "a" / "b.json"
    st = path.stat()
    path.write_bytes(b"two")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    (changed,) = store.list("a/")
    assert (changed.size, changed.last_modified) == (listed.size, listed.last_modified)
    assert changed.change_id != listed.change_id
