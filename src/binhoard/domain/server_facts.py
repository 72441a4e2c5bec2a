"""The facts of a server that binhoard checks before it acts, and what they must be.

Read by the server port (``Server.facts``); the same checks for backups, archive
passes and ``binhoard status``.
"""

from __future__ import annotations

from dataclasses import dataclass

from binhoard.domain.errors import ServerNotReadyError


@dataclass(frozen=True)
class ServerFacts:
    version: str
    server_id: int
    log_bin: bool
    binlog_format: str
    gtid_strict_mode: bool
    log_slave_updates: bool
    read_only: bool
    gtid_current_pos: str
    gtid_binlog_pos: str
    gtid_slave_pos: str
    # Where the binlog is kept: "" for files (every server before MariaDB 12.3, where the
    # variable does not exist), "innodb" for MariaDB 12.3's binlog in InnoDB.
    binlog_storage_engine: str = ""

    def problems(self, expected_server_id: int | None = None) -> list[str]:
        """Why this server cannot be backed up by binhoard, if it cannot."""
        found: list[str] = []
        if not self.log_bin:
            found.append("log_bin is OFF: binary logging is required for point-in-time recovery")
        if self.binlog_storage_engine:
            # Its .ibb files are InnoDB pages: no binlog events at file offsets, no binlog
            # index, so no file binhoard can index, archive or present as a relay log.
            found.append(
                f"binlog_storage_engine is {self.binlog_storage_engine}: the binlog is stored "
                "in InnoDB (MariaDB 12.3+), which binhoard cannot archive or replay; "
                "binhoard needs the classic binlog files (remove binlog_storage_engine "
                "from the server's configuration)"
            )
        if self.binlog_format != "ROW":
            found.append(f"binlog_format is {self.binlog_format}, ROW is required")
        if not self.gtid_strict_mode:
            found.append("gtid_strict_mode is OFF, ON is required")
        if expected_server_id is not None and self.server_id != expected_server_id:
            found.append(
                f"the server's server_id is {self.server_id} but the configuration says "
                f"{expected_server_id}: backups would record one and the archiver look for "
                "the other (set server_id in the configuration to the server's, or connect "
                "to the right server)"
            )
        return found


def check_facts(facts: ServerFacts, expected_server_id: int, *, what: str) -> ServerFacts:
    """``facts``, once they are what binhoard requires (``ServerFacts.problems``, the same
    ones ``binhoard status`` checks); raises ``ServerNotReadyError`` naming every
    problem otherwise. ``what`` is the refused operation ("cannot back up", ...)."""
    problems = facts.problems(expected_server_id=expected_server_id)
    if problems:
        raise ServerNotReadyError(what, problems)
    return facts
