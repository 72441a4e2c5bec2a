"""Which MariaDB may restore a backup: mariabackup's rule, "prepare with the version that
took it", as binhoard applies it.

A backup is restored only by a mariabackup of the release series (``major.minor``) of the
server that took it, for every backup of its chain. Tried with Debian's packages
(docs/servers.md, "Restoring across versions"): mariabackup 11.8 prepares a 10.11 backup
only by ignoring that it cannot read its metadata ("failed to read metadata from
./mariadb_backup_checkpoints", then exit 0), so an incremental is applied without the
check that it fits its base, and the 11.8 server then upgrades the files in place with
the system tables left as 10.11 made them; mariabackup 10.11 refuses an 11.8 backup, and
a 10.11 server on 11.8's files reports its change buffer corrupted (a downgrade).
Within a series MariaDB keeps its file formats, so an older mariabackup of the series
is allowed, with a warning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from binhoard.domain.errors import IncompatibleVersionError
from binhoard.domain.manifest import BackupManifest

# In ``@@version`` ("10.11.19-MariaDB-0+deb12u1-log") and in ``mariadb-backup --version``
# ("mariadb-backup based on MariaDB server 11.8.9-MariaDB debian-linux-gnu (x86_64)").
_VERSION = re.compile(r"\b(\d+)\.(\d+)\.(\d+)-MariaDB")


@dataclass(frozen=True, order=True)
class MariaDBVersion:
    major: int
    minor: int
    patch: int

    @property
    def series(self) -> str:
        return f"{self.major}.{self.minor}"

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


def parse_version(text: str) -> MariaDBVersion | None:
    """The MariaDB version in a server's ``@@version`` or a tool's ``--version`` line;
    None when ``text`` names no MariaDB version."""
    match = _VERSION.search(text)
    if match is None:
        return None
    return MariaDBVersion(int(match[1]), int(match[2]), int(match[3]))


def same_series(a: str, b: str) -> bool:
    """Whether two version texts name MariaDB versions of one release series (False when
    either names none)."""
    va, vb = parse_version(a), parse_version(b)
    return va is not None and vb is not None and va.series == vb.series


def incremental_base_problem(parent: BackupManifest, server_version: str) -> str | None:
    """Why an incremental backup of the server now at ``server_version`` must not build on
    ``parent``, or None. A server upgraded in place to another series since ``parent``
    would make a chain that no mariabackup may prepare (``check_chain_preparable``)."""
    if same_series(parent.server_version, server_version):
        return None
    return (
        f"the server is now {server_version} and backup {parent.backup_id} was taken by "
        f"{parent.server_version}: an incremental backup cannot build on another MariaDB "
        "series (no mariabackup could prepare the chain)"
    )


Verdict = Literal["same", "newer_tool", "older_tool", "other_series", "unknown"]


def prepare_verdict(backup_version: str, tool_version: str) -> Verdict:
    """How a mariabackup of ``tool_version`` stands to a backup its server took at
    ``backup_version``: the same version, a newer or an older one of its series (all
    three restore), another series, or ``unknown`` (either text names no version; not
    restored, as binhoard cannot apply the rule)."""
    backup, tool = parse_version(backup_version), parse_version(tool_version)
    if backup is None or tool is None:
        return "unknown"
    return _compare(backup, tool)


def _compare(backup: MariaDBVersion, tool: MariaDBVersion) -> Verdict:
    if backup.series != tool.series:
        return "other_series"
    if tool == backup:
        return "same"
    return "newer_tool" if tool > backup else "older_tool"


def check_chain_preparable(chain: Sequence[BackupManifest], tool_version: str) -> list[str]:
    """Refuses (``IncompatibleVersionError``) a restore of ``chain`` (the full backup
    first, the one restored last) by the mariabackup whose ``--version`` is
    ``tool_version``, unless every backup of the chain was taken by its series; returns
    warnings for what is restored all the same (an older mariabackup of the series)."""
    target = chain[-1]
    tool = parse_version(tool_version)
    warnings = []
    # The restored backup first: when the whole chain is of one series, it is named.
    for backup in [target, *chain[:-1]]:
        taken = parse_version(backup.server_version)
        if taken is None or tool is None:
            raise IncompatibleVersionError(_unknown(target.backup_id, backup, tool_version))
        subject = (
            f"backup {target.backup_id} was taken"
            if backup is target
            else f"backup {target.backup_id} builds on backup {backup.backup_id}, taken"
        )
        verdict = _compare(taken, tool)
        if verdict == "other_series":
            raise IncompatibleVersionError(_other_series(subject, taken, tool))
        if verdict == "older_tool":
            warnings.append(
                f"{subject} by MariaDB {taken}, and this host's mariadb-backup is the older "
                f"{tool}: MariaDB keeps its file formats within a release series, so it is "
                f"restored; should mariabackup --prepare fail, upgrade MariaDB here to "
                f"{taken} or later"
            )
    return warnings


def _other_series(subject: str, taken: MariaDBVersion, tool: MariaDBVersion) -> str:
    problem = (
        f"{subject} by MariaDB {taken}, and this host's mariadb-backup is MariaDB {tool}: "
        f"mariabackup prepares only backups of its own release series, so nothing was "
        f"restored. "
    )
    if taken < tool:
        remedy = (
            f"Restore it with MariaDB {taken.series} (a host or Debian root that has it), "
            f"then upgrade that server in place: start MariaDB {tool.series} on its datadir "
            f"and run mariadb-upgrade; or load a logical dump (mariadb-dump) of the "
            f"restored {taken.series} server into MariaDB {tool.series}"
        )
    else:
        remedy = (
            f"MariaDB cannot be downgraded: restore it with MariaDB {taken.series} (a host "
            f"or Debian root that has it), and move the data to {tool.series} only as a "
            f"logical dump (mariadb-dump)"
        )
    return problem + remedy + " (docs/servers.md, Restoring across versions)"


def _unknown(target_id: str, backup: BackupManifest, tool_version: str) -> str:
    if parse_version(backup.server_version) is None:
        what = f"the server_version of backup {backup.backup_id}, {backup.server_version!r},"
    else:
        what = f"this host's mariadb-backup --version, {tool_version!r},"
    return (
        f"cannot restore backup {target_id}: {what} names no MariaDB version, and "
        "mariabackup prepares only backups of its own release series, so nothing was "
        "restored"
    )
