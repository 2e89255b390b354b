"""The alarm state machine (CONTRACT §4), pure: each transition takes the instant and the
alarm's current state and returns the new state, the columns to write and the effects to carry
out, or refuses with `IllegalTransition`. The alarm services apply them with a compare-and-set
on the row's generation.

    prealarm --cancel by the worker--> cancelled
    prealarm --window over----------> escalating
    (raised) --start----------------> escalating
    prealarm | escalating --ack-----> acknowledged --resolve--> resolved
    notice: one SMS, no transitions at all
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

# a deadline this close is due (timers fire a hair early or late)
EPS = 0.001


class AlarmState(StrEnum):
    PREALARM = "prealarm"
    ESCALATING = "escalating"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"
    NOTICE = "notice"


# still running: steps (or the pre-alarm window) go on until someone acknowledges
RUNNING: frozenset[AlarmState] = frozenset({AlarmState.PREALARM, AlarmState.ESCALATING})
# open: on the retained alarm topic, counted in alarms_open
OPEN: frozenset[AlarmState] = RUNNING | {AlarmState.ACKNOWLEDGED}


class Effect(StrEnum):
    STOP_TIMER = "stop_timer"  # the alarm's deadline is dropped
    CANCEL_STEPS = "cancel_steps"  # pending step rows cancelled, the sender told to drop its own
    TELL_DEVICE = "tell_device"  # the worker's device hears the new state
    PUBLISH = "publish"  # the retained alarm topic shows the new state (or is cleared)
    CLOSED = "closed"  # no longer open
    RUN_STEPS = "run_steps"  # the steps due now go out
    TELL_WORKER_OK = "tell_worker_ok"  # those already paged hear that the worker reports OK


class IllegalTransition(ValueError):
    """A transition the state machine does not have; `reason` is a stable code."""

    def __init__(self, action: str, state: AlarmState, reason: str) -> None:
        super().__init__(f"cannot {action} an alarm that is {state}")
        self.action = action
        self.state = state
        self.reason = reason


@dataclass(frozen=True)
class Change:
    state: AlarmState
    values: dict[str, Any] = field(default_factory=dict)  # columns to write (with the state)
    effects: tuple[Effect, ...] = ()

    def columns(self) -> dict[str, Any]:
        return {"state": self.state.value, **self.values}


def acknowledge(state: AlarmState, *, now: float, by: str, via: str) -> Change:
    """A guard acknowledges: escalation stops; nothing already pending may still go out."""
    if state in RUNNING:
        return Change(
            AlarmState.ACKNOWLEDGED,
            {"acknowledged_by": by, "acknowledged_at": now, "ack_via": via, "next_due_at": None},
            (Effect.STOP_TIMER, Effect.CANCEL_STEPS, Effect.TELL_DEVICE, Effect.PUBLISH),
        )
    if state in (AlarmState.ACKNOWLEDGED, AlarmState.RESOLVED):
        raise IllegalTransition("acknowledge", state, "already_acknowledged")
    if state is AlarmState.NOTICE:
        raise IllegalTransition("acknowledge", state, "not_found")  # a notice is no alarm
    raise IllegalTransition("acknowledge", state, "not_open")


def resolve(state: AlarmState, *, now: float, by: str, note: str) -> Change:
    """An acknowledged alarm is closed with a note; only an acknowledged one."""
    if state is AlarmState.ACKNOWLEDGED:
        return Change(
            AlarmState.RESOLVED,
            {"resolved_at": now, "resolved_by": by, "note": note},
            (Effect.PUBLISH, Effect.CLOSED),
        )
    if state is AlarmState.NOTICE:
        raise IllegalTransition("resolve", state, "not_found")
    raise IllegalTransition("resolve", state, "not_acknowledged")


def worker_cancel(state: AlarmState, *, now: float, worker_ok_at: float | None) -> Change | None:
    """The worker presses cancel. In the pre-alarm window the alarm is cancelled; once it
    escalates it is not (the worker may be forced to), but those paged hear the worker reports
    OK, once. Any other state: nothing changes (the device is answered with the state)."""
    if state is AlarmState.PREALARM:
        return Change(
            AlarmState.CANCELLED,
            {"cancelled_at": now},
            (Effect.STOP_TIMER, Effect.PUBLISH, Effect.CLOSED),
        )
    if state is AlarmState.ESCALATING and worker_ok_at is None:
        return Change(AlarmState.ESCALATING, {"worker_ok_at": now}, (Effect.TELL_WORKER_OK,))
    return None


def start_escalation(state: AlarmState, *, now: float, started_at: float | None) -> Change:
    """Escalation begins: from the pre-alarm window, or for an alarm raised escalating."""
    if state is AlarmState.PREALARM or (state is AlarmState.ESCALATING and started_at is None):
        return Change(
            AlarmState.ESCALATING,
            {"escalation_started_at": now},
            (Effect.RUN_STEPS, Effect.PUBLISH),
        )
    raise IllegalTransition("start escalating", state, "not_prealarm")


def prealarm_expired(state: AlarmState, *, now: float, until: float | None) -> Change | None:
    """The pre-alarm deadline fired: escalation starts, and the device hears it; None while
    the window is still open (a timer that fired early)."""
    if state is not AlarmState.PREALARM:
        raise IllegalTransition("end the pre-alarm of", state, "not_prealarm")
    if until is not None and until > now + EPS:
        return None
    change = start_escalation(state, now=now, started_at=None)
    return Change(change.state, change.values, (*change.effects, Effect.TELL_DEVICE))
