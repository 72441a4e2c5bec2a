"""Which global privileges binhoard needs, and which of them a user's grants give.

Pure: the input is the text of ``SHOW GRANTS`` (run by the user itself, so that it also
lists the grants of the role the session has enabled, recursively). Only grants
``ON *.*`` count: every privilege binhoard needs is global, and a database-level grant
of the same name gives nothing here.

The lists are the documented ones (docs/configuration.md, "Grants"); sandboxes create
their binhoard user with exactly these statements, so the integration tests prove them
enough. Each privilege is named explicitly even where MariaDB 10.11 still lets SUPER
stand in for it (SUPER no longer does from 11.0 on, and for ``read_only`` no longer
from 10.11 on).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# Backing a server up and archiving its binlogs (the server binhoard serves).
BACKUP_PRIVILEGES: dict[str, str] = {
    "RELOAD": "BACKUP STAGE (mariabackup), FLUSH BINARY LOGS",
    "PROCESS": "mariabackup refuses to run without it",
    "BINLOG MONITOR": "SHOW BINARY LOGS, SHOW MASTER STATUS (alias REPLICATION CLIENT)",
    "SUPER": "SET GLOBAL innodb_* while advancing the checkpoint before a backup",
}

# Restoring a backup into a server and applying binlogs through its SQL thread.
RESTORE_PRIVILEGES: dict[str, str] = {
    "RELOAD": "RESET MASTER",
    "SUPER": "SET GLOBAL innodb_flush_log_at_trx_commit while applying",
    "READ_ONLY ADMIN": "SET GLOBAL read_only (SUPER no longer includes it in 10.11)",
    "REPLICATION SLAVE ADMIN": "CHANGE MASTER, START/STOP SLAVE, gtid_slave_pos",
    "REPLICATION MASTER ADMIN": "SET GLOBAL gtid_binlog_state",
    "SLAVE MONITOR": "SHOW SLAVE STATUS",
    "BINLOG ADMIN": "SET GLOBAL sync_binlog while applying",
}

# The marker row a backup writes first (``ops/backup.py``), which a restore test looks for
# in the restored copy: on binhoard's own schema only, never on the application's data.
# Without them the backup goes on and says so (no marker: that test is skipped).
MARKER_SCHEMA = "binhoard"
MARKER_PRIVILEGES: dict[str, str] = {
    "CREATE": f"CREATE DATABASE/TABLE IF NOT EXISTS {MARKER_SCHEMA}.backup_marker, once",
    "INSERT": "the marker row, before each backup",
}

# Old names MariaDB accepts in GRANT and shows under the new name (10.5+).
_ALIASES = {
    "REPLICATION CLIENT": "BINLOG MONITOR",
    "ALL": "ALL PRIVILEGES",
}


def grant_statement(user: str, privileges: Iterable[str]) -> str:
    """The ``GRANT`` statement (as documented) giving ``privileges`` to ``user``, an
    account name such as ``'binhoard'@'localhost'``."""
    return f"GRANT {', '.join(privileges)} ON *.* TO {user}"


def marker_grant_statement(user: str) -> str:
    """The ``GRANT`` statement of the marker's privileges (on ``binhoard.*`` only)."""
    return f"GRANT {', '.join(MARKER_PRIVILEGES)} ON {MARKER_SCHEMA}.* TO {user}"


@dataclass(frozen=True)
class Grants:
    """The global privileges a session has."""

    privileges: frozenset[str]
    all_privileges: bool = False  # GRANT ALL PRIVILEGES ON *.*: every one, present or future

    def has(self, privilege: str) -> bool:
        return self.all_privileges or _normalise(privilege) in self.privileges

    def missing(self, required: Iterable[str]) -> list[str]:
        """The privileges of ``required`` this session lacks, in their order."""
        return [p for p in required if not self.has(p)]


def parse_grants(lines: Iterable[str]) -> Grants:
    """The global privileges of ``SHOW GRANTS`` rows (each one ``GRANT ... ON ... TO ...``,
    ``GRANT `role` TO ...`` or ``SET DEFAULT ROLE ...``).

    Role grants add nothing by themselves: ``SHOW GRANTS`` lists the enabled role's own
    ``GRANT ... ON *.* TO `role``` rows, which count like the user's. ``WITH GRANT
    OPTION`` is not a privilege binhoard needs and is ignored.
    """
    found: set[str] = set()
    everything = False
    for line in lines:
        parsed = _privilege_grant(line)
        if parsed is None:
            continue
        privileges, target = parsed
        if target != "*.*":
            continue
        for privilege in privileges:
            if privilege == "ALL PRIVILEGES":
                everything = True
            elif privilege != "USAGE":
                found.add(privilege)
    return Grants(frozenset(found), everything)


def _normalise(privilege: str) -> str:
    name = " ".join(privilege.upper().split())
    return _ALIASES.get(name, name)


def _privilege_grant(line: str) -> tuple[list[str], str] | None:
    """``(privileges, object)`` of a ``GRANT <privileges> ON <object> TO ...`` row; None
    for any other row (role grants, PROXY, SET DEFAULT ROLE)."""
    text = line.strip()
    if not text.upper().startswith("GRANT "):
        return None
    words = _top_level_words(text[len("GRANT ") :])
    try:
        on = next(i for i, word in enumerate(words) if word.upper() == "ON")
        to = next(i for i, word in enumerate(words) if i > on and word.upper() == "TO")
    except StopIteration:
        return None  # GRANT `role` TO ...: no ON
    if to != on + 2:
        return None  # not an object we understand (e.g. ON PROCEDURE db.p)
    privileges = _split_privileges(words[:on])
    if privileges == ["PROXY"]:
        return None
    return privileges, words[on + 1].replace("`", "")


def _top_level_words(text: str) -> list[str]:
    """Whitespace-separated words, keeping quoted names and parenthesised column lists
    (``SELECT (`a`, `b`)``) inside one word each."""
    words: list[str] = []
    current: list[str] = []
    quote: str | None = None
    depth = 0
    for char in text:
        if quote is not None:
            current.append(char)
            if char == quote:
                quote = None
        elif char in "`'\"":
            quote = char
            current.append(char)
        elif char == "(":
            depth += 1
            current.append(char)
        elif char == ")":
            depth -= 1
            current.append(char)
        elif char.isspace() and depth == 0:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def _split_privileges(words: Sequence[str]) -> list[str]:
    """``["RELOAD,", "BINLOG", "MONITOR"]`` -> ``["RELOAD", "BINLOG MONITOR"]``; column
    lists (``SELECT (`a`)``) dropped, since a column privilege is never global."""
    names: list[str] = []
    current: list[str] = []
    for word in words:
        ends = word.endswith(",")
        name = word.removesuffix(",")
        if name and not name.startswith("("):
            current.append(name)
        if ends:
            names.append(_normalise(" ".join(current)))
            current = []
    if current:
        names.append(_normalise(" ".join(current)))
    return names
