"""Progress for people: a bar with bytes, rate and ETA on a terminal, log lines otherwise."""

from __future__ import annotations

import sys
import time
from types import TracebackType

import click
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class ByteProgress:
    """``update(phase, done, total)`` from any thread; shown at most a few times a second."""

    def __init__(self, title: str, *, interactive: bool | None = None) -> None:
        self.title = title
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._last_line = 0.0
        self._last_phase = ""

    def __enter__(self) -> ByteProgress:
        if self.interactive:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=None)
        return self

    def update(self, phase: str, done: int, total: int | None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task,
                description=f"{self.title}: {phase}",
                completed=done,
                total=max(total, done) if total else None,
            )
            return
        now = time.monotonic()
        if phase != self._last_phase or now - self._last_line >= 10:
            self._last_phase, self._last_line = phase, now
            size = f" {done / 1e6:.1f} MB" + (f" of ~{total / 1e6:.1f} MB" if total else "")
            click.echo(f"{self.title}: {phase}{size if done else ''}", err=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()
