"""The privilege-set logic over real ``SHOW GRANTS`` rows of MariaDB 10.11."""

from __future__ import annotations

import re
from pathlib import Path

from binhoard.domain.privileges import (
    BACKUP_PRIVILEGES,
    RESTORE_PRIVILEGES,
    parse_grants,
)
from binhoard.server.sandbox import SANDBOX_ACCOUNT, SANDBOX_GRANTS

ROOT = [
    "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION",
    "GRANT PROXY ON ``@`%` TO `root`@`localhost` WITH GRANT OPTION",
]
# A user with global grants (REPLICATION CLIENT shows as BINLOG MONITOR), database-,
# table- and column-level grants, and a default role that has a role of its own: what
# the user itself sees with SHOW GRANTS (the enabled role's grants, recursively).
WITH_ROLES = [
    "GRANT `r1` TO `bh`@`localhost`",
    "GRANT RELOAD, BINLOG MONITOR ON *.* TO `bh`@`localhost` IDENTIFIED BY PASSWORD "
    "'*D821809F681A40A6E379B50D0463EFAE20BDD122'",
    "GRANT SELECT ON `my db`.* TO `bh`@`localhost` WITH GRANT OPTION",
    "GRANT SELECT (`User`, `Host`), INSERT ON `mysql`.`user` TO `bh`@`localhost`",
    "GRANT `r2` TO `r1`",
    "GRANT PROCESS ON *.* TO `r1`",
    "GRANT SUPER, REPLICATION SLAVE, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, BINLOG ADMIN, "
    "BINLOG REPLAY, SLAVE MONITOR ON *.* TO `r2`",
    "SET DEFAULT ROLE `r1` FOR `bh`@`localhost`",
]


def test_all_privileges_gives_every_privilege_and_grant_option_is_ignored() -> None:
    grants = parse_grants(ROOT)
    assert grants.all_privileges
    assert grants.missing([*BACKUP_PRIVILEGES, *RESTORE_PRIVILEGES]) == []
    assert "PROXY" not in grants.privileges and "GRANT OPTION" not in grants.privileges


def test_global_grants_of_the_user_and_of_its_roles_count() -> None:
    grants = parse_grants(WITH_ROLES)
    assert not grants.all_privileges
    assert grants.missing(BACKUP_PRIVILEGES) == []
    assert grants.missing(RESTORE_PRIVILEGES) == ["REPLICATION MASTER ADMIN"]
    # The old name asked for is the new one granted.
    assert grants.has("REPLICATION CLIENT") and grants.has("replication  client")


def test_database_table_and_column_grants_give_no_global_privilege() -> None:
    grants = parse_grants(
        [
            "GRANT USAGE ON *.* TO `bk`@`localhost` IDENTIFIED BY PASSWORD '*0123'",
            "GRANT ALL PRIVILEGES ON `app`.* TO `bk`@`localhost`",
            "GRANT RELOAD ON `app`.`t` TO `bk`@`localhost`",
            "GRANT SELECT (`on`, `to`), PROCESS ON `x`.`y` TO `bk`@`localhost`",
        ]
    )
    assert not grants.all_privileges
    assert grants.privileges == frozenset()
    assert grants.missing(["RELOAD", "PROCESS"]) == ["RELOAD", "PROCESS"]


def test_missing_privileges_are_named_in_the_documented_order() -> None:
    grants = parse_grants(
        [
            "GRANT RELOAD, SUPER, BINLOG MONITOR ON *.* TO `bk`@`localhost` IDENTIFIED VIA "
            "ed25519 USING 'ZIgUREUg5PVgQ6LskhXmO+eZLS0nC8be6HPjYWR4YJY'"
        ]
    )
    assert grants.missing(BACKUP_PRIVILEGES) == ["PROCESS"]
    assert grants.missing(RESTORE_PRIVILEGES) == [
        "READ_ONLY ADMIN",
        "REPLICATION SLAVE ADMIN",
        "REPLICATION MASTER ADMIN",
        "SLAVE MONITOR",
        "BINLOG ADMIN",
    ]


def test_rows_that_grant_no_privilege_are_skipped() -> None:
    grants = parse_grants(
        [
            "GRANT `admin` TO `bk`@`%` WITH ADMIN OPTION",
            "GRANT EXECUTE ON PROCEDURE `db`.`p` TO `bk`@`%`",
            "SET DEFAULT ROLE `admin` FOR `bk`@`%`",
            "",
        ]
    )
    assert grants.privileges == frozenset() and not grants.all_privileges


def test_the_documented_grants_are_the_ones_sandboxes_create() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    section = doc.split("## Grants", 1)[1].split("\n## ", 1)[0]
    statements = [" ".join(s.split()) for s in re.findall(r"^GRANT [^;]+;", section, re.M)]
    assert statements == [f"{g};" for g in SANDBOX_GRANTS]
    assert SANDBOX_ACCOUNT == "'binhoard'@'localhost'"


# The sandbox's binhoard user on MariaDB 11.8.9 (Debian 13), as SHOW GRANTS FOR shows it:
# the same names as 10.11 (SLAVE MONITOR, not REPLICA MONITOR; BINLOG MONITOR for
# REPLICATION CLIENT). On 11.8 SUPER no longer stands in for BINLOG MONITOR, REPLICATION
# SLAVE ADMIN, SLAVE MONITOR or BINLOG ADMIN (checked statement by statement with a user
# lacking each one), so each is granted by name.
SANDBOX_11_8 = [
    "GRANT RELOAD, PROCESS, SUPER, BINLOG MONITOR, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, "
    "REPLICATION MASTER ADMIN, BINLOG ADMIN, SLAVE MONITOR ON *.* TO `binhoard`@`localhost` "
    "IDENTIFIED BY PASSWORD '*561CC3B066AA3FDAE29069A1B7BF05A8664B2986'"
]


def test_the_documented_grants_as_mariadb_11_8_shows_them_are_enough() -> None:
    grants = parse_grants(SANDBOX_11_8)
    assert not grants.all_privileges
    assert grants.missing([*BACKUP_PRIVILEGES, *RESTORE_PRIVILEGES]) == []
    # Asked for by the names 11.x also accepts in GRANT.
    assert grants.has("REPLICATION CLIENT")
