"""The ticket between the HTTP side and the controller: wake-up calls for waiters that
must not block a thread."""

from __future__ import annotations

import logging

import pytest

from binhoard.daemon.port import RotateBinlog, Ticket
from binhoard.domain.errors import ConflictError


def test_a_waiter_is_woken_now_and_on_every_change() -> None:
    ticket = Ticket(RotateBinlog())
    seen: list[tuple[bool, bool]] = []
    ticket.add_callback(lambda: seen.append((ticket.is_decided, ticket.is_done)))
    assert seen == [(False, False)]  # at once: a change before registering is not missed
    ticket.accept()
    ticket.finish()
    assert seen == [(False, False), (True, False), (True, True)]
    assert ticket.error is None

    late: list[bool] = []
    ticket.add_callback(lambda: late.append(ticket.is_done))
    assert late == [True]


def test_a_refusal_is_decided_and_done_with_its_error() -> None:
    ticket = Ticket(RotateBinlog())
    woken: list[int] = []
    ticket.add_callback(lambda: woken.append(1))
    ticket.refuse(ConflictError("mode is idle"))
    assert (ticket.is_decided, ticket.is_done, len(woken)) == (True, True, 2)
    assert isinstance(ticket.error, ConflictError)
    assert ticket.wait_done(0)


def test_a_failing_callback_does_not_stop_the_controller(caplog: pytest.LogCaptureFixture) -> None:
    ticket = Ticket(RotateBinlog())
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        if len(calls) > 1:
            raise RuntimeError("event loop closed")

    ticket.add_callback(broken)
    ticket.add_callback(lambda: calls.append("next"))
    with caplog.at_level(logging.ERROR):
        ticket.finish()  # the controller's thread: must not raise
    assert calls == ["broken", "next", "broken", "next"]
    assert "wake-up callback failed" in caplog.text
