"""The daemon's HTTP API over real HTTP (``HttpServer`` in its thread, 127.0.0.1, an
ephemeral port), in front of a fake controller that decides in its own thread."""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from binhoard.daemon.api import HttpServer
from binhoard.daemon.api_edges import MAX_BODY_BYTES
from binhoard.daemon.port import MarkBroken, Preserve, RotateBinlog, SetMode
from binhoard.domain.errors import BinhoardError, UsageError
from tests.support.fake_daemon import FakeDaemon, stream
from tests.support.http_api import TOKEN, serving
from tests.support.waiting import wait_for

OLD = "20261120T030000Z-aaaaaaaa"
NEW = "20261121T030000Z-bbbbbbbb"
FUTURE = "2100-01-01T00:00:00Z"


@pytest.fixture
def daemon() -> Iterator[FakeDaemon]:
    fake = FakeDaemon(mode="active", backups=(stream(NEW), stream(OLD, closed=True)))
    yield fake
    fake.stop()


@pytest.fixture
def api(daemon: FakeDaemon) -> Iterator[httpx.Client]:
    with serving(daemon) as (_, client):
        yield client


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"message"}, body
    message = body["message"]
    assert isinstance(message, str)
    return message


def listed(api: httpx.Client) -> dict[str, dict[str, Any]]:
    return {b["stream_id"]: b for b in api.get("/backup").json()["backups"]}


# --- GET /backup -------------------------------------------------------------------------


def test_backups_are_null_until_the_first_listing() -> None:
    fake = FakeDaemon(backups=None)
    try:
        with serving(fake) as (_, client):
            assert client.get("/backup").json() == {"backups": None}
            # Before the listing only the controller knows a stream: it answers 404.
            error = error_of(client.patch(f"/backup/{NEW}", json={"broken": True}), 404)
            assert NEW in error
    finally:
        fake.stop()


def test_backups_have_myhoard_fields_and_the_restorable_window(api: httpx.Client) -> None:
    backups = api.get("/backup").json()["backups"]
    assert [b["stream_id"] for b in backups] == [NEW, OLD]  # as the controller lists them
    old = backups[1]
    assert set(old) == {
        "basebackup_info",
        "broken_at",
        "closed_at",
        "completed_at",
        "preserve_until",
        "recovery_site",
        "resumable",
        "site",
        "stream_id",
        "restorable_window",
    }
    assert old["completed_at"] == "2026-11-20T03:05:00Z"
    assert old["closed_at"] == "2026-11-21T03:00:00Z"
    assert old["basebackup_info"]["gtid"] == "0-1-10"
    assert (old["recovery_site"], old["resumable"], old["site"]) == (False, True, "default")
    assert old["restorable_window"] == {
        "first_time": "2026-11-20T03:05:00Z",
        "first_gtid": "0-1-10",
        "last_time": "2026-11-20T04:00:00Z",
        "last_gtid": "0-1-99",
    }
    assert backups[0]["closed_at"] is None


def test_backups_sorted_by_stream_id_on_request(api: httpx.Client) -> None:
    def order(value: str) -> list[str]:
        response = api.get("/backup", params={"order": value})
        assert response.status_code == 200, response.text
        return [b["stream_id"] for b in response.json()["backups"]]

    assert order("asc") == [OLD, NEW]
    assert order("DESC") == [NEW, OLD]
    assert "order" in error_of(api.get("/backup", params={"order": "sideways"}), 400)


# --- POST /backup ------------------------------------------------------------------------


def test_backup_requests(api: httpx.Client, daemon: FakeDaemon) -> None:
    for body in ({"backup_type": "basebackup"}, {"backup_type": "basebackup", "incremental": True}):
        response = api.post("/backup", json=body)
        assert response.status_code == 200
        assert response.json() == {"success": True}
    # Plain `curl -d '{...}'` (a url-encoded content type with a JSON body) as MyHoard's
    # users' scripts send it.
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = api.post("/backup", content=b'{"backup_type": "basebackup"}', headers=form)
    assert response.status_code == 200, response.text
    assert daemon.requested_backups == [False, True, False]
    message = error_of(
        api.post("/backup", json={"backup_type": "basebackup", "wait_for_upload": 3}), 400
    )
    assert message == "wait_for_upload is supported only for backup_type binlog"
    assert "backup_type" in error_of(api.post("/backup", json={"backup_type": "full"}), 400)
    assert "backup_type: required" in error_of(api.post("/backup", json={}), 400)


def test_a_refusal_comes_back_with_its_status_and_message() -> None:
    fake = FakeDaemon(mode="idle")
    try:
        with serving(fake) as (_, client):
            message = error_of(client.post("/backup", json={"backup_type": "binlog"}), 409)
            assert message == "mode is idle: nothing is archived"
    finally:
        fake.stop()


def test_binlog_backup_waits_for_the_upload_with_a_deadline(
    api: httpx.Client, daemon: FakeDaemon
) -> None:
    body = {"backup_type": "binlog", "wait_for_upload": 30}
    assert api.post("/backup", json=body).json() == {"success": True}  # stored at once

    daemon.hold_uploads()
    started = time.monotonic()
    response = api.post("/backup", json={**body, "wait_for_upload": 0.3})
    assert time.monotonic() - started >= 0.3
    assert response.json() == {"success": True, "upload_pending": True}

    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(api.post, "/backup", json=body)
        wait_for("the third rotation", lambda: daemon.commands.count(RotateBinlog()) == 3)
        assert not waiting.done()
        daemon.hold_uploads(False)
        assert waiting.result(timeout=10).json() == {"success": True}


# --- PATCH /backup/settings, PATCH /backup/{id}, PUT /backup/{id}/preserve --------------


def test_pausing_backups(api: httpx.Client) -> None:
    assert api.patch("/backup/settings", json={"paused_until": FUTURE}).json() == {"success": True}
    assert api.get("/status").json()["backups_paused_until"] == "2100-01-01T00:00:00Z"
    # Epoch seconds too; a time without a zone is UTC.
    api.patch("/backup/settings", json={"paused_until": 4102444800}).raise_for_status()
    api.patch("/backup/settings", json={"paused_until": "2100-01-01T02:00:00"}).raise_for_status()
    assert api.get("/status").json()["backups_paused_until"] == "2100-01-01T02:00:00Z"
    api.patch("/backup/settings", json={"paused_until": None}).raise_for_status()
    assert api.get("/status").json()["backups_paused_until"] is None

    past = api.patch("/backup/settings", json={"paused_until": "2020-01-01T00:00:00+02:00"})
    assert error_of(past, 400) == "paused_until is in the past: give a future time, or null"
    assert error_of(api.patch("/backup/settings", json={}), 400) == "paused_until: required"
    bad = api.patch("/backup/settings", json={"paused_until": "next tuesday"})
    assert "paused_until" in error_of(bad, 400)


def test_marking_a_stream_broken_and_back(api: httpx.Client, daemon: FakeDaemon) -> None:
    assert api.patch(f"/backup/{OLD}", json={"broken": True}).json() == {"success": True}
    assert listed(api)[OLD]["broken_at"] is not None
    response = api.patch(f"/backup/{OLD}", json={"broken": False, "expire_after_seconds": 5})
    assert response.json() == {"success": True}
    assert listed(api)[OLD]["broken_at"] is None
    assert daemon.commands[-2:] == [MarkBroken(OLD), MarkBroken(OLD, broken=False)]

    unknown = error_of(api.patch("/backup/20200101T000000Z-00000000", json={"broken": True}), 404)
    assert unknown == "no stream '20200101T000000Z-00000000': GET /backup lists them"
    assert "broken" in error_of(api.patch(f"/backup/{OLD}", json={"broken": "yes"}), 400)
    assert "broken: required" in error_of(api.patch(f"/backup/{OLD}", json={}), 400)


def test_preserving_a_stream(api: httpx.Client, daemon: FakeDaemon) -> None:
    body = {"preserve_until": FUTURE, "wait_for_applied_preservation": 5}
    assert api.put(f"/backup/{OLD}/preserve", json=body).json() == {"success": True}
    assert listed(api)[OLD]["preserve_until"] == "2100-01-01T00:00:00Z"
    assert daemon.commands[-1] == Preserve(OLD, until=datetime(2100, 1, 1, tzinfo=UTC))

    daemon.hold_uploads()  # retention has not seen it yet
    pending = api.put(
        f"/backup/{OLD}/preserve", json={**body, "wait_for_applied_preservation": 0.2}
    )
    assert pending.json() == {"success": False, "preservation_is_still_pending": True}
    daemon.hold_uploads(False)
    assert api.put(f"/backup/{OLD}/preserve", json={}).json() == {"success": True}  # unpreserve
    assert listed(api)[OLD]["preserve_until"] is None

    past = api.put(f"/backup/{OLD}/preserve", json={"preserve_until": "2001-01-01T00:00:00Z"})
    assert error_of(past, 400) == "preserve_until is in the past: give a future time, or null"
    error_of(api.put("/backup/nope/preserve", json={"preserve_until": FUTURE}), 404)


# --- replication state, status ----------------------------------------------------------


def test_replication_state_is_validated_stored_and_echoed(api: httpx.Client) -> None:
    state = {"node-1": {"gtid_current_pos": "0-1-5, 1-2-9"}, "node-2": {"gtid_slave_pos": ""}}
    stored = {"node-1": {"gtid_current_pos": "0-1-5,1-2-9"}, "node-2": {"gtid_slave_pos": ""}}
    assert api.put("/replication_state", json=state).json() == stored
    assert api.get("/status").json()["replication_state"] == stored

    mysql_form = {"server1": {"206375d9-ec5a-46b7-bb26-b621812e7471": [[1, 100]]}}
    message = error_of(api.put("/replication_state", json=mysql_form), 400)
    assert message == "server1.206375d9-ec5a-46b7-bb26-b621812e7471: unknown field"
    twice = {"n": {"gtid_current_pos": "0-1-5,0-2-6"}}
    assert "two GTIDs for domain 0" in error_of(api.put("/replication_state", json=twice), 400)
    assert "body must be a JSON object" in error_of(api.put("/replication_state", json=[1]), 400)


def test_mode_switches_as_myhoard() -> None:
    fake = FakeDaemon(mode="idle", backups=(stream(OLD, closed=True),))
    try:
        with serving(fake) as (_, client):
            assert client.get("/status").json()["mode"] == "idle"
            message = error_of(client.get("/status/restore"), 400)
            assert message == "Mode is idle, restore status is not available"

            restore = {"mode": "restore", "site": "default", "stream_id": OLD}
            no_site = error_of(
                client.put("/status", json={"mode": "restore", "stream_id": OLD}), 400
            )
            assert no_site == "mode restore needs site"
            two = {**restore, "target_gtid": "0-1-50", "target_position": "binlog.000002:400"}
            assert "at most one target" in error_of(client.put("/status", json=two), 400)
            one = error_of(client.put("/status", json={"mode": "active", "site": "default"}), 400)
            assert one == "site applies only to mode restore"
            both = {"mode": "active", "site": "default", "target_gtid": "0-1-50"}
            two_of_them = error_of(client.put("/status", json=both), 400)
            assert two_of_them == "site and target_gtid apply only to mode restore"
            assert error_of(client.put("/status", json={"mode": "observe", "force": True}), 400)
            to_active = {"mode": "active", "replicate_from": "127.0.0.1:3308"}
            only = error_of(client.put("/status", json=to_active), 400)
            assert only == "replicate_from applies only to mode restore or observe"
            unknown = error_of(client.put("/status", json={**restore, "stream_id": "nope"}), 404)
            assert unknown == "no stream 'nope'"

            # ISO 8601 with any zone, or epoch seconds (as MyHoard's code takes it).
            timed = {**restore, "target_time": 1795147200, "target_time_approximate_ok": True}
            assert client.put("/status", json=timed).json() == {"mode": "restore"}
            switch = fake.commands[-1]
            assert isinstance(switch, SetMode)
            assert switch.target_time == datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
            assert switch.target_time_approximate_ok
            assert switch.replicate_from is None

            status = client.get("/status/restore").json()
            assert status["phase"] == "getting_backup_info"
            assert status["current_backup_name"] == OLD
            assert (status["restore_chain_index"], status["restore_chain_total"]) == (1, 1)
            assert set(status) >= {
                "basebackup_compressed_bytes_downloaded",
                "basebackup_compressed_bytes_total",
                "basebackup_prepare_progress",
                "binlogs_being_restored",
                "binlogs_pending",
                "binlogs_restored",
                "current_backup_incremental",
            }
            refused = error_of(client.put("/status", json={"mode": "observe"}), 409)
            assert refused == "cannot switch from mode restore to observe"
    finally:
        fake.stop()


def test_restore_targets_are_parsed_before_they_reach_the_controller(api: httpx.Client) -> None:
    restore = {"mode": "restore", "site": "default", "stream_id": OLD}
    for field, value, expected in (
        ("target_time", "2026-11-20T06:00:00+02:00", "target_time"),
        ("target_gtid", "0-1-x", "not a MariaDB GTID"),
        ("target_position", "binlog:12", "binlog"),
        ("target_position", "binlog.000001:1", "byte offset >= 4"),
        ("target_time", 1e30, "Unix seconds between 1970 and 9999"),
        ("target_time", True, "ISO 8601 time string or a number"),
        ("replicate_from", "127.0.0.1", "should match pattern"),
        ("replicate_from", 3307, "string"),
    ):
        response = api.put("/status", json={**restore, field: value})
        if field == "target_time" and isinstance(value, str):
            assert response.status_code == 409  # valid; this fake refuses active -> restore
        else:
            assert expected in error_of(response, 400), (field, value)


def test_restore_status_while_the_restore_starts_is_503() -> None:
    fake = FakeDaemon(mode="restore")
    try:
        with serving(fake) as (_, client):
            response = client.get("/status/restore")
            assert "starting" in error_of(response, 503)
            assert response.headers["retry-after"] == "1"
    finally:
        fake.stop()


def test_metrics_and_health(api: httpx.Client) -> None:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "binhoard_fake_commands 0" in response.text
    assert api.get("/healthz").json() == {"status": "ok"}


# --- errors ------------------------------------------------------------------------------


def test_bad_requests_are_4xx_with_a_message_never_5xx(api: httpx.Client) -> None:
    json_type = {"content-type": "application/json"}
    cases: list[tuple[str, str, dict[str, Any], int, str]] = [
        ("POST", "/backup", {"content": b"{nope", "headers": json_type}, 400, "not valid JSON"),
        ("POST", "/backup", {"content": b"", "headers": json_type}, 400, "body is missing"),
        ("POST", "/backup", {"json": "binlog"}, 400, "must be a JSON object"),
        ("POST", "/backup", {"json": {"backup_type": "binlog", "x": 1}}, 400, "x: unknown field"),
        ("POST", "/backup", {"json": {"backup_type": 7}}, 400, "backup_type"),
        (
            "POST",
            "/backup",
            {"content": b'{"backup_type": "binlog", "wait_for_upload": NaN}', "headers": json_type},
            400,
            "wait_for_upload",
        ),
        (
            "POST",
            "/backup",
            {"json": {"backup_type": "binlog", "wait_for_upload": 1e9}},
            400,
            "wait_for_upload: Input should be less than or equal to 3600",
        ),
        ("PUT", "/status", {"json": {"mode": "sleeping"}}, 400, "mode"),
        ("PUT", "/status", {"content": b"\xff\xfe", "headers": json_type}, 400, "JSON"),
        (
            "POST",
            "/backup",
            {
                "content": b"backup_type=binlog",
                "headers": {"content-type": "application/x-www-form-urlencoded"},
            },
            400,
            "JSON",
        ),
        (
            "POST",
            "/backup",
            {"content": b'{"backup_type": "binlog"}', "headers": {"content-type": "text/plain"}},
            415,
            "must be JSON",
        ),
        ("GET", "/nothing", {}, 404, "Not Found: GET /nothing"),
        ("GET", "/backup/", {}, 404, "Not Found"),
        ("DELETE", "/status", {}, 405, "Method Not Allowed: DELETE /status"),
        ("PATCH", "/backup/" + "x" * 300, {"json": {"broken": True}}, 400, "stream_id"),
    ]
    for method, path, kwargs, status, expected in cases:
        response = api.request(method, path, **kwargs)
        assert expected in error_of(response, status), (method, path, kwargs)
    assert api.delete("/status").headers["allow"] == "GET, PUT"
    # A JSON body without any Content-Type is read as JSON, as MyHoard does.
    bare = api.post("/backup", content=b'{"backup_type": "basebackup"}')
    assert bare.json() == {"success": True}


def test_huge_bodies_are_refused_while_read(api: httpx.Client) -> None:
    response = api.post("/backup", content=b" " * (MAX_BODY_BYTES + 1))
    assert "larger than 1048576 bytes" in error_of(response, 413)
    # Chunked: no length declared, refused once the count passes the limit.
    chunk = b" " * 65536

    def chunks() -> Iterator[bytes]:
        for _ in range(2 * MAX_BODY_BYTES // len(chunk)):
            yield chunk

    error_of(api.post("/backup", content=chunks()), 413)
    assert api.get("/healthz").status_code == 200


def test_a_chunked_body_without_end_is_cut_at_the_limit(daemon: FakeDaemon) -> None:
    with (
        serving(daemon) as (server, _),
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn,
    ):
        conn.sendall(
            b"POST /backup HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        sent = 0
        chunk = b"10000\r\n" + b" " * 0x10000 + b"\r\n"
        while sent <= MAX_BODY_BYTES:  # never the final 0-length chunk
            conn.sendall(chunk)
            sent += 0x10000
        answer = b""
        while not answer.endswith(b"}") and (received := conn.recv(65536)):
            answer += received
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"message": "the request body is larger than 1048576 bytes"}')


def test_a_bug_is_a_500_with_a_message_and_no_traceback(
    daemon: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> str:
        raise RuntimeError("metrics registry exploded")

    server = HttpServer(daemon, address="127.0.0.1", port=0, auth_token=None, metrics_text=broken)
    server.start()
    try:
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics")
        message = error_of(response, 500)
        assert message == "internal error: the daemon's log has the details"
        assert "exploded" not in response.text
    finally:
        server.stop()
    assert "metrics registry exploded" in caplog.text  # the log has it


# --- security ----------------------------------------------------------------------------


def test_the_token_guards_every_route_but_healthz(
    daemon: FakeDaemon, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with serving(daemon, token=TOKEN) as (server, client):
        assert client.get("/status").json()["mode"] == "active"
        anonymous = httpx.Client(base_url=f"http://127.0.0.1:{server.port}")
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            for method, path in (
                ("GET", "/status"),
                ("GET", "/openapi.json"),
                ("POST", "/backup"),
                ("GET", "/nothing"),
            ):
                response = anonymous.request(method, path, headers=headers)
                assert "Authorization: Bearer" in error_of(response, 401)
                assert response.headers["www-authenticate"] == "Bearer"
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        schema = client.get("/openapi.json").json()
        assert schema["components"]["securitySchemes"] == {
            "bearer": {"type": "http", "scheme": "bearer"}
        }
        assert schema["paths"]["/status"]["get"]["security"] == [{"bearer": []}]
        assert "security" not in schema["paths"]["/healthz"]["get"]
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "GET /status -> 401" in logged
    assert TOKEN not in logged
    assert TOKEN not in caplog.text


def test_a_non_loopback_address_needs_a_token(daemon: FakeDaemon) -> None:
    with pytest.raises(UsageError, match=r"'0\.0\.0\.0' is not a loopback address"):
        HttpServer(daemon, address="0.0.0.0", port=0, auth_token=None)  # noqa: S104


def test_a_busy_port_is_named(daemon: FakeDaemon) -> None:
    with serving(daemon) as (server, _):
        taken = HttpServer(daemon, address="127.0.0.1", port=server.port, auth_token=None)
        with pytest.raises(BinhoardError, match=f"cannot listen on 127.0.0.1:{server.port} "):
            taken.start()


# --- never blocks ------------------------------------------------------------------------


def test_reads_stay_fast_while_the_controller_is_stuck(daemon: FakeDaemon) -> None:
    with serving(daemon, decision_timeout=1.0) as (_, client):
        stalled = daemon.stall()
        wait_for("the controller to be stuck", stalled.is_set)
        with ThreadPoolExecutor(1) as pool:
            # A command now waits for a decision that does not come...
            command = pool.submit(client.post, "/backup", json={"backup_type": "basebackup"})
            # ...while reads answer at once from the snapshot.
            latencies = []
            for _ in range(200):
                started = time.monotonic()
                assert client.get("/status").status_code == 200
                assert client.get("/backup").status_code == 200
                latencies.append(time.monotonic() - started)
            response = command.result(timeout=10)
        message = error_of(response, 503)
        assert message.startswith("the daemon did not decide within 1 s")
        assert response.headers["retry-after"] == "1"
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)]
        assert p99 < 0.25, f"p99 of GET /status + GET /backup while stuck: {p99 * 1000:.1f} ms"
        daemon.release()
        # The queued request is carried out once the controller moves again.
        wait_for("the queued backup request", lambda: daemon.requested_backups == [False])


def test_stopping_answers_waiting_requests_at_once(daemon: FakeDaemon) -> None:
    daemon.hold_uploads()
    with serving(daemon) as (server, client), ThreadPoolExecutor(1) as pool:
        body = {"backup_type": "binlog", "wait_for_upload": 600}
        waiting = pool.submit(client.post, "/backup", json=body)
        wait_for("the rotation", lambda: RotateBinlog() in daemon.commands)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3
        assert "stopping" in error_of(waiting.result(timeout=5), 503)
        port = server.port  # still known once stopped; nothing listens there any more
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_openapi_comes_from_the_request_models(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    assert components["BackupRequest"]["additionalProperties"] is False
    assert set(components["BackupRequest"]["required"]) == {"backup_type"}
    assert "binhoard extension" in json.dumps(
        components["StatusUpdate"]["properties"]["target_gtid"]
    )
    assert schema["paths"]["/metrics"]["get"]["tags"] == ["binhoard extension"]
    assert schema["paths"]["/status"]["put"]["tags"] == ["MyHoard"]
    # Validation errors are 400 {"message"}: no 422 {"detail"} in the document either.
    assert "422" not in json.dumps(schema["paths"])
    assert "HTTPValidationError" not in components
