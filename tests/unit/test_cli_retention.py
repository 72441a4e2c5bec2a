"""``binhoard prune``, ``backup delete``, ``backup preserve``, ``backup mark-broken`` and
what ``backup list`` shows of them, on a local site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from binhoard.storage.backends import LocalStore
from tests.support.cli import run_main as run
from tests.support.sites import SiteBuilder, site_config


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """Full backups A, B, C, D, each stream closed by the next; D's open."""
    store = LocalStore(tmp_path / "site")
    build = SiteBuilder(store)
    previous = None
    for backup_id in "ABCD":
        build.backup(backup_id)
        build.archive(backup_id, 2)
        if previous is not None:
            build.mark(previous, closed_by=backup_id)
        previous = backup_id
    build.put_objects()
    data = site_config(tmp_path)
    data["backup_settings"] = {"backup_count_min": 1, "backup_count_max": 2}
    path = tmp_path / "bh.json"
    path.write_text(json.dumps(data))
    return path


def listed(config: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, dict[str, object]]:
    code, out, err = run(["backup", "list", "--config", str(config), "--json"], capsys)
    assert code == 0, err
    return {e["backup_id"]: e for e in json.loads(out)}


def test_prune_prints_each_decision_and_deletes_what_it_says(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["prune", "--config", str(config), "--dry-run"], capsys)
    assert code == 0, err
    assert out.splitlines() == [
        "would delete A: 3 newer usable backups exist; backup_count_max is 2",
        "would delete B: 2 newer usable backups exist; backup_count_max is 2",
        "keep C: one of the newest 2 usable backups (backup_count_max)",
        "keep D: the newest backup that can be restored",
    ]
    assert list(listed(config, capsys)) == ["A", "B", "C", "D"]

    code, out, err = run(["prune", "--config", str(config), "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["dry_run"] is False
    assert [(d["backup_id"], d["action"], d["rule"]) for d in report["decisions"]] == [
        ("A", "delete", "count-max"),
        ("B", "delete", "count-max"),
        ("C", "keep", "window"),
        ("D", "keep", "newest"),
    ]
    assert [d["backup_id"] for d in report["deleted"]] == ["B", "A"]
    assert list(listed(config, capsys)) == ["C", "D"]


def test_preserve_keeps_a_backup_from_prune_and_shows_in_the_listing(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["backup", "preserve", "A", "--config", str(config)]
    code, out, err = run([*args, "--until", "2999-01-01T00:00:00Z"], capsys)
    assert code == 0, err
    assert out.startswith("backup A is preserved until 2999-01-01 00:00:00 UTC")
    assert listed(config, capsys)["A"]["preserve_until"] == "2999-01-01T00:00:00+00:00"
    code, out, _ = run(["backup", "list", "--config", str(config)], capsys)
    assert "2999-01-01 00:00:00 UTC" in out
    code, out, _ = run(["prune", "--config", str(config)], capsys)
    assert code == 0
    assert "keep A: preserved until 2999-01-01 00:00:00 UTC" in out
    assert list(listed(config, capsys)) == ["A", "C", "D"]

    code, out, err = run([*args, "--until", "2001-01-01T00:00:00Z"], capsys)
    assert code == 2 and "in the past" in err
    code, out, err = run([*args, "--until", "tomorrow"], capsys)
    assert code == 2 and "--until: not a time: 'tomorrow'" in err
    code, out, err = run([*args], capsys)
    assert code == 2 and "exactly one of --until TIME and --clear" in err
    code, out, err = run([*args, "--clear"], capsys)
    assert code == 0 and "no longer preserved" in out
    assert listed(config, capsys)["A"]["preserve_until"] is None
    code, out, err = run(["backup", "preserve", "X", "--config", str(config), "--clear"], capsys)
    assert code == 3 and "no backup X" in err


def test_delete_refuses_with_reasons_unless_forced(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["backup", "delete", "D", "--config", str(config)], capsys)
    assert code == 4
    assert "not deleting backup D: the newest backup that can be restored" in err
    assert "--force" in err and "Traceback" not in err
    code, out, err = run(["backup", "delete", "nope", "--config", str(config)], capsys)
    assert code == 3 and "no backup nope" in err
    code, out, err = run(["backup", "delete", "B", "--config", str(config)], capsys)
    assert code == 0, err
    assert out.startswith("deleted backup B: ")
    code, out, err = run(["backup", "delete", "D", "--config", str(config), "--force"], capsys)
    assert code == 0, err
    assert list(listed(config, capsys)) == ["A", "C"]


def test_mark_broken_shows_in_the_listing_and_can_be_taken_back(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["backup", "mark-broken", "C", "--config", str(config)]
    code, out, err = run([*args, "--reason", "checksums differ"], capsys)
    assert code == 0, err
    entry = listed(config, capsys)["C"]
    assert entry["broken_object"] == "backups/C/broken/0000000000.json"
    assert entry["broken_reason"].endswith(": checksums differ")
    assert entry["broken_at"].startswith("20")
    code, out, err = run(["backup", "list", "--config", str(config)], capsys)
    assert "full, BROKEN" in out and "BROKEN: backup C: " in err
    code, out, err = run([*args, "--clear", "--reason", "x"], capsys)
    assert code == 2
    code, out, err = run([*args, "--clear"], capsys)
    assert code == 0 and "no longer marked broken" in out
    assert listed(config, capsys)["C"]["broken_at"] is None
