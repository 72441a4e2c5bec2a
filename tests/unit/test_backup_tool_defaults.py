"""mariabackup's client defaults: in memory only, readable as a file, never world-writable."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pydantic import SecretStr

from binhoard.config import ClientParams
from binhoard.server.backup_tool import client_defaults_fd


def test_client_defaults_live_in_a_private_memfd_that_reads_whole_every_time() -> None:
    client = ClientParams(user="backup", password=SecretStr("pw-1"), unix_socket=Path("/s"))
    fd = client_defaults_fd(Path("/etc/my.cnf"), client)
    try:
        # No name on any file system: what /dev/fd/N points at is an anonymous memfd.
        link = str(Path(f"/proc/self/fd/{fd}").readlink())
        assert link.startswith("/memfd:binhoard-client.cnf"), link
        # mysys ignores world-writable config files; a memfd starts out 0777.
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o400
        expected = "!include /etc/my.cnf\n[mariabackup]\nuser=backup\npassword=pw-1\nsocket=/s\n"
        # Each open starts at the beginning, as mariabackup's repeated reads need.
        for _ in range(2):
            assert Path(f"/dev/fd/{fd}").read_text() == expected
        assert not os.get_inheritable(fd)  # only the child it is handed to gets it
    finally:
        os.close(fd)
