"""The journal of S3 multipart uploads in flight: which keys a later run aborts, and when.

The journal is real (files and flock in a temp directory), other processes are real
(one that has exited, for a dead writer); the abort is a recording fake.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from binhoard.domain.errors import TransientStorageError
from binhoard.localstate import ProcessId
from binhoard.storage.multipart import MultipartJournal, OwnUploads


class Aborts:
    """Records the keys it is asked to abort; fails for those in ``failing``."""

    def __init__(self, failing: frozenset[str] = frozenset()) -> None:
        self.keys: list[str] = []
        self.failing = failing

    def __call__(self, key: str) -> int:
        if key in self.failing:
            raise TransientStorageError(f"abort {key}: connection refused")
        self.keys.append(key)
        return 1


def _dead_process() -> ProcessId:
    child = subprocess.Popen(["true"])
    child.wait()
    return ProcessId(child.pid, "1234")


def _write(directory: Path, process: ProcessId, entries: list[tuple[str, str]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{process.tag()}.json"
    uploads = [{"store": store, "key": key} for store, key in entries]
    path.write_text(json.dumps({"uploads": uploads}))
    return path


def test_begin_and_end_keep_one_file_per_process_while_uploads_are_in_flight(
    tmp_path: Path,
) -> None:
    journal = MultipartJournal(tmp_path)
    journal.begin("s3://b/", "a")
    journal.begin("s3://b/", "b")
    mine = tmp_path / f"{ProcessId.current().tag()}.json"
    assert [e["key"] for e in json.loads(mine.read_text())["uploads"]] == ["a", "b"]
    journal.end("s3://b/", "a")
    journal.end("s3://b/", "b")
    assert not mine.exists()


def test_clean_aborts_dead_processes_keys_of_this_store_only(tmp_path: Path) -> None:
    journal = MultipartJournal(tmp_path)
    dead = _write(
        tmp_path,
        _dead_process(),
        [("s3://b/", "k1"), ("s3://other/", "k2"), ("s3://b/", "busy"), ("s3://b/", "k3")],
    )
    journal.begin("s3://b/", "busy")  # a live process (this one) uploads it right now
    aborts = Aborts()
    assert journal.clean("s3://b/", aborts) == ["k1", "k3"]
    assert aborts.keys == ["k1", "k3"]
    # What was not this store's, or was busy, stays for a later run.
    left = json.loads(dead.read_text())["uploads"]
    assert left == [{"store": "s3://other/", "key": "k2"}, {"store": "s3://b/", "key": "busy"}]
    journal.end("s3://b/", "busy")
    assert journal.clean("s3://b/", aborts) == ["busy"]
    assert journal.clean("s3://other/", aborts) == ["k2"]
    assert not dead.exists()


def test_clean_keeps_a_key_whose_abort_failed_and_leaves_live_journals_alone(
    tmp_path: Path,
) -> None:
    journal = MultipartJournal(tmp_path)
    dead = _write(tmp_path, _dead_process(), [("s3://b/", "k1"), ("s3://b/", "k2")])
    journal.begin("s3://b/", "mine")
    assert journal.clean("s3://b/", Aborts(failing=frozenset({"k1"}))) == ["k2"]
    assert json.loads(dead.read_text())["uploads"] == [{"store": "s3://b/", "key": "k1"}]
    mine = tmp_path / f"{ProcessId.current().tag()}.json"
    assert json.loads(mine.read_text())["uploads"] == [{"store": "s3://b/", "key": "mine"}]


def test_own_uploads_cleans_once_and_keeps_a_failed_upload_it_could_not_abort(
    tmp_path: Path,
) -> None:
    journal = MultipartJournal(tmp_path)
    _write(tmp_path, _dead_process(), [("s3://b/", "old")])
    aborts = Aborts(failing=frozenset({"unreachable"}))
    own = OwnUploads(journal, "s3://b/", aborts)
    own.clean_once()
    _write(tmp_path, _dead_process(), [("s3://b/", "older")])
    own.clean_once()  # once per store: the second call does nothing
    assert aborts.keys == ["old"]

    own.started("fails")
    own.failed("fails")  # aborted (again) at once, record dropped
    own.started("unreachable")
    own.failed("unreachable")  # could not abort: kept for a run after this process
    mine = tmp_path / f"{ProcessId.current().tag()}.json"
    assert json.loads(mine.read_text())["uploads"] == [{"store": "s3://b/", "key": "unreachable"}]
    assert aborts.keys == ["old", "fails"]


def test_a_journal_that_cannot_be_written_stops_the_upload_with_a_storage_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "file").write_text("")
    journal = MultipartJournal(tmp_path / "file" / "journal")  # under a file: ENOTDIR
    with pytest.raises(TransientStorageError, match="multipart upload journal"):
        journal.begin("s3://b/", "k")


def test_clean_removes_a_dead_processs_half_written_journal(tmp_path: Path) -> None:
    dead = _dead_process()
    half = tmp_path / f".{dead.tag()}.json.tmp"
    tmp_path.mkdir(exist_ok=True)
    half.write_text('{"uplo')
    mine = tmp_path / f".{ProcessId.current().tag()}.json.tmp"
    mine.write_text('{"uplo')
    MultipartJournal(tmp_path).clean("s3://b/", Aborts())
    assert not half.exists()
    assert mine.exists()


def test_botocore_is_loaded_only_to_clean_up(tmp_path: Path) -> None:
    """botocore costs ~20 MiB that every upload would carry against its memory bound:
    opening an S3 site and the CLI must not import it."""
    code = (
        "import sys\n"
        "import binhoard.cli\n"
        "from binhoard.config import S3Storage\n"
        "from binhoard.storage.backends import open_store\n"
        "open_store(S3Storage(storage_type='s3', bucket='b', region='r',"
        " endpoint_url='http://127.0.0.1:9'), part_size=16 << 20, concurrency=4,"
        f" state_directory=__import__('pathlib').Path({str(tmp_path)!r}))\n"
        "print('botocore' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out.stderr
