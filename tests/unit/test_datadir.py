"""Emptying a datadir: everything inside goes, the directory itself never does."""

from __future__ import annotations

import os
from pathlib import Path

from binhoard.ops.restore_backup import empty_directory
from tests.support.mounts import tmpfs


def test_empties_a_mount_point_and_keeps_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("not ours")
    with tmpfs(tmp_path / "data", 1024 * 1024) as datadir:
        datadir.chmod(0o700)
        before = datadir.stat()
        (datadir / "ibdata1").write_bytes(b"x" * 100)
        (datadir / "app").mkdir()
        (datadir / "app" / "t.ibd").write_bytes(b"y")
        (datadir / "link").symlink_to(outside)
        empty_directory(datadir)
        assert list(datadir.iterdir()) == []
        assert os.path.ismount(datadir)
        after = datadir.stat()
        assert (after.st_dev, after.st_ino, after.st_mode) == (
            before.st_dev,
            before.st_ino,
            before.st_mode,
        )
    # A symbolic link inside is removed, never followed.
    assert (outside / "keep").read_text() == "not ours"


def test_a_missing_directory_is_left_missing(tmp_path: Path) -> None:
    empty_directory(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()
