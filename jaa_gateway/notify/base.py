"""What every notification transport promises: send an SMS, place a call, fail with a typed error.

The outbox (the caller) owns retries and bookkeeping; a transport makes exactly one attempt and
reports either a provider id (`SendResult`) or a `TransportError` that says whether another
attempt could ever succeed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

# E.164: "+", a non-zero country digit, at most 15 digits in all. Config already normalises
# numbers with phonenumbers; this guards the transport against anything that slipped past.
_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")

# Twilio's limits: longer bodies are rejected (21617) and longer TwiML is refused outright.
MAX_SMS_CHARS = 1600
MAX_TWIML_CHARS = 4000


class TransportError(Exception):
    """One failed attempt to hand a notification to the provider.

    ``permanent`` is True when repeating the same request cannot succeed (an invalid number, a
    rejected body, bad credentials); False when a later attempt may (timeouts, 429, 5xx, network).
    ``status`` is the provider's HTTP status and ``code`` its error code, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        status: int | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.status = status
        self.code = code

    def __repr__(self) -> str:
        return (
            f"TransportError({self.message!r}, permanent={self.permanent}, "
            f"status={self.status}, code={self.code})"
        )


@dataclass(frozen=True)
class SendResult:
    """The provider accepted the request: its id (Twilio SID) and initial status."""

    sid: str
    status: str | None


class Notifier(Protocol):
    async def send_sms(
        self, to: str, body: str, *, status_callback: str | None = None
    ) -> SendResult: ...

    async def place_call(
        self, to: str, twiml: str, *, status_callback: str | None = None
    ) -> SendResult: ...

    async def aclose(self) -> None: ...


def check_sms(to: str, body: str) -> None:
    """Reject what no provider could deliver, before anything leaves the process."""
    check_number(to)
    if not body.strip():
        raise TransportError("the SMS body is empty", permanent=True)
    if len(body) > MAX_SMS_CHARS:
        raise TransportError(
            f"the SMS body has {len(body)} characters; at most {MAX_SMS_CHARS} can be sent",
            permanent=True,
        )


def check_call(to: str, twiml: str) -> None:
    check_number(to)
    if not twiml.strip():
        raise TransportError("the call has no TwiML", permanent=True)
    if len(twiml) > MAX_TWIML_CHARS:
        raise TransportError(
            f"the call TwiML has {len(twiml)} characters; at most {MAX_TWIML_CHARS} are accepted",
            permanent=True,
        )


def check_number(to: str) -> None:
    if not _E164_RE.fullmatch(to):
        raise TransportError(f"{to!r} is not a phone number in E.164 form", permanent=True)
