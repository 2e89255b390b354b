"""Which alarm a guard's SMS "OK" means (`domain.replies.choose_alarm`), at exact inputs."""

from __future__ import annotations

import pytest

from jaa_gateway.domain.replies import (
    Acknowledge,
    AlreadyAcknowledged,
    OpenAlarm,
    Refuse,
    SmsAckChoice,
    SmsReply,
    choose_alarm,
)


def alarm(
    aid: str, code: str, state: str = "escalating", notified: bool = True, by: str | None = None
) -> OpenAlarm:
    return OpenAlarm(id=aid, code=code, state=state, acknowledged_by=by, notified=notified)


A = alarm("alm-a", "1234")
B = alarm("alm-b", "5678")
PRE = alarm("alm-p", "4321", state="prealarm")
ACKED = alarm("alm-k", "1111", state="acknowledged", by="kari")
UNTOLD = alarm("alm-u", "2222", notified=False)
# codes are unique among open alarms only while that is possible
A_TWIN_UNTOLD = alarm("alm-t", "1234", notified=False)
A_TWIN = alarm("alm-a2", "1234")

CASES: list[tuple[str, str | None, list[OpenAlarm], SmsAckChoice]] = [
    ("bare OK, one alarm told", None, [A], Acknowledge(A)),
    ("bare OK, a prealarm told", None, [PRE], Acknowledge(PRE)),
    ("bare OK, nothing open", None, [], Refuse("no_open_alarm")),
    ("bare OK, only one not told", None, [UNTOLD], Refuse("no_open_alarm")),
    ("bare OK, only acknowledged", None, [ACKED], Refuse("no_open_alarm")),
    ("bare OK, two told", None, [A, B], Refuse("ambiguous")),
    ("bare OK, one told among others", None, [UNTOLD, ACKED, B], Acknowledge(B)),
    ("code of a told alarm", "5678", [A, B], Acknowledge(B)),
    ("code of nothing", "9999", [A, B], Refuse("unknown_code")),
    ("code with nothing open", "1234", [], Refuse("unknown_code")),
    ("code of an alarm not told: the service refuses it", "2222", [A, UNTOLD], Acknowledge(UNTOLD)),
    ("code of an acknowledged alarm", "1111", [A, ACKED], AlreadyAcknowledged(ACKED)),
    ("told twin wins over an older untold one", "1234", [A_TWIN_UNTOLD, A], Acknowledge(A)),
    ("two told twins: the oldest", "1234", [A, A_TWIN], Acknowledge(A)),
]


@pytest.mark.parametrize(
    ("name", "code", "open_alarms", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_choice(
    name: str, code: str | None, open_alarms: list[OpenAlarm], expected: SmsAckChoice
) -> None:
    assert choose_alarm(SmsReply(code=code), open_alarms) == expected


def test_an_acknowledged_twin_does_not_hide_a_told_one() -> None:
    acked_twin = alarm("alm-k2", "1234", state="acknowledged", by="ola")
    assert choose_alarm(SmsReply("1234"), [acked_twin, A]) == Acknowledge(A)
    assert choose_alarm(SmsReply("1234"), [acked_twin]) == AlreadyAcknowledged(acked_twin)
