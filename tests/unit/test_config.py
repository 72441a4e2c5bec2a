"""Configuration parsing and validation: every problem named by key path and file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from binhoard.cli.keys import generate_key_file
from binhoard.config import load_settings, parse_settings
from binhoard.crypto.age import Identity
from binhoard.domain.errors import ConfigError
from binhoard.storage.pipeline import decryption_identities

IDENTITY = Identity.generate()
PUBLIC = str(IDENTITY.recipient)
PRIVATE = IDENTITY.secret_text()


def minimal() -> dict[str, Any]:
    return {
        "backup_sites": {
            "default": {
                "object_storage": {"storage_type": "local", "directory": "site"},
                "encryption_keys": {"public": PUBLIC, "private": PRIVATE},
            }
        },
        "mysql": {
            "config_file_name": "my.cnf",
            "data_directory": "data",
            "binlog_prefix": "binlogs/binlog",
            "client_params": {"password": "hunter2-secret"},
        },
        "server_id": 1,
        "state_directory": "state",
        "temporary_directory": "tmp",
    }


def problems_of(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_settings(data, source="test.json")
    return info.value


def test_minimal_config_gets_documented_defaults() -> None:
    settings = parse_settings(minimal(), source="x.json", base_dir=Path("/etc/binhoard"))
    assert settings.http_port == 16001
    assert settings.backup_settings.upload_site == "default"
    assert settings.upload_site.compression.algorithm == "zstd"
    assert settings.upload_site.encryption_keys.public == [PUBLIC]
    # Relative paths are relative to the configuration file's directory.
    assert settings.state_directory == Path("/etc/binhoard/state")
    storage = settings.upload_site.object_storage
    assert storage.storage_type == "local"
    assert storage.directory == Path("/etc/binhoard/site")


def test_three_mistakes_are_all_reported_with_their_paths() -> None:
    data = minimal()
    data["http_port"] = "not-a-port"
    data["backup_settings"] = {"backup_hour": 25}
    del data["mysql"]["data_directory"]
    error = problems_of(data)
    paths = {path for path, _ in error.problems}
    assert paths == {"http_port", "backup_settings.backup_hour", "mysql.data_directory"}
    text = str(error)
    assert text.startswith("test.json: 3 configuration problems")
    assert "test.json: mysql.data_directory: required key is missing" in text


def test_unknown_keys_are_errors_not_silently_ignored() -> None:
    data = minimal()
    data["backup_setings"] = {}
    data["backup_sites"]["default"]["compression"] = {"algoritm": "zstd"}
    error = problems_of(data)
    assert ("backup_setings", "unknown key") in error.problems
    assert ("backup_sites.default.compression.algoritm", "unknown key") in error.problems


def test_storage_errors_name_the_path_without_the_union_branch() -> None:
    data = minimal()
    data["backup_sites"]["default"]["object_storage"] = {"storage_type": "s3"}
    error = problems_of(data)
    assert error.problems == [
        ("backup_sites.default.object_storage.bucket", "required key is missing")
    ]


def test_secrets_are_never_printed() -> None:
    data = minimal()
    data["mysql"]["client_params"]["password"] = 12345
    data["backup_sites"]["default"]["encryption_keys"]["private"] = "AGE-SECRET-KEY-NOTVALID42"
    data["http_port"] = "hunter2-secret"
    error = problems_of(data)
    text = str(error)
    assert "NOTVALID42" not in text
    assert "12345" not in text
    assert "hunter2" not in text
    assert "backup_sites.default.encryption_keys.private[0]" in text


def test_cross_key_problems() -> None:
    data = minimal()
    data["backup_settings"] = {"upload_site": "elsewhere", "backup_count_min": 5}
    data["statsd"] = {"host": "127.0.0.1"}
    error = problems_of(data)
    paths = [path for path, _ in error.problems]
    assert paths == ["backup_settings.upload_site", "statsd"]


def test_statsd_format_is_telegraf_unless_dogstatsd_is_asked_for() -> None:
    assert parse_settings(minimal(), source="t").statsd.format == "telegraf"
    data = minimal()
    data["statsd"] = {"host": "127.0.0.1", "port": 8125, "format": "dogstatsd"}
    assert parse_settings(data, source="t").statsd.format == "dogstatsd"
    data["statsd"]["format"] = "graphite"
    (problem,) = problems_of(data).problems
    assert problem[0] == "statsd.format" and "telegraf" in problem[1]


def test_bad_weekday_schedule() -> None:
    data = minimal()
    data["backup_settings"] = {"incremental": {"full_backup_week_schedule": "sun,funday"}}
    error = problems_of(data)
    assert error.problems[0][0] == "backup_settings.incremental.full_backup_week_schedule"


def test_invalid_public_key_is_named() -> None:
    data = minimal()
    data["backup_sites"]["default"]["encryption_keys"]["public"] = [PUBLIC, "age1nope"]
    error = problems_of(data)
    assert error.problems[0][0] == "backup_sites.default.encryption_keys.public[1]"


def test_load_json_and_toml_files(tmp_path: Path) -> None:
    json_file = tmp_path / "b.json"
    json_file.write_text(json.dumps(minimal()))
    toml_file = tmp_path / "b.toml"
    toml_file.write_text(
        f"""
server_id = 1
state_directory = "state"
temporary_directory = "tmp"
[mysql]
config_file_name = "my.cnf"
data_directory = "data"
binlog_prefix = "binlogs/binlog"
[backup_sites.default.object_storage]
storage_type = "local"
directory = "site"
[backup_sites.default.encryption_keys]
public = "{PUBLIC}"
"""
    )
    for file in (json_file, toml_file):
        settings = load_settings(file)
        assert settings.state_directory == tmp_path / "state"


def test_syntax_errors_and_missing_files_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("server_id = = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load_settings(broken)
    with pytest.raises(ConfigError, match=r"missing\.json: cannot read"):
        load_settings(tmp_path / "missing.json")
    odd = tmp_path / "conf.yaml"
    odd.write_text("{}")
    with pytest.raises(ConfigError, match=r"must end in \.json or \.toml"):
        load_settings(odd)


def test_private_keys_can_be_given_as_files_from_keys_generate(tmp_path: Path) -> None:
    key_file = tmp_path / "restore.key"
    public = generate_key_file(key_file)
    data = minimal()
    keys = data["backup_sites"]["default"]["encryption_keys"]
    keys["private_key_files"] = "restore.key"  # relative to the configuration file
    settings = parse_settings(data, source="x.json", base_dir=tmp_path)
    site = settings.upload_site.encryption_keys
    assert site.private_key_files == [key_file]
    recipients = [str(i.recipient) for i in decryption_identities(site)]
    assert recipients == [PUBLIC, public]
    # Without an inline key, the file's alone.
    del keys["private"]
    only = parse_settings(data, source="x.json", base_dir=tmp_path).upload_site
    assert [str(i.recipient) for i in decryption_identities(only.encryption_keys)] == [public]


def test_a_bad_private_key_file_names_the_key_and_the_file_never_the_secret(
    tmp_path: Path,
) -> None:
    secret = Identity.generate().secret_text()
    damaged = tmp_path / "damaged.key"
    damaged.write_text("# public key: age1...\n" + secret[:-3] + "QQQ\n")
    two = tmp_path / "two.key"
    two.write_text(f"{secret}\n{secret}\n")
    data = minimal()
    keys = data["backup_sites"]["default"]["encryption_keys"]
    keys["private_key_files"] = [str(tmp_path / "missing.key"), str(damaged), str(two)]
    error = problems_of(data)
    text = str(error)
    prefix = "backup_sites.default.encryption_keys.private_key_files"
    assert error.problems == [
        (f"{prefix}[0]", f"cannot read {tmp_path / 'missing.key'}: No such file or directory"),
        (f"{prefix}[1]", f"{damaged}: the AGE-SECRET-KEY line is not a valid age identity"),
        (f"{prefix}[2]", f"{two}: expected exactly one AGE-SECRET-KEY line, found 2"),
    ]
    assert secret[20:40] not in text


def test_http_api_binds_loopback_unless_a_token_guards_it(tmp_path: Path) -> None:
    settings = parse_settings(minimal(), source="x.json")
    assert settings.http_address == "127.0.0.1"
    assert settings.http_auth_token is None
    for loopback in ("127.0.0.2", "::1", "localhost"):
        assert parse_settings({**minimal(), "http_address": loopback}, source="x.json")

    config = tmp_path / "bh.json"
    everywhere = "0.0.0.0"  # noqa: S104 (only validated here, never bound)
    config.write_text(json.dumps({**minimal(), "http_address": everywhere}))
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert info.value.problems[0][0] == "http_address"
    assert str(config) in str(info.value)
    assert "http_auth_token" in str(info.value)

    token = "s3cret-Token_0123456789"
    guarded = parse_settings(
        {**minimal(), "http_address": everywhere, "http_auth_token": token}, source="x.json"
    )
    assert guarded.http_auth_token is not None
    assert guarded.http_auth_token.get_secret_value() == token
    assert token not in repr(guarded)


@pytest.mark.parametrize("token", ["short-secret", "has a space in it, 0123456789"])
def test_a_bad_http_auth_token_is_named_never_printed(token: str) -> None:
    error = problems_of({**minimal(), "http_auth_token": token})
    assert [path for path, _ in error.problems] == ["http_auth_token"]
    assert token not in str(error)


def test_the_sample_configuration_in_contrib_is_valid() -> None:
    """contrib/binhoard.json, which contrib/binhoard.service runs the daemon with."""
    root = Path(__file__).resolve().parents[2]
    settings = load_settings(root / "contrib" / "binhoard.json")
    assert settings.http_address == "127.0.0.1"
    service = (root / "contrib" / "binhoard.service").read_text()
    assert "binhoard daemon --config /etc/binhoard/binhoard.json" in service
