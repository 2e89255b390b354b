"""The demo's embedded MQTT broker (amqtt): loopback only, a free port, quiet.

Demo only. amqtt handles about 2k QoS 1 messages a second and has no MQTT v5; production uses
mosquitto (config/mosquitto/). Two amqtt habits matter here (STYLE.md "Known traps"): it binds
0.0.0.0 unless told otherwise, so the listener is bound to 127.0.0.1 explicitly; and it never
queues messages for anonymous sessions, so every demo client logs in with a username.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import warnings
from types import TracebackType
from typing import Any

from jaa_gateway.aio import within

HOST = "127.0.0.1"
START_ATTEMPTS = 5


def free_port(host: str = HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
    return port


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def quiet_amqtt() -> None:
    """amqtt logs every connection and warns about its own deprecated options: errors only."""
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"amqtt(\..*)?")


class EmbeddedBroker:
    """``async with EmbeddedBroker(18830) as b:`` -> an amqtt broker on 127.0.0.1:``b.port``.

    The preferred port is used when it is free (so documented commands work as pasted),
    else any free port.
    """

    def __init__(self, preferred_port: int = 0) -> None:
        self.host = HOST
        self.preferred_port = preferred_port
        self.port = 0
        self._broker: Any = None

    def _config(self, port: int) -> dict[str, Any]:
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{HOST}:{port}"}},
            # only anonymous-allowed auth: no $SYS publisher, no packet logger
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }

    async def start(self) -> None:
        quiet_amqtt()
        from amqtt.broker import Broker  # the demo extra: imported only when a demo runs

        last: Exception | None = None
        # the port is free when picked but another process may take it before amqtt binds
        for attempt in range(START_ATTEMPTS):
            wanted = self.preferred_port if attempt == 0 else 0
            port = wanted if wanted and port_is_free(wanted) else free_port()
            broker = Broker(self._config(port))
            try:
                await broker.start()
            except Exception as exc:  # amqtt wraps the bind error in BrokerError
                last = exc
                continue
            self._broker, self.port = broker, port
            return
        raise RuntimeError(f"the embedded MQTT broker could not start: {last}")

    async def stop(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        with contextlib.suppress(Exception):
            await within(broker.shutdown(), 5.0)

    async def __aenter__(self) -> EmbeddedBroker:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
