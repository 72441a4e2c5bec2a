"""``scripts/chaos --minutes N [--seed S]``: rounds of the chaos suite
(tests/support/chaos.py) until N minutes have passed, each in fresh sandboxes with a
seed drawn from the run's seed; then the summary as one JSON line on stdout. A failed
round is recorded with its seed (replay it with BINHOARD_CHAOS_SEED and
tests/integration/test_chaos.py) and the run goes on; the exit status is 1 if any failed."""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

from tests.support.chaos import CI, Round, Tally
from tests.support.s3server import s3_server
from tests.support.sandboxes import sandbox_factory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__)
    parser.add_argument("--minutes", type=float, required=True, help="how long to run rounds")
    parser.add_argument("--seed", type=int, help="the run's seed (default: a random one)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"chaos: seed {seed}", file=sys.stderr, flush=True)
    rng = random.Random(seed)
    tally = Tally(seed)
    deadline = time.monotonic() + args.minutes * 60
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bh-chaos-s3-") as s3_root,
        s3_server(Path(s3_root)) as s3,
    ):
        while time.monotonic() < deadline:
            round_seed = rng.randrange(1 << 32)
            print(
                f"chaos: round {tally.rounds + 1}, seed {round_seed}", file=sys.stderr, flush=True
            )
            try:
                with sandbox_factory() as sandboxes:
                    Round(round_seed, CI, tally, sandboxes, s3).run()
            except Exception as exc:  # noqa: BLE001 - recorded with its seed; the run goes on
                traceback.print_exc()
                tally.failures.append(f"seed {round_seed}: {type(exc).__name__}: {exc}"[:2000])
                tally.rounds += 1
            print(f"chaos: so far {json.dumps(tally.summary())}", file=sys.stderr, flush=True)
    summary = {**tally.summary(), "minutes": round((time.monotonic() - started) / 60, 1)}
    print(json.dumps(summary), flush=True)
    return 1 if tally.failures else 0


if __name__ == "__main__":
    sys.exit(main())
