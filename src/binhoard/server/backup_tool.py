"""mariabackup and mbstream: take a streamed physical backup, extract, prepare, move back.

Facts this relies on (proven in ../shared/notes/mariadb.md): ``--defaults-file`` must be
the first argument; ``--extra-lsndir`` leaves ``xtrabackup_checkpoints`` and
``xtrabackup_info`` on disk without extracting the stream (``mariadb_backup_checkpoints``
and ``mariadb_backup_info`` from MariaDB 11.1 on: ``backup_file``); the snapshot position
is printed on stderr as ``MySQL binlog position: filename 'F', position 'P', GTID of the
last change 'G'`` (the same words on 10.11 and 11.8).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import os
import queue
import re
import signal
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from binhoard.config import ClientParams
from binhoard.disk import disk_full, free_bytes, says_no_space
from binhoard.domain.errors import DiskFullError, ServerError
from binhoard.domain.manifest import LsnRange, SnapshotPosition
from binhoard.server.mycnf import FileOwner, read_server_options, server_file_owner
from binhoard.server.process import find_executable

READ_SIZE = 1024 * 1024
# What mariabackup writes into its work directory (its log, the LSN files): a few KiB;
# less free than this there explains a backup whose log is missing.
WORK_DIR_SPACE = 1024 * 1024
# mariabackup reads the data files with O_DIRECT, 10 MiB at a time, and writes nothing
# while it waits for the disk. Reading its output ahead into this many chunks (of at most
# READ_SIZE) lets it go back to the disk at once while the compressor works on what came
# before; with only the pipe in between, disk and CPU took turns more often.
READ_AHEAD = 24
_POLL_SECONDS = 0.1
# Pipes to and from mariabackup and mbstream are enlarged from Linux's 64 KiB to this, so
# that neither side waits for the other at every 64 KiB (two cores: every wake-up of the
# other side preempts a compression thread). 1 MiB is the unprivileged maximum.
PIPE_SIZE = 1024 * 1024
# mbstream's writer threads. Extraction spends its time in the kernel, putting the files
# into the page cache; one thread made it the slowest stage of a restore (two cores:
# 2.6-4.5 s -> 1.5-1.8 s for the 1.1 GiB bench stream, `zstd -d | mbstream -x`).
EXTRACT_THREADS = 2

_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """``preexec_fn`` of every tool binhoard starts: the kernel kills the tool when the
    thread that started it ends, so a binhoard killed with ``kill -9`` (or a daemon that
    stopped) leaves no mariabackup or mbstream running on as an orphan, writing into
    the work directory or datadir the next run cleans up or resumes."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_POSITION = re.compile(
    r"filename '(?P<file>[^']+)', position '(?P<pos>\d+)'"
    r"(?:, GTID of the last change '(?P<gtid>[^']*)')?"
)


# What mariabackup names the files it writes beside the data (``--extra-lsndir``, and
# inside the stream): MariaDB 11.1 renamed ``xtrabackup_<what>`` to
# ``mariadb_backup_<what>``. The newer name is looked for first.
BACKUP_FILE_PREFIXES = ("mariadb_backup_", "xtrabackup_")


def backup_file(directory: Path, what: str) -> Path | None:
    """``directory``'s ``mariadb_backup_<what>`` or ``xtrabackup_<what>`` (``what`` is
    ``checkpoints``, ``info``, ``binlog_info``, ...), whichever mariabackup wrote; None
    if neither exists."""
    for prefix in BACKUP_FILE_PREFIXES:
        path = directory / f"{prefix}{what}"
        if path.exists():
            return path
    return None


def parse_binlog_position(text: str) -> SnapshotPosition | None:
    """The snapshot position from mariabackup's stderr or its ``info`` file; None if absent."""
    matches = list(_POSITION.finditer(text))
    if not matches:
        return None
    match = matches[-1]  # the last one printed is the consistent snapshot
    return SnapshotPosition(
        binlog_file=match["file"],
        binlog_pos=int(match["pos"]),
        gtid_position=match["gtid"] or "",
    )


def parse_checkpoints(text: str) -> LsnRange:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    try:
        return LsnRange(
            from_lsn=int(values["from_lsn"]),
            to_lsn=int(values["to_lsn"]),
            last_lsn=int(values["last_lsn"]),
        )
    except (KeyError, ValueError) as exc:
        raise ServerError(f"mariabackup's checkpoints file is incomplete: {exc}") from None


def client_defaults(server_cnf: Path, client: ClientParams) -> bytes:
    """A defaults file for mariabackup: the server's own my.cnf plus our credentials.

    mariabackup accepts only one ``--defaults-file`` and refuses ``--defaults-extra-file``
    after it, so the credentials go into a file of ours that ``!include``s the server's.
    """
    lines = [f"!include {server_cnf}", "[mariabackup]", f"user={client.user}"]
    password = client.password.get_secret_value()
    if password:
        lines.append(f"password={password}")
    if client.unix_socket is not None:
        lines.append(f"socket={client.unix_socket}")
    else:
        lines += [f"host={client.host}", f"port={client.port}", "protocol=TCP"]
    return ("\n".join(lines) + "\n").encode()


def client_defaults_fd(server_cnf: Path, client: ClientParams) -> int:
    """``client_defaults`` in an anonymous in-memory file (memfd); returns its descriptor.

    The password never reaches a disk: the child inherits the descriptor and reads it as
    ``--defaults-file=/dev/fd/N`` (a fresh open each time, so mariabackup's several passes
    over its defaults all see the whole file), and it vanishes with the last process that
    holds it, however that process ends: a ``kill -9`` leaves nothing behind.
    """
    fd = os.memfd_create("binhoard-client.cnf", os.MFD_CLOEXEC)
    try:
        data = memoryview(client_defaults(server_cnf, client))
        while data:
            data = data[os.write(fd, data) :]
        # A memfd is created with mode 0777, and mysys skips a world-writable config file
        # with only a warning (then mariabackup would connect as root without a password).
        os.fchmod(fd, 0o400)
    except BaseException:
        os.close(fd)
        raise
    return fd


class BackupStream:
    """The running ``mariabackup --backup --stream=xbstream``: iterate for its bytes, then
    ``finish()`` for the snapshot position and LSN range."""

    def __init__(self, process: subprocess.Popen[bytes], work_dir: Path, stderr: Path) -> None:
        self._process = process
        self._work_dir = work_dir
        self._stderr = stderr
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes]:
        """mariabackup's output, read ahead by a thread of its own (see READ_AHEAD)."""
        stdout = self._process.stdout
        assert stdout is not None
        ahead: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=READ_AHEAD)
        stop = threading.Event()
        # The thread reads its own descriptor and closes it: ``backup()`` may close
        # ``stdout`` while the thread is still inside a read.
        reader = threading.Thread(
            target=_read_ahead,
            args=(os.dup(stdout.fileno()), ahead, stop),
            name="mariabackup-read-ahead",
            daemon=True,  # blocked in read() only until mariabackup writes or exits
        )
        reader.start()
        try:
            while True:
                item = ahead.get()
                if isinstance(item, BaseException):
                    raise item
                if not item:
                    return
                self.bytes_read += len(item)
                yield item
        finally:
            stop.set()

    def finish(self) -> tuple[SnapshotPosition, LsnRange]:
        code = self._process.wait()
        log = self._stderr.read_text(errors="replace")
        if code != 0:
            if says_no_space(log) or self._work_dir_full():
                raise self._disk_full()
            raise ServerError(f"mariabackup failed (exit {code}):\n{_tail(log)}")
        position = parse_binlog_position(log)
        if position is None:
            info = backup_file(self._work_dir, "info")
            position = parse_binlog_position(info.read_text()) if info is not None else None
        if position is None:
            if self._work_dir_full():
                # Its log (where it reports the position) could not be written.
                raise self._disk_full()
            raise ServerError("mariabackup did not report a binlog position: is log_bin ON?")
        checkpoints = backup_file(self._work_dir, "checkpoints")
        if checkpoints is None:
            raise ServerError(
                f"mariabackup left no mariadb_backup_checkpoints (nor xtrabackup_checkpoints) "
                f"in {self._work_dir}"
            )
        return position, parse_checkpoints(checkpoints.read_text())

    def _work_dir_full(self) -> bool:
        free = free_bytes(self._work_dir)
        return free is not None and free < WORK_DIR_SPACE

    def _disk_full(self) -> DiskFullError:
        # The LSN directory is in backup-<id>/, which the caller removes: name the
        # temporary_directory it is in.
        return disk_full(
            self._work_dir.parent.parent,
            what="temporary_directory, mariabackup's log and LSN files",
            needed=WORK_DIR_SPACE,
            then="free space, then take the backup again",
        )

    def kill(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()
        self._process.wait()


class MariaBackup:
    """The ``mariabackup`` tool of the MariaDB flavour (the server port's ``BackupTool``)
    for the server of ``server_cnf``, whose datadir is ``datadir``."""

    def __init__(self, server_cnf: Path, client: ClientParams, datadir: Path) -> None:
        self.server_cnf = server_cnf
        self.client = client
        self.datadir = datadir

    @functools.cached_property
    def binary(self) -> str:
        """Looked for when first needed: a host without it can still show its status."""
        # mariadb-backup is the name since 10.5 (mariabackup a symlink kept for now).
        return find_executable("mariadb-backup", "mariabackup")

    def version(self) -> str:
        result = subprocess.run(
            [self.binary, "--version"], capture_output=True, text=True, check=False
        )
        return (result.stdout + result.stderr).strip().splitlines()[0]

    def option_file(self) -> bytes:
        return self.server_cnf.read_bytes()

    def estimated_size(self) -> int:
        """Roughly what mariabackup will stream: the datadir without the redo log."""
        total = 0
        for path in self.datadir.rglob("*"):
            if path.name.startswith(("ib_logfile", "ibtmp")):
                continue
            try:
                if path.is_file():
                    total += path.stat().st_size
            except OSError:
                continue
        return total

    def files_owner(self, datadir: Path) -> FileOwner:
        """The server's user (``server_file_owner``): mariabackup leaves the files it
        restores to whoever ran it (root), and a server running as mysql then cannot
        write them (Errcode 13 on ddl_recovery.log at start)."""
        return server_file_owner(read_server_options(self.server_cnf), datadir)

    @contextlib.contextmanager
    def backup(
        self, work_dir: Path, *, incremental_lsn: int | None = None, parallel: int = 1
    ) -> Iterator[BackupStream]:
        """Starts a streamed backup; ``work_dir`` receives only the LSN files and logs.

        Leaving the ``with`` block early (an exception in the consumer) kills mariabackup.
        """
        work_dir.mkdir(parents=True, exist_ok=True)
        lsn_dir = work_dir / "lsn"
        lsn_dir.mkdir(exist_ok=True)
        defaults = client_defaults_fd(self.server_cnf, self.client)
        args = [
            self.binary,
            f"--defaults-file=/dev/fd/{defaults}",
            "--backup",
            "--stream=xbstream",
            f"--extra-lsndir={lsn_dir}",
            f"--target-dir={lsn_dir}",
            f"--parallel={parallel}",
        ]
        if incremental_lsn is not None:
            args.append(f"--incremental-lsn={incremental_lsn}")
        stderr_path = work_dir / "mariabackup.log"
        try:
            with stderr_path.open("wb") as stderr:
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=stderr,
                    pass_fds=(defaults,),
                    preexec_fn=die_with_parent,  # noqa: PLW1509 - prctl only, async-signal-safe
                )
        finally:
            os.close(defaults)  # mariabackup holds its own copy for as long as it runs
        if process.stdout is not None:
            _enlarge_pipe(process.stdout.fileno())
        stream = BackupStream(process, lsn_dir, stderr_path)
        try:
            yield stream
        except BaseException:
            stream.kill()
            raise
        finally:
            if process.stdout is not None:
                process.stdout.close()

    # --- restore side ------------------------------------------------------------
    def extract(self, chunks: Iterable[bytes], target: Path) -> int:
        """Feeds an xbstream into ``mbstream -x -C target``; returns the bytes fed."""
        target.mkdir(parents=True, exist_ok=True)
        mbstream = find_executable("mbstream")
        # Its messages are kept in memory: a log file in the directory being filled
        # would be empty exactly when the disk is full.
        log = os.fdopen(os.memfd_create("mbstream-log"), "w+b")
        with log:
            process = subprocess.Popen(
                [mbstream, "-x", f"--parallel={EXTRACT_THREADS}", "-C", str(target)],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - prctl only, async-signal-safe
            )
            fed = self._feed(process, chunks)
            code = process.wait()
            if code != 0:
                log.seek(0)
                output = log.read().decode(errors="replace")
                if says_no_space(output):
                    raise DiskFullError(str(target.parent), what="mbstream -x")
                raise ServerError(f"mbstream -x failed (exit {code}):\n{_tail(output)}")
        return fed

    @staticmethod
    def _feed(process: subprocess.Popen[bytes], chunks: Iterable[bytes]) -> int:
        fed = 0
        assert process.stdin is not None
        _enlarge_pipe(process.stdin.fileno())
        try:
            for chunk in chunks:
                process.stdin.write(chunk)
                fed += len(chunk)
            process.stdin.close()
        except BrokenPipeError:
            pass  # mbstream died; its exit code and log say why
        except BaseException:
            process.kill()
            process.wait()
            raise
        return fed

    def prepare(self, target: Path, incremental_dir: Path | None = None) -> None:
        args = [self.binary, "--prepare", f"--target-dir={target}"]
        if incremental_dir is not None:
            args.append(f"--incremental-dir={incremental_dir}")
        _run(args, "mariabackup --prepare", target.parent)

    def move_back(self, target: Path, datadir: Path) -> None:
        """Moves a prepared backup into ``datadir`` (which must be empty)."""
        _run(
            [
                self.binary,
                f"--defaults-file={self.server_cnf}",
                "--move-back",
                f"--target-dir={target}",
                f"--datadir={datadir}",
            ],
            "mariabackup --move-back",
            datadir,
        )


def _read_ahead(fd: int, ahead: queue.Queue[bytes | BaseException], stop: threading.Event) -> None:
    """Reads ``fd`` into ``ahead`` until its end (an empty chunk), an error or ``stop``;
    closes ``fd``."""
    try:
        while not stop.is_set():
            item: bytes | BaseException
            try:
                # Whatever the pipe holds, up to READ_SIZE: one system call.
                item = os.read(fd, READ_SIZE)
            except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
                item = exc
            while True:
                if stop.is_set():
                    return
                try:
                    ahead.put(item, timeout=_POLL_SECONDS)
                    break
                except queue.Full:
                    continue
            if not isinstance(item, bytes) or not item:
                return
    finally:
        os.close(fd)


def _enlarge_pipe(fd: int) -> None:
    """Best effort: a pipe keeps working at its default size if Linux refuses."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def _run(args: list[str], what: str, writes_to: Path) -> None:
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=die_with_parent,  # prctl only: safe between fork and exec
    )
    if result.returncode != 0:
        output = result.stderr + result.stdout
        if says_no_space(output):
            raise DiskFullError(str(writes_to), what=what)
        raise ServerError(f"{what} failed (exit {result.returncode}):\n{_tail(output)}")


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
