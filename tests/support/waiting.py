"""Waiting on a condition with a deadline: how tests wait for something to happen
(never a sleep of a guessed length)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 60) -> None:
    """Returns once ``condition()`` is true; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
