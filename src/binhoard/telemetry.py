"""Error reports: the ``binhoard.errors`` counter and, when ``sentry_dsn`` is set, Sentry.

:func:`report_error` is the one place an error is reported: it counts it in
``binhoard.errors`` (kind = the error's class, where = the command or daemon task) and
sends it to Sentry if it is worth a person's attention (:func:`reportable`): any
exception that is not a ``BinhoardError`` (a bug), and every ``BinhoardError`` whose
``http_status`` is 5xx (the server, storage, a disk, or binhoard itself failed). 4xx
errors (bad usage or configuration, something not found, a conflict) are the caller's
to fix and are only counted.

Sentry is set up by :func:`init_sentry` and nowhere else, and only when ``sentry_dsn``
is set (``sentry_sdk`` is imported then, not before: it costs ~100 ms of start-up).
What it may send is kept small on purpose:

* no local variables of stack frames (``include_local_variables=False``): a frame of
  ``sql.connect`` holds the password in clear;
* no default integrations: only log records as breadcrumbs (INFO and above; binhoard
  never logs a secret), de-duplication, and sending what is queued at exit. In
  particular no ``stdlib`` HTTP breadcrumbs (URLs may carry a SAS token) and no events
  from log records: an archive stall logged at ERROR every pass would be one event
  every two seconds;
* every secret of the settings (passwords, keys, tokens, the DSN) is replaced by
  ``[Filtered]`` wherever it appears in an event or breadcrumb, as a last guard;
* the DSN is never logged (``debug=False``, whatever ``SENTRY_DEBUG`` says).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr

from binhoard import __version__
from binhoard.config import Settings
from binhoard.domain.errors import BinhoardError
from binhoard.metrics import Metrics, record_error

if TYPE_CHECKING:
    from sentry_sdk.transport import Transport

FILTERED = "[Filtered]"
_active = False


def reportable(exc: BaseException) -> bool:
    """Whether ``exc`` goes to Sentry: a bug, or a ``BinhoardError`` with a 5xx status."""
    if isinstance(exc, BinhoardError):
        return exc.http_status >= 500
    return isinstance(exc, Exception)  # not KeyboardInterrupt, SystemExit


def report_error(
    exc: BaseException, metrics: Metrics | None, where: str, *, to_sentry: bool = True
) -> None:
    """Counts ``exc`` (if there is a registry) and sends it to Sentry if it is set up,
    the error is :func:`reportable` and ``to_sentry`` (False: only counted, e.g. the
    same failure again on the next pass of a loop). Never raises: reporting must not
    hide the error being reported."""
    if metrics is not None:
        try:
            record_error(metrics, exc, where)
        except Exception:
            logging.getLogger("binhoard.telemetry").exception("cannot count an error")
    if _active and to_sentry and reportable(exc):
        import sentry_sdk  # noqa: PLC0415 - imported once Sentry is set up, see module doc

        with sentry_sdk.new_scope() as scope:
            scope.set_tag("where", where)
            sentry_sdk.capture_exception(exc)


def secret_values(value: object) -> set[str]:
    """Every secret string in ``value`` (settings, or any part of them)."""
    found: set[str] = set()
    for item in _walk(value):
        if isinstance(item, SecretStr):
            secret = item.get_secret_value()
            if secret:
                found.add(secret)
    return found


def _walk(value: object) -> Iterator[object]:
    yield value
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _walk(item)


def scrub(value: Any, secrets: set[str]) -> Any:
    """``value`` (an event, as JSON-like data) with every secret replaced by
    ``[Filtered]``, in strings and in dictionary keys."""
    if isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, FILTERED)
        return value
    if isinstance(value, dict):
        return {scrub(k, secrets): scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v, secrets) for v in value]
    return value


def init_sentry(settings: Settings, *, transport: Transport | None = None) -> bool:
    """Sets up Sentry if ``sentry_dsn`` is set; returns whether it did. ``transport``
    replaces the HTTP one (tests). Tags of ``statsd.tags`` become Sentry tags, as in
    MyHoard, so that both point at the same host."""
    global _active  # noqa: PLW0603 - Sentry's client is process-wide, and so is this
    if settings.sentry_dsn is None:
        return False
    import sentry_sdk  # noqa: PLC0415 - see the module doc
    from sentry_sdk.integrations.atexit import AtexitIntegration  # noqa: PLC0415
    from sentry_sdk.integrations.dedupe import DedupeIntegration  # noqa: PLC0415
    from sentry_sdk.integrations.logging import LoggingIntegration  # noqa: PLC0415

    secrets = secret_values(settings)

    def before_send(event: Any, hint: Any) -> Any:
        return scrub(event, secrets)

    def before_breadcrumb(crumb: Any, hint: Any) -> Any:
        return scrub(crumb, secrets)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        transport=transport,
        release=f"binhoard@{__version__}",
        server_name=socket.gethostname(),
        debug=False,
        default_integrations=False,
        auto_enabling_integrations=False,
        integrations=[
            LoggingIntegration(level=logging.INFO, event_level=None),
            DedupeIntegration(),
            # Sends what is queued when the process exits (an error a command ends
            # with), silently: the default prints to stderr.
            AtexitIntegration(callback=lambda pending, timeout: None),
        ],
        include_local_variables=False,
        # No send_default_pii (deprecated in favour of data_collection): unset, no
        # personal data is sent and Sentry's own scrubber stays on.
        auto_session_tracking=False,
        before_send=before_send,
        before_breadcrumb=before_breadcrumb,
    )
    for key, value in settings.statsd.tags.items():
        sentry_sdk.get_global_scope().set_tag(key, value)
    _active = True
    return True


def shutdown_sentry(timeout: float = 2.0) -> None:
    """Sends what is queued (waiting at most ``timeout`` seconds) and stops reporting.
    Long-running commands call it when they stop; it is safe to call when Sentry was
    never set up."""
    global _active  # noqa: PLW0603 - see init_sentry
    if not _active:
        return
    import sentry_sdk  # noqa: PLC0415

    _active = False
    client = sentry_sdk.get_client()
    client.close(timeout=timeout)
    sentry_sdk.get_global_scope().set_client(None)
