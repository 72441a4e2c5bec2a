"""Local state files: a damaged file is treated as absent, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from binhoard.localstate import StateFile


@pytest.mark.parametrize(
    "content",
    [
        b'{"at": "2026-12-05T02:09:22", "uploaded": [',  # cut short
        b'{"at": "2026-12-05T02:09:22\xdd"}',  # a flipped byte: not UTF-8
        b"[1, 2]",  # JSON, but not an object
        b"",
    ],
)
def test_an_unreadable_state_file_reads_as_absent(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "binlog-archive.json"
    path.write_bytes(content)
    assert StateFile(path).read() is None


def test_a_state_file_reads_back_what_was_written(tmp_path: Path) -> None:
    state = StateFile(tmp_path / "sub" / "restore.json")
    assert state.read() is None
    state.write({"phase": "applying_binlogs"})
    assert state.read() == {"phase": "applying_binlogs"}
