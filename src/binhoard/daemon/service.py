"""``binhoard daemon``: the process. Wires the controller, its workers and the HTTP
API, then waits for signals on the main thread.

* SIGTERM, SIGINT: stop within ``STOP_SECONDS``. The controller's loop ends after its
  step, the workers are cancelled (a backup removes what it stored, an upload or a
  restore stops where it is, resumable) and waited for; whatever still runs after
  that is left as ``kill -9`` would leave it, which every operation resumes from; the
  tools it started (mariabackup, mbstream) die with the process
  (``server/backup_tool.py``, ``die_with_parent``). A server a restore started does
  not: it outlives the daemon by design.
* SIGHUP: the configuration file is read again. Keys the running daemon can take
  (``RELOADABLE``) are applied to the work started from then on; if any other key
  changed, nothing is applied, and the log and ``GET /status`` (``config_reload_error``)
  name the keys that need a restart (or why the file could not be read).

Signals are blocked in every thread and taken with ``sigtimedwait`` on the main one,
so that no handler ever runs inside a lock a thread holds.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path

from binhoard.config import Settings, load_settings
from binhoard.daemon.api import HttpServer
from binhoard.daemon.controller import Controller, Reload
from binhoard.daemon.state import StateStore
from binhoard.daemon.workers import OpsDoers
from binhoard.domain.errors import BinhoardError
from binhoard.localstate import exclusive
from binhoard.metrics import Metrics

log = logging.getLogger("binhoard.daemon")

STOP_SECONDS = 10.0
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# Top-level keys a running daemon applies on SIGHUP: each job reads them when it starts
# (backup schedule and counts, sites and their keys, restore limits, the replication
# account of a seeding restore). Others (the
# server, state and temporary directories, HTTP, statsd, Sentry) are wired once.
RELOADABLE = frozenset(
    {
        "backup_settings",
        "backup_sites",
        "binlog_purge_settings",
        "replication",
        "restore_max_binlog_bytes",
        "restore_parallel_threads",
        "restore_test",
    }
)


def run(config_file: Path, settings: Settings, metrics: Metrics) -> None:
    """Runs the daemon until SIGTERM or SIGINT; raises ``BinhoardError`` if it cannot
    start (or its controller died). ``metrics`` is the process's registry (its
    telemetry, started by the command)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # inherited by every thread started
    with exclusive(settings.state_directory / "daemon.lock", "a daemon on this state_directory"):
        controller = Controller(
            settings,
            StateStore.open(settings.state_directory),
            OpsDoers(settings, metrics),
            metrics=metrics,
        )
        token = settings.http_auth_token
        http = HttpServer(
            controller,
            address=settings.http_address,
            port=settings.http_port,
            auth_token=token.get_secret_value() if token is not None else None,
        )
        loop = threading.Thread(target=controller.run, name="binhoard-controller", daemon=True)
        loop.start()
        try:
            http.start()
            log.info("binhoard daemon running (mode %s)", controller.snapshot().status.mode)
            _wait_for_signals(config_file, controller, loop)
        finally:
            _stop(controller, loop, http)
    if not loop.is_alive() and controller.crashed is not None:
        raise BinhoardError(f"the daemon's controller stopped: {controller.crashed}")


def _wait_for_signals(config_file: Path, controller: Controller, loop: threading.Thread) -> None:
    while loop.is_alive():
        received = signal.sigtimedwait(SIGNALS, 1.0)
        if received is None:
            continue
        if received.si_signo == signal.SIGHUP:
            reload_config(config_file, controller)
            continue
        log.info("stopping (%s)", signal.Signals(received.si_signo).name)
        return


def _stop(controller: Controller, loop: threading.Thread, http: HttpServer) -> None:
    deadline = time.monotonic() + STOP_SECONDS - 1  # a second for what follows
    controller.stop()
    http.stop(timeout=1.0)
    loop.join(max(0.0, deadline - time.monotonic()))
    if not loop.is_alive():
        controller.store.close()  # else a step still runs: the process's exit closes it
    if not controller.shutdown(max(0.0, deadline - time.monotonic())):
        # Its tools (mariabackup, mbstream) die with this process (die_with_parent).
        log.warning(
            "work still running after %g s is left as it is: resumable, or cleaned up "
            "by the next run",
            STOP_SECONDS,
        )
    log.info("stopped")


def reload_config(config_file: Path, controller: Controller) -> None:
    """SIGHUP: applies the file again if only ``RELOADABLE`` keys changed. The
    controller logs the outcome and shows a refusal in ``GET /status``."""
    try:
        new = load_settings(config_file)
    except BinhoardError as exc:
        controller.reload(Reload(None, refused=exc.message))
        return
    changed = changed_keys(controller.settings, new)
    restart = sorted(changed - RELOADABLE)
    if restart:
        why = (
            f"{', '.join(restart)} changed, which needs a restart of the daemon (it keeps "
            "running with the configuration it has)"
        )
        controller.reload(Reload(None, refused=why))
        return
    controller.reload(Reload(new, changed=tuple(sorted(changed))))


def changed_keys(old: Settings, new: Settings) -> set[str]:
    """Top-level keys whose values differ (secrets compared, never shown)."""
    return {name for name in Settings.model_fields if getattr(old, name) != getattr(new, name)}
