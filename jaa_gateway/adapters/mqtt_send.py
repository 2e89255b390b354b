"""The MQTT edge's outgoing side (CONTRACT §7.4): one ordered buffer and the loop that sends it.

Messages are sent in order with a small window in flight, parked while disconnected (bounded,
oldest dropped), and flushed in order after reconnecting. Retained topics (gateway status,
alarm state) only need their latest value, so a newer retained message replaces a buffered
older one. `MqttEdge` (``adapters/mqtt.py``) owns one `SendQueue` and runs `send_loop` on each
connection.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Final

import aiomqtt
import structlog

log = structlog.get_logger("jaa_gateway.mqtt")

BUFFER_LIMIT: Final = 10_000
# QoS 1 publishes awaiting their PUBACK. Answers go out at this window per round trip: 8 (under
# aiomqtt's default warning threshold of 10 pending calls) let a wave of 10,000 lapsing
# check-ins overflow the buffer (issue 6: half the checkin_due never left), so the window is
# wider, and aiomqtt's warning threshold and paho's in-flight limit are raised with it.
MAX_IN_FLIGHT: Final = 64


def _json_default(value: object) -> str:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise TypeError("naive datetime in an MQTT payload")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_payload(payload: dict[str, Any] | bytes | None) -> bytes:
    """dict -> compact UTF-8 JSON; bytes as they are; None -> empty (clears a retained topic)."""
    if payload is None:
        return b""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    return json.dumps(
        payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
    ).encode("utf-8")


@dataclass(eq=False, repr=False)
class _Outgoing:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    waiter: asyncio.Future[None] | None = None
    dead: bool = False  # superseded by a newer retained value, or dropped

    def release(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class SendQueue:
    """The ordered outgoing buffer, its retained-topic bookkeeping and the items in flight."""

    def __init__(self, limit: int = BUFFER_LIMIT) -> None:
        self._limit = limit
        self._buffer: collections.deque[_Outgoing] = collections.deque()
        self._live = 0  # items in _buffer that are not dead
        self._retained: dict[str, _Outgoing] = {}  # latest buffered retained item per topic
        self._wakeup = asyncio.Event()
        self._flying: set[_Outgoing] = set()  # handed to the sender, not yet acknowledged
        self._seq = 0
        self.dropped = 0

    @property
    def buffered(self) -> int:
        """Outgoing messages waiting to be sent."""
        return self._live

    @property
    def in_flight(self) -> int:
        """Messages handed to the client and not yet acknowledged."""
        return len(self._flying)

    def put(
        self, topic: str, payload: bytes, qos: int, retain: bool, *, wait: bool
    ) -> asyncio.Future[None] | None:
        """Buffer a message; with ``wait``, returns a future done once the broker has it (or
        once it is parked again by a lost connection, or dropped)."""
        self._seq += 1
        item = _Outgoing(self._seq, topic, payload, qos, retain)
        if wait:
            item.waiter = asyncio.get_running_loop().create_future()
        self._enqueue(item)
        return item.waiter

    def release_waiters(self) -> None:
        """Callers waiting on a send return: their message stays parked for the next connect."""
        for item in self._buffer:
            item.release()

    def clear(self) -> None:
        """Drop everything buffered and in flight (waiters released)."""
        self.release_waiters()
        self._buffer.clear()
        self._live = 0
        self._retained.clear()
        self._flying.clear()

    def requeue_in_flight(self) -> None:
        """Sends that were cancelled (or never started) go out again after the reconnect."""
        for item in sorted(self._flying, key=lambda i: i.seq):
            self._requeue(item)
        self._flying.clear()

    def _enqueue(self, item: _Outgoing) -> None:
        if item.retain:
            older = self._retained.get(item.topic)
            if older is not None:
                self._kill(older)
            self._retained[item.topic] = item
        while self._live >= self._limit:
            self._drop_oldest()
        self._buffer.append(item)
        self._live += 1
        self._wakeup.set()

    def _requeue(self, item: _Outgoing) -> None:
        """Put back an item whose send failed, ahead of newer ones and in its original order."""
        item.release()
        if item.dead or (item.retain and self._retained.get(item.topic, item) is not item):
            return  # a newer retained value for the topic is already waiting
        if item.retain:
            self._retained[item.topic] = item
        while self._live >= self._limit:
            self._drop_oldest()
        i = 0
        while i < len(self._buffer) and self._buffer[i].seq < item.seq:
            i += 1
        self._buffer.insert(i, item)
        self._live += 1
        self._wakeup.set()

    def _kill(self, item: _Outgoing) -> None:
        item.dead = True
        item.release()
        self._live -= 1

    def _drop_oldest(self) -> None:
        while self._buffer:
            item = self._buffer.popleft()
            if item.dead:
                continue
            self._kill(item)
            self._forget_retained(item)
            self.dropped += 1
            log.warning(
                "mqtt_publish_dropped",
                topic=item.topic,
                dropped_total=self.dropped,
                limit=self._limit,
            )
            return

    def _take(self) -> _Outgoing | None:
        while self._buffer:
            item = self._buffer.popleft()
            if item.dead:
                continue
            self._live -= 1
            self._forget_retained(item)
            return item
        return None

    def _forget_retained(self, item: _Outgoing) -> None:
        if item.retain and self._retained.get(item.topic) is item:
            del self._retained[item.topic]

    async def send_loop(self, client: aiomqtt.Client, broken: asyncio.Event) -> None:
        """Send the buffer in order, MAX_IN_FLIGHT at a time, until cancelled; a publish the
        broker did not acknowledge is parked again and sets ``broken``."""
        window = asyncio.Semaphore(MAX_IN_FLIGHT)
        async with asyncio.TaskGroup() as tg:
            while True:
                await window.acquire()
                item = self._take()
                while item is None:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    item = self._take()
                # Registered before the task runs: a task cancelled before its first step never
                # executes its body, and its item must still be sent again later.
                self._flying.add(item)
                # Tasks start in creation order and hand their packet to paho before their
                # first await, so the wire order is the buffer order.
                tg.create_task(self._send_one(client, item, window, broken))

    async def _send_one(
        self,
        client: aiomqtt.Client,
        item: _Outgoing,
        window: asyncio.Semaphore,
        broken: asyncio.Event,
    ) -> None:
        try:
            await client.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
        except aiomqtt.MqttError as exc:
            # Not acknowledged: it may or may not have arrived. Send it again after a
            # reconnect; duplicates are harmless (answers repeat state), losses are not.
            self._flying.discard(item)
            self._requeue(item)
            log.warning("mqtt_publish_failed", topic=item.topic, error=str(exc))
            broken.set()
        except Exception:
            # paho refused the message itself (e.g. too large): retrying cannot help.
            self._flying.discard(item)
            item.release()
            log.exception("mqtt_publish_invalid", topic=item.topic)
        else:
            self._flying.discard(item)
            item.release()
        finally:
            window.release()
