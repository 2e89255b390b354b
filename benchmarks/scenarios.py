"""The five measurements of issue 6. Each scenario starts its own broker and gateway process
(so footprints are per scenario) and returns a JSON-able dict of results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import secrets
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert

from benchmarks import pg
from benchmarks.harness import (
    Fleet,
    Footprint,
    Gateway,
    NodeRed,
    NullSubscriber,
    Probe,
    floor_relay,
    merge_footprints,
    node_red_prefix,
    summary_ms,
    wait_request,
)
from benchmarks.site import (
    GUARD_PHONE,
    HEAD_PHONE,
    campus_config,
    device_id,
    location_id,
    person_id,
)
from jaa_gateway.store.schema import sessions
from tests.support.broker import MosquittoBroker, free_port
from tests.support.twilio_double import TwilioDouble

INF = float("inf")


@dataclass
class Scale:
    """Sizes of one bench run; `full()` is the issue's campus, `tiny()` the smoke test's."""

    devices: int = 10_000
    heartbeat_rate: float = 1_000.0
    sessions: int = 2_000
    # each of `sessions` checks in this often: 6.7 check-ins/s, a tenth of a 30-minute interval.
    # (At 30 s, 67/s, the gateway saturated and alarms queued for seconds: see the report.)
    checkin_period_s: float = 300.0
    alarms: int = 500
    block_budget_s: float = 60.0  # wall time per gateway/peer block: make bench stays bounded
    rounds: int = 2  # gateway/peer blocks, interleaved
    warmup: int = 3
    peer: bool = True
    ingest_step_s: float = 3.0
    ingest_start_rate: float = 2_000.0
    ingest_max_rate: float = 80_000.0
    session_starts: int = 300
    timer_sessions: int = 10_000
    timer_spread_s: float = 60.0
    timer_grace_s: float = 5.0
    timer_cutoff_s: float = 60.0  # after the last lapse; later than this counts as never
    recovery_sessions: int = 10_000
    recovery_alarms: int = 100
    recovery_step_s: float = 5.0
    warm_restart: bool = True  # time a second start on the template store
    burst_alarms: int = 200  # issue 17: sos from as many devices, burst_spacing_s apart
    burst_spacing_s: float = 0.020
    burst_heartbeat_rate: float = 1_000.0  # the loaded burst's background

    @staticmethod
    def full() -> Scale:
        return Scale()

    @staticmethod
    def tiny() -> Scale:
        return Scale(
            devices=200,
            heartbeat_rate=100.0,
            sessions=40,
            checkin_period_s=4.0,
            alarms=6,
            rounds=1,
            warmup=1,
            peer=False,
            ingest_step_s=0.6,
            ingest_start_rate=500.0,
            ingest_max_rate=1_000.0,
            session_starts=10,
            timer_sessions=200,
            timer_spread_s=1.5,
            timer_grace_s=1.0,
            timer_cutoff_s=20.0,
            recovery_sessions=200,
            recovery_alarms=5,
            recovery_step_s=1.5,
            warm_restart=False,
            burst_alarms=20,
            burst_heartbeat_rate=100.0,
        )


@dataclass
class Env:
    """What every scenario shares: the work dir, the Twilio double, a warm template store."""

    workdir: Path
    scale: Scale
    double: TwilioDouble
    template_db: Path | None = None
    ready_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    def twilio(self) -> dict[str, str]:
        d = self.double
        return {"account_sid": d.account_sid, "auth_token": d.auth_token, "api_base": d.api_base}

    def broker(self, name: str) -> MosquittoBroker:
        b = MosquittoBroker(self.workdir / name / "mosquitto")
        b.start()
        return b

    def config(self, name: str, broker_port: int, **kw: Any) -> dict[str, Any]:
        return campus_config(
            db_path=self.workdir / name / "state.db",
            broker_port=broker_port,
            http_port=free_port(),
            twilio=self.twilio(),
            devices=self.scale.devices,
            client_id=f"jaa-bench-{name}-{secrets.token_hex(2)}",
            **kw,
        )


# ---------------------------------------------------------------------- the store


async def make_template(env: Env) -> None:
    """Start the gateway once on an empty store: it writes its 10,000 assessments (slow the
    first time), and every scenario starts from a copy, like a site restarting."""
    b = env.broker("template")
    try:
        cfg = env.config("template", b.port)
        gw = Gateway(cfg, env.workdir / "template" / "gw")
        first = env.ready_s = await gw.start(180)
        await gw.stop()
        if env.scale.warm_restart:
            gw = Gateway(cfg, env.workdir / "template" / "gw")
            env.ready_s = await gw.start(180)
            await gw.stop()
        env.notes.append(
            f"first start on an empty store: {first:.1f} s to ready; warm restart: "
            f"{env.ready_s:.1f} s ({env.scale.devices} people/devices/assessments)"
        )
        env.template_db = env.workdir / "template" / "template.db"
        _copy_db(env.workdir / "template" / "state.db", env.template_db)
    finally:
        b.stop()


def _copy_db(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(src)) as s,
        contextlib.closing(sqlite3.connect(dst)) as d,
    ):
        s.backup(d)


def seed_sessions(
    env: Env, name: str, n: int, checkin_due: Sequence[float], interval_s: float
) -> dict[str, float]:
    """Copy the template store and add `n` active sessions (devices 0..n-1), as `_start`
    would have stored them; returns session id -> checkin_due_at. Seeding instead of sending
    10,000 session_start events keeps the bench within its 10 minutes (see the session-start
    figure in the ingest scenario for why)."""
    assert env.template_db is not None
    db = env.workdir / name / "state.db"
    _copy_db(env.template_db, db)
    rows = session_rows(n, checkin_due, interval_s)
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        if rows:
            conn.execute(insert(sessions), rows)
    engine.dispose()
    return {r["id"]: r["checkin_due_at"] for r in rows}


def session_rows(n: int, checkin_due: Sequence[float], interval_s: float) -> list[dict[str, Any]]:
    """`n` active sessions (devices 0..n-1) as `_start` would have stored them."""
    now = time.time()
    rows: list[dict[str, Any]] = []
    for i in range(n):
        rows.append(
            {
                "id": f"ses-bench{i:06d}",
                "person": person_id(i),
                "location": location_id(i),
                "device": device_id(i),
                "door": None,
                "assessment": f"RA-{i:05d}",
                "source": "device",
                "started_at": now,
                "ends_at": now + 8 * 3600,
                "checkin_interval_s": interval_s,
                "checkin_due_at": checkin_due[i],
                "checkin_state": "waiting",
                "overrun_state": "none",
                "offline_alarmed": False,
                "active": True,
            }
        )
    return rows


# ---------------------------------------------------------------------- 1. alarm latency


async def alarm_latency(env: Env) -> dict[str, Any]:
    sc = env.scale
    name = "latency"
    b = env.broker(name)
    fleet: Fleet | None = None
    relay = None
    probe: Probe | None = None
    gw_fps: list[Footprint] = []
    nr_fps: list[Footprint] = []
    lat: dict[str, list[float]] = {"gateway": [], "postgresql": [], "peer": [], "floor": []}
    lost: dict[str, int] = {"gateway": 0, "postgresql": 0, "peer": 0, "floor": 0}
    skipped: dict[str, int] = {"gateway": 0, "postgresql": 0, "peer": 0}
    pg_fps: list[Footprint] = []
    pg_cfg: dict[str, Any] | None = None
    pg_error: str | None = None
    pg_notes: dict[str, float] = {}
    stack = contextlib.AsyncExitStack()
    peer_error: str | None = None
    prefix = None
    if sc.peer:
        try:
            prefix = await asyncio.to_thread(node_red_prefix)
        except Exception as e:
            peer_error = str(e)
    try:
        now = time.time()
        seed_sessions(env, name, sc.sessions, [now + 1800] * sc.sessions, 1800.0)
        # the same campus and sessions on PostgreSQL (benchmarks/pg.py), alarms in the same run
        try:
            cluster = await stack.enter_async_context(pg.throwaway_cluster())
            url = await asyncio.to_thread(cluster.create_database)
            pg_cfg = pg.on_postgres(env.config(name, b.port), url)
            rows = session_rows(sc.sessions, [now + 1800] * sc.sessions, 1800.0)
            pg_notes["first_start_s"] = await pg.prepare(pg_cfg, env.workdir / name / "pg0", rows)
        except Exception as e:
            pg_error = f"{type(e).__name__}: {e}"[:300]
        fleet = Fleet(b.port, env.workdir / name)
        relay = floor_relay(b.port, env.double, env.workdir / name)
        probe = Probe(b.port)
        await fleet.stream("hb", "heartbeat", 0, sc.devices, sc.heartbeat_rate)
        if sc.sessions:
            await fleet.stream("ci", "checkin", 0, sc.sessions, sc.sessions / sc.checkin_period_s)
        per_block = -(-sc.alarms // sc.rounds)
        # sos devices: not in a session, one alarm each (dedupe); each store has its own alarms
        next_dev = {"gateway": sc.sessions, "postgresql": sc.sessions}
        warm_dev = {"gateway": sc.devices - 1, "postgresql": sc.devices - 1}
        floor_n = 0

        async def measure(system: str, count: int) -> None:
            nonlocal floor_n
            budget_end = time.monotonic() + sc.block_budget_s
            for k in range(sc.warmup + count):
                if time.monotonic() > budget_end:
                    skipped[system] += sc.warmup + count - k
                    break
                warm = k < sc.warmup
                if system in next_dev:
                    dev = device_id(warm_dev[system] if warm else next_dev[system])
                    if warm:
                        warm_dev[system] -= 1
                    else:
                        next_dev[system] += 1
                else:
                    dev = device_id(sc.sessions + (k % max(1, sc.devices - sc.sessions)))
                since = len(env.double.attempts)
                assert probe is not None
                t0 = probe.publish(
                    f"jaa/device/{dev}/event",
                    json.dumps({"id": f"sos-{secrets.token_hex(4)}", "type": "sos"}),
                )
                try:
                    rec, _ = await wait_request(env.double, since, dev, timeout=5.0)
                    if not warm:
                        lat[system].append(rec.at - t0)
                except AssertionError:
                    if not warm:
                        lost[system] += 1
                floor_n += 1
                marker = f"fl-{floor_n:06d}"
                since = len(env.double.attempts)
                t0 = probe.publish(f"bench/floor/{floor_n}", marker)
                try:
                    rec, _ = await wait_request(env.double, since, marker, timeout=5.0)
                    if not warm:
                        lat["floor"].append(rec.at - t0)
                except AssertionError:
                    if not warm:
                        lost["floor"] += 1
                # not in step with the fleet's 5 ms ticks
                await asyncio.sleep(random.uniform(0.005, 0.025))

        remaining = sc.alarms
        for r in range(sc.rounds):
            n = min(per_block, remaining)
            remaining -= n
            cfg = env.config(name, b.port)
            cfg["mqtt"]["client_id"] = f"jaa-bench-latency-r{r}-{secrets.token_hex(2)}"
            gw = Gateway(cfg, env.workdir / name / f"gw{r}")
            await gw.start(120)
            try:
                await measure("gateway", n)
            finally:
                fp = await gw.stop()
                if fp:
                    gw_fps.append(fp)
            if pg_cfg is not None and pg_error is None:
                pg_cfg["mqtt"]["client_id"] = f"jaa-bench-latency-pg{r}-{secrets.token_hex(2)}"
                gw = Gateway(pg_cfg, env.workdir / name / f"pg{r + 1}")
                try:
                    await gw.start(120)
                    pg_notes[f"lease_after_ready_s_r{r}"] = await pg.wait_leading(gw, 30)
                    await measure("postgresql", n)
                except Exception as e:
                    pg_error = f"PostgreSQL block failed: {type(e).__name__}: {e}"[:300]
                finally:
                    fp = await gw.stop()
                    if fp:
                        pg_fps.append(fp)
            if prefix is not None and peer_error is None:
                nr = NodeRed(prefix, env.workdir / name / f"nr{r}", b.port, env.double)
                nr.start()
                try:
                    await _wait_peer_ready(env, probe, nr)
                    await measure("peer", n)
                except Exception as e:
                    peer_error = f"Node-RED block failed: {e}"
                finally:
                    fp = nr.stop()
                    if fp:
                        nr_fps.append(fp)
        fl_stats = await fleet.stats()
    finally:
        if probe is not None:
            probe.close()
        if relay is not None:
            relay.stop()
        if fleet is not None:
            fleet.quit()
        b.stop()
        await stack.aclose()
    out: dict[str, Any] = {
        "alarms_per_system": sc.alarms,
        "background": {
            "devices": sc.devices,
            "heartbeats_per_s": sc.heartbeat_rate,
            "sessions": sc.sessions,
            "checkins_per_s": round(sc.sessions / sc.checkin_period_s, 1) if sc.sessions else 0,
            "fleet_sent": fl_stats.get("sent"),
        },
        "lost": lost,
        "not_sent_block_budget": skipped,
        "gateway_footprint": merge_footprints(gw_fps).as_dict() if gw_fps else None,
        "peer_footprint": merge_footprints(nr_fps).as_dict() if nr_fps else None,
        "postgresql_footprint": merge_footprints(pg_fps).as_dict() if pg_fps else None,
        "postgresql_setup": {k: round(v, 2) for k, v in pg_notes.items()},
    }
    for system, values in lat.items():
        out[system] = summary_ms(values) if values else None
    if pg_error:
        out["postgresql_error"] = pg_error
    if peer_error:
        out["peer_error"] = peer_error
    elif not sc.peer:
        out["peer_error"] = "peer not run at this scale"
    return out


async def _wait_peer_ready(env: Env, probe: Probe, nr: NodeRed, timeout: float = 60.0) -> None:
    """Node-RED is ready when an sos goes through the flow to the double."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nr.proc is not None and nr.proc.poll() is not None:
            raise RuntimeError("node-red exited")
        since = len(env.double.attempts)
        probe.publish(
            "jaa/device/d99999/event", json.dumps({"id": secrets.token_hex(4), "type": "sos"})
        )
        with contextlib.suppress(AssertionError):
            await wait_request(env.double, since, "d99999", timeout=1.0)
            return
    raise RuntimeError("Node-RED flow did not deliver an SMS within 60 s")


# ---------------------------------------------------------------------- 2. ingest


async def _ramp(
    send: Any, processed: Any, sc: Scale, drain: Any, label: str, start: float
) -> dict[str, Any]:
    """Offer rates (doubling, then bisecting twice); a rate is sustained when what was handled
    over the step kept up with what was offered (>= 97 %) and the backlog did not grow."""
    steps: list[dict[str, Any]] = []
    best = 0.0
    lo, hi = 0.0, None
    rate = start
    tries = 0
    while tries < 12:
        tries += 1
        await drain()
        await send(rate)
        await asyncio.sleep(0.5)
        p0, sent0 = await processed()
        t0 = time.monotonic()
        await asyncio.sleep(sc.ingest_step_s)
        p1, sent1 = await processed()
        dt = time.monotonic() - t0
        await send(0)
        offered = (sent1 - sent0) / dt
        handled = (p1 - p0) / dt
        ok = handled >= 0.97 * offered and offered >= 0.9 * rate
        steps.append({"rate": rate, "offered": round(offered), "handled": round(handled), "ok": ok})
        if ok:
            best = max(best, handled)
            lo = rate
        else:
            hi = rate
        if hi is None:
            if rate >= sc.ingest_max_rate:
                break
            rate = min(rate * 2, sc.ingest_max_rate)
        else:
            if hi - lo <= 0.1 * hi or len([s for s in steps if not s["ok"]]) >= 3:
                break
            rate = (lo + hi) / 2
    await drain()
    return {"sustained_per_s": round(best), "steps": steps, "label": label}


async def ingest(env: Env) -> dict[str, Any]:
    sc = env.scale
    name = "ingest"
    b = env.broker(name)
    fleet = Fleet(b.port, env.workdir / name)
    results: dict[str, Any] = {}
    fps: list[Footprint] = []
    try:
        now = time.time()
        seed_sessions(env, name, sc.sessions, [now + 1800] * sc.sessions, 1800.0)
        gw = Gateway(env.config(name, b.port), env.workdir / name / "gw")
        await gw.start(120)
        try:
            # session starts through MQTT: the slow path behind the seeding above
            n = min(sc.session_starts, sc.devices - sc.sessions)
            t0 = time.monotonic()
            await fleet.stream("ss", "session_start", sc.sessions, n, 2000.0, total=n)
            await gw.wait_metric(
                "jaa_sessions_active", lambda v: v >= sc.sessions + n, 300, "session starts"
            )
            results["session_starts_per_s"] = round(n / (time.monotonic() - t0), 1)

            async def gw_processed() -> tuple[float, float]:
                received, depth = await gw.processed()
                st = await fleet.stats()
                return received - depth, float(st["total"])

            async def gw_drain() -> None:
                last = -1.0
                for _ in range(240):
                    received, depth = await gw.processed()
                    if depth == 0 and received == last:
                        return
                    last = received
                    await asyncio.sleep(0.25)

            def sender(kind: str) -> Any:
                async def send(rate: float) -> None:
                    if kind == "heartbeat":
                        hb, ci = rate, 0.0
                    elif kind == "checkin":
                        hb, ci = 0.0, rate
                    else:  # the campus mix: heartbeats and check-ins as in scenario 1
                        ci_share = (sc.sessions / sc.checkin_period_s) / sc.heartbeat_rate
                        ci = rate * ci_share / (1 + ci_share)
                        hb = rate - ci
                    if hb:
                        await fleet.stream("hb", "heartbeat", 0, sc.devices, hb)
                    else:
                        await fleet.stop_stream("hb")
                    if ci:
                        await fleet.stream("ci", "checkin", 0, sc.sessions, ci)
                    else:
                        await fleet.stop_stream("ci")

                return send

            # check-ins are a database transaction each: start their ramp lower
            starts = {"heartbeat": 1.0, "checkin": 0.05, "mix": 0.25}
            for kind, share in starts.items():
                results[kind] = await _ramp(
                    sender(kind), gw_processed, sc, gw_drain, kind, sc.ingest_start_rate * share
                )
        finally:
            fp = await gw.stop()
            if fp:
                fps.append(fp)
        # the floor: a paho subscriber that does nothing, same generator, same broker
        null = NullSubscriber(b.port, env.workdir / name)
        null.start_following()
        await asyncio.sleep(1.0)
        try:

            async def null_processed() -> tuple[float, float]:
                st = await fleet.stats()
                return float(null.count), float(st["total"])

            async def null_drain() -> None:
                last = -1
                for _ in range(240):
                    if null.count == last:
                        return
                    last = null.count
                    await asyncio.sleep(0.25)

            async def null_send(rate: float) -> None:
                if rate:
                    await fleet.stream("hb", "heartbeat", 0, sc.devices, rate)
                else:
                    await fleet.stop_stream("hb")

            results["floor"] = await _ramp(
                null_send, null_processed, sc, null_drain, "null", sc.ingest_start_rate
            )
        finally:
            null.stop()
    finally:
        fleet.quit()
        b.stop()
    results["gateway_footprint"] = merge_footprints(fps).as_dict() if fps else None
    return results


# ---------------------------------------------------------------------- 3. timers


async def timers(env: Env) -> dict[str, Any]:
    sc = env.scale
    name = "timers"
    b = env.broker(name)
    probe = Probe(b.port, "timer-probe")
    probe.subscribe("jaa/device/+/cmd")
    fps: list[Footprint] = []
    try:
        lead = max(3.0, 2 * env.ready_s + 3.0)
        base = time.time() + lead
        n = sc.timer_sessions
        dues = [base + sc.timer_spread_s * i / max(1, n - 1) for i in range(n)]
        random.shuffle(dues)
        due_of = seed_sessions(env, name, n, dues, 1800.0)
        cfg = env.config(name, b.port, checkin_grace=f"{sc.timer_grace_s}s")
        gw = Gateway(cfg, env.workdir / name / "gw")
        since = len(env.double.attempts)
        ready = await gw.start(120)
        if time.time() > base:
            env.notes.append("timers: the gateway became ready after the first check-in lapsed")
        try:
            end_by = base + sc.timer_spread_s + sc.timer_grace_s + sc.timer_cutoff_s
            while time.time() < end_by:
                sms = [r for r in env.double.attempts[since:] if r.to == GUARD_PHONE]
                if len(sms) >= n:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.5)
        finally:
            fp = await gw.stop()
            if fp:
                fps.append(fp)
    finally:
        probe.close()
        b.stop()
    offset = time.time() - time.monotonic()
    due_late: list[float] = []
    seen_sessions: set[str] = set()
    for at, _topic, payload in list(probe.received):
        with contextlib.suppress(ValueError):
            msg = json.loads(payload)
            if msg.get("type") == "checkin_due" and msg.get("session") in due_of:
                if msg["session"] not in seen_sessions:
                    seen_sessions.add(msg["session"])
                    due_late.append(at - due_of[msg["session"]])
    due_by_device = {f"d{int(sid[9:]):05d}": d for sid, d in due_of.items()}
    sms_late: list[float] = []
    got: set[str] = set()
    for r in env.double.attempts[since:]:
        if r.to != GUARD_PHONE or not r.body:
            continue
        for word in re.findall(r"d[0-9]{5}", r.body):
            if word in due_by_device and word not in got:
                got.add(word)
                sms_late.append(r.at + offset - (due_by_device[word] + sc.timer_grace_s))
    return {
        "sessions": n,
        "lapse_window_s": sc.timer_spread_s,
        "grace_s": sc.timer_grace_s,
        "ready_s": round(ready, 2),
        "checkin_due": summary_ms(due_late + [INF] * (n - len(due_late))),
        "checkin_due_missing": n - len(due_late),
        "missed_checkin_sms": summary_ms(sms_late + [INF] * (n - len(sms_late))),
        "missed_checkin_sms_missing": n - len(sms_late),
        "gateway_footprint": merge_footprints(fps).as_dict() if fps else None,
    }


# ---------------------------------------------------------------------- 4. recovery


async def recovery(env: Env) -> dict[str, Any]:
    sc = env.scale
    name = "recovery"
    b = env.broker(name)
    probe = Probe(b.port, "recovery-probe")
    fps: list[Footprint] = []
    steps = [
        {"after": "0s", "notify": ["roster:desk"], "via": ["sms"]},
        {"after": f"{sc.recovery_step_s}s", "notify": ["person:head-1"], "via": ["sms"]},
    ]
    try:
        now = time.time()
        seed_sessions(env, name, sc.recovery_sessions, [now + 3600] * sc.recovery_sessions, 3600)
        cfg = env.config(name, b.port, steps=steps)
        gw = Gateway(cfg, env.workdir / name / "gw")
        await gw.start(120)
        since = len(env.double.attempts)
        n = sc.recovery_alarms
        for i in range(n):
            probe.publish(
                f"jaa/device/{device_id(i)}/event",
                json.dumps({"id": f"sos-rec-{i}", "type": "sos"}),
            )
        await env.double.wait_for(
            lambda d: len([r for r in d.attempts[since:] if r.to == GUARD_PHONE]) >= n, 60
        )
        last_opened = time.monotonic()
        fps.append(gw.kill9())
        await gw.close()
        killed_at = time.monotonic()
        # every alarm's second step is overdue when the gateway comes back
        await asyncio.sleep(max(0.0, last_opened + sc.recovery_step_s + 0.5 - time.monotonic()))
        before = len(env.double.attempts)
        first_steps_before = len([r for r in env.double.attempts[since:] if r.to == GUARD_PHONE])
        gw2 = Gateway(cfg, env.workdir / name / "gw")
        t0 = time.monotonic()
        ready = await gw2.start(120)
        try:
            recs = await env.double.wait_for(
                lambda d: len([r for r in d.attempts[before:] if r.to == HEAD_PHONE]) >= n, 60
            )
            step2 = sorted(r.at for r in env.double.attempts[before:] if r.to == HEAD_PHONE)
            del recs
            await asyncio.sleep(0.5)
            dup_first = len([r for r in env.double.attempts[before:] if r.to == GUARD_PHONE])
        finally:
            fp = await gw2.stop()
            if fp:
                fps.append(fp)
    finally:
        probe.close()
        b.stop()
    return {
        "sessions": sc.recovery_sessions,
        "open_alarms": n,
        "down_s": round(t0 - killed_at, 2),
        "restart_to_ready_s": round(ready, 2),
        "restart_to_first_step_s": round(step2[0] - t0, 2),
        "restart_to_all_steps_s": round(step2[n - 1] - t0, 2),
        "first_step_sms_before_kill": first_steps_before,
        "first_step_sms_repeated_after_restart": dup_first,
        "gateway_footprint": merge_footprints(fps).as_dict() if fps else None,
    }
