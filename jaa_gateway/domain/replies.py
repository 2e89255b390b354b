"""A guard's SMS reply: "OK 1234" acknowledges alarm 1234, a bare "OK" the one open alarm.

`parse_sms_reply` reads the text; `choose_alarm` decides which alarm it means. Both are pure.

Strict on purpose: an acknowledgement stops the calls, so only a reply that is plainly "OK" with
an optional 4-digit code counts. Case, spacing and obvious punctuation ("ok, 1234", "OK #1234",
"OK 1234!") are forgiven; a code inside other text, or a code of the wrong length, is not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from jaa_gateway.domain.alarm import RUNNING, AlarmState

# Longer than any sane "OK 1234" reply, however punctuated; cheap rejection of long bodies.
_MAX_REPLY: Final = 40

# Explicit [oO][kK] and [0-9]: re.IGNORECASE would also accept the Kelvin sign, and \\d any
# script's digits.
_REPLY_RE: Final = re.compile(r"[oO][kK][\s,.:;#\-]*(?P<code>[0-9]{4})?[\s.!]*")


@dataclass(frozen=True, slots=True)
class SmsReply:
    code: str | None


def parse_sms_reply(body: str) -> SmsReply | None:
    """Return the reply's code (None for a bare OK), or None when it is not an acknowledgement."""
    if not isinstance(body, str):
        return None
    text = body.strip()
    if len(text) > _MAX_REPLY:
        return None
    m = _REPLY_RE.fullmatch(text)
    if m is None:
        return None
    return SmsReply(code=m.group("code"))


@dataclass(frozen=True, slots=True)
class OpenAlarm:
    """An open alarm (prealarm, escalating or acknowledged) as one sender's reply sees it."""

    id: str
    code: str
    state: str
    acknowledged_by: str | None
    notified: bool  # an alarm SMS or call of it went to this sender


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """Ask the alarm service to acknowledge this alarm (it still checks who may)."""

    alarm: OpenAlarm


@dataclass(frozen=True, slots=True)
class AlreadyAcknowledged:
    """Tell the sender who is already on the way."""

    alarm: OpenAlarm


@dataclass(frozen=True, slots=True)
class Refuse:
    problem: Literal["unknown_code", "ambiguous", "no_open_alarm"]


SmsAckChoice = Acknowledge | AlreadyAcknowledged | Refuse


def choose_alarm(reply: SmsReply, open_alarms: Sequence[OpenAlarm]) -> SmsAckChoice:
    """Which alarm a guard's "OK" means; ``open_alarms`` oldest first.

    "OK 1234" means the escalating alarm with code 1234 the sender was told about. Failing that,
    any open alarm with that code: one the sender was not told about is still handed to the
    alarm service, which refuses it and audits the refusal (rather than "unknown code"); an
    acknowledged one (it keeps its code until resolved) answers who is already on the way.
    A bare "OK" means the one escalating alarm the sender was told about: none or several is
    refused, since guessing could stop the calls for the wrong alarm.
    """
    candidates = [a for a in open_alarms if a.state in RUNNING and a.notified]
    if reply.code is not None:
        chosen = [a for a in candidates if a.code == reply.code] or [
            a for a in open_alarms if a.code == reply.code
        ]
        if not chosen:
            return Refuse("unknown_code")
        if chosen[0].state == AlarmState.ACKNOWLEDGED:
            return AlreadyAcknowledged(chosen[0])
        return Acknowledge(chosen[0])
    if not candidates:
        return Refuse("no_open_alarm")
    if len(candidates) > 1:
        return Refuse("ambiguous")
    return Acknowledge(candidates[0])
