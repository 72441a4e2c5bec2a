"""GTIDs and GTID positions, as MariaDB defines them.

A MariaDB GTID is ``domain-server-seq`` (``0-1-7``): a replication *domain* (an
independent stream of transactions), the ``server_id`` that wrote it and a
sequence number. A server's *position* (``@@gtid_current_pos``, ``@@gtid_slave_pos``)
holds at most one GTID per domain: the last one applied there.

Everything here assumes ``gtid_strict_mode=ON``, which binhoard requires of every
server it backs up. Under strict mode sequence numbers only grow within a domain, so
"transaction ``d-s-n`` is in position P" reduces to ``n <= P[d].seq_no`` and the
``server_id`` part can be ignored when comparing. That holds within one history only:
after a point-in-time restore followed by new writes (a *fork*), the same ``d-?-n``
names two different transactions, which is why forks become separate streams in the
archive and why nothing here ever compares positions of different streams.

MySQL GTIDs (``uuid:1-5`` interval sets) behave differently; the :class:`GtidState`
protocol is the small surface both flavours can meet, so that code that only needs
"does this state contain that transaction / cover that state" stays flavour-neutral.
Only MariaDB is implemented.

Parse errors raise :class:`ValueError` (this module is pure and knows nothing of
the CLI or the API); the edges turn them into ``UsageError``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, Self, TypeVar

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1

# ASCII digits only: int() alone would also accept "1_000", "+5", " 5" and other
# scripts' digits, none of which MariaDB accepts.
_GTID_RE = re.compile(r"([0-9]+)-([0-9]+)-([0-9]+)")

GtidT_contra = TypeVar("GtidT_contra", contravariant=True)


class GtidOrderError(ValueError):
    """A GTID does not come after the position it is applied to (strict mode broken)."""


class GtidState(Protocol[GtidT_contra]):
    """What any flavour's "set of applied transactions" offers.

    MariaDB implements it with :class:`GtidPosition` (last GTID per domain); a MySQL
    flavour would implement it with ``gtid_executed`` interval sets.
    """

    def contains(self, gtid: GtidT_contra) -> bool:
        """True if the transaction ``gtid`` is part of this state."""
        ...

    def covers(self, other: Self) -> bool:
        """True if every transaction of ``other`` is part of this state."""
        ...

    def advance(self, gtid: GtidT_contra) -> Self:
        """The state after also applying ``gtid``."""
        ...

    def format(self) -> str:
        """The server's own text form of this state."""
        ...


@dataclass(frozen=True, order=True, slots=True)
class Gtid:
    """One MariaDB GTID, ``domain_id-server_id-seq_no``.

    Ordering is by (domain, server, seq) so that sorted output is stable; it is
    *not* transaction order (use :meth:`GtidPosition.contains` for that).
    """

    domain_id: int
    server_id: int
    seq_no: int

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("domain_id", self.domain_id, _U32_MAX),
            ("server_id", self.server_id, _U32_MAX),
            ("seq_no", self.seq_no, _U64_MAX),
        ):
            # bool is an int subclass; True is not a domain id.
            if type(value) is not int or not 0 <= value <= limit:
                raise ValueError(f"GTID {name} must be an integer in 0..{limit}, not {value!r}")

    @classmethod
    def parse(cls, text: str) -> Gtid:
        """Parses ``"0-1-7"`` (surrounding whitespace allowed)."""
        match = _GTID_RE.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"not a MariaDB GTID (domain-server-seq): {text!r}")
        domain, server, seq = (int(part) for part in match.groups())
        try:
            return cls(domain, server, seq)
        except ValueError as exc:
            raise ValueError(f"GTID {text!r} out of range: {exc}") from None

    def format(self) -> str:
        return f"{self.domain_id}-{self.server_id}-{self.seq_no}"

    def __str__(self) -> str:
        return self.format()


class GtidPosition(Mapping[int, Gtid]):
    """A MariaDB GTID position: domain id -> the last GTID applied in that domain.

    Immutable and hashable; every "change" returns a new position. Iteration is in
    domain order, and :meth:`format` is canonical (sorted by domain), so equal
    positions format identically.

    Note that ``domain in position`` is the ``Mapping`` test for a *domain id*; use
    :meth:`contains` to ask about a transaction.
    """

    __slots__ = ("_by_domain", "_hash")

    def __init__(self, gtids: Iterable[Gtid] = ()) -> None:
        by_domain: dict[int, Gtid] = {}
        for gtid in gtids:
            if not isinstance(gtid, Gtid):
                raise TypeError(f"GtidPosition holds Gtid values, not {type(gtid).__name__}")
            if gtid.domain_id in by_domain:
                raise ValueError(
                    f"GTID position has two GTIDs for domain {gtid.domain_id}: "
                    f"{by_domain[gtid.domain_id]} and {gtid}"
                )
            by_domain[gtid.domain_id] = gtid
        self._by_domain = dict(sorted(by_domain.items()))
        self._hash: int | None = None

    # --- construction --------------------------------------------------------------
    @classmethod
    def parse(cls, text: str) -> GtidPosition:
        """Parses ``"0-1-7,1-2-9"``; the empty (or all-blank) string is the empty position.

        Two GTIDs of one domain are rejected, as ``SET GLOBAL gtid_slave_pos`` does:
        a position cannot be in two places of one domain.
        """
        if not text.strip():
            return cls()
        return cls(Gtid.parse(part) for part in text.split(","))

    @classmethod
    def from_binlog_state(cls, gtids: Iterable[Gtid]) -> GtidPosition:
        """Folds a binlog state (a Gtid_list event, ``@@gtid_binlog_state``) into a position.

        A binlog state keeps the last GTID of every (domain, server_id) pair, so after a
        failover domain 0 may list ``0-1-100`` and ``0-2-150``. The position is the
        furthest one per domain (under strict mode, also the most recent one); on an
        equal ``seq_no`` the later-listed GTID wins, as the server lists each domain's
        last GTID last.
        """
        best: dict[int, Gtid] = {}
        for gtid in gtids:
            current = best.get(gtid.domain_id)
            if current is None or gtid.seq_no >= current.seq_no:
                best[gtid.domain_id] = gtid
        return cls(best.values())

    # --- Mapping -------------------------------------------------------------------
    def __getitem__(self, domain_id: int) -> Gtid:
        return self._by_domain[domain_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._by_domain)

    def __len__(self) -> int:
        return len(self._by_domain)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, GtidPosition):
            return self._by_domain == other._by_domain
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._by_domain.values()))
        return self._hash

    def __repr__(self) -> str:
        return f"GtidPosition({self.format()!r})"

    def __str__(self) -> str:
        return self.format()

    # --- queries -------------------------------------------------------------------
    @property
    def gtids(self) -> tuple[Gtid, ...]:
        """The GTIDs of this position, in domain order."""
        return tuple(self._by_domain.values())

    def seq_no(self, domain_id: int) -> int:
        """The last sequence number applied in ``domain_id``; 0 if none (seq_no starts at 1)."""
        gtid = self._by_domain.get(domain_id)
        return 0 if gtid is None else gtid.seq_no

    def format(self) -> str:
        return ",".join(gtid.format() for gtid in self._by_domain.values())

    def contains(self, gtid: Gtid) -> bool:
        """True if the transaction ``gtid`` is at or before this position in its domain.

        Compares sequence numbers only: valid under gtid_strict_mode within one history
        (see the module docstring).
        """
        current = self._by_domain.get(gtid.domain_id)
        return current is not None and gtid.seq_no <= current.seq_no

    def diverges_from(self, other: GtidPosition) -> list[tuple[Gtid, Gtid]]:
        """``(mine, theirs)`` for every domain where both positions name the same sequence
        number from different servers (``0-1-73`` against ``0-2-73``: a deposed primary's
        write next to its successor's). That is two histories, never "already applied";
        :meth:`contains` and :meth:`covers` compare sequence numbers only and cannot
        see it, so whatever decides what to apply on a server checks this first."""
        return [
            (mine, other[d])
            for d, mine in self._by_domain.items()
            if d in other and other[d].seq_no == mine.seq_no and other[d] != mine
        ]

    def covers(self, other: GtidPosition) -> bool:
        """True if this position is at least as far as ``other`` in every domain of ``other``.

        A partial order: neither of two positions may cover the other.
        """
        return all(self.contains(gtid) for gtid in other._by_domain.values())

    # --- changes -------------------------------------------------------------------
    def advance(self, gtid: Gtid, *, strict: bool = True) -> GtidPosition:
        """The position after applying ``gtid``.

        With ``strict`` (the default, matching gtid_strict_mode) a GTID that does not
        come after this position in its domain raises :class:`GtidOrderError`: it would
        mean a duplicate or an out-of-order transaction, which the server itself would
        have refused. With ``strict=False`` the domain simply moves to ``gtid``, as a
        non-strict server does.
        """
        current = self._by_domain.get(gtid.domain_id)
        if strict and current is not None and gtid.seq_no <= current.seq_no:
            raise GtidOrderError(
                f"GTID {gtid} does not follow {current} in domain {gtid.domain_id} "
                "(a duplicate or out-of-order transaction; gtid_strict_mode forbids it)"
            )
        return self._with(gtid)

    def merge(self, other: GtidPosition) -> GtidPosition:
        """The furthest of both positions in every domain (the least upper bound)."""
        result = dict(self._by_domain)
        for domain, gtid in other._by_domain.items():
            mine = result.get(domain)
            if mine is None or gtid.seq_no > mine.seq_no:
                result[domain] = gtid
        return GtidPosition(result.values())

    def _with(self, gtid: Gtid) -> GtidPosition:
        by_domain = dict(self._by_domain)
        by_domain[gtid.domain_id] = gtid
        return GtidPosition(by_domain.values())
