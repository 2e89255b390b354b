"""The load generator, a separate process: `python -m benchmarks.fleet --port P`.

It reads commands (JSON lines) on stdin and answers on stdout, so one process can carry the
background fleet while the harness changes rates between phases:

  {"cmd": "stream", "name": "hb", "type": "heartbeat", "first": 0, "count": 10000, "rate": 1000}
      devices first..first+count-1 in turn, `rate` messages/s in total, until replaced/stopped;
      "total": N stops the stream after N messages (one pass over a range for session_start)
  {"cmd": "stop", "name": "hb"}        {"cmd": "stats"} -> {"sent": {...}, "acked": n}
  {"cmd": "quit"}
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.rawmqtt import RawPublisher
from benchmarks.site import device_id, location_id

TICK = 0.005


@dataclass
class Stream:
    name: str
    type: str
    first: int
    count: int
    rate: float
    total: int | None
    started: float
    sent: int = 0
    cursor: int = 0

    def payload(self, i: int, eid: str) -> bytes:
        body: dict[str, Any] = {"id": eid, "type": self.type}
        if self.type == "heartbeat":
            body["battery"] = 80
        elif self.type == "session_start":
            body["location"] = location_id(i)
        return json.dumps(body, separators=(",", ":")).encode()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args(argv)
    tag = secrets.token_hex(3)
    pub = RawPublisher(args.host, args.port, f"bench-fleet-{os.getpid()}")
    commands: queue.Queue[dict[str, Any]] = queue.Queue()

    def reader() -> None:
        for line in sys.stdin:
            if line.strip():
                commands.put(json.loads(line))
        commands.put({"cmd": "quit"})

    threading.Thread(target=reader, daemon=True).start()
    streams: dict[str, Stream] = {}
    sent_by_type: dict[str, int] = {}
    seq = 0

    def reply(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    while True:
        while not commands.empty():
            c = commands.get()
            if c["cmd"] == "quit":
                pub.close()
                return 0
            if c["cmd"] == "stream":
                streams[c["name"]] = Stream(
                    c["name"],
                    c["type"],
                    int(c["first"]),
                    int(c["count"]),
                    float(c["rate"]),
                    c.get("total"),
                    time.monotonic(),
                )
                reply({"ok": c["name"]})
            elif c["cmd"] == "stop":
                streams.pop(c["name"], None)
                reply({"ok": c["name"]})
            elif c["cmd"] == "stats":
                reply({"sent": dict(sent_by_type), "acked": pub.acked, "total": pub.sent})
        now = time.monotonic()
        batch: list[tuple[bytes, bytes]] = []
        for s in list(streams.values()):
            want = int((now - s.started) * s.rate) - s.sent
            if s.total is not None:
                want = min(want, s.total - s.sent)
            for _ in range(max(0, want)):
                i = s.first + s.cursor
                s.cursor = (s.cursor + 1) % s.count
                seq += 1
                topic = f"jaa/device/{device_id(i)}/event".encode()
                batch.append((topic, s.payload(i, f"{tag}-{seq}")))
            s.sent += max(0, want)
            sent_by_type[s.type] = sent_by_type.get(s.type, 0) + max(0, want)
            if s.total is not None and s.sent >= s.total:
                del streams[s.name]
                reply({"done": s.name, "sent": s.sent})
        if batch:
            pub.send(batch)
        time.sleep(TICK)


if __name__ == "__main__":
    raise SystemExit(main())
