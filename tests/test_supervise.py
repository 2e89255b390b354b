"""Issue 11: no exception in one loop stops the daemon.

* the supervisor restarts a task that raises (or returns), counts it, reports it as a fault and
  backs off; cancellation is never swallowed;
* a deadline that fails again and again while other work goes through is poison: it is given
  up, audited and reported (degraded, the default chain told), and the daemon goes on;
* a crashed sender's claimed rows are put back before it restarts;
* a config without [notify] pages through Twilio.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from jaa_gateway import poison
from jaa_gateway.config import parse_config
from jaa_gateway.metrics import Metrics
from jaa_gateway.notify.base import SendResult
from jaa_gateway.outbox import Outbox
from jaa_gateway.poison import RepeatFailures
from jaa_gateway.selfwatch import SelfWatch
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import alarms, audit, notifications
from jaa_gateway.supervise import Supervisor
from tests.support.broker import MosquittoBroker
from tests.support.gateway import PHONES, site_config
from tests.support.twilio_double import TwilioDouble
from tests.test_e2e_alarms import eventually, raise_sos, site, start_session, to

# --------------------------------------------------------------------------- the supervisor


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_a_task_that_raises_is_restarted_counted_and_reported() -> None:
    metrics = Metrics()
    sup = Supervisor(metrics, min_delay=0.01, max_delay=0.05, rand=lambda: 0.5)
    runs = 0
    healthy = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise ValueError(f"bad row {runs}")
        healthy.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(sup.run("outbox", flaky))
    await asyncio.wait_for(healthy.wait(), 5)
    assert runs == 4
    assert metrics.task_restarts.labels(task="outbox")._value.get() == 3
    faults = sup.recent_faults()
    assert [(f.task, f.restarts) for f in faults] == [("outbox", 3)]
    assert faults[0].error == "ValueError: bad row 3"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_backoff_doubles_up_to_the_cap_and_cancel_is_never_swallowed() -> None:
    sup = Supervisor(Metrics(), min_delay=0.01, max_delay=0.04, rand=lambda: 0.5)
    starts: list[float] = []

    async def always_fails() -> None:
        starts.append(time.monotonic())
        raise RuntimeError("boom")

    task = asyncio.create_task(sup.run("deadlines", always_fails))
    await eventually(lambda: len(starts) >= 6, timeout=5)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # 0.01, 0.02, 0.04, 0.04 ... (rand 0.5 -> factor 1.0): growing, then capped
    assert gaps[0] < gaps[2] and max(gaps) < 0.5, gaps
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_task_that_returns_is_a_fault_unless_the_daemon_stops() -> None:
    sup = Supervisor(Metrics(), min_delay=0.01, rand=lambda: 0.5)
    runs = 0
    stopping = False

    async def returns() -> None:
        nonlocal runs
        runs += 1

    task = asyncio.create_task(sup.run("selfwatch", returns, stopping=lambda: stopping))
    await eventually(lambda: runs >= 2, timeout=5)
    assert sup.faults["selfwatch"].error == "returned unexpectedly"
    stopping = True
    await asyncio.wait_for(task, 5)  # returned: no restart while stopping


async def test_a_restart_hook_runs_before_each_restart() -> None:
    sup = Supervisor(Metrics(), min_delay=0.01, rand=lambda: 0.5)
    log: list[str] = []

    async def start() -> None:
        log.append("start")
        if log.count("start") < 3:
            raise OSError("gone")
        await asyncio.Event().wait()

    async def before() -> None:
        log.append("reset")

    task = asyncio.create_task(sup.run("outbox", start, before_restart=before))
    await eventually(lambda: log.count("start") == 3, timeout=5)
    assert log == ["start", "reset", "start", "reset", "start"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_selfwatch_reports_recent_task_faults(tmp_path: Path) -> None:
    cfg = parse_config(site_config(tmp_path / "s.db", 1, None), "test")
    store = Store(cfg.gateway.database)
    await store.migrate()
    metrics = Metrics()
    clock = _Clock()
    sup = Supervisor(metrics, clock=clock, min_delay=0.001, rand=lambda: 0.5)
    outbox = Outbox(cfg, store, _NoNotifier(), metrics)
    watch = SelfWatch(cfg, store, outbox, _NoNotifier(), _NoPublisher(), metrics, supervisor=sup)
    assert await watch.check() == []

    async def dies_once() -> None:
        if "inbox" not in sup.faults:
            raise KeyError("poison")
        await asyncio.Event().wait()

    task = asyncio.create_task(sup.run("inbox", dies_once))
    await eventually(lambda: "inbox" in sup.faults, timeout=5)
    assert await watch.check() == ["task_failed"]
    assert "task inbox restarted (1x): KeyError" in watch.details["task_failed"]
    clock.t += 3600  # long ago: no longer degraded
    assert await watch.check() == []
    task.cancel()
    await store.close()


# --------------------------------------------------------------------------- repeated failures


def test_an_item_failing_while_others_succeed_is_given_up_after_the_limit() -> None:
    rf: RepeatFailures[str] = RepeatFailures(limit=3, retry_min=1.0, retry_max=4.0)
    assert rf.failed("a", "E", progress=10) == 1.0
    assert rf.failed("a", "E", progress=11) == 2.0
    assert rf.failed("a", "E", progress=12) is None  # third failure, others went through
    assert rf.attempts("a") == 0 and len(rf) == 0


def test_an_item_failing_while_nothing_else_succeeds_is_retried_with_a_capped_delay() -> None:
    """A database outage fails everything: giving up then would end every escalation."""
    rf: RepeatFailures[str] = RepeatFailures(limit=3, retry_min=1.0, retry_max=4.0)
    delays = [rf.failed("a", "db down", progress=5) for _ in range(10)]
    assert delays == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    # the outage ends, other work commits, and the item still fails: now it is poison
    assert rf.failed("a", "E", progress=6) is None


def test_a_success_clears_the_count() -> None:
    rf: RepeatFailures[str] = RepeatFailures(limit=2)
    rf.failed("a", "E", progress=1)
    rf.succeeded("a")
    assert rf.attempts("a") == 0
    assert rf.failed("a", "E", progress=5) == rf.retry_min
    with pytest.raises(ValueError):
        RepeatFailures(limit=0)


# --------------------------------------------------------------------------- end to end


def _short_poison(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poison, "GIVE_UP_AFTER", 3)
    monkeypatch.setattr(poison, "RETRY_MIN_S", 0.1)
    monkeypatch.setattr(poison, "RETRY_MAX_S", 0.2)


async def test_a_poison_alarm_deadline_is_given_up_audited_and_reported(
    tmp_path: Path,
    mosquitto: MosquittoBroker,
    twilio_double: TwilioDouble,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An alarm row whose stored chain cannot be read (a corrupt row) fails its deadline every
    time. It must not be retried forever nor stop the daemon: it is given up, the gateway says
    degraded and tells the default chain directly, and other alarms still go out."""
    _short_poison(monkeypatch)
    db = tmp_path / "state.db"
    store = Store(f"sqlite:///{db}")
    await store.migrate()
    now = time.time()
    async with store.tx() as conn:
        await conn.execute(
            insert(alarms).values(
                id="alm-corrupt",
                code="1234",
                kind="sos",
                state="escalating",
                opened_at=now,
                escalation_started_at=now,
                chain={"not": "a chain"},
                generation=1,
                next_k=0,
                next_due_at=now,
                exhausted=False,
            )
        )
    await store.close()

    def patch(cfg: dict[str, Any]) -> None:
        cfg["gateway"]["database"] = f"sqlite:///{db}"

    async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
        assert gw.app is not None
        await start_session(p)  # other work commits meanwhile
        alarm_id, _t0 = await raise_sos(p)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) >= 1, timeout=5)

        async def degraded() -> Any:
            status, body = await gw.client.api("GET", "/healthz", token=None)
            return status == 503 and any("deadline" in x for x in body["problems"]) and body

        body = await eventually(degraded, timeout=8)
        assert any("alarm alm-corrupt" in x for x in body["problems"]), body
        # the default chain's first step hears of it directly, past the outbox
        await twilio_double.wait_for(
            lambda d: any(
                r.to == PHONES["guard-1"] and "redusert" in (r.body or "") for r in d.sms
            ),
            timeout=8,
        )
        status, metrics = await gw.client.api("GET", "/metrics", token=None)
        assert "jaa_deadlines_abandoned_total 1.0" in metrics
        # the deadline is not retried any more
        assert gw.app.deadlines.due_at(("alarm", "alm-corrupt")) is None
        # and the daemon carries on: the good alarm was paged, the API answers
        status, a = await gw.client.api("GET", f"/api/alarms/{alarm_id}")
        assert status == 200 and a["state"] == "escalating"
        async with gw.app.store.tx() as conn:
            rows = (
                await conn.execute(select(audit.c.data).where(audit.c.event == "gateway_degraded"))
            ).all()
        data = [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]
        assert any("deadline_failed" in d["reasons"] for d in data), data


async def test_a_config_without_notify_pages_through_twilio(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    def patch(cfg: dict[str, Any]) -> None:
        del cfg["notify"]

    async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
        assert gw.app is not None and gw.app.cfg.notify.driver == "twilio"
        await start_session(p)
        await raise_sos(p)
        await twilio_double.wait_for(lambda d: len(to(d, "guard-1", "sms")) == 1, timeout=5)
        status, body = await gw.client.api("GET", "/healthz", token=None)
        assert status == 200 and body["notify_driver"] == "twilio" and body["warnings"] == []


async def test_the_console_driver_is_named_on_healthz(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    async with site(tmp_path, mosquitto, None) as (gw, _p, _):  # type: ignore[arg-type]
        status, body = await gw.client.api("GET", "/healthz", token=None)
        assert status == 200 and body["notify_driver"] == "console"
        assert "nobody is paged" in body["warnings"][0]


# --------------------------------------------------------------------------- the sender's restart


async def test_a_crashed_sender_puts_back_the_rows_its_tasks_had_claimed(tmp_path: Path) -> None:
    cfg = parse_config(site_config(tmp_path / "s.db", 1, None), "test")
    store = Store(cfg.gateway.database)
    await store.migrate()
    outbox = Outbox(cfg, store, _NoNotifier(), Metrics())
    now = time.time()
    ids = []
    async with store.tx() as conn:
        for i in range(3):
            res = await conn.execute(
                insert(notifications).values(
                    alarm=None,
                    purpose="info",
                    person="guard-1",
                    phone=PHONES["guard-1"],
                    channel="sms",
                    body=f"row {i}",
                    state="sending",
                    attempts=1,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            pk = res.inserted_primary_key
            assert pk is not None
            ids.append(int(pk[0]))
    # row 2 was handed over by the engine and not yet taken by any task: it stays the sender's
    outbox.submit([{"id": ids[2], "purpose": "info", "alarm": None}])
    await outbox.reset_after_crash()
    async with store.tx() as conn:
        states = dict((await conn.execute(select(notifications.c.id, notifications.c.state))).all())
    assert states == {ids[0]: "pending", ids[1]: "pending", ids[2]: "sending"}
    await store.close()


class _NoNotifier:
    async def send_sms(self, to: str, body: str, *, status_callback: str | None = None) -> Any:
        return SendResult(sid="SM0", status="queued")

    async def place_call(self, to: str, twiml: str, *, status_callback: str | None = None) -> Any:
        return SendResult(sid="CA0", status="queued")

    async def aclose(self) -> None:
        return None


class _NoPublisher:
    async def publish(self, topic: str, payload: Any, **kw: Any) -> None:
        return None
