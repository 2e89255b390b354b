"""How many console pages one gateway keeps live, and how long a change takes to reach them.

The real daemon (in-process) on a mosquitto the script starts, the console notifier; N pages
logged in and listening on /console/events (aiohttp clients: the same bytes a browser gets).
Each round publishes an sos (then acknowledges and resolves it); the time from the publish to
the `board` event that carries the alarm is measured on every page. Prints JSON.

    python -m benchmarks.console_fanout --pages 50 --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.broker import MosquittoBroker, probe
from tests.support.console import ConsoleClient, with_console
from tests.support.gateway import running_gateway, site_config
from tests.test_e2e_alarms import event_topic, new_id, start_session, wait_cmd


async def _listen(c: ConsoleClient, seen: dict[str, float], ready: asyncio.Event) -> None:
    async with c.http.get(
        c.base + "/console/events", headers={"Cookie": f"jaa_console={c.cookies['jaa_console']}"}
    ) as r:
        assert r.status == 200
        ready.set()
        event, data = "", []
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and event:
                if event == "board":
                    body = "\n".join(data)
                    now = time.monotonic()
                    for aid in list(seen):
                        if seen[aid] == 0.0 and f'data-alarm-id="{aid}"' in body:
                            seen[aid] = now
                event, data = "", []


async def main(pages: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        broker = MosquittoBroker(Path(tmp) / "mosquitto")
        broker.start()
        try:
            cfg = site_config(Path(tmp) / "state.db", broker.port, None)
            with_console(cfg)
            async with running_gateway(cfg) as gw, probe(broker.port, "jaa/#") as p:
                assert gw.app is not None
                await start_session(p)
                clients = [ConsoleClient(gw.client.base) for _ in range(pages)]
                for c in clients:
                    assert await c.login() == 303
                per_page: list[dict[str, float]] = [{} for _ in clients]
                readies = [asyncio.Event() for _ in clients]
                tasks = [
                    asyncio.create_task(_listen(c, s, e))
                    for c, s, e in zip(clients, per_page, readies, strict=True)
                ]
                await asyncio.gather(*(e.wait() for e in readies))
                lat: list[float] = []
                renders0 = gw.app.console.feed.renders
                for _ in range(rounds):
                    eid = new_id("sos")
                    since = len(p.seen)
                    t0 = time.monotonic()
                    await p.publish(event_topic("jaa-0042"), {"id": eid, "type": "sos"})
                    raised = await wait_cmd(p, "jaa-0042", "alarm_raised", since=since)
                    aid = raised["alarm"]
                    for s in per_page:
                        s.setdefault(aid, 0.0)
                    deadline = time.monotonic() + 10
                    while any(s[aid] == 0.0 for s in per_page) and time.monotonic() < deadline:  # noqa: ASYNC110 (pages are plain dicts)
                        await asyncio.sleep(0.01)
                    lat.extend(s[aid] - t0 for s in per_page if s[aid])
                    missing = sum(1 for s in per_page if not s[aid])
                    assert missing == 0, f"{missing} pages never saw {aid}"
                    async with aiohttp.ClientSession() as h:
                        auth = {"Authorization": "Bearer test-token-0123456789abcdef"}
                        await h.post(
                            f"{gw.client.base}/api/alarms/{aid}/ack", json={"by": "x"}, headers=auth
                        )
                        await h.post(
                            f"{gw.client.base}/api/alarms/{aid}/resolve",
                            json={"by": "x", "note": "bench"},
                            headers=auth,
                        )
                    await asyncio.sleep(0.3)
                renders = gw.app.console.feed.renders - renders0
                for t in tasks:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                for c in clients:
                    await c.close()
        finally:
            broker.stop()
    lat.sort()
    return {
        "pages": pages,
        "rounds": rounds,
        "deliveries": len(lat),
        "board_renders": renders,
        "sos_to_page_ms": {
            "median": round(statistics.median(lat) * 1000, 1),
            "p95": round(lat[int(0.95 * (len(lat) - 1))] * 1000, 1),
            "max": round(lat[-1] * 1000, 1),
        },
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    print(json.dumps(asyncio.run(main(args.pages, args.rounds)), indent=2))
