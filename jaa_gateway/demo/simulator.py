"""Devices and door readers that speak the MQTT contract (CONTRACT §3).

Used by the demo's scripted actors and by `jaa-gateway device` / `jaa-gateway door`. Every event
is checked with the gateway's own edge parser before it is sent, so a tool that says "published"
published something the gateway accepts, and a bad option is refused before anything is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import aiomqtt

from jaa_gateway.adapters.events import Rejected, parse_message
from jaa_gateway.topics import is_valid_id

Kind = Literal["device", "door"]


def new_event_id(prefix: str = "cli") -> str:
    """A fresh event id: unique per sender, as the contract asks."""
    return f"{prefix}-{secrets.token_hex(6)}"


def event_topic(prefix: str, kind: Kind, sender: str) -> str:
    return f"{prefix}/{kind}/{sender}/event"


def cmd_topic(prefix: str, kind: Kind, sender: str) -> str:
    return f"{prefix}/{kind}/{sender}/cmd"


def build_event(
    prefix: str,
    kind: Kind,
    sender: str,
    etype: str,
    fields: dict[str, Any],
    *,
    event_id: str,
    now: dt.datetime,
) -> tuple[str, dict[str, Any]]:
    """(topic, payload) of one contract event; `Rejected` when the gateway would drop it."""
    if not is_valid_id(sender):
        raise Rejected("bad_topic", f"{sender!r} is not a valid {kind} id")
    topic = event_topic(prefix, kind, sender)
    payload: dict[str, Any] = {"id": event_id, "type": etype}
    payload.update({k: v for k, v in fields.items() if v is not None})
    payload["ts"] = now.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    parse_message(prefix, topic, encode(payload), now)
    return topic, payload


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Received:
    topic: str
    raw: bytes
    retain: bool
    at: float  # time.monotonic()
    payload: dict[str, Any] | None = field(default=None)

    @property
    def type(self) -> str | None:
        t = self.payload.get("type") if self.payload else None
        return t if isinstance(t, str) else None


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


class MqttActor:
    """One MQTT client: subscribes, publishes QoS 1, and keeps what it receives.

    ``async with MqttActor(host, port, "jaa-0042", topics=[...]) as a:`` ... ``a.wait_for(pred)``.
    """

    def __init__(
        self,
        host: str,
        port: int,
        name: str,
        *,
        topics: list[str],
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        on_message: Callable[[MqttActor, Received], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.topics = topics
        # a username: amqtt never queues anonymous sessions, and mosquitto's ACL needs a login
        self.username = username or name
        self.password = password
        self.tls_ca = tls_ca
        self.on_message = on_message
        self.received: list[Received] = []
        self._arrived = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MqttActor:
        tls = None
        if self.tls_ca:
            tls = aiomqtt.TLSParameters(ca_certs=self.tls_ca, cert_reqs=ssl.CERT_REQUIRED)
        # a random suffix: two tools with one client id would throw each other off the broker
        client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=f"{self.name}-{secrets.token_hex(3)}",
            username=self.username,
            password=self.password,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            timeout=10,
            tls_params=tls,
        )
        await client.__aenter__()
        self._client = client
        try:
            if self.topics:
                await client.subscribe([(t, 1) for t in self.topics])
        except BaseException:
            await client.__aexit__(None, None, None)
            raise
        self._reader = asyncio.create_task(self._read(client), name=f"mqtt-{self.name}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
        self._client = None

    async def _read(self, client: aiomqtt.Client) -> None:
        async for m in client.messages:
            # amqtt hands a new subscriber retained messages of other topics: keep ours only
            if not any(m.topic.matches(t) for t in self.topics):
                continue
            raw = m.payload if isinstance(m.payload, bytes) else str(m.payload or "").encode()
            rec = Received(
                topic=m.topic.value,
                raw=raw,
                retain=bool(m.retain),
                at=time.monotonic(),
                payload=_decode(raw),
            )
            self.received.append(rec)
            self._arrived.set()
            if self.on_message is not None:
                self.on_message(self, rec)

    async def publish(self, topic: str, payload: dict[str, Any]) -> None:
        """QoS 1: returns once the broker has acknowledged the message."""
        if self._client is None:
            raise RuntimeError("the MQTT client is not connected")
        await self._client.publish(topic, encode(payload), qos=1)

    def mark(self) -> int:
        """A cursor: `wait_for(..., since=a.mark())` only looks at messages after this point."""
        return len(self.received)

    async def wait_for(
        self, pred: Callable[[Received], bool], timeout: float, since: int = 0
    ) -> Received | None:
        """The first message from `since` on that matches, or None after `timeout` seconds."""
        i = since
        try:
            async with asyncio.timeout(timeout):
                while True:
                    while i < len(self.received):
                        if pred(self.received[i]):
                            return self.received[i]
                        i += 1
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            return None


async def send_and_listen(
    *,
    host: str,
    port: int,
    topic: str,
    payload: dict[str, Any],
    answers: str,
    wait: float,
    username: str | None,
    password: str | None,
    tls_ca: str | None,
    write: Callable[[str], None],
) -> int:
    """Publish one event (from `build_event`) and print what arrives on `answers` for `wait` s.

    Returns the number of answers received; `aiomqtt.MqttError` when the broker cannot be
    reached. The subscription is made before the publish, so no answer can be missed.
    """
    event_id = payload.get("id")
    t0 = time.monotonic()

    def show(actor: MqttActor, rec: Received) -> None:
        tag = " (answers this event)" if rec.payload and rec.payload.get("re") == event_id else ""
        body = rec.raw.decode("utf-8", "replace") or "(empty)"
        write(f"{rec.at - t0:6.2f}s  <- {rec.topic}{tag}\n         {body}")

    sender = topic.split("/")[-2]
    async with MqttActor(
        host,
        port,
        f"jaa-cli-{sender}",
        topics=[answers],
        # the broker's ACL pins a login to its own topics (%u = the device or door id)
        username=username or sender,
        password=password,
        tls_ca=tls_ca,
        on_message=show,
    ) as actor:
        await actor.publish(topic, payload)
        write(f"{time.monotonic() - t0:6.2f}s  -> {topic} (QoS 1, acknowledged by the broker)")
        write(f"         {encode(payload).decode('utf-8')}")
        if wait > 0:
            write(f"listening on {answers} for {wait:g} s ...")
            await asyncio.sleep(wait)
        return len(actor.received)
