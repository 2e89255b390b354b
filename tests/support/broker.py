"""A real mosquitto broker per test, and a small aiomqtt probe to talk to it.

The broker is configured like production where it matters for delivery (persistence on, a large
offline queue: see STYLE.md "Known traps"), listens on 127.0.0.1 on a free port (never 1883) and
keeps its state in the test's tmp dir, so restart() brings back queued messages and sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

HOST = "127.0.0.1"


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.access("/usr/sbin/mosquitto", os.X_OK):
        return "/usr/sbin/mosquitto"
    # Skipping would let CI pass without testing the MQTT edge at all; fail loudly instead.
    pytest.fail(
        "the MQTT tests need a 'mosquitto' binary and none was found on PATH or at "
        "/usr/sbin/mosquitto: run `make test` (it installs mosquitto), or "
        "`sudo apt-get install -y mosquitto`",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
    return port


class MosquittoBroker:
    """One mosquitto process; start/stop/kill/restart keep the same port and persistence."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        anonymous: bool = True,
        extra_conf: str = "",
        conf_text: str | None = None,
    ) -> None:
        """`conf_text` replaces the generated configuration (it must listen on `port`)."""
        self.workdir = workdir
        self._anonymous = anonymous
        self._conf_text = conf_text
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = HOST
        self.conf_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._extra_conf = extra_conf
        self._proc: subprocess.Popen[bytes] | None = None
        self._binary = mosquitto_binary()

    def _write_conf(self) -> None:
        user = pwd.getpwuid(os.getuid()).pw_name
        if self._conf_text is not None:
            self.conf_path.write_text(f"user {user}\nlog_dest stdout\n{self._conf_text}\n")
            return
        self.conf_path.write_text(
            "\n".join(
                [
                    # Run as whoever runs the tests: as root, mosquitto would otherwise switch
                    # to the 'mosquitto' user and fail to write the tmp dir.
                    f"user {user}",
                    f"listener {self.port} {HOST}",
                    f"allow_anonymous {'true' if self._anonymous else 'false'}",
                    "persistence true",
                    f"persistence_location {self.workdir}/",
                    "autosave_interval 1",
                    "max_queued_messages 100000",
                    # as in production (config/mosquitto): Nagle plus the receiver's delayed
                    # ACK would add ~40 ms to a small alarm message now and then
                    "set_tcp_nodelay true",
                    "log_dest stdout",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    "log_type information",
                    "connection_messages true",
                    self._extra_conf,
                    "",
                ]
            )
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 5.0) -> None:
        if self.running:
            raise RuntimeError("broker already running")
        self._write_conf()
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [self._binary, "-c", str(self.conf_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until the listener accepts connections (or fail with the broker's log)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._proc is None or self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited early; log:\n{self.log()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"mosquitto not ready on port {self.port}; log:\n{self.log()}"
                    ) from None
                time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM: mosquitto writes its persistence file and closes sessions cleanly."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: an unclean broker death (state since the last autosave is lost)."""
        self._end(signal.SIGKILL, 5.0)

    def pause(self) -> None:
        """SIGSTOP: the broker hangs with its sockets open (nothing acknowledged, no errors)."""
        assert self._proc is not None and self.running
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        if sig != signal.SIGKILL:
            proc.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoBroker]:
    broker = MosquittoBroker(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class MqttProbe:
    """A test-side MQTT client: publish events, record everything on subscribed topics.

    `async with MqttProbe(port) as probe:` connects (by default a clean session with its own
    client id; a fixed id with clean_session=False keeps its subscriptions across restarts).
    """

    def __init__(
        self,
        port: int,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        **client_kwargs: Any,
    ) -> None:
        """`client_kwargs` go to aiomqtt.Client (username, password, tls_params ...)."""
        self.port = port
        self._client_kwargs = client_kwargs
        self.client_id = client_id or f"probe-{os.getpid()}-{id(self):x}"
        self.clean_session = clean_session
        self.seen: list[Seen] = []
        self._changed = asyncio.Condition()
        self._client: aiomqtt.Client | None = None
        self._reader: asyncio.Task[None] | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> MqttProbe:
        self._client = aiomqtt.Client(
            HOST,
            self.port,
            identifier=self.client_id,
            clean_session=self.clean_session,
            timeout=5,
            **self._client_kwargs,
        )
        await self._stack.enter_async_context(self._client)
        self._reader = asyncio.create_task(self._read(self._client), name="probe-reader")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        with contextlib.suppress(aiomqtt.MqttError):
            await self._stack.aclose()

    async def _read(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            async for m in client.messages:
                payload = m.payload if isinstance(m.payload, bytes) else str(m.payload).encode()
                async with self._changed:
                    self.seen.append(Seen(m.topic.value, bytes(payload), m.retain))
                    self._changed.notify_all()

    @property
    def client(self) -> aiomqtt.Client:
        assert self._client is not None, "use `async with MqttProbe(port)`"
        return self._client

    async def subscribe(self, topic: str, qos: int = 1) -> None:
        await self.client.subscribe(topic, qos=qos)

    async def publish(self, topic: str, obj: Any, *, qos: int = 1, retain: bool = False) -> None:
        """Publish a JSON-encodable object, or raw bytes/str as they are."""
        payload = obj if isinstance(obj, bytes | str) else json.dumps(obj)
        await self.client.publish(topic, payload, qos=qos, retain=retain)

    async def wait_message(
        self,
        topic: str,
        predicate: Callable[[Seen], bool] = lambda _: True,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> Seen:
        """First message (from index `since` of `seen`) on a topic filter matching predicate."""

        def find() -> Seen | None:
            for s in self.seen[since:]:
                if aiomqtt.Topic(s.topic).matches(topic) and predicate(s):
                    return s
            return None

        async def wait() -> Seen:
            async with self._changed:
                while (found := find()) is None:
                    await self._changed.wait()
                return found

        try:
            return await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            got = [(s.topic, s.payload[:200]) for s in self.seen[since:]]
            raise AssertionError(
                f"no matching message on {topic!r} within {timeout}s; seen: {got}"
            ) from None


@contextlib.asynccontextmanager
async def probe(port: int, *subscriptions: str) -> AsyncIterator[MqttProbe]:
    async with MqttProbe(port) as p:
        for topic in subscriptions:
            await p.subscribe(topic)
        yield p
