"""The chaos suite's CI variant: one round of tests/support/chaos.py (kill -9 in every
mode under writes and 10% storage faults, a full disk during a restore, planted
corruptions), then its summary. The seed is printed; BINHOARD_CHAOS_SEED replays a run.
The long variant is ``scripts/chaos --minutes N``."""

from __future__ import annotations

import json
import os
import random

import pytest

from tests.support.chaos import CI, Round, Tally
from tests.support.s3server import S3Server
from tests.support.sandboxes import SandboxFactory


@pytest.mark.timeout(1200)
def test_one_round_of_chaos(sandboxes: SandboxFactory, s3_server: S3Server) -> None:
    seed = int(os.environ.get("BINHOARD_CHAOS_SEED", random.randrange(1 << 32)))
    print(f"BINHOARD_CHAOS_SEED={seed}")
    tally = Tally(seed)
    try:
        Round(seed, CI, tally, sandboxes, s3_server).run()
    finally:
        print(json.dumps(tally.summary()))
    assert sum(tally.kills.values()) >= 20
    assert set(tally.kills) == {"idle", "active", "restore", "observe", "promote"}
    assert tally.storage_faults, "no storage fault was injected"
    planted = sum(tally.corruptions.values())
    assert tally.corruptions_found_by_restore + tally.corruptions_no_restore_reads == planted
