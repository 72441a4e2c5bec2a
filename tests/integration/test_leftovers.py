"""What a killed process leaves in object storage, and who removes it: real SeaweedFS (and
MariaDB), real processes killed with SIGKILL at a moment the server itself shows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from binhoard.app import open_site
from binhoard.config import parse_settings
from binhoard.ops.site import find_leftovers, list_backups
from binhoard.storage.backends import open_store
from tests.support import ops
from tests.support.configs import config_for
from tests.support.s3server import S3Server
from tests.support.sandboxes import SandboxFactory
from tests.support.waiting import wait_for
from tests.support.workload import create_schema, write_rows

MiB = 1024 * 1024
PART = 5 * MiB

# Starts a multipart upload and stays in it (the producer never ends) until killed.
_UPLOAD_FOREVER = """
import os, sys, threading
from pathlib import Path
from binhoard.config import S3Storage
from binhoard.storage.backends import open_store

config = S3Storage.model_validate_json(os.environ["BH_CONFIG"])
store = open_store(config, part_size=5 * 2**20, concurrency=2, state_directory=Path(sys.argv[1]))
def data():
    yield os.urandom(6 * 2**20)  # more than a part: a multipart upload
    threading.Event().wait()
store.put("backups/big", data())
"""


def test_s3_multipart_upload_of_a_killed_process_is_aborted_by_the_next_run(
    s3_server: S3Server, tmp_path: Path
) -> None:
    prefix = f"killed/{uuid.uuid4().hex[:12]}"
    config = s3_server.storage_config(prefix)
    payload = config.model_dump(mode="json")
    payload["aws_secret_access_key"] = s3_server.secret_key  # dumped masked otherwise
    state = tmp_path / "state"
    journal = state / "multipart-uploads"
    writer = subprocess.Popen(
        [sys.executable, "-c", _UPLOAD_FOREVER, str(state)],
        env={**os.environ, "BH_CONFIG": json.dumps(payload)},
        stderr=subprocess.PIPE,
    )
    try:
        # Ready when the server has the upload: the writer is then inside it.
        wait_for(
            "the writer's multipart upload",
            lambda: bool(s3_server.multipart_uploads(prefix)) or writer.poll() is not None,
        )
        assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
        assert s3_server.multipart_uploads(prefix) == [f"{prefix}/backups/big"]
        assert [p.name for p in journal.glob("*.json")] == [f"{writer.pid}-" + _start(writer)]

        # Another process writing meanwhile leaves a live writer's upload alone.
        open_store(config, part_size=PART, concurrency=2, state_directory=state).put(
            "marker", [b"x"]
        )
        assert s3_server.multipart_uploads(prefix) == [f"{prefix}/backups/big"]
    finally:
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()

    # Killed: the upload stays on the server, and so does the journal naming its key.
    assert s3_server.multipart_uploads(prefix) == [f"{prefix}/backups/big"]
    assert len(list(journal.glob("*.json"))) == 1

    next_run = open_store(config, part_size=PART, concurrency=2, state_directory=state)
    next_run.put("marker", [b"y"])
    assert s3_server.multipart_uploads(prefix) == []
    assert list(journal.glob("*.json")) == []
    # The key never became an object.
    assert [info.key for info in next_run.list()] == ["marker"]


def test_s3_completed_and_failed_multipart_uploads_leave_no_record(
    s3_server: S3Server, tmp_path: Path
) -> None:
    prefix = f"records/{uuid.uuid4().hex[:12]}"
    state = tmp_path / "state"
    store = open_store(
        s3_server.storage_config(prefix), part_size=PART, concurrency=2, state_directory=state
    )
    store.put("done", [os.urandom(PART + 1)])

    def failing() -> Iterator[bytes]:
        yield os.urandom(PART + 1)
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        store.put("failed", failing())
    assert s3_server.multipart_uploads(prefix) == []
    assert list((state / "multipart-uploads").glob("*.json")) == []


def _start(process: subprocess.Popen[bytes]) -> str:
    """A running child's start time, as ``ProcessId`` names journals."""
    fields = Path(f"/proc/{process.pid}/stat").read_text().rpartition(")")[2].split()
    return f"{fields[19]}.json"


def test_killed_backup_to_s3_leaves_an_upload_the_next_backup_aborts(
    sandboxes: SandboxFactory, s3_server: S3Server, tmp_path: Path
) -> None:
    source = sandboxes.new("source")
    create_schema(source)
    write_rows(source, 3000, seed=5, payload=2000)
    prefix = f"backup-killed/{uuid.uuid4().hex[:12]}"
    storage = s3_server.storage_config(prefix).model_dump(mode="json")
    storage["aws_secret_access_key"] = s3_server.secret_key  # dumped masked otherwise
    # Slow uploads in 5 MiB parts, so that the kill lands inside the multipart upload.
    data = config_for(source, tmp_path / "unused", upload_rate_limit=2_000_000, part_size=PART)
    data["backup_sites"]["default"]["object_storage"] = storage
    config = tmp_path / "binhoard.json"
    config.write_text(json.dumps(data))
    process = subprocess.Popen(
        [sys.executable, "-m", "binhoard", "backup", "create", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(
            "the backup's multipart upload",
            lambda: bool(s3_server.multipart_uploads(prefix)) or process.poll() is not None,
            timeout=120,
        )
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
    finally:
        # Popen.kill: no error if the process already ended and was reaped (by poll
        # above), so that a failed assertion shows its own message.
        process.kill()
        process.wait()
    left = s3_server.multipart_uploads(prefix)
    assert len(left) == 1 and left[0].endswith("/data.xbstream.zst.age"), left

    data["backup_sites"]["default"]["upload_rate_limit"] = None
    settings = parse_settings(data, source="test")
    store = open_site(settings)
    backup = ops.backup(settings, store)
    assert s3_server.multipart_uploads(prefix) == []
    assert [b.backup_id for b in list_backups(store)] == [backup.backup_id]
    assert find_leftovers(store) == []
