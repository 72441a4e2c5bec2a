"""Settings: parsed and validated once, from a JSON or TOML file, into frozen typed models.

Key names follow MyHoard's configuration wherever the meaning is the same, so that an
operator can carry a MyHoard file over with few changes. Relative paths are resolved
against the directory of the configuration file. Every key is documented, with its
default, in ``docs/configuration.md``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from binhoard.crypto.age import AgeError, Identity, Recipient, identity_from_file_text
from binhoard.domain.errors import ConfigError

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


class _Section(BaseModel):
    # Unknown keys are errors: a misspelt key silently ignored is a backup not taken.
    model_config = ConfigDict(extra="forbid", frozen=True)


class IncrementalSettings(_Section):
    enabled: bool = False
    full_backup_week_schedule: str = "sun"

    @field_validator("full_backup_week_schedule")
    @classmethod
    def _days(cls, value: str) -> str:
        days = [d.strip().lower() for d in value.split(",") if d.strip()]
        unknown = [d for d in days if d not in WEEKDAYS]
        if unknown or not days:
            raise ValueError(
                f"must be a comma-separated list of {', '.join(WEEKDAYS)}; got {value!r}"
            )
        return ",".join(days)

    @property
    def full_backup_days(self) -> frozenset[str]:
        return frozenset(self.full_backup_week_schedule.split(","))


class RetentionCounts(_Section):
    """Grandfather-father-son counts, kept on top of backup_count_*/backup_age_days_max:
    the newest backup of each of the last N hours, days, ISO weeks, months, years (UTC)."""

    hourly: int = Field(default=0, ge=0)
    daily: int = Field(default=0, ge=0)
    weekly: int = Field(default=0, ge=0)
    monthly: int = Field(default=0, ge=0)
    yearly: int = Field(default=0, ge=0)


class BackupSettings(_Section):
    backup_age_days_max: float | None = Field(default=None, gt=0)
    backup_count_max: int = Field(default=100, ge=1)
    backup_count_min: int = Field(default=14, ge=0)
    backup_hour: int = Field(default=3, ge=0, le=23)
    backup_minute: int = Field(default=0, ge=0, le=59)
    backup_interval_minutes: int = Field(default=1440, ge=1)
    forced_binlog_rotation_interval: float = Field(default=300, gt=0)
    upload_site: str = "default"
    incremental: IncrementalSettings = IncrementalSettings()
    retention: RetentionCounts = RetentionCounts()


class CompressionSettings(_Section):
    algorithm: Literal["zstd", "snappy", "lzma", "none"] = "zstd"
    level: int | None = None
    threads: int = Field(default=0, ge=-1, description="zstd worker threads; 0 = one per core")


def _check_age_recipient(value: str) -> str:
    try:
        Recipient.parse(value)
    except AgeError as exc:
        raise ValueError("is not an age X25519 recipient (age1...)") from exc
    return value


def _check_age_identity(value: SecretStr) -> SecretStr:
    try:
        Identity.parse(value.get_secret_value())
    except AgeError as exc:
        # Never echo the value: it is a private key.
        raise ValueError("is not an age X25519 identity (AGE-SECRET-KEY-1...)") from exc
    return value


def _read_identity_file(path: Path) -> Identity:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file") from None
    try:
        return identity_from_file_text(text)
    except AgeError as exc:  # its message never holds the key
        raise ValueError(f"{path}: {exc}") from None


def _check_identity_file(value: Path) -> Path:
    _read_identity_file(value)
    return value


# RFC 6750's token68: what a bearer token may hold so that it travels in a header as is.
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")
HTTP_AUTH_TOKEN_MIN_LENGTH = 16


def _check_http_auth_token(value: SecretStr) -> SecretStr:
    secret = value.get_secret_value()
    # Never echo the value: it is the API's password.
    if len(secret) < HTTP_AUTH_TOKEN_MIN_LENGTH:
        raise ValueError(f"must be at least {HTTP_AUTH_TOKEN_MIN_LENGTH} characters long")
    if not _TOKEN68.fullmatch(secret):
        raise ValueError("may hold only letters, digits and - . _ ~ + / (then = padding)")
    return value


def is_loopback_address(address: str) -> bool:
    """Whether ``address`` (an IP literal or ``localhost``) reaches this host only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


AgeRecipient = Annotated[str, AfterValidator(_check_age_recipient)]
AgeIdentity = Annotated[SecretStr, AfterValidator(_check_age_identity)]
HttpAuthToken = Annotated[SecretStr, AfterValidator(_check_http_auth_token)]
IdentityFile = Annotated[Path, AfterValidator(_resolve_path), AfterValidator(_check_identity_file)]


class EncryptionKeys(_Section):
    """age X25519 keys. ``public`` encrypts new objects; every key in ``private`` may decrypt.

    Several public keys encrypt every object to each of them (key rotation, escrow).
    A host that only takes backups needs no private key at all.
    """

    public: list[AgeRecipient] = Field(min_length=1)
    private: list[AgeIdentity] = Field(default_factory=list)
    # Files as `binhoard keys generate` / age-keygen write them, so that the secret need
    # not be pasted into the configuration; their keys are added to ``private``.
    private_key_files: list[IdentityFile] = Field(default_factory=list)

    @field_validator("public", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("private", "private_key_files", mode="before")
    @classmethod
    def _one_or_many_private(cls, value: Any) -> Any:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _add_key_files(self) -> EncryptionKeys:
        if not self.private_key_files:
            return self
        from_files = [
            SecretStr(_read_identity_file(path).secret_text()) for path in self.private_key_files
        ]
        return self.model_copy(update={"private": [*self.private, *from_files]})


class LocalStorage(_Section):
    storage_type: Literal["local"]
    directory: ConfigPath


class S3Storage(_Section):
    storage_type: Literal["s3"]
    bucket: str = Field(min_length=1)
    prefix: str = ""
    region: str = "us-east-1"
    endpoint_url: str | None = None
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None
    aws_session_token: SecretStr | None = None
    virtual_hosted_style_request: bool = True
    allow_http: bool = False


class GCSStorage(_Section):
    storage_type: Literal["gcs"]
    bucket: str = Field(min_length=1)
    prefix: str = ""
    credentials_file: ConfigPath | None = None


class AzureStorage(_Section):
    storage_type: Literal["azure"]
    account_name: str = Field(min_length=1)
    container: str = Field(min_length=1)
    prefix: str = ""
    account_key: SecretStr | None = None
    sas_token: SecretStr | None = None
    endpoint_url: str | None = None


ObjectStorage = Annotated[
    LocalStorage | S3Storage | GCSStorage | AzureStorage,
    Field(discriminator="storage_type"),
]


class BackupSite(_Section):
    object_storage: ObjectStorage
    encryption_keys: EncryptionKeys
    compression: CompressionSettings = CompressionSettings()
    recovery_only: bool = False
    upload_rate_limit: int | None = Field(default=None, gt=0, description="bytes per second")
    part_size: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    upload_concurrency: int = Field(default=4, ge=1, le=64)


class BinlogPurgeSettings(_Section):
    enabled: bool = True
    min_binlog_age_before_purge: float = Field(default=600, ge=0)
    purge_interval: float = Field(default=60, gt=0)
    purge_when_observe_no_streams: bool = True
    # MyHoard's name: one PURGE over a large backlog held the binlog index lock (and
    # so every commit) for hours; a backlog goes over several passes instead.
    max_files_per_cycle: int = Field(default=20, ge=1, le=10000)
    # A node whose PUT /replication_state report is older than this is named stale in
    # GET /status and the metrics (it keeps blocking the files it has not applied).
    max_replication_state_age: float = Field(default=3600, gt=0)


class ReplicationSettings(_Section):
    """The account a seeded replica's IO thread logs in to its primary with
    (``--replicate-from``, ``replicate_from``), and the non-loopback primaries it may be
    pointed at (``HOST:PORT``)."""

    user: str | None = None
    password: SecretStr = SecretStr("")
    primaries: list[str] = Field(default_factory=list)
    catch_up_timeout: float = Field(default=3600, gt=0)


class RestoreTestSettings(_Section):
    """Restore tests (``ops/restore_test.py``): a backup restored with its binlogs into a
    scratch server binhoard starts itself, its tables checked, then removed."""

    # Scheduled by the daemon in active mode; POST /backup/{id}/test and
    # `binhoard restore-test` work either way.
    enabled: bool = False
    # The slots, UTC, as backup_hour/backup_minute/backup_interval_minutes.
    hour: int = Field(default=5, ge=0, le=23)
    minute: int = Field(default=0, ge=0, le=59)
    interval_minutes: int = Field(default=1440, ge=1)
    # Where the scratch server lives (None: <temporary_directory>/restore-test). Never
    # the server's datadir: refused if it is, or holds, or lies inside it.
    scratch_directory: ConfigPath | None = None
    max_disk_bytes: int | None = Field(default=None, ge=1024 * 1024)
    time_limit: float = Field(default=3600, gt=0, description="seconds")
    # The scratch server's TCP port on 127.0.0.1 (None: a free one, chosen each time).
    port: int | None = Field(default=None, ge=1, le=65535)
    # Whether backups write their marker row into binhoard.backup_marker first.
    write_marker: bool = True


class ClientParams(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=3306, ge=1, le=65535)
    user: str = "root"
    password: SecretStr = SecretStr("")
    unix_socket: ConfigPath | None = None
    require_ssl: bool = False


class MySQLSettings(_Section):
    flavour: Literal["mariadb"] = "mariadb"
    client_params: ClientParams = ClientParams()
    config_file_name: ConfigPath
    data_directory: ConfigPath
    binlog_prefix: ConfigPath
    relay_log_prefix: ConfigPath | None = None
    relay_log_index_file: ConfigPath | None = None


class StatsdSettings(_Section):
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    tags: dict[str, str] = Field(default_factory=dict)
    # telegraf: ``name,tag=v:1|c`` (MyHoard's); dogstatsd: ``name:1|c|#tag:v``.
    format: Literal["telegraf", "dogstatsd"] = "telegraf"


class Settings(_Section):
    backup_settings: BackupSettings = BackupSettings()
    backup_sites: dict[str, BackupSite] = Field(min_length=1)
    binlog_purge_settings: BinlogPurgeSettings = BinlogPurgeSettings()
    http_address: str = "127.0.0.1"
    http_auth_token: HttpAuthToken | None = None
    http_port: int = Field(default=16001, ge=1, le=65535)
    mysql: MySQLSettings
    replication: ReplicationSettings = ReplicationSettings()
    restore_max_binlog_bytes: int = Field(default=4 * 1024**3, ge=1024 * 1024)
    restore_parallel_threads: int | None = Field(default=None, ge=0, le=256)
    restore_test: RestoreTestSettings = RestoreTestSettings()
    sentry_dsn: SecretStr | None = None
    server_id: int = Field(ge=1, le=2**32 - 1)
    start_command: list[str] | None = None
    state_directory: ConfigPath
    statsd: StatsdSettings = StatsdSettings()
    temporary_directory: ConfigPath

    @property
    def upload_site(self) -> BackupSite:
        return self.backup_sites[self.backup_settings.upload_site]

    @property
    def scratch_directory(self) -> Path:
        """Where restore tests put their scratch server (``restore_test``)."""
        configured = self.restore_test.scratch_directory
        return configured if configured is not None else self.temporary_directory / "restore-test"

    @property
    def apply_threads(self) -> int:
        """``slave_parallel_threads`` for binlog apply: as configured, else 0 (serial) on
        a host with two cores or fewer, where bench/pitr.py measured serial apply faster
        in every run (docs/benchmarks.md), and 4 on larger hosts."""
        if self.restore_parallel_threads is not None:
            return self.restore_parallel_threads
        return default_apply_threads()


def default_apply_threads() -> int:
    """``restore_parallel_threads`` when unset: serial on two cores or fewer."""
    return 0 if len(os.sched_getaffinity(0)) <= 2 else 4


def _semantic_problems(settings: Settings) -> list[tuple[str, str]]:
    """Checks that involve more than one key."""
    problems: list[tuple[str, str]] = []
    upload = settings.backup_settings.upload_site
    if upload not in settings.backup_sites:
        problems.append(
            (
                "backup_settings.upload_site",
                f"names site {upload!r}, but backup_sites has only "
                f"{', '.join(sorted(settings.backup_sites))}",
            )
        )
    elif settings.backup_sites[upload].recovery_only:
        problems.append(
            ("backup_settings.upload_site", f"site {upload!r} is recovery_only: cannot upload")
        )
    bs = settings.backup_settings
    if bs.backup_count_min > bs.backup_count_max:
        problems.append(
            (
                "backup_settings.backup_count_min",
                f"is {bs.backup_count_min}, larger than backup_count_max {bs.backup_count_max}",
            )
        )
    if settings.http_auth_token is None and not is_loopback_address(settings.http_address):
        problems.append(
            (
                "http_address",
                f"{settings.http_address!r} is not a loopback address: set http_auth_token "
                "so that only those who know it can drive the daemon",
            )
        )
    scratch, datadir = settings.scratch_directory, settings.mysql.data_directory
    if scratch.is_relative_to(datadir) or datadir.is_relative_to(scratch):
        problems.append(
            (
                "restore_test.scratch_directory",
                f"{scratch} overlaps the server's datadir {datadir}: a restore test never "
                "touches the real datadir",
            )
        )
    statsd = settings.statsd
    if (statsd.host is None) != (statsd.port is None):
        problems.append(("statsd", "host and port must be given together"))
    return problems


def _format_loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    previous: int | str | None = None
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif previous == "object_storage" and item in ("local", "s3", "gcs", "azure"):
            pass  # pydantic puts the tagged-union branch in the path; the user never wrote it.
        else:
            parts.append(("." if parts else "") + item)
        previous = item
    return "".join(parts)


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    # pydantic's message never includes the input value; keep it that way (secrets).
    msg = str(error["msg"])
    return msg.removeprefix("Value error, ")


def parse_settings(data: Any, *, source: str, base_dir: Path | None = None) -> Settings:
    """Validates already-decoded configuration data; raises ``ConfigError`` with every problem."""
    if not isinstance(data, dict):
        raise ConfigError(source, [("", "the top level must be a table / object")])
    try:
        settings = Settings.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        problems = [(_format_loc(e["loc"]), _message(e)) for e in exc.errors()]
        raise ConfigError(source, problems) from None
    problems = _semantic_problems(settings)
    if problems:
        raise ConfigError(source, problems)
    return settings


def load_settings(path: Path | str) -> Settings:
    """Reads a ``.json`` or ``.toml`` file; raises ``ConfigError`` naming the file and keys."""
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read: {exc.strerror}")]) from None
    data: Any
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(source, [("", f"not valid TOML: {exc}")]) from None
    elif path.suffix == ".json":
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(source, [("", f"not valid JSON: {exc}")]) from None
    else:
        raise ConfigError(source, [("", "the file name must end in .json or .toml")])
    return parse_settings(data, source=source, base_dir=path.resolve().parent)
