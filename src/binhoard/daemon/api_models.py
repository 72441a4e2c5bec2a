"""Request and response bodies of the daemon's HTTP API.

The same pydantic models validate requests and generate the OpenAPI document
(``GET /openapi.json``), so the schema a client or a fuzzer reads is the one the code
enforces. Field names follow MyHoard's API; what MyHoard does not have is marked
"binhoard extension" in its description. Request bodies reject unknown fields: a
misspelt field silently ignored is a request not carried out.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    RootModel,
    WithJsonSchema,
    model_validator,
)

from binhoard.daemon.port import RESTORE_PHASES, Mode
from binhoard.domain.gtid import GtidPosition
from binhoard.domain.restore_plan import GtidTarget, TargetSyntaxError, parse_position_target

EXTENSION = "binhoard extension: "
# Longest a request may ask to wait for its work (wait_for_upload and the like): long
# enough for any binlog upload, short enough that a forgotten client lets go.
MAX_WAIT_SECONDS = 3600
_LAST_UNIX_SECOND = 253402300799  # 9999-12-31T23:59:59Z


def _parse_time(value: object) -> datetime:
    """ISO 8601 (a time without a zone is UTC) or Unix seconds; always aware, in UTC.

    Numbers are seconds whatever their size (pydantic's own datetime parsing would take
    large ones as milliseconds). Messages never repeat the input."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("is not an ISO 8601 time (such as 2026-11-21T10:15:00Z)") from None
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if not (math.isfinite(value) and 0 <= value <= _LAST_UNIX_SECOND):
            raise ValueError("is not a time in Unix seconds between 1970 and 9999")
        parsed = datetime.fromtimestamp(value, UTC)
    else:
        raise ValueError("must be an ISO 8601 time string or a number of Unix seconds")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range once converted to UTC") from None


Timestamp = Annotated[
    datetime,
    PlainValidator(_parse_time),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "minimum": 0, "maximum": _LAST_UNIX_SECOND},
            ],
            "description": "ISO 8601 (UTC when no zone is given) or Unix seconds",
        },
        mode="validation",
    ),
]


def _gtid_position(value: str) -> str:
    try:
        return GtidTarget(GtidPosition.parse(value)).position.format()
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def _binlog_position(value: str) -> str:
    try:
        return parse_position_target(value).text
    except TargetSyntaxError as exc:
        raise ValueError(exc.message.removeprefix("--to-position: ")) from None


def _known_gtid_position(value: str) -> str:
    return GtidPosition.parse(value).format()


# A MariaDB GTID position, "domain-server-seq" per domain, comma-separated.
_GTID_LIST_PATTERN = r"^\s*(\d+-\d+-\d+\s*(,\s*\d+-\d+-\d+\s*)*)?$"
GtidPositionText = Annotated[
    str,
    Field(max_length=10_000, pattern=_GTID_LIST_PATTERN),
    AfterValidator(_known_gtid_position),
]
WaitSeconds = Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=255)]


class _Body(BaseModel):
    # Strict: true is not 1, "3" is not 3 (JSON has the types; a client that mixes
    # them up is told, as the document says).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class _Out(BaseModel):
    # Built from the controller's views (daemon/port.py dataclasses) by attribute.
    model_config = ConfigDict(frozen=True, from_attributes=True)


# --- requests ------------------------------------------------------------------------


class BackupRequest(_Body):
    """``POST /backup``."""

    backup_type: Literal["basebackup", "binlog"] = Field(
        description="basebackup: take a backup at the next chance (it opens a new stream); "
        "binlog: rotate the binlog now and archive the file it closed"
    )
    wait_for_upload: WaitSeconds | None = Field(
        default=None,
        description="binlog only: wait up to this many seconds for the file to be stored",
    )
    incremental: bool = Field(
        default=False, description="basebackup only: incremental if a backup to build on exists"
    )

    @model_validator(mode="after")
    def _fits_the_type(self) -> BackupRequest:
        if self.backup_type == "basebackup" and self.wait_for_upload:
            raise ValueError("wait_for_upload is supported only for backup_type binlog")
        if self.backup_type == "binlog" and self.incremental:
            raise ValueError("incremental applies only to backup_type basebackup")
        return self


class BackupSettingsUpdate(_Body):
    """``PATCH /backup/settings``."""

    paused_until: Timestamp | None = Field(
        description="no scheduled backups until then (a future time); null resumes them"
    )


class StreamUpdate(_Body):
    """``PATCH /backup/{stream_id}``."""

    broken: bool = Field(
        description="true marks the stream broken (never chosen for a restore); false clears it"
    )
    expire_after_seconds: WaitSeconds | None = Field(
        default=None, description="wait up to this many seconds for the change to be applied"
    )


class PreserveRequest(_Body):
    """``PUT /backup/{stream_id}/preserve``."""

    preserve_until: Timestamp | None = Field(
        default=None, description="retention keeps the stream until then; null ends that"
    )
    wait_for_applied_preservation: WaitSeconds | None = Field(
        default=None, description="wait up to this many seconds for retention to see it"
    )


class NodePositions(_Body):
    """What one node reports of its replication (MariaDB system variables)."""

    gtid_current_pos: GtidPositionText | None = None
    gtid_slave_pos: GtidPositionText | None = None
    gtid_binlog_pos: GtidPositionText | None = None


class ReplicationState(RootModel[dict[Name, NodePositions]]):
    """``PUT /replication_state``: per node name, its GTID positions. (MyHoard's MySQL
    form, server UUID to GNO ranges, has no meaning for MariaDB and is refused.)"""

    root: dict[Name, NodePositions] = Field(max_length=256)

    def as_stored(self) -> dict[str, dict[str, str]]:
        return {
            node: positions.model_dump(exclude_none=True) for node, positions in self.root.items()
        }


class StatusUpdate(_Body):
    """``PUT /status``: switch mode; ``restore`` names what to restore and to when."""

    mode: Mode
    site: Name | None = Field(default=None, description="restore only: the backup site")
    stream_id: Name | None = Field(default=None, description="restore only: the stream")
    target_time: Timestamp | None = Field(
        default=None, description="restore only: the last transaction at or before this time"
    )
    target_time_approximate_ok: bool | None = Field(
        default=None,
        description="restore only: whole binlog files up to target_time are enough",
    )
    target_gtid: Annotated[str, AfterValidator(_gtid_position)] | None = Field(
        default=None,
        max_length=10_000,
        description=EXTENSION + "restore only: stop at this GTID position (0-1-100,1-2-7)",
    )
    target_position: Annotated[str, AfterValidator(_binlog_position)] | None = Field(
        default=None,
        max_length=1_000,
        description=EXTENSION + "restore only: stop at FILE:POS of the source's binlogs",
    )
    force: bool | None = Field(
        default=None,
        description=(
            "active or promote only, from observe: take the stream over though the node "
            "has not applied the whole archive (what it lacks is given up)"
        ),
    )
    replicate_from: str | None = Field(
        default=None,
        min_length=3,
        max_length=300,
        pattern=r"^\S+:[0-9]{1,5}$",
        description=EXTENSION
        + "restore, to the latest transaction: then replicate from this primary "
        "(HOST:PORT, loopback or listed in replication.primaries) and catch up; observe, "
        "on a node in observe: re-point it at this primary (a new primary after a "
        "failover), refused (409) if the node has transactions it lacks",
    )

    @model_validator(mode="after")
    def _fits_the_mode(self) -> StatusUpdate:
        restore_only = {
            "site": self.site,
            "stream_id": self.stream_id,
            "target_time": self.target_time,
            "target_time_approximate_ok": self.target_time_approximate_ok,
            "target_gtid": self.target_gtid,
            "target_position": self.target_position,
        }
        if self.mode == "restore":
            for name in ("site", "stream_id"):
                if restore_only[name] is None:
                    raise ValueError(f"mode restore needs {name}")
            targets = [
                n
                for n in ("target_time", "target_gtid", "target_position")
                if restore_only[n] is not None
            ]
            if len(targets) > 1:
                raise ValueError(f"give at most one target, not {' and '.join(targets)}")
        else:
            given = [name for name, value in restore_only.items() if value is not None]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise ValueError(f"{' and '.join(given)} {verb} only to mode restore")
        if self.replicate_from is not None and self.mode not in ("restore", "observe"):
            raise ValueError("replicate_from applies only to mode restore or observe")
        if self.force and self.mode not in ("active", "promote"):
            raise ValueError("force applies only to mode active or promote")
        return self


# --- responses -----------------------------------------------------------------------


class ErrorBody(_Out):
    """Every error: a 4xx (or 5xx when the daemon itself failed) and this body."""

    message: str


class Success(_Out):
    success: bool


class BackupCreated(_Out):
    success: bool = True
    upload_pending: bool | None = Field(
        default=None,
        description=EXTENSION + "true when wait_for_upload elapsed before the file was stored",
    )


class PreserveResult(_Out):
    success: bool
    preservation_is_still_pending: bool | None = Field(
        default=None, description="true when wait_for_applied_preservation elapsed first"
    )


class StreamWindowOut(_Out):
    first_time: datetime
    first_gtid: str
    last_time: datetime
    last_gtid: str


class RestoreTestOut(_Out):
    result: Literal["passed", "failed", "refused"] = Field(
        description="refused: not started (restore_test.max_disk_bytes, free space)"
    )
    reason: str = Field(description="what passed, or the first thing that failed")
    started_at: datetime
    finished_at: datetime
    rto_seconds: float | None = Field(
        description="the RTO: from the start to the restored server at its final GTID"
    )
    gtid: str | None = Field(description="the GTID position the copy was restored to")
    tables_checked: int = Field(description="tables CHECK TABLE reported on")


class BackupOut(_Out):
    basebackup_info: dict[str, Any]
    broken_at: datetime | None
    closed_at: datetime | None
    completed_at: datetime | None
    preserve_until: datetime | None
    recovery_site: bool
    resumable: bool
    site: str
    stream_id: str
    restorable_window: StreamWindowOut | None = Field(
        validation_alias="window",
        description=EXTENSION + "from the backup's snapshot to the newest archived "
        "transaction of the stream: every point in it can be restored exactly",
    )
    restore_test: RestoreTestOut | None = Field(
        default=None,
        description=EXTENSION + "the stream's last restore test (POST /backup/{stream_id}/test, "
        "or restore_test's schedule)",
    )
    restore_test_pending: bool = Field(
        default=False, description=EXTENSION + "a restore test of it is queued or running"
    )


class BackupList(_Out):
    backups: list[BackupOut] | None = Field(
        description="null until the daemon listed the site once"
    )


class PurgeOut(_Out):
    checked_at: datetime = Field(description="the last binlog purge pass")
    last_purge_at: datetime | None = Field(description="the last pass that removed files")
    purged_files: int = Field(description="how many files that pass removed")
    next_kept: str | None = Field(description="the oldest local binlog kept")
    blocked_by: str | None = Field(description="why it is kept")
    stale_nodes: list[str] = Field(
        description="nodes whose PUT /replication_state report is older than "
        "binlog_purge_settings.max_replication_state_age (they keep blocking)"
    )


class PromotionOut(_Out):
    phase: str = Field(
        description="stopping_replication, reading_archive, applying_binlogs, finishing_apply"
    )
    binlogs_total: int = Field(description="archived binlogs the node lacks and applies")
    binlogs_applied: int = Field(description="of those, applied")
    transactions_applied: int = Field(description="transactions applied so far")
    target_gtid: str = Field(description="the archive's end it catches up to")


class StatusOut(_Out):
    mode: Mode
    backups_paused_until: datetime | None = Field(
        description=EXTENSION + "no scheduled backups until then (PATCH /backup/settings)"
    )
    last_backup_at: datetime | None = Field(
        description=EXTENSION + "when the newest complete backup finished"
    )
    newest_archived_commit_at: datetime | None = Field(
        description=EXTENSION + "commit time of the newest archived transaction (RPO)"
    )
    archive_stalled_reason: str | None = Field(
        description=EXTENSION + "why binlog archiving cannot advance; null while it does"
    )
    last_error: str | None = Field(description=EXTENSION + "the daemon's last error")
    config_reload_error: str | None = Field(
        description=EXTENSION
        + "why the configuration file was not applied at the last SIGHUP (the daemon runs "
        "with the one it had); null once a reload applies, and after a restart"
    )
    deposed: list[str] = Field(
        description=EXTENSION
        + "this server's streams another node took over (a promotion), as sentences; while "
        "not empty the daemon archives, backs up and deletes nothing (docs/failover.md)"
    )
    replication_state: dict[str, dict[str, str]] = Field(
        description=EXTENSION + "as last stored by PUT /replication_state"
    )
    binlog_purge: PurgeOut | None = Field(
        description=EXTENSION + "binlog purge's last pass; null before the first one"
    )
    promotion: PromotionOut | None = Field(
        description=EXTENSION + "the promotion under way (mode promote); null otherwise"
    )
    replicating_from: str | None = Field(
        description=EXTENSION
        + "HOST:PORT of the primary this node replicates from (seeded with replicate_from, "
        "or re-pointed); null when it replicates from none"
    )
    history: str | None = Field(
        description=EXTENSION
        + "this node's history id and where it comes from (a restore to an earlier point "
        'starts a new one: its writes go to a new stream; docs/format.md, "Histories and '
        'forks"); null before the first listing of the sites'
    )


class ModeOut(_Out):
    mode: Mode


class RestoreStatusOut(_Out):
    basebackup_compressed_bytes_downloaded: int
    basebackup_compressed_bytes_total: int
    basebackup_prepare_progress: int | None
    binlogs_being_restored: int
    binlogs_pending: int
    binlogs_restored: int
    current_backup_incremental: bool
    current_backup_name: str
    phase: str = Field(description="one of " + ", ".join(RESTORE_PHASES))
    restore_chain_index: int
    restore_chain_total: int
    stream_id: str = Field(description=EXTENSION + "the stream being restored")
    site: str = Field(description=EXTENSION + "the site of that stream")
    target: str = Field(description=EXTENSION + "what the restore stops at, in words")
    error: str | None = Field(description=EXTENSION + "why the last attempt failed")

    @model_validator(mode="after")
    def _name_the_backup(self) -> RestoreStatusOut:
        if not self.current_backup_name:  # a controller that does not walk chains
            return self.model_copy(update={"current_backup_name": self.stream_id})
        return self


class Health(_Out):
    status: Literal["ok"] = "ok"


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


Order = Annotated[Literal["asc", "desc"], BeforeValidator(_lower)]
