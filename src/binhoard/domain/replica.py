"""Seeding a replica: which primary may be named, and whether a restored server's GTID
position is part of the primary's history (pure; ``ops/seed.py`` does the work).

MariaDB's GTIDs are ``domain-server_id-seq_no``. After a failover the deposed primary's
late writes can get the same sequence numbers as the new primary's (``0-1-73..77``
against ``0-2-73..``): equal (or higher) sequence numbers with another server id mean
*divergence*, never "already applied". So a restored position is accepted only when,
for each of its domains, the primary's binlog state (the last GTID of every
``(domain, server_id)`` pair it has logged, ``@@gtid_binlog_state``) holds the same
server id at a sequence number at least as high. The primary's own GTID connect then
checks exact containment (it refuses a position not in its binlogs with error 1236).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from binhoard.domain.gtid import Gtid, GtidPosition


@dataclass(frozen=True)
class PrimaryAddress:
    """``HOST:PORT`` of the primary a restored node replicates from."""

    host: str
    port: int

    def format(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_primary_address(
    text: str, *, allowed: Collection[str], is_loopback: Callable[[str], bool]
) -> PrimaryAddress:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6). A host that ``is_loopback`` accepts
    (``config.is_loopback_address``) is always allowed; anything else must be listed in
    ``allowed`` (``replication.primaries``), so that a typo cannot point a node at a
    stranger's server. Raises ``ValueError`` saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"replicate_from {text!r} is not HOST:PORT")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"replicate_from {text!r}: port {port} is not 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    address = PrimaryAddress(host, port)
    if not is_loopback(host) and address.format() not in allowed and text not in allowed:
        raise ValueError(
            f"replicate_from {text!r} is neither a loopback address nor listed in "
            "replication.primaries"
        )
    return address


def same_address(a: PrimaryAddress, b: PrimaryAddress) -> bool:
    """Whether two addresses surely name one server: the same port on the same host
    (``localhost`` is 127.0.0.1). Other loopback addresses may be other servers."""

    def host(address: PrimaryAddress) -> str:
        return "127.0.0.1" if address.host == "localhost" else address.host

    return a.port == b.port and host(a) == host(b)


def parse_binlog_state(text: str) -> tuple[Gtid, ...]:
    """``@@gtid_binlog_state`` (``0-1-100,0-2-150``): several GTIDs per domain."""
    return tuple(Gtid.parse(item.strip()) for item in text.split(",") if item.strip())


def divergence(restored: GtidPosition, primary_state: Iterable[Gtid]) -> str | None:
    """Why a server at ``restored`` cannot replicate from a primary whose binlog state is
    ``primary_state``, or None if the primary's history contains it (as far as the
    state tells: the primary's GTID connect checks the rest). The same rule decides
    whether a replica may be re-pointed at a new primary after a failover."""
    state = {(g.domain_id, g.server_id): g for g in primary_state}
    current = GtidPosition.from_binlog_state(state.values())
    for gtid in restored.values():
        last = state.get((gtid.domain_id, gtid.server_id))
        if gtid.domain_id not in current:
            return (
                f"the primary has no transaction of domain {gtid.domain_id}, this server "
                f"is at {gtid}: not the same history"
            )
        if current[gtid.domain_id].seq_no < gtid.seq_no:
            return (
                f"the primary is behind this server in domain {gtid.domain_id} "
                f"({current[gtid.domain_id]} < {gtid}): a replica must not be ahead of its "
                "primary"
            )
        if last is None or last.seq_no < gtid.seq_no:
            have = (
                f"its last of server {gtid.server_id} is {last}"
                if last
                else (f"it has none of server {gtid.server_id}")
            )
            return (
                f"divergent: this server is at {gtid}, which the primary never "
                f"logged ({have}, its position is {current[gtid.domain_id]}): the same "
                "sequence numbers were written by another server"
            )
    return None
