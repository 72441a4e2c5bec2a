"""An archiver closes the SQLite database of its site cache when it is done: Python 3.13
(Debian 13's) reports a connection left to the garbage collector as a ResourceWarning."""

from __future__ import annotations

import gc
import sqlite3
import warnings
from pathlib import Path

import pytest

from binhoard.storage.store import MemoryStore
from tests.support.fakeserver import fake_archiver
from tests.support.sites import SiteBuilder
from tests.unit.test_archive_pass import idle_server, settings_in


def test_an_archiver_used_as_a_context_closes_its_cache(tmp_path: Path) -> None:
    store = MemoryStore()
    build = SiteBuilder(store)
    build.backup("A")
    build.archive("A", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()  # what earlier tests left is not this test's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fake_archiver(settings_in(tmp_path), store) as archiver:
            report = archiver.archive_files(idle_server(build))
            cache = archiver.cache
            assert cache is not None
            db = cache._db  # the connection whose closing is the point
            assert db is not None
        assert report.streams[0].records == 2
        with pytest.raises(sqlite3.ProgrammingError, match="closed database"):
            db.execute("SELECT 1")
        del archiver, cache, db
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    # Closed is not unusable: the cache is opened again when a pass needs it.
    archiver = fake_archiver(settings_in(tmp_path), store)
    try:
        assert archiver.archive_files(idle_server(build)).streams[0].records == 2
    finally:
        archiver.close()
