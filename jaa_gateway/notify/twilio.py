"""The Twilio transport: one attempt per call, every failure mapped to a `TransportError`.

Traps of twilio 9.13 handled here (see STYLE.md): the async HTTP client must be built inside the
running loop, its ``timeout`` is ignored (each request runs under ``asyncio.timeout``), its own
retries are not used (the outbox retries, also on 429 and network errors), and network failures
arrive as raw aiohttp/OS exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import structlog
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from jaa_gateway.config import TwilioSection
from jaa_gateway.notify.base import SendResult, TransportError, check_call, check_sms

log = structlog.get_logger(__name__)

# twilio-python logs every request at INFO through stdlib logging (URL and headers, never the
# Authorization header); that is noise next to our own events, so only its warnings pass.
_http_log = logging.getLogger("jaa_gateway.notify.twilio_http")
_http_log.setLevel(logging.WARNING)

# 4xx answers that say "not now" rather than "never".
_TRANSIENT_4XX = frozenset({408, 409, 429})


class _RebasedHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """Sends every request to ``api_base`` (a proxy or a test double) instead of twilio.com."""

    def __init__(self, api_base: str, session: aiohttp.ClientSession) -> None:
        # pool_connections=False keeps the parent from building its own session; ours is set below.
        super().__init__(pool_connections=False, logger=_http_log)
        self.session = session
        base = urlsplit(api_base)
        self._scheme = base.scheme
        self._netloc = base.netloc
        self._prefix = base.path.rstrip("/")

    def rebase(self, url: str) -> str:
        parts = urlsplit(url)
        return urlunsplit(
            (self._scheme, self._netloc, self._prefix + parts.path, parts.query, parts.fragment)
        )

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Any:
        if auth is not None:
            # aiohttp 3.14 deprecates BasicAuth and ``auth=`` (which twilio uses): send the header.
            headers = dict(headers or {})
            headers["Authorization"] = _basic_auth(*auth)
        return await super().request(
            method,
            self.rebase(url),
            params=params,
            data=data,
            headers=headers,
            auth=None,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )


class TwilioNotifier:
    """`Notifier` over Twilio's REST API (Messages.json and Calls.json).

    One aiohttp session with a keep-alive pool is shared by all requests, so an alarm's first SMS
    does not pay for a TCP and TLS handshake when the connection is warm. aiohttp turns on
    TCP_NODELAY for its client connections (``BaseProtocol.connection_made``), so a small POST is
    not held back by Nagle's algorithm.
    """

    def __init__(
        self,
        section: TwilioSection,
        *,
        keepalive_timeout: float = 30.0,
        max_connections: int = 20,
    ) -> None:
        self._section = section
        self._timeout = section.request_timeout.total_seconds()
        if self._timeout <= 0:
            raise ValueError("[twilio] request_timeout must be longer than 0 s")
        if keepalive_timeout <= 0 or max_connections < 1:
            raise ValueError("keepalive_timeout must be > 0 and max_connections >= 1")
        self._keepalive_timeout = keepalive_timeout
        self._max_connections = max_connections
        self._http: _RebasedHttpClient | None = None
        self._client: Any = None
        self._closed = False

    @property
    def api_base(self) -> str:
        return self._section.api_base

    async def start(self) -> None:
        """Build the HTTP client in the running loop and load twilio's modules.

        Call it at start-up: otherwise the first send does it and pays ~80 ms for imports.
        """
        self._ensure_client()

    def _ensure_client(self) -> Any:
        if self._closed:
            raise TransportError("the Twilio notifier is closed", permanent=False)
        if self._client is None:
            # Must run inside the event loop: aiohttp binds the session to the running loop.
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                keepalive_timeout=self._keepalive_timeout,
                ttl_dns_cache=300,
            )
            session = aiohttp.ClientSession(connector=connector)
            self._http = _RebasedHttpClient(self._section.api_base, session)
            self._client = Client(
                self._section.account_sid,
                self._section.auth_token.get_secret_value(),
                http_client=self._http,
            )
            # twilio imports its resource modules on first attribute access (~80 ms here); pay
            # that now, not when the first alarm SMS is on its way.
            _ = (self._client.messages, self._client.calls)
        return self._client

    async def send_sms(
        self, to: str, body: str, *, status_callback: str | None = None
    ) -> SendResult:
        check_sms(to, body)
        client = self._ensure_client()

        def create() -> Awaitable[Any]:
            return client.messages.create_async(  # type: ignore[no-any-return]
                to=to,
                from_=self._section.from_number,
                body=body,
                status_callback=status_callback,
            )

        return await self._attempt("sms", create)

    async def place_call(
        self, to: str, twiml: str, *, status_callback: str | None = None
    ) -> SendResult:
        check_call(to, twiml)
        client = self._ensure_client()

        def create() -> Awaitable[Any]:
            return client.calls.create_async(  # type: ignore[no-any-return]
                to=to,
                from_=self._section.from_number,
                twiml=twiml,
                status_callback=status_callback,
            )

        return await self._attempt("call", create)

    async def aclose(self) -> None:
        self._closed = True
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    async def _attempt(self, channel: str, create: Callable[[], Awaitable[Any]]) -> SendResult:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                instance = await create()
        except Exception as exc:  # every failure becomes a TransportError; see _classify
            err = _classify(exc, self._timeout)
            log.warning(
                "twilio_request_failed",
                channel=channel,
                error=err.message,
                permanent=err.permanent,
                status=err.status,
                code=err.code,
                elapsed_ms=round((time.monotonic() - started) * 1000, 1),
            )
            raise err from exc
        sid = getattr(instance, "sid", None)
        if not isinstance(sid, str) or not sid:
            # Twilio answered 2xx without an id: it may or may not have sent; at-least-once says
            # try again (a duplicate beats a miss).
            raise TransportError("Twilio accepted the request but returned no SID", permanent=False)
        status = getattr(instance, "status", None)
        log.debug(
            "twilio_request_accepted",
            channel=channel,
            sid=sid,
            elapsed_ms=round((time.monotonic() - started) * 1000, 1),
        )
        return SendResult(sid=sid, status=None if status is None else str(status))


def _classify(exc: Exception, timeout: float) -> TransportError:
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = _as_int(exc.status)
        code = _as_int(exc.code)
        if isinstance(exc, TwilioRestException):
            detail = str(exc.msg)
        else:
            detail = str(exc.detail or exc.title)
        permanent = status is not None and 400 <= status < 500 and status not in _TRANSIENT_4XX
        return TransportError(
            f"Twilio answered HTTP {status} (code {code}): {detail}",
            permanent=permanent,
            status=status,
            code=code,
        )
    if isinstance(exc, TimeoutError):
        return TransportError(f"no answer from Twilio within {timeout:g} s", permanent=False)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TransportError(
            f"network error talking to Twilio: {type(exc).__name__}: {exc}", permanent=False
        )
    if isinstance(exc, json.JSONDecodeError):
        return TransportError("Twilio's answer was not readable JSON", permanent=False)
    if isinstance(exc, TwilioException):
        return TransportError(f"Twilio client error: {exc}", permanent=False)
    # Unknown failure: keep the notification alive for another attempt rather than lose it.
    return TransportError(f"unexpected error sending: {type(exc).__name__}: {exc}", permanent=False)


def _basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
