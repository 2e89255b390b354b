"""A notifier that prints instead of sending: the demo's transport, and a safe default."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from jaa_gateway.notify.base import SendResult, TransportError, check_call, check_sms
from jaa_gateway.notify.twiml import spoken_text


def _print_line(text: str) -> None:
    print(text, flush=True)


class ConsoleNotifier:
    """`Notifier` that writes each SMS and call as readable text.

    It checks its input like the Twilio transport does, so the demo fails the same way production
    would (an invalid number, an empty body, TwiML that is not TwiML).
    """

    def __init__(self, write: Callable[[str], None] = _print_line) -> None:
        self._write = write
        self._sms_ids = itertools.count(1)
        self._call_ids = itertools.count(1)
        self._closed = False

    async def send_sms(
        self, to: str, body: str, *, status_callback: str | None = None
    ) -> SendResult:
        self._check_open()
        check_sms(to, body)
        sid = f"CONSOLE-SM-{next(self._sms_ids):06d}"
        lines = body.strip().splitlines() or [""]
        self._write(f"SMS  to {to} [{sid}]: {lines[0]}")
        for line in lines[1:]:
            self._write(f"     {line}")
        return SendResult(sid=sid, status="queued")

    async def place_call(
        self, to: str, twiml: str, *, status_callback: str | None = None
    ) -> SendResult:
        self._check_open()
        check_call(to, twiml)
        try:
            spoken = spoken_text(twiml)
        except ValueError as exc:
            raise TransportError(f"the call TwiML is invalid: {exc}", permanent=True) from exc
        sid = f"CONSOLE-CA-{next(self._call_ids):06d}"
        said = " ".join(t for t in spoken if t) or "(nothing is said)"
        self._write(f"CALL to {to} [{sid}]: \u00ab{said}\u00bb")
        return SendResult(sid=sid, status="queued")

    async def start(self) -> None:
        """Nothing to prepare; present so both transports start the same way."""

    async def aclose(self) -> None:
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError("the console notifier is closed", permanent=False)
