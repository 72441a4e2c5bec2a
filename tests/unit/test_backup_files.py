"""mariabackup's files beside the stream, as MariaDB 10.11 and 11.8 write them.

The texts are what ``mariadb-backup --backup --stream=xbstream --extra-lsndir=D`` left in
D (and in the stream) on MariaDB 11.8.9 (Debian 13): 11.1 renamed ``xtrabackup_*`` to
``mariadb_backup_*`` and changed nothing inside.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from binhoard.domain.errors import ServerError
from binhoard.server.backup_tool import (
    BACKUP_FILE_PREFIXES,
    backup_file,
    parse_binlog_position,
    parse_checkpoints,
)

CHECKPOINTS_11_8 = """backup_type = full-backuped
from_lsn = 0
to_lsn = 45552
last_lsn = 49256
recover_binlog_info = 0
"""
INFO_11_8 = """uuid = 882b7f98-f050-11f1-9f07-02fc00000001
tool_name = mariadb-backup
tool_version = 11.8.9-MariaDB
ibbackup_version = 11.8.9-MariaDB
server_version = 11.8.9-MariaDB-0+deb13u1 from Debian-log
start_time = 2026-12-05 02:06:48
end_time = 2026-12-05 02:06:49
lock_time = 1796436408
binlog_pos = filename 'binlog.000002', position '589', GTID of the last change '0-7-4'
innodb_from_lsn = 0
innodb_to_lsn = 45552
partial = N
incremental = N
format = mbstream
compressed = N
"""
STDERR_11_8 = (
    "[00] 2026-12-05 02:06:49 Streaming mariadb_backup_binlog_info\n"
    "[00] 2026-12-05 02:06:49 Executing FLUSH NO_WRITE_TO_BINLOG ENGINE LOGS...\n"
    "[00] 2026-12-05 02:06:49 MySQL binlog position: filename 'binlog.000002', "
    "position '589', GTID of the last change '0-7-4'\n"
)


@pytest.mark.parametrize("prefix", BACKUP_FILE_PREFIXES)
def test_either_name_of_the_lsn_files_is_found(tmp_path: Path, prefix: str) -> None:
    (tmp_path / f"{prefix}checkpoints").write_text(CHECKPOINTS_11_8)
    (tmp_path / f"{prefix}info").write_text(INFO_11_8)
    checkpoints = backup_file(tmp_path, "checkpoints")
    info = backup_file(tmp_path, "info")
    assert checkpoints == tmp_path / f"{prefix}checkpoints"
    assert info == tmp_path / f"{prefix}info"
    lsn = parse_checkpoints(checkpoints.read_text())
    assert (lsn.from_lsn, lsn.to_lsn, lsn.last_lsn) == (0, 45552, 49256)
    position = parse_binlog_position(info.read_text())
    assert position is not None
    assert (position.binlog_file, position.binlog_pos, position.gtid_position) == (
        "binlog.000002",
        589,
        "0-7-4",
    )


def test_the_newer_name_wins_and_absence_is_none(tmp_path: Path) -> None:
    assert backup_file(tmp_path, "checkpoints") is None
    (tmp_path / "xtrabackup_checkpoints").write_text("stale")
    (tmp_path / "mariadb_backup_checkpoints").write_text(CHECKPOINTS_11_8)
    assert backup_file(tmp_path, "checkpoints") == tmp_path / "mariadb_backup_checkpoints"


def test_the_snapshot_position_on_stderr_of_11_8() -> None:
    position = parse_binlog_position(STDERR_11_8)
    assert position is not None
    assert (position.binlog_file, position.binlog_pos, position.gtid_position) == (
        "binlog.000002",
        589,
        "0-7-4",
    )


def test_an_incomplete_checkpoints_file_is_refused() -> None:
    with pytest.raises(ServerError, match="checkpoints file is incomplete"):
        parse_checkpoints("backup_type = full-backuped\nfrom_lsn = 0\n")
