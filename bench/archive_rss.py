"""Peak memory (RSS) of archiving one large binlog file to S3 with default settings.

Usage::

    .venv/bin/python bench/archive_rss.py [--size-mb 2048] [--trx-bytes 0]

Writes a synthetic, closed MariaDB binlog of ``--size-mb`` MiB (incompressible row
events; one transaction holding the whole file, as a file larger than
``max_binlog_size`` is, unless ``--trx-bytes`` gives the size of each of many
transactions), starts a SeaweedFS S3 server on loopback, puts a backup manifest whose
snapshot is at the start of the file, and runs one archive pass over it in a child
process with the default site settings (``part_size`` 16 MiB, ``upload_concurrency`` 4,
zstd, age). The child's peak RSS (``ru_maxrss``) and wall time are printed as one JSON
line; the archived object is downloaded and compared with the file by sha256.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support (the S3 server, binlog writer) lives beside src/

from tests.support.binlogs import BinlogWriter  # noqa: E402
from tests.support.s3server import s3_server  # noqa: E402
from tests.support.sites import put_full_backup  # noqa: E402

from binhoard.allocator import keep_freed_memory  # noqa: E402
from binhoard.app import archive_config, open_server, open_site  # noqa: E402
from binhoard.config import parse_settings  # noqa: E402
from binhoard.crypto.age import Identity  # noqa: E402
from binhoard.domain.gtid import Gtid  # noqa: E402
from binhoard.domain.manifest import (  # noqa: E402
    SnapshotPosition,
)
from binhoard.ops.archive import BinlogArchiver  # noqa: E402
from binhoard.ops.catalog import read_streams  # noqa: E402
from binhoard.ops.restore_backup import digest_of  # noqa: E402
from binhoard.ports.server import ServerBinlogs  # noqa: E402
from binhoard.storage.pipeline import download, identities_from_site  # noqa: E402

SERVER_ID = 1
BACKUP_ID = "20260101T000000Z-0000beef"
ROW = 1024 * 1024


def write_binlog(path: Path, size: int, trx_bytes: int, compressible: bool) -> int:
    """Writes the file; returns the snapshot offset (just after the Gtid_list). Row
    payloads are random bytes, or with ``compressible`` random text of a small
    vocabulary (zstd -3 about 2.5x, like row images of typical tables)."""
    rng = random.Random(1)
    words = [rng.randbytes(rng.randrange(2, 9)).hex().encode() for _ in range(4096)]

    def payload(size: int) -> bytes:
        if not compressible:
            return rng.randbytes(size)
        return b" ".join(rng.choices(words, k=size // 8))[:size]

    created = int(time.time())
    with path.open("wb") as out:
        writer = BinlogWriter(SERVER_ID, created, out=out)
        snapshot = writer.offset
        seq = 0
        if trx_bytes == 0:
            rows = (payload(ROW) for _ in range(max(1, size // ROW)))
            writer.transaction(Gtid(0, SERVER_ID, 1), created, rows)
        else:
            while writer.offset < size:
                seq += 1
                writer.transaction(Gtid(0, SERVER_ID, seq), created, [payload(trx_bytes)])
        writer.finish()
    return snapshot


def child(args: argparse.Namespace) -> None:

    keep_freed_memory()
    config: dict[str, Any] = json.loads(Path(args.child).read_text())
    settings = parse_settings(config, source="bench")
    store = open_site(settings)
    binlog = Path(config["mysql"]["binlog_prefix"]).parent / "binlog.000001"
    started = time.monotonic()
    archiver = BinlogArchiver(open_server(settings), store, archive_config(settings))
    report = archiver.archive_files(
        ServerBinlogs(binlog.parent, ("binlog.000001", "binlog.000002"), "binlog.000002")
    )
    seconds = time.monotonic() - started
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert report.records_written == 1 and not report.problems, report

    (record,) = read_streams(store)[0].records
    identities = identities_from_site(settings.upload_site)
    digest = hashlib.sha256()
    for chunk in download(
        store, record.object.key, expected=digest_of(record.object), identities=identities
    ):
        digest.update(chunk)
    print(
        json.dumps(
            {
                "archive_seconds": round(seconds, 1),
                "peak_rss_mib": round(rss_mib, 1),
                "plain_mib": round(record.object.plain_size / 2**20, 1),
                "stored_mib": round(record.object.stored_size / 2**20, 1),
                "transactions": record.transactions,
                "round_trip_sha256_ok": digest.hexdigest() == record.object.plain_sha256,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--trx-bytes", type=int, default=0)
    parser.add_argument("--compressible", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bh-rss-") as tmp:
        root = Path(tmp)
        (root / "binlogs").mkdir()
        snapshot = write_binlog(
            root / "binlogs" / "binlog.000001",
            args.size_mb * 2**20,
            args.trx_bytes,
            args.compressible,
        )
        identity = Identity.generate()
        with s3_server(root / "s3") as server:
            config = {
                "server_id": SERVER_ID,
                "state_directory": str(root / "state"),
                "temporary_directory": str(root / "tmp"),
                "mysql": {
                    "config_file_name": str(root / "my.cnf"),
                    "data_directory": str(root / "data"),
                    "binlog_prefix": str(root / "binlogs" / "binlog"),
                },
                "backup_sites": {
                    "default": {
                        "object_storage": {
                            "storage_type": "s3",
                            "bucket": server.bucket,
                            "region": server.region,
                            "endpoint_url": server.endpoint_url,
                            "aws_access_key_id": server.access_key,
                            "aws_secret_access_key": server.secret_key,
                            "virtual_hosted_style_request": False,
                            "allow_http": True,
                        },
                        "encryption_keys": {
                            "public": str(identity.recipient),
                            "private": identity.secret_text(),
                        },
                    }
                },
            }
            settings = parse_settings(config, source="bench")

            put_full_backup(
                open_site(settings),
                BACKUP_ID,
                SnapshotPosition("binlog.000001", snapshot, ""),
                server_id=SERVER_ID,
                when=datetime.now(UTC),
            )
            config_path = root / "config.json"
            config_path.write_text(json.dumps(config))
            subprocess.run(
                [sys.executable, __file__, "--child", str(config_path)], check=True, cwd=ROOT
            )


if __name__ == "__main__":
    main()
