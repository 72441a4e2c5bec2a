"""Before a backup, InnoDB's checkpoint is brought within a bound of the redo's end (real
server): nothing is done when it already is, the server's settings always come back."""

from __future__ import annotations

from binhoard.server import sql
from tests.support.sandboxes import SandboxFactory
from tests.support.workload import create_schema, write_rows

FLUSH_SETTINGS = (
    "innodb_max_dirty_pages_pct",
    "innodb_max_dirty_pages_pct_lwm",
    "innodb_adaptive_flushing",
    "innodb_io_capacity",
)


def test_checkpoint_age_is_bounded_only_when_over_the_limit(sandboxes: SandboxFactory) -> None:
    box = sandboxes.new()
    conn = box.connect()
    try:
        settings = sql.variables(conn, *FLUSH_SETTINGS)
        sql.bound_checkpoint_age(conn)  # whatever start-up left behind

        idle = sql.bound_checkpoint_age(conn)
        assert not idle.forced and idle.reached
        assert idle.seconds < 0.5

        # ~800 KiB of redo, which InnoDB on its own would not checkpoint for a long time.
        create_schema(box)
        write_rows(box, 2000, seed=1)
        assert sql.checkpoint(conn).age > sql.CHECKPOINT_AGE_LIMIT

        gave_up = sql.bound_checkpoint_age(conn, limit=0, timeout=0)
        assert gave_up.forced and not gave_up.reached
        assert sql.variables(conn, *FLUSH_SETTINGS) == settings

        before = sql.checkpoint(conn)
        bounded = sql.bound_checkpoint_age(conn)
        assert bounded.forced and bounded.reached
        assert sql.checkpoint(conn).checkpoint_lsn >= before.lsn - sql.CHECKPOINT_AGE_LIMIT
        assert bounded.seconds < sql.CHECKPOINT_WAIT_SECONDS
        assert sql.variables(conn, *FLUSH_SETTINGS) == settings
    finally:
        conn.close()
