"""The alarm and session state machines (domain/alarm.py, domain/session.py) at exact instants:
every transition's new state, columns and effects, and every illegal one refused."""

from __future__ import annotations

import datetime as dt

import pytest

from jaa_gateway.domain import alarm as A
from jaa_gateway.domain import session as S
from jaa_gateway.domain.alarm import AlarmState, Effect
from jaa_gateway.domain.session import CheckinState, OverrunState

# 02:30 local on the night the clocks go back in Oslo (2026-10-25): instants are epoch seconds,
# so the machines never see the wall clock's repeated hour
T0 = dt.datetime(2026, 10, 25, 0, 30, tzinfo=dt.UTC).timestamp()


def test_states_are_the_stored_strings() -> None:
    assert AlarmState("escalating") is AlarmState.ESCALATING
    stored = "prealarm escalating acknowledged resolved cancelled notice"
    assert [s.value for s in AlarmState] == stored.split()
    assert A.RUNNING == {"prealarm", "escalating"}
    assert A.OPEN == {"prealarm", "escalating", "acknowledged"}
    with pytest.raises(ValueError):
        AlarmState("escalated")
    assert [s.value for s in CheckinState] == ["none", "waiting", "due", "alarmed"]
    assert [s.value for s in OverrunState] == ["none", "due", "alarmed"]


@pytest.mark.parametrize("state", [AlarmState.PREALARM, AlarmState.ESCALATING])
def test_acknowledge_a_running_alarm(state: AlarmState) -> None:
    c = A.acknowledge(state, now=T0, by="guard-1", via="sms")
    assert c.state is AlarmState.ACKNOWLEDGED
    assert c.columns() == {
        "state": "acknowledged",
        "acknowledged_by": "guard-1",
        "acknowledged_at": T0,
        "ack_via": "sms",
        "next_due_at": None,
    }
    assert type(c.columns()["state"]) is str  # stored as a plain string
    assert c.effects == (Effect.STOP_TIMER, Effect.CANCEL_STEPS, Effect.TELL_DEVICE, Effect.PUBLISH)


@pytest.mark.parametrize(
    ("state", "reason"),
    [
        (AlarmState.ACKNOWLEDGED, "already_acknowledged"),
        (AlarmState.RESOLVED, "already_acknowledged"),
        (AlarmState.CANCELLED, "not_open"),
        (AlarmState.NOTICE, "not_found"),
    ],
)
def test_acknowledge_refuses_what_is_not_running(state: AlarmState, reason: str) -> None:
    with pytest.raises(A.IllegalTransition, match=f"cannot acknowledge an alarm that is {state}"):
        A.acknowledge(state, now=T0, by="g", via="api")
    try:
        A.acknowledge(state, now=T0, by="g", via="api")
    except A.IllegalTransition as e:
        assert (e.reason, e.state, e.action) == (reason, state, "acknowledge")


def test_resolve_only_an_acknowledged_alarm() -> None:
    c = A.resolve(AlarmState.ACKNOWLEDGED, now=T0 + 60, by="op", note="false alarm")
    assert c.columns() == {
        "state": "resolved",
        "resolved_at": T0 + 60,
        "resolved_by": "op",
        "note": "false alarm",
    }
    assert c.effects == (Effect.PUBLISH, Effect.CLOSED)
    for state in (AlarmState.PREALARM, AlarmState.ESCALATING, AlarmState.RESOLVED):
        with pytest.raises(A.IllegalTransition) as e:
            A.resolve(state, now=T0, by="op", note="")
        assert e.value.reason == "not_acknowledged"
    with pytest.raises(A.IllegalTransition) as e:
        A.resolve(AlarmState.NOTICE, now=T0, by="op", note="")
    assert e.value.reason == "not_found"


def test_worker_cancel_cancels_a_prealarm_and_reports_ok_once_while_escalating() -> None:
    c = A.worker_cancel(AlarmState.PREALARM, now=T0, worker_ok_at=None)
    assert c is not None and c.columns() == {"state": "cancelled", "cancelled_at": T0}
    assert c.effects == (Effect.STOP_TIMER, Effect.PUBLISH, Effect.CLOSED)
    ok = A.worker_cancel(AlarmState.ESCALATING, now=T0, worker_ok_at=None)
    assert ok is not None and ok.columns() == {"state": "escalating", "worker_ok_at": T0}
    assert ok.effects == (Effect.TELL_WORKER_OK,)
    # told once: a second cancel changes nothing
    assert A.worker_cancel(AlarmState.ESCALATING, now=T0 + 5, worker_ok_at=T0) is None
    for state in (AlarmState.ACKNOWLEDGED, AlarmState.RESOLVED, AlarmState.CANCELLED):
        assert A.worker_cancel(state, now=T0, worker_ok_at=None) is None


def test_prealarm_expires_at_its_instant_not_before() -> None:
    until = T0 + 30
    assert A.prealarm_expired(AlarmState.PREALARM, now=until - 0.002, until=until) is None
    # within a millisecond counts as due (a timer fires a hair early)
    for now in (until - 0.001, until, until + 10):
        c = A.prealarm_expired(AlarmState.PREALARM, now=now, until=until)
        assert c is not None and c.columns() == {
            "state": "escalating",
            "escalation_started_at": now,
        }
        assert c.effects == (Effect.RUN_STEPS, Effect.PUBLISH, Effect.TELL_DEVICE)
    with pytest.raises(A.IllegalTransition, match="that is acknowledged"):
        A.prealarm_expired(AlarmState.ACKNOWLEDGED, now=until, until=until)


def test_start_escalation_once() -> None:
    c = A.start_escalation(AlarmState.ESCALATING, now=T0, started_at=None)  # raised escalating
    assert c.columns() == {"state": "escalating", "escalation_started_at": T0}
    assert c.effects == (Effect.RUN_STEPS, Effect.PUBLISH)
    assert A.start_escalation(AlarmState.PREALARM, now=T0, started_at=None).state == "escalating"
    with pytest.raises(A.IllegalTransition):
        A.start_escalation(AlarmState.ESCALATING, now=T0 + 1, started_at=T0)
    for state in (AlarmState.ACKNOWLEDGED, AlarmState.CANCELLED, AlarmState.NOTICE):
        with pytest.raises(A.IllegalTransition):
            A.start_escalation(state, now=T0, started_at=None)


# ---------------------------------------------------------------------- sessions


def test_checkin_comes_due_then_is_missed_at_exact_instants() -> None:
    due, grace = T0 + 900, 120.0
    early = S.checkin_deadline(
        CheckinState.WAITING, now=due - 0.5, due_at=due, grace_until=None, grace=grace
    )
    assert early == S.Step(timer=due)  # nothing written, looked at again at its time
    asked = S.checkin_deadline(
        CheckinState.WAITING, now=due, due_at=due, grace_until=None, grace=grace
    )
    assert asked.values == {"checkin_state": "due", "checkin_grace_until": due + grace}
    assert asked.timer == due + grace and asked.ask and not asked.alarm
    waiting = S.checkin_deadline(
        CheckinState.DUE, now=due + grace - 1, due_at=due, grace_until=due + grace, grace=grace
    )
    assert waiting == S.Step(timer=due + grace)
    missed = S.checkin_deadline(
        CheckinState.DUE, now=due + grace, due_at=due, grace_until=due + grace, grace=grace
    )
    assert missed.values == {"checkin_state": "alarmed"} and missed.alarm and missed.timer is None
    # a stale timer for a state that moved on does nothing
    for state in (CheckinState.NONE, CheckinState.ALARMED):
        assert S.checkin_deadline(state, now=due, due_at=due, grace_until=None, grace=1) == S.Step()


def test_checkin_transitions_refuse_the_wrong_state() -> None:
    with pytest.raises(S.IllegalTransition, match="'due'"):
        S.checkin_due(CheckinState.DUE, due_at=T0, grace=60)
    with pytest.raises(S.IllegalTransition, match="'waiting'"):
        S.checkin_missed(CheckinState.WAITING)
    with pytest.raises(S.IllegalTransition):
        S.checked_in(CheckinState.NONE, now=T0, interval_s=60)


def test_a_checkin_moves_the_next_one_an_interval_on() -> None:
    for state in (CheckinState.WAITING, CheckinState.DUE, CheckinState.ALARMED):
        step = S.checked_in(state, now=T0, interval_s=900)
        assert step.values == {
            "checkin_due_at": T0 + 900,
            "checkin_state": "waiting",
            "checkin_grace_until": None,
        }
        assert step.timer == T0 + 900
    assert S.checked_in(CheckinState.NONE, now=T0, interval_s=None) == S.Step()


def test_overrun_at_ends_at_then_alarm_after_the_grace() -> None:
    ends, grace = T0 + 3600, 300.0
    assert S.overrun_deadline(OverrunState.NONE, now=ends - 1, ends_at=ends, grace=grace) == (
        S.Step(timer=ends)
    )
    due = S.overrun_deadline(OverrunState.NONE, now=ends, ends_at=ends, grace=grace)
    assert due.values == {"overrun_state": "due"} and due.ask and due.timer == ends + grace
    assert S.overrun_deadline(OverrunState.DUE, now=ends + 299, ends_at=ends, grace=grace) == (
        S.Step(timer=ends + grace)
    )
    alarm = S.overrun_deadline(OverrunState.DUE, now=ends + grace, ends_at=ends, grace=grace)
    assert alarm.values == {"overrun_state": "alarmed"} and alarm.alarm and alarm.timer is None
    assert S.overrun_deadline(OverrunState.ALARMED, now=ends + grace, ends_at=ends, grace=1) == (
        S.Step()
    )


def test_timers_as_the_row_says() -> None:
    assert S.checkin_timer(CheckinState.WAITING, due_at=T0, grace_until=None) == T0
    assert S.checkin_timer(CheckinState.DUE, due_at=T0, grace_until=T0 + 60) == T0 + 60
    assert S.checkin_timer(CheckinState.ALARMED, due_at=T0, grace_until=T0 + 60) is None
    assert S.checkin_timer(CheckinState.NONE, due_at=None, grace_until=None) is None
    assert S.overrun_timer(OverrunState.NONE, ends_at=T0, grace=60) == T0
    assert S.overrun_timer(OverrunState.DUE, ends_at=T0, grace=60) == T0 + 60
    assert S.overrun_timer(OverrunState.ALARMED, ends_at=T0, grace=60) is None
