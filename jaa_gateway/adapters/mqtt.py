"""The MQTT edge: one aiomqtt connection in a reconnect loop (CONTRACT §3, §7.3, §7.4).

Why it is built this way:

* MQTT 3.1.1, ``clean_session=False`` and a fixed client id: the broker keeps our subscriptions
  and queues QoS 1 device events while we are away (MQTT v5's default clean start would lose
  them on every reconnect, see STYLE.md "Known traps").
* A fresh ``aiomqtt.Client`` per connection attempt, built inside the running loop. Reusing one
  client across reconnects keeps its "connected" future from the previous CONNACK, so the next
  ``async with`` would return before the broker has accepted us.
* aiomqtt acknowledges a message before we handle it; its iterator hands out what is already
  queued before reporting a lost connection, so on a disconnect (and on ``stop()``) the reader
  drains those messages to the handler rather than dropping them.
* Outgoing messages go through one ordered buffer (``adapters/mqtt_send.py``): sent in order
  with a small window in flight, parked while disconnected (bounded, oldest dropped), flushed in
  order after reconnecting. Retained topics (gateway status, alarm state) only need their
  latest value, so a newer retained message replaces a buffered older one.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

import aiomqtt
import structlog

from jaa_gateway.adapters.events import Rejected, parse_message
from jaa_gateway.adapters.mqtt_send import BUFFER_LIMIT, SendQueue, encode_payload
from jaa_gateway.adapters.mqtt_send import MAX_IN_FLIGHT as MAX_IN_FLIGHT  # re-exported
from jaa_gateway.aio import wait_event, within
from jaa_gateway.backoff import backoff_delay
from jaa_gateway.config import MqttSection
from jaa_gateway.domain.events import DeviceEvent, DoorEvent
from jaa_gateway.metrics import Metrics
from jaa_gateway.topics import Topics
from jaa_gateway.wire.mqtt import gateway_status

log = structlog.get_logger("jaa_gateway.mqtt")


# A safety product must be back quickly: first retry after ~0.1-0.2 s, never more than 5 s apart.
BACKOFF_BASE: Final = 0.2
BACKOFF_CAP: Final = 5.0
# A connection that lasted this long was healthy: the next drop retries at once again. Shorter
# ones keep backing off, so two gateways fighting over one client id do not spin.
STABLE_AFTER: Final = 10.0
# PINGREQ interval; the broker declares us dead (and publishes the will) after 1.5x this.
KEEPALIVE: Final = 15
OP_TIMEOUT: Final = 10.0
STOP_FLUSH_TIMEOUT: Final = 2.0
STOP_DRAIN_TIMEOUT: Final = 3.0
STOP_TIMEOUT: Final = 8.0

# paho writes to its own socket (not an asyncio transport, which would set TCP_NODELAY
# itself) and never turns Nagle off. With Nagle, an answer written right after the PUBACK of
# an inbound message waits in the kernel until the broker ACKs that PUBACK, and on a quiet
# broker that is its delayed ACK, ~40 ms later (issue 17). aiomqtt sets these right after the
# socket connects (TLS included), before the CONNACK.
SOCKET_OPTIONS: Final = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

EventHandler = Callable[[DeviceEvent | DoorEvent], Awaitable[None]]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _status(state: Literal["online", "offline"], node: str | None) -> bytes:
    """The retained gateway status; under hot standby (CONTRACT §8) it names the node."""
    body = gateway_status(state)
    if node is not None:
        body["node"] = node
    return encode_payload(body)


def reconnect_delay(attempt: int, rand: Callable[[], float] = random.random) -> float:
    """The pause before reconnect ``attempt`` (0 = the first): in [d/2, d],
    d = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)."""
    return backoff_delay(attempt + 1, base=BACKOFF_BASE, cap=BACKOFF_CAP, floor=0.5, rand=rand)


class MqttEdge:
    """The gateway's MQTT client. Run `run()` as a task; `stop()` ends it.

    `on_event` gets every accepted inbound event, one at a time, in arrival order; while it
    awaits, no further event is handed over (backpressure). `on_connect` runs after each
    successful (re)connect and subscribe, concurrently with event delivery; it is cancelled
    if that connection ends first and runs again on the next one. `on_state` is told every
    change of `connected` as it happens (synchronously: it must not block).
    """

    def __init__(
        self,
        section: MqttSection,
        metrics: Metrics,
        on_event: EventHandler,
        *,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        on_state: Callable[[bool], None] | None = None,
        clock: Callable[[], dt.datetime] = _utc_now,
        buffer_limit: int = BUFFER_LIMIT,
        node: str | None = None,
        may_connect: Callable[[], bool] = lambda: True,
    ) -> None:
        self._section = section
        # hot standby (CONTRACT §8): only the leader connects with the client id, and the
        # status names the node; a gateway alone passes neither
        self._may_connect = may_connect
        self._online = _status("online", node)
        self._offline = _status("offline", node)
        self._metrics = metrics
        self._on_event = on_event
        self._on_connect = on_connect
        self._on_state = on_state
        self._clock = clock
        self.prefix = section.topic_prefix
        self.topics = Topics(self.prefix)
        self.status_topic = self.topics.status
        self.subscriptions = self.topics.events

        self._connected = False
        self._running = False
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()

        self._out = SendQueue(buffer_limit)
        self.handler_errors = 0

    # ------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        """True from an accepted CONNACK (and our subscriptions in place) until that
        connection is lost or stopped; never on a refused or merely opened connection."""
        return self._connected

    @property
    def buffered(self) -> int:
        """Outgoing messages waiting to be sent."""
        return self._out.buffered

    @property
    def dropped_publishes(self) -> int:
        """Outgoing messages dropped (oldest first) because the buffer was full."""
        return self._out.dropped

    async def publish(
        self,
        topic: str,
        payload: dict[str, Any] | bytes | None,
        *,
        retain: bool = False,
        qos: int = 1,
        wait: bool = True,
    ) -> None:
        """Send a message; returns once the broker has it, or at once while disconnected.

        While disconnected the message waits in the buffer and goes out, in order, after the
        next connect. A call made while connected also returns (message parked) if the
        connection drops before the broker acknowledged it. ``wait=False`` returns as soon as
        the message is in the buffer (same order and redelivery): for callers that must not
        stall on a broker that hangs without closing the connection.
        """
        if qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"{topic!r} is not a topic to publish to")
        waiter = self._out.put(
            topic, encode_payload(payload), qos, retain, wait=self._connected and wait
        )
        if waiter is not None:
            await waiter

    async def run(self) -> None:
        """Connect, receive and send until `stop()`; reconnects with jittered backoff."""
        if self._running:
            raise RuntimeError("MqttEdge.run() is already running")
        self._running = True
        self._finished.clear()
        loop = asyncio.get_running_loop()
        attempt = 0
        try:
            while not self._stopping.is_set():
                if not self._may_connect():
                    # not the leader (any more): never take the persistent session
                    await wait_event(self._stopping, 0.1)
                    continue
                began = loop.time()
                connected_once = False
                # except*: a connection runs in a TaskGroup, which wraps what it raises.
                try:
                    connected_once = await self._connection()
                except* aiomqtt.MqttError as group:
                    log.warning(
                        "mqtt_connect_failed",
                        host=self._section.host,
                        port=self._section.port,
                        error="; ".join(str(e) for e in group.exceptions),
                    )
                except* Exception:
                    # Not an MQTT error (a TLS file that cannot be read, a bug): keep trying,
                    # a gateway that gives up on its broker protects nobody.
                    log.exception("mqtt_connection_error")
                finally:
                    self._set_connected(False)
                if self._stopping.is_set():
                    break
                if connected_once and loop.time() - began >= STABLE_AFTER:
                    attempt = 0
                delay = reconnect_delay(attempt)
                attempt += 1
                log.info("mqtt_reconnect_wait", delay_s=round(delay, 3), attempt=attempt)
                await wait_event(self._stopping, delay)
        finally:
            self._set_connected(False)
            self._running = False
            self._finished.set()

    async def stop(self) -> None:
        """Publish offline (retained), disconnect cleanly, and wait for run() to end.

        Bounded (STOP_TIMEOUT) so the daemon stops within CONTRACT §1's 10 s.
        """
        self._stopping.set()
        if not self._running:
            return
        try:
            await within(self._finished.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.error("mqtt_stop_timeout", timeout_s=STOP_TIMEOUT)

    def forget(self) -> None:
        """Hot standby: after stepping down (run() cancelled), drop what was queued as leader,
        so that a later term does not publish stale answers, and allow run() again."""
        self._out.clear()
        self._stopping.clear()

    # ------------------------------------------------------------------ connection

    def _make_client(self) -> aiomqtt.Client:
        s = self._section
        tls = None
        if s.tls_ca or s.tls_cert:
            # Certificates are loaded by aiomqtt in its connect thread, not on the event loop.
            tls = aiomqtt.TLSParameters(ca_certs=s.tls_ca, certfile=s.tls_cert, keyfile=s.tls_key)
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password.get_secret_value() if s.password is not None else None,
            identifier=s.client_id,
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=False,
            will=aiomqtt.Will(self.status_topic, self._offline, qos=1, retain=True),
            keepalive=KEEPALIVE,
            timeout=OP_TIMEOUT,
            tls_params=tls,
            max_inflight_messages=MAX_IN_FLIGHT + 4,  # the window, the status and subscribe
            socket_options=SOCKET_OPTIONS,
        )
        client.pending_calls_threshold = MAX_IN_FLIGHT + 4  # aiomqtt's warning, not a limit
        return client

    async def _connection(self) -> bool:
        """One connection, from connect to disconnect. Returns whether the broker accepted us."""
        client = self._make_client()
        broken = asyncio.Event()
        accepted = False
        try:
            async with asyncio.TaskGroup() as tg:
                reader: asyncio.Task[None] | None = None
                async with client:  # returns only after a CONNACK that accepted us
                    accepted = True
                    self._metrics.mqtt_reconnects.inc()
                    await client.publish(self.status_topic, self._online, qos=1, retain=True)
                    granted = await client.subscribe([(t, 1) for t in self.subscriptions])
                    if any(_refused(code) for code in granted):
                        raise aiomqtt.MqttError(f"subscription refused by the broker: {granted}")
                    # Connected means usable: accepted by the broker and subscribed.
                    self._set_connected(True)
                    log.info("mqtt_connected", host=self._section.host, port=self._section.port)
                    reader = tg.create_task(self._read(client), name="mqtt-reader")
                    sender = tg.create_task(self._out.send_loop(client, broken), name="mqtt-sender")
                    hook = tg.create_task(self._run_on_connect(), name="mqtt-on-connect")
                    stopping = tg.create_task(self._stopping.wait(), name="mqtt-stop-wait")
                    failed = tg.create_task(broken.wait(), name="mqtt-broken-wait")
                    await asyncio.wait(
                        (reader, stopping, failed), return_when=asyncio.FIRST_COMPLETED
                    )
                    graceful = self._stopping.is_set() and not reader.done() and not broken.is_set()
                    if graceful:
                        await self._flush_before_stop()
                    self._set_connected(False)
                    for task in (sender, hook, stopping, failed):
                        task.cancel()
                    if graceful:
                        # A clean DISCONNECT discards the will, so say it ourselves.
                        with contextlib.suppress(aiomqtt.MqttError):
                            await client.publish(
                                self.status_topic, self._offline, qos=1, retain=True, timeout=2.0
                            )
                    log.info("mqtt_disconnecting", graceful=graceful)
                # Disconnected. The reader hands what aiomqtt already acknowledged to the
                # handler before it ends: without a limit while running (a slow engine is no
                # reason to drop alarms), bounded when stopping (devices repeat, §3).
                if reader is not None and not reader.done():
                    limit = STOP_DRAIN_TIMEOUT if self._stopping.is_set() else None
                    try:
                        await within(asyncio.shield(reader), limit)
                    except TimeoutError:
                        log.error("mqtt_drain_timeout", left=len(client.messages))
                        reader.cancel()
        finally:
            self._set_connected(False)
            self._out.requeue_in_flight()
        if accepted and not self._stopping.is_set():
            log.warning("mqtt_disconnected")
        return accepted

    async def _run_on_connect(self) -> None:
        if self._on_connect is None:
            return
        try:
            await self._on_connect()
        except Exception:
            log.exception("mqtt_on_connect_failed")

    async def _flush_before_stop(self) -> None:
        """Give parked answers and alarm updates a moment to leave before going offline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STOP_FLUSH_TIMEOUT
        # Polled, once, at shutdown and for at most STOP_FLUSH_TIMEOUT: an event would need
        # upkeep on every buffer path for no gain.
        out = self._out
        while (out.buffered or out.in_flight) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if out.buffered or out.in_flight:
            log.warning("mqtt_stop_unflushed", buffered=out.buffered, in_flight=out.in_flight)

    def _set_connected(self, value: bool) -> None:
        changed = value != self._connected
        self._connected = value
        if changed and self._on_state is not None:
            try:
                self._on_state(value)
            except Exception:
                log.exception("mqtt_on_state_failed")
        self._metrics.mqtt_connected.set(1 if value else 0)
        if not value:
            # Callers waiting on a send return: their message stays parked for the next connect.
            self._out.release_waiters()

    # ------------------------------------------------------------------ inbound

    async def _read(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for message in client.messages:
                try:
                    await self._handle(message)
                except Exception:
                    # A bug here must not silence every later alarm: log and go on.
                    log.exception("mqtt_message_failed", topic=message.topic.value[:200])

    async def _handle(self, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        raw = message.payload
        if isinstance(raw, bytes | bytearray):
            payload = bytes(raw)
        else:  # paho always hands us bytes; be safe with aiomqtt's wider type
            payload = b"" if raw is None else str(raw).encode()
        try:
            event = parse_message(self.prefix, topic, payload, self._clock())
        except Rejected as r:
            log.warning(
                "mqtt_message_rejected", reason=r.reason, topic=topic[:200], detail=r.detail
            )
            self._metrics.rejected.labels(reason=r.reason).inc()
            return
        self._metrics.received.inc()
        try:
            await self._on_event(event)
        except Exception:
            # One bad event must not stop every later one (CONTRACT §7.3).
            self.handler_errors += 1
            self._metrics.rejected.labels(reason="handler_error").inc()
            log.exception("mqtt_event_handler_failed", topic=topic, event_id=event.id)


def _refused(code: object) -> bool:
    # MQTT 3.1.1 SUBACK: 0x80 means failure; paho gives ReasonCode objects or plain ints.
    value = getattr(code, "value", code)
    return isinstance(value, int) and value >= 0x80
