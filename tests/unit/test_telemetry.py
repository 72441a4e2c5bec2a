"""Error reports: counted in ``binhoard.errors``, sent to Sentry (through a fake
transport) when worth a person's attention, and never carrying a secret of the
settings; the DSN is never logged. Also the command line's error mapping, end to end
over a real UDP socket."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from binhoard import telemetry
from binhoard.config import ClientParams, Settings, parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.errors import (
    ArchiveStalledError,
    ConfigError,
    NotFoundError,
    ServerError,
    UsageError,
)
from binhoard.metric_names import ERRORS
from binhoard.metrics import Metrics
from binhoard.server import sql
from tests.support.cli import run_main
from tests.support.sites import site_config

PASSWORD = "hunter2-correct-horse-battery"
DSN_KEY = "0123456789abcdef0123456789abcdef"
DSN = f"https://{DSN_KEY}@127.0.0.1:9/42"
IDENTITY = Identity.generate()


class FakeTransport(Transport):
    """Keeps what Sentry would send."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    @property
    def events(self) -> list[Any]:
        return [e for env in self.envelopes if (e := env.get_event()) is not None]

    def sent_bytes(self) -> bytes:
        return b"".join(env.serialize() for env in self.envelopes)


@pytest.fixture
def transport() -> Iterator[FakeTransport]:
    fake = FakeTransport()
    yield fake
    telemetry.shutdown_sentry()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback TCP port bound but not listening: a connection is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def config(tmp_path: Path, port: int, **extra: Any) -> dict[str, Any]:
    data = site_config(tmp_path, identity=IDENTITY)
    data["backup_sites"]["default"]["encryption_keys"]["private"] = IDENTITY.secret_text()
    data["mysql"]["client_params"] = {"port": port, "password": PASSWORD}
    return {**data, **extra}


def settings_with_secrets(tmp_path: Path, port: int) -> Settings:
    return parse_settings(
        config(tmp_path, port, sentry_dsn=DSN, statsd={"tags": {"service": "db1"}}),
        source="test",
    )


def secrets() -> list[str]:
    return [PASSWORD, IDENTITY.secret_text(), DSN, DSN_KEY]


def test_a_server_error_reaches_sentry_without_any_secret(
    tmp_path: Path, transport: FakeTransport, closed_port: int
) -> None:
    settings = settings_with_secrets(tmp_path, closed_port)
    assert telemetry.init_sentry(settings, transport=transport)
    metrics = Metrics()
    # A real failure from a frame that holds the password in clear (sql.connect).
    with pytest.raises(ServerError) as caught:
        sql.connect(ClientParams(port=closed_port, password=settings.mysql.client_params.password))
    logging.getLogger("binhoard.test").warning("user typed %s", PASSWORD)  # a breadcrumb
    telemetry.report_error(caught.value, metrics, "backup create")
    # A careless message holding a secret is filtered all the same.
    careless = RuntimeError(f"bug: password {PASSWORD} and key {IDENTITY.secret_text()}")
    telemetry.report_error(careless, metrics, "archive")

    first, second = transport.events
    assert first["exception"]["values"][-1]["type"] in ("ServerError", "ServerQueryError")
    assert first["tags"] == {"service": "db1", "where": "backup create"}
    assert second["exception"]["values"][-1]["value"] == (
        "bug: password [Filtered] and key [Filtered]"
    )
    crumbs = [c["message"] for c in first["breadcrumbs"]["values"]]
    assert "user typed [Filtered]" in crumbs
    sent = transport.sent_bytes()
    for secret in secrets():
        assert secret.encode() not in sent
    frames = first["exception"]["values"][-1]["stacktrace"]["frames"]
    assert all("vars" not in frame for frame in frames)
    assert metrics.value(ERRORS, {"kind": type(caught.value).__name__, "where": "backup create"})


@pytest.mark.parametrize(
    ("error", "sent"),
    [
        (UsageError("bad option"), False),
        (ConfigError("f.json", [("x", "bad")]), False),
        (NotFoundError("no stream x"), False),
        (ServerError("server went away"), True),
        (ArchiveStalledError("gap"), True),
        (KeyError("a bug"), True),
    ],
)
def test_only_errors_worth_a_person_go_to_sentry_but_all_are_counted(
    tmp_path: Path, transport: FakeTransport, error: Exception, sent: bool
) -> None:
    telemetry.init_sentry(settings_with_secrets(tmp_path, 1), transport=transport)
    metrics = Metrics()
    telemetry.report_error(error, metrics, "archive")
    assert len(transport.events) == (1 if sent else 0)
    assert metrics.value(ERRORS, {"kind": type(error).__name__, "where": "archive"}) == 1


def test_an_error_only_counted_is_not_sent(tmp_path: Path, transport: FakeTransport) -> None:
    telemetry.init_sentry(settings_with_secrets(tmp_path, 1), transport=transport)
    telemetry.report_error(ServerError("same again"), Metrics(), "archive", to_sentry=False)
    assert transport.events == []


def test_the_dsn_is_never_logged(
    tmp_path: Path, transport: FakeTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    telemetry.init_sentry(settings_with_secrets(tmp_path, 1), transport=transport)
    telemetry.report_error(ServerError("down"), None, "archive")
    telemetry.shutdown_sentry()
    assert transport.events
    assert DSN_KEY not in caplog.text and DSN not in caplog.text


def test_without_a_dsn_sentry_is_not_set_up(tmp_path: Path) -> None:
    settings = parse_settings(config(tmp_path, 1), source="test")
    assert not telemetry.init_sentry(settings)
    metrics = Metrics()
    telemetry.report_error(ServerError("down"), metrics, "archive")  # counted only
    assert metrics.value(ERRORS, {"kind": "ServerError", "where": "archive"}) == 1


def test_the_error_a_command_ends_with_is_counted_to_statsd(
    tmp_path: Path, closed_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    statsd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    statsd.bind(("127.0.0.1", 0))
    statsd.settimeout(10)
    data = config(
        tmp_path,
        closed_port,
        statsd={"host": "127.0.0.1", "port": statsd.getsockname()[1], "tags": {"host": "h"}},
    )
    config_file = tmp_path / "bh.json"
    config_file.write_text(json.dumps(data))
    code, _, err = run_main(["binlog", "flush", "--config", str(config_file)], capsys)
    assert code == ServerError.exit_code and "cannot connect" in err
    assert statsd.recv(65536) == b"binhoard.errors,host=h,kind=ServerError,where=binlog_flush:1|c"
    statsd.close()
