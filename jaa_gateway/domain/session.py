"""A session's check-in and overrun state machines (CONTRACT §4), pure: each deadline takes the
instant and the session's current state and says what to write, when to look again, and
whether to ask the worker to check in or to raise the alarm. Illegal transitions are refused
with `IllegalTransition`.

    check-in:  none | waiting --interval over--> due --grace over--> alarmed
               waiting | due | alarmed --check-in--> waiting
    overrun:   none --ends_at--> due --grace over--> alarmed
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from jaa_gateway.domain.alarm import EPS


class CheckinState(StrEnum):
    NONE = "none"  # no check-in interval
    WAITING = "waiting"  # the next check-in is due at checkin_due_at
    DUE = "due"  # asked; the grace runs until checkin_grace_until
    ALARMED = "alarmed"  # missed: a missed_checkin alarm was raised


class OverrunState(StrEnum):
    NONE = "none"  # before ends_at
    DUE = "due"  # past ends_at; the grace runs
    ALARMED = "alarmed"  # a session_overrun alarm was raised


class IllegalTransition(ValueError):
    def __init__(self, action: str, state: str) -> None:
        super().__init__(f"cannot {action} a session whose state is {state!r}")
        self.action = action
        self.state = state


@dataclass(frozen=True)
class Step:
    # columns to write ({}: none); states as plain strings, as the store keeps them
    values: dict[str, Any] = field(default_factory=dict)
    timer: float | None = None  # when to look again (None: no timer)
    ask: bool = False  # the device is asked to check in (checkin_due), with `grace`
    alarm: bool = False  # the session's alarm is raised


def checkin_due(state: CheckinState, *, due_at: float, grace: float) -> Step:
    if state is not CheckinState.WAITING:
        raise IllegalTransition("ask for a check-in of", state)
    until = due_at + grace
    return Step(
        {"checkin_state": CheckinState.DUE.value, "checkin_grace_until": until}, until, ask=True
    )


def checkin_missed(state: CheckinState) -> Step:
    if state is not CheckinState.DUE:
        raise IllegalTransition("raise a missed check-in for", state)
    return Step({"checkin_state": CheckinState.ALARMED.value}, alarm=True)


def checked_in(state: CheckinState, *, now: float, interval_s: float | None) -> Step:
    """The worker checked in: the next one is due an interval from now (nothing without one)."""
    if not interval_s:
        return Step()
    if state is CheckinState.NONE:
        raise IllegalTransition("take a check-in for", state)
    due = now + interval_s
    values = {"checkin_due_at": due, "checkin_state": CheckinState.WAITING.value}
    return Step(values | {"checkin_grace_until": None}, due)


def checkin_deadline(
    state: CheckinState,
    *,
    now: float,
    due_at: float | None,
    grace_until: float | None,
    grace: float,
) -> Step:
    """The check-in timer fired (maybe early, maybe for a state that moved on)."""
    if state is CheckinState.WAITING:
        if due_at is None:
            return Step()
        if due_at > now + EPS:
            return Step(timer=due_at)
        return checkin_due(state, due_at=due_at, grace=grace)
    if state is CheckinState.DUE:
        if grace_until is not None and grace_until > now + EPS:
            return Step(timer=grace_until)
        return checkin_missed(state)
    return Step()


def checkin_timer(
    state: CheckinState, *, due_at: float | None, grace_until: float | None
) -> float | None:
    """When the check-in timer of a session in `state` fires (None: it has none)."""
    if state is CheckinState.WAITING:
        return due_at
    if state is CheckinState.DUE:
        return grace_until
    return None


def overrun_timer(state: OverrunState, *, ends_at: float, grace: float) -> float | None:
    if state is OverrunState.NONE:
        return ends_at
    if state is OverrunState.DUE:
        return ends_at + grace
    return None


def overrun_deadline(state: OverrunState, *, now: float, ends_at: float, grace: float) -> Step:
    """The overrun timer fired: past ends_at the worker is asked; past the grace, the alarm."""
    if state is OverrunState.NONE:
        if ends_at > now + EPS:
            return Step(timer=ends_at)
        return Step({"overrun_state": OverrunState.DUE.value}, ends_at + grace, ask=True)
    if state is OverrunState.DUE:
        if ends_at + grace > now + EPS:
            return Step(timer=ends_at + grace)
        return Step({"overrun_state": OverrunState.ALARMED.value}, alarm=True)
    return Step()
