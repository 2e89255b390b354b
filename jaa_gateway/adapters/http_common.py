"""What the HTTP API (`adapters/http.py`) and the Twilio webhooks (`adapters/twilio_webhooks.py`)
share: the core they call, and the error and TwiML responses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from jaa_gateway.alarms import AckResult
from jaa_gateway.config import Assessment
from jaa_gateway.wire import api as api_wire

MAX_BODY = 64 * 1024
# an id echoed back in an error is cut to this
ID_MAX = 64


class AlarmDesk(Protocol):
    """The commands the HTTP edge gives the core (reads go through `jaa_gateway.views`)."""

    @property
    def assessments(self) -> Mapping[str, Assessment]: ...

    async def ack(
        self, alarm_ids: list[str], *, by: str, via: str, person_id: str | None
    ) -> AckResult: ...

    async def resolve(
        self, alarm_id: str, *, by: str, note: str, via: str | None = None
    ) -> AckResult: ...

    async def put_assessment(self, a: Assessment, actor: str) -> str: ...


def error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response(api_wire.error(code, detail), status=status)


def xml(body: str) -> web.Response:
    return web.Response(text=body, content_type="text/xml")
