"""Data for tests: a small schema with several engines' worth of shapes, and checksums."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from binhoard.server.sandbox import Sandbox

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")


def create_schema(box: Sandbox) -> None:
    box.execute_script(
        """
        CREATE DATABASE IF NOT EXISTS app;
        CREATE TABLE IF NOT EXISTS app.accounts (
            id INT PRIMARY KEY, owner VARCHAR(64), balance BIGINT NOT NULL, note TEXT
        ) ENGINE=InnoDB;
        CREATE TABLE IF NOT EXISTS app.events (
            id BIGINT AUTO_INCREMENT PRIMARY KEY, account INT, amount INT, payload BLOB,
            KEY (account)
        ) ENGINE=InnoDB;
        """
    )


def write_rows(box: Sandbox, count: int, *, seed: int, payload: int = 200) -> None:
    """Inserts ``count`` events and updates accounts, in transactions of 50 statements."""
    rng = random.Random(seed)
    conn = box.connect()
    try:
        with conn.cursor() as cursor:
            for start in range(0, count, 50):
                cursor.execute("BEGIN")
                for _ in range(min(50, count - start)):
                    account = rng.randrange(1000)
                    amount = rng.randrange(-500, 500)
                    cursor.execute(
                        "INSERT INTO app.accounts (id, owner, balance) VALUES (%s, %s, %s) "
                        "ON DUPLICATE KEY UPDATE balance = balance + VALUES(balance)",
                        (account, f"owner-{account}", amount),
                    )
                    cursor.execute(
                        "INSERT INTO app.events (account, amount, payload) VALUES (%s, %s, %s)",
                        (account, amount, rng.randbytes(payload)),
                    )
                cursor.execute("COMMIT")
    finally:
        conn.close()


def user_tables(box: Sandbox) -> list[str]:
    placeholders = ", ".join(["%s"] * len(SYSTEM_SCHEMAS))
    rows = box.query(
        "SELECT CONCAT('`', table_schema, '`.`', table_name, '`') FROM information_schema.tables "
        f"WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ({placeholders}) "
        "ORDER BY 1",
        SYSTEM_SCHEMAS,
    )
    return [str(r[0]) for r in rows]


def checksums(box: Sandbox) -> dict[str, int]:
    """``CHECKSUM TABLE`` of every user table."""
    tables = user_tables(box)
    if not tables:
        return {}
    return {
        str(name): int(value) for name, value in box.query(f"CHECKSUM TABLE {', '.join(tables)}")
    }


@dataclass(frozen=True)
class Marker:
    time: int  # every transaction before has commit time < time, every one after >= time
    gtid: str
    sums: dict[str, int]


def mark(box: Sandbox) -> Marker:
    """Writes are paused here: waits for the next whole second, so that every commit so
    far has an earlier timestamp and every later one this or a later timestamp."""
    boundary = int(time.time()) + 1
    time.sleep(max(0.0, boundary - time.time()) + 0.05)
    gtid = str(box.query("SELECT @@gtid_current_pos")[0][0])
    return Marker(boundary, gtid, checksums(box))
