"""A local stand-in for Twilio's REST API (Messages.json and Calls.json) on 127.0.0.1.

It checks HTTP basic auth like Twilio, answers with Twilio-shaped JSON, records every request,
and fails on demand (5xx/429 bursts, invalid numbers, slow or hanging answers), so transports and
the daemon are tested end to end without the internet.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email.utils
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from aiohttp import web
from twilio.request_validator import RequestValidator

from jaa_gateway.config import TwilioSection

Kind = Literal["sms", "call"]

_E164_RE = re.compile(r"\+[1-9][0-9]{6,14}")


@dataclass(frozen=True)
class Recorded:
    """One request that reached the double. ``sid`` is None unless it was accepted (201)."""

    kind: Kind
    to: str
    from_: str
    body: str | None
    twiml: str | None
    status_callback: str | None
    form: dict[str, str]
    at: float  # time.monotonic() on arrival
    sid: str | None
    http_status: int | None  # what the double answered; None: it never answered (hang)
    peer: tuple[str, int] | None  # client address: one port for many requests = one connection
    authorization_ok: bool
    # time.time() on arrival: to compare with the daemon's stored epoch instants. Not derived
    # from `at`: the wall clock may be slewed (seen here: 5 ms/s), so the two drift apart
    wall: float = 0.0


@dataclass
class _Failure:
    status: int
    code: int | None
    message: str


@dataclass
class TwilioDouble:
    account_sid: str = "AC" + "0123456789abcdef" * 2
    auth_token: str = field(default_factory=lambda: secrets.token_hex(16))
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        self.attempts: list[Recorded] = []
        self._fail_next: list[_Failure] = []
        self._fail_numbers: dict[str, _Failure] = {}
        self._delay = 0.0
        self._hang = False
        self._release = asyncio.Event()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> TwilioDouble:
        app = web.Application()
        app.router.add_post(
            "/2010-04-01/Accounts/{sid}/{resource:Messages|Calls}.json", self._handle
        )
        # Short shutdown: a hung handler must not hold a test for aiohttp's default 60 s.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self._sock = sock
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        return self

    async def stop(self) -> None:
        self._release.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def __aenter__(self) -> TwilioDouble:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def section(self, **overrides: Any) -> TwilioSection:
        """A [twilio] config section pointing at this double."""
        values: dict[str, Any] = {
            "account_sid": self.account_sid,
            "auth_token": self.auth_token,
            "from_number": "+4722000000",
            "api_base": self.api_base,
            "request_timeout": 2,
        }
        values.update(overrides)
        return TwilioSection.model_validate(values)

    # ------------------------------------------------------------------ failure on demand
    def fail_next(self, n: int, status: int = 500, code: int | None = None) -> None:
        """The next ``n`` requests (SMS or call) fail with ``status`` and a Twilio error body."""
        if n < 1 or not 400 <= status <= 599:
            raise ValueError("fail_next needs n >= 1 and a 4xx/5xx status")
        # Twilio's generic codes follow the HTTP status (20429, 20500, 20503); a caller may pick.
        failure = _Failure(status, code if code is not None else 20000 + status, _reason(status))
        self._fail_next.extend([failure] * n)

    def fail_number(self, to: str, status: int = 400, code: int = 21211) -> None:
        """Every request to ``to`` fails (by default: Twilio's 21211, invalid 'To' number)."""
        self._fail_numbers[to] = _Failure(
            status, code, f"The 'To' number {to} is not a valid phone number."
        )

    def set_delay(self, seconds: float) -> None:
        """Answer every request this late (the request is recorded on arrival)."""
        if seconds < 0:
            raise ValueError("a delay cannot be negative")
        self._delay = seconds

    def hang(self) -> None:
        """Accept requests but never answer them (until reset() or stop())."""
        self._hang = True
        self._release.clear()

    def reset(self) -> None:
        """Forget failures, delays, hangs and recordings."""
        self._fail_next.clear()
        self._fail_numbers.clear()
        self._delay = 0.0
        self._hang = False
        self._release.set()
        self._release = asyncio.Event()
        self.attempts.clear()

    # ------------------------------------------------------------------ inspection
    @property
    def accepted(self) -> list[Recorded]:
        return [r for r in self.attempts if r.sid is not None]

    @property
    def sms(self) -> list[Recorded]:
        return [r for r in self.accepted if r.kind == "sms"]

    @property
    def calls(self) -> list[Recorded]:
        return [r for r in self.accepted if r.kind == "call"]

    async def wait_for(
        self,
        count_or_predicate: int | Callable[[TwilioDouble], bool],
        timeout: float = 5.0,
    ) -> list[Recorded]:
        """Wait until ``count`` requests were accepted, or until ``predicate(double)`` holds.

        Returns the accepted requests; AssertionError (with what did arrive) on timeout.
        """
        if isinstance(count_or_predicate, int):
            count = count_or_predicate

            def done(d: TwilioDouble) -> bool:
                return len(d.accepted) >= count
        else:
            done = count_or_predicate
        try:
            async with asyncio.timeout(timeout):
                while not done(self):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            seen = [(r.kind, r.to, r.http_status) for r in self.attempts]
            raise AssertionError(
                f"twilio double: condition not met within {timeout} s; requests seen: {seen}"
            ) from None
        return self.accepted

    # ------------------------------------------------------------------ the API
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        arrived_wall = time.time()
        kind: Kind = "sms" if request.match_info["resource"] == "Messages" else "call"
        form = {k: str(v) for k, v in (await request.post()).items()}
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peer = (str(peername[0]), int(peername[1])) if peername else None
        auth_ok = self._authorized(request.headers.get("Authorization"))
        answer = self._decide(request.match_info["sid"], kind, form, auth_ok)
        status, payload = answer if answer is not None else (None, None)
        sid = payload.get("sid") if status == 201 and payload is not None else None
        self.attempts.append(
            Recorded(
                kind=kind,
                to=form.get("To", ""),
                from_=form.get("From", ""),
                body=form.get("Body") if kind == "sms" else None,
                twiml=form.get("Twiml") if kind == "call" else None,
                status_callback=form.get("StatusCallback"),
                form=form,
                at=arrived,
                sid=sid,
                http_status=status,
                peer=peer,
                authorization_ok=auth_ok,
                wall=arrived_wall,
            )
        )
        self._changed.set()
        if status is None or payload is None:
            await self._release.wait()
            return web.json_response(_error(503, 20503, "Service Unavailable"), status=503)
        if self._delay:
            await asyncio.sleep(self._delay)
        return web.json_response(payload, status=status)

    def _decide(
        self, path_sid: str, kind: Kind, form: Mapping[str, str], auth_ok: bool
    ) -> tuple[int, dict[str, Any]] | None:
        if not auth_ok:
            return 401, _error(401, 20003, "Authenticate")
        if path_sid != self.account_sid:
            return 404, _error(404, 20404, "The requested resource was not found")
        if self._hang:
            return None
        if self._fail_next:
            f = self._fail_next.pop(0)
            return f.status, _error(f.status, f.code, f.message)
        to = form.get("To", "")
        if to in self._fail_numbers:
            f = self._fail_numbers[to]
            return f.status, _error(f.status, f.code, f.message)
        if not to:
            return 400, _error(400, 21604, "A 'To' phone number is required.")
        if not _E164_RE.fullmatch(to):
            return 400, _error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not form.get("From"):
            return 400, _error(400, 21603, "A 'From' phone number is required.")
        if kind == "sms" and not form.get("Body"):
            return 400, _error(400, 21602, "Message body is required.")
        if kind == "call" and not (form.get("Twiml") or form.get("Url")):
            return 400, _error(400, 21205, "Url parameter is required.")
        if kind == "call" and len(form.get("Twiml", "")) > 4000:
            return 400, _error(400, 21206, "Twiml exceeds the 4000 character limit.")
        return 201, self._resource(kind, form)

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, _, password = decoded.partition(":")
        return secrets.compare_digest(user, self.account_sid) and secrets.compare_digest(
            password, self.auth_token
        )

    def _resource(self, kind: Kind, form: Mapping[str, str]) -> dict[str, Any]:
        now = email.utils.formatdate(usegmt=True)
        prefix, collection = ("SM", "Messages") if kind == "sms" else ("CA", "Calls")
        sid = prefix + secrets.token_hex(16)
        uri = f"/2010-04-01/Accounts/{self.account_sid}/{collection}/{sid}.json"
        common: dict[str, Any] = {
            "sid": sid,
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "direction": "outbound-api",
            "from": form.get("From"),
            "to": form.get("To"),
            "status": "queued",
            "price": None,
            "price_unit": "USD",
            "uri": uri,
        }
        if kind == "sms":
            return common | {
                "body": form.get("Body"),
                "date_sent": None,
                "error_code": None,
                "error_message": None,
                "messaging_service_sid": None,
                "num_media": "0",
                "num_segments": "1",
                "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            }
        return common | {
            "answered_by": None,
            "caller_name": None,
            "duration": None,
            "end_time": None,
            "forwarded_from": None,
            "parent_call_sid": None,
            "phone_number_sid": None,
            "start_time": None,
            "to_formatted": form.get("To"),
            "from_formatted": form.get("From"),
            "subresource_uris": {},
        }


def _error(status: int, code: int | None, message: str) -> dict[str, Any]:
    more = f"https://www.twilio.com/docs/errors/{code}" if code is not None else None
    return {"code": code, "message": message, "more_info": more, "status": status}


def _reason(status: int) -> str:
    return {
        429: "Too Many Requests",
        500: "Internal Server Error",
        502: "Bad Gateway",
        503: "Service Unavailable",
    }.get(status, f"HTTP error {status}")


def sign_webhook(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """The X-Twilio-Signature Twilio would send when it posts ``params`` to ``url``."""
    return str(RequestValidator(auth_token).compute_signature(url, dict(params)))


@pytest.fixture
async def twilio_double() -> AsyncIterator[TwilioDouble]:
    double = TwilioDouble()
    await double.start()
    try:
        yield double
    finally:
        await double.stop()
