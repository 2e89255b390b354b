"""Floor processes, each separate from the harness (`python -m benchmarks.floor MODE ...`).

relay: a paho subscriber on `bench/floor/+` that POSTs each message to the Twilio double as an
    SMS: one broker hop plus one HTTP POST, the least any MQTT-to-Twilio bridge can do.
null:  a paho subscriber on the device event topics that only counts (the ingest floor); it
    prints {"n": count} lines on stdout every 0.1 s.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class KeptAlivePoster:
    """One HTTP/1.1 connection with TCP_NODELAY: without it a kept-alive POST waits ~40 ms
    for the delayed ACK of the previous segment (Nagle)."""

    def __init__(self, base: str, sid: str, token: str) -> None:
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.path = f"/2010-04-01/Accounts/{sid}/Messages.json"
        auth = base64.b64encode(f"{sid}:{token}".encode()).decode()
        self.headers = {
            "Authorization": f"Basic {auth}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Connection": "keep-alive",
        }
        self.conn: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
        conn.connect()
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def post(self, form: dict[str, str]) -> int:
        body = urllib.parse.urlencode(form)
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = self._connect()
            try:
                self.conn.request("POST", self.path, body=body, headers=self.headers)
                resp = self.conn.getresponse()
                resp.read()
                return resp.status
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt:
                    raise
        return 0


def _client(name: str) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-{name}-{os.getpid()}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    c.max_inflight_messages_set(1000)
    return c


def relay(port: int, api_base: str, sid: str, token: str) -> None:
    poster = KeptAlivePoster(api_base, sid, token)
    c = _client("floor-relay")

    def on_connect(cl: mqtt.Client, *_: Any) -> None:
        cl.subscribe("bench/floor/+", qos=1)

    def on_message(cl: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        marker = msg.payload.decode(errors="replace")
        poster.post({"To": "+4790000009", "From": "+4722334455", "Body": f"floor {marker}"})

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_forever()


def null(port: int) -> None:
    count = [0]
    c = _client("null-sub")

    def on_connect(cl: mqtt.Client, *_: Any) -> None:
        cl.subscribe("jaa/device/+/event", qos=1)

    def on_message(cl: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        count[0] += 1

    def report() -> None:
        while True:
            sys.stdout.write(json.dumps({"n": count[0]}) + "\n")
            sys.stdout.flush()
            time.sleep(0.1)

    c.on_connect = on_connect
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    threading.Thread(target=report, daemon=True).start()
    c.loop_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["relay", "null"])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--api-base", default="")
    ap.add_argument("--sid", default="")
    ap.add_argument("--token", default="")
    a = ap.parse_args(argv)
    if a.mode == "relay":
        relay(a.port, a.api_base, a.sid, a.token)
    else:
        null(a.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
