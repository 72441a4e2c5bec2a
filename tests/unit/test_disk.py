"""A full file system: recognised in tools' output and said in one line."""

from __future__ import annotations

from binhoard.disk import says_no_space
from binhoard.domain.errors import DiskFullError, format_bytes


def test_sizes_are_said_in_binary_units() -> None:
    assert format_bytes(1000) == "1000 bytes"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(35 * 1024**2 + 300 * 1024) == "35.3 MiB"
    assert format_bytes(5 * 1024**4) == "5.0 TiB"


def test_the_message_is_one_line_with_path_need_and_free_space() -> None:
    error = DiskFullError(
        "/var/tmp/b", what="relay logs", needed=3 * 1024**2, free=512, then="free space"
    )
    assert error.message == (
        "no space left on device in /var/tmp/b (relay logs): about 3.0 MiB needed there, "
        "512 bytes free; free space"
    )
    assert error.exit_code == 10 and error.retryable


def test_mariadb_tools_out_of_space_messages_are_recognised() -> None:
    assert says_no_space("Error writing file 'x' (Errcode: 28 \"No space left on device\")")
    assert says_no_space("[ERROR] InnoDB: Write to file ./ibdata1 failed (errno 28)")
    assert says_no_space("copy failed: Disk quota exceeded")
    assert not says_no_space('Errcode: 2 "No such file or directory"')
