"""The archive pass's file choice as it was before ``ServerFiles``: the specification the
fast path is compared with (tests/unit/test_archive_walk.py) and the baseline that
``bench/archive_pass.py`` times it against. Kept verbatim; do not optimise."""

from __future__ import annotations

from collections.abc import Sequence

from binhoard.domain.archiving import Archive, Missing, NextStep, ServerFiles, Wait
from binhoard.domain.binlog import binlog_sort_key
from binhoard.domain.catalog import BinlogIdentity
from binhoard.domain.manifest import ObjectRef
from binhoard.ops.archive import ArchiveReport, BinlogArchiver, _Stream
from binhoard.ports.server import ServerBinlogs


def reference_next_step(  # noqa: PLR0911 - as it was
    last_archived: str | None,
    snapshot_file: str,
    snapshot_pos: int,
    server_files: Sequence[str],
    active: str,
) -> NextStep:
    """``domain.archiving.next_step`` before it became ``ServerFiles``: scans the index."""
    key = binlog_sort_key
    if last_archived is None:
        if snapshot_file == active:
            return Wait(active)
        if snapshot_file in server_files:
            return Archive(snapshot_file, snapshot_pos)
        return Missing(
            snapshot_file,
            f"the backup's snapshot file {snapshot_file} is not in the server's binlog "
            f"index (oldest there: {server_files[0] if server_files else '(none)'}): "
            "purged before it was archived, or the binlogs were reset",
        )
    later = [name for name in server_files if key(name) > key(last_archived)]
    if not later:
        if last_archived not in server_files and server_files:
            return Missing(
                "(the file after " + last_archived + ")",
                f"the server's binlog index ({server_files[0]}..{server_files[-1]}) does not "
                f"continue from {last_archived}: the binlogs were reset (RESET MASTER?)",
            )
        return Wait(active)
    following = later[0]
    if following == active:
        return Wait(active)
    return Archive(following, 4)


def _reference_step(stream: _Stream, server: ServerBinlogs) -> NextStep:
    snapshot = stream.state.backup.snapshot
    return reference_next_step(
        stream.records[-1].name if stream.records else None,
        snapshot.binlog_file,
        snapshot.binlog_pos,
        server.names,
        server.active,
    )


class ReferenceArchiver(BinlogArchiver):
    """The archiver with the walk over the index as it was: every stream's next step
    recomputed by a scan of the whole index, for every file of the index."""

    def _walk(
        self,
        server: ServerBinlogs,
        files: ServerFiles,
        streams: list[_Stream],
        refs: dict[BinlogIdentity, ObjectRef],
        report: ArchiveReport,
    ) -> None:
        for name in server.names:
            if name == server.active:
                break
            wanting: list[tuple[_Stream, Archive]] = []
            for stream in streams:
                step = _reference_step(stream, server)
                if isinstance(step, Archive) and step.name == name and not stream.problems:
                    wanting.append((stream, step))
            if wanting:
                self._archive_file(server, name, wanting, refs, report)
