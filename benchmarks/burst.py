"""Scenario "burst" (issue 17): 200 sos from 200 devices, 20 ms apart, first on a broker that
carries nothing else ("quiet burst"), then the same burst from 200 other devices while 1,000
heartbeats/s flow from the rest of the campus ("loaded burst").

Each sos is stamped by the harness's publisher just before it goes out, each SMS request by the
Twilio double on arrival (both time.monotonic(), one process). On a quiet broker the gateway
used to take one alarm per ~40 ms (it waited for each answer's PUBACK, and Nagle held the
answer until the broker's delayed ACK): the queue grew by 20 ms per alarm. Heartbeats kept the
broker's packets frequent and hid it, so the loaded figure alone proves nothing.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from typing import TYPE_CHECKING, Any

from benchmarks.harness import Fleet, Gateway, Probe, pct
from benchmarks.site import device_id

if TYPE_CHECKING:
    from benchmarks.scenarios import Env

_DEVICE_RE = re.compile(r"d[0-9]{5}")
NO_SMS_AFTER_S = 30.0


def burst_summary(seconds: list[float]) -> dict[str, Any]:
    """p50/p95/p99/max in ms (nearest rank); a missing SMS counts as never (None)."""

    def ms(v: float) -> float | None:
        return None if v == float("inf") else round(v * 1000, 2)

    return {
        "n": len(seconds),
        "p50_ms": ms(pct(seconds, 50)),
        "p95_ms": ms(pct(seconds, 95)),
        "p99_ms": ms(pct(seconds, 99)),
        "max_ms": ms(max(seconds)),
    }


def _publish_on_schedule(probe: Probe, devices: list[str], spacing: float) -> dict[str, float]:
    """From a thread: one sos per device on a fixed schedule; returns device -> send instant."""
    sent: dict[str, float] = {}
    start = time.monotonic() + 0.05
    for i, dev in enumerate(devices):
        delay = start + i * spacing - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        body = json.dumps({"id": f"sos-{secrets.token_hex(4)}", "type": "sos"})
        sent[dev] = probe.publish(f"jaa/device/{dev}/event", body)
    return sent


async def _one_burst(env: Env, probe: Probe, devices: list[str]) -> list[float]:
    """Send the burst and wait for an SMS per sos; latencies in seconds (inf: none came)."""
    since = len(env.double.attempts)
    arrived: dict[str, float] = {}
    cursor = since
    wanted = set(devices)

    def collect(d: Any) -> bool:
        nonlocal cursor
        for r in d.attempts[cursor:]:
            for dev in _DEVICE_RE.findall(r.body or ""):
                if dev in wanted:
                    arrived.setdefault(dev, r.at)
        cursor = len(d.attempts)
        return len(arrived) >= len(wanted)

    spacing = env.scale.burst_spacing_s
    sent = await asyncio.to_thread(_publish_on_schedule, probe, devices, spacing)
    try:
        await env.double.wait_for(collect, NO_SMS_AFTER_S)
    except AssertionError:
        pass  # the missing ones count as never
    return [arrived[d] - sent[d] if d in arrived else float("inf") for d in devices]


def _urgent_stages(m: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for stage in ("queued", "handled"):
        labels = f'{{priority="urgent",stage="{stage}"}}'
        out[f"{stage}_sum"] = m.get(f"jaa_event_stage_seconds_sum{labels}", 0.0)
        out[f"{stage}_count"] = m.get(f"jaa_event_stage_seconds_count{labels}", 0.0)
    return out


def _stage_means_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float | None]:
    """The gateway's own mean stage times over a phase (received -> queued/handled), in ms."""
    out: dict[str, float | None] = {}
    for stage in ("queued", "handled"):
        n = after[f"{stage}_count"] - before[f"{stage}_count"]
        s = after[f"{stage}_sum"] - before[f"{stage}_sum"]
        out[f"{stage}_mean_ms"] = round(s / n * 1000, 2) if n else None
    return out


async def burst(env: Env) -> dict[str, Any]:
    from benchmarks.scenarios import seed_sessions  # scenarios imports this module

    sc = env.scale
    name = "burst"
    n = sc.burst_alarms
    if sc.devices < 2 * n + sc.warmup + 1:
        raise ValueError(f"{sc.devices} devices cannot carry two bursts of {n}")
    b = env.broker(name)
    seed_sessions(env, name, 0, [], 1800.0)  # the template store, no sessions
    fleet: Fleet | None = None
    probe: Probe | None = None
    gw = Gateway(env.config(name, b.port), env.workdir / name / "gw")
    out: dict[str, Any] = {"alarms": n, "spacing_ms": round(sc.burst_spacing_s * 1000, 1)}
    try:
        await gw.start(120)
        probe = Probe(b.port, "burst")
        # the first alarms after a start (imports, statement caches) are not the burst
        for k in range(sc.warmup):
            await _one_burst(env, probe, [device_id(sc.devices - 1 - k)])
        await asyncio.sleep(1.0)

        # quiet: the gateway and this probe are the broker's only clients
        m0 = _urgent_stages(await gw.metrics())
        quiet = await _one_burst(env, probe, [device_id(i) for i in range(n)])
        m1 = _urgent_stages(await gw.metrics())
        out["quiet"] = burst_summary(quiet) | _stage_means_ms(m0, m1)

        # loaded: the same burst from other devices, heartbeats from the rest
        fleet = Fleet(b.port, env.workdir / name)
        first_hb = 2 * n
        count_hb = sc.devices - first_hb - sc.warmup
        await fleet.stream("hb", "heartbeat", first_hb, count_hb, sc.burst_heartbeat_rate)
        await asyncio.sleep(2.0)
        m2 = _urgent_stages(await gw.metrics())
        loaded = await _one_burst(env, probe, [device_id(i) for i in range(n, 2 * n)])
        m3 = _urgent_stages(await gw.metrics())
        await fleet.stop_stream("hb")
        out["loaded"] = burst_summary(loaded) | _stage_means_ms(m2, m3)
        out["loaded"]["heartbeats_per_s"] = sc.burst_heartbeat_rate
        out["loaded"]["fleet_sent"] = (await fleet.stats()).get("sent")
    finally:
        if probe is not None:
            probe.close()
        if fleet is not None:
            fleet.quit()
        fp = await gw.stop()
        b.stop()
    if fp is not None:
        out["gateway_footprint"] = fp.as_dict()
    return out


def table_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    bu = res.get("burst") or {}
    if not bu:
        return []
    if "error" in bu:
        return [("burst", "ERROR " + bu["error"][:60], "", "", "", "")]

    def one(v: float | None) -> str:
        return "never" if v is None else f"{v:.1f}"

    rows = []
    for key, label in (("quiet", "quiet burst"), ("loaded", "loaded burst (+heartbeats)")):
        d = bu.get(key)
        if not d:
            continue
        if key == "loaded":
            label = f"loaded burst (+{d['heartbeats_per_s']:,.0f} hb/s)"
        figures = " / ".join(one(d[k]) for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
        rows.append(
            (
                f"{label}: {bu['alarms']} sos {bu['spacing_ms']:.0f} ms apart, SMS ms "
                "p50/p95/p99/max",
                figures,
                "-",
                "-",
                f"gw mean received->handled {one(d.get('handled_mean_ms'))} ms",
                "p95 <= 250, max <= 500",
            )
        )
    return rows
