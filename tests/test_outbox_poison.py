"""One row never stops the outbox: a row whose handling raises again and again (a transport
bug for one message, a call that cannot be built, an outcome the database will not store) is
tried POISON_TRIES times, then marked failed and audited, while the rows behind it go out.

The real Outbox on a real SQLite store; the transport is a recording stand-in that raises for
the numbers a test picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from jaa_gateway import outbox as outbox_mod
from jaa_gateway.config import parse_config
from jaa_gateway.metrics import Metrics
from jaa_gateway.notify.base import SendResult
from jaa_gateway.outbox import Outbox
from jaa_gateway.outcomes import POISON_TRIES
from jaa_gateway.store.db import Store
from jaa_gateway.store.schema import alarms, audit, notifications
from tests.support.gateway import site_config

GOOD = "+4791000001"
BAD = "+4791000002"


class Transport:
    """Records what it was asked to send; raises (a bug, not a provider answer) for `bad`."""

    def __init__(self) -> None:
        self.bad: set[str] = set()
        self.weird_sid_for: set[str] = set()
        self.sms: list[tuple[str, str]] = []
        self.calls: list[tuple[str, str]] = []
        self.tries: dict[str, int] = {}

    def _result(self, to: str) -> SendResult:
        self.tries[to] = self.tries.get(to, 0) + 1
        if to in self.bad:
            raise RuntimeError(f"transport bug for {to}")
        sid: Any = object() if to in self.weird_sid_for else f"SM{len(self.sms) + len(self.calls)}"
        return SendResult(sid=sid, status="queued")

    async def send_sms(self, to: str, body: str, *, status_callback: str | None = None) -> Any:
        result = self._result(to)
        self.sms.append((to, body))
        return result

    async def place_call(self, to: str, twiml: str, *, status_callback: str | None = None) -> Any:
        result = self._result(to)
        self.calls.append((to, twiml))
        return result

    async def aclose(self) -> None:
        return None


@contextlib.asynccontextmanager
async def running_outbox(tmp_path: Path) -> AsyncIterator[tuple[Outbox, Store, Transport]]:
    cfg = parse_config(site_config(tmp_path / "o.db", 1, None), "test")
    store = Store(cfg.gateway.database)
    await store.migrate()
    transport = Transport()
    # rand 0: every backoff is 0 s, so the tries come one pass after another
    box = Outbox(cfg, store, transport, Metrics(), rand=lambda: 0.0)
    task = asyncio.create_task(box.run())
    try:
        yield box, store, transport
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not task.done() or task.cancelled(), "the outbox loop ended by itself"
        await store.close()


async def add_alarm(store: Store, alarm_id: str) -> None:
    async with store.tx() as conn:
        await conn.execute(
            insert(alarms).values(
                id=alarm_id, code="1234", kind="sos", state="escalating", opened_at=time.time()
            )
        )


async def add_row(store: Store, phone: str, channel: str, body: str, alarm: str | None) -> int:
    now = time.time()
    async with store.tx() as conn:
        res = await conn.execute(
            insert(notifications).values(
                alarm=alarm,
                purpose="alarm" if alarm else "info",
                k=0,
                person="guard-1",
                phone=phone,
                channel=channel,
                body=body,
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        pk = res.inserted_primary_key
        assert pk is not None
        return int(pk[0])


async def row_state(store: Store, nid: int) -> dict[str, Any]:
    async with store.tx() as conn:
        r = (await conn.execute(select(notifications).where(notifications.c.id == nid))).mappings()
        return dict(r.one())


async def audits(store: Store, nid: int) -> list[tuple[str, dict[str, Any]]]:
    async with store.tx() as conn:
        rows = (await conn.execute(select(audit).order_by(audit.c.seq))).mappings().all()
    return [(r["event"], r["data"]) for r in rows if (r["data"] or {}).get("notification") == nid]


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def ends(store: Store, nid: int, state: str) -> None:
    async def check() -> bool:
        return (await row_state(store, nid))["state"] == state

    await until(check)


def assert_poisoned(row: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> None:
    assert row["state"] == "failed" and row["attempts"] == POISON_TRIES, row
    names = [e for e, _ in events]
    assert names == ["notification_retry"] * (POISON_TRIES - 1) + ["notification_failed"], names
    assert events[-1][1]["poison"] is True and events[-1][1]["attempts"] == POISON_TRIES


async def test_a_transport_that_raises_for_one_row_fails_it_after_bounded_tries(
    tmp_path: Path,
) -> None:
    async with running_outbox(tmp_path) as (box, store, transport):
        transport.bad.add(BAD)
        bad = await add_row(store, BAD, "sms", "to the broken number", None)
        good = [await add_row(store, GOOD, "sms", f"message {i}", None) for i in range(5)]
        box.wake()
        await ends(store, bad, "failed")
        for nid in good:
            await ends(store, nid, "sent")
        assert_poisoned(await row_state(store, bad), await audits(store, bad))
        assert transport.tries[BAD] == POISON_TRIES, "never retried past the bound"
        await asyncio.sleep(0.3)
        assert transport.tries[BAD] == POISON_TRIES
        assert len(transport.sms) == 5


async def test_a_call_that_cannot_be_built_fails_alone_and_the_others_are_called(
    tmp_path: Path,
) -> None:
    async with running_outbox(tmp_path) as (box, store, transport):
        for a in ("alm-bad", "alm-1", "alm-2"):
            await add_alarm(store, a)
        # oldest first, so it is the head of this number's calls; nothing in it can be spoken
        bad = await add_row(store, GOOD, "call", "\x00\x01\x02", "alm-bad")
        ok = [
            await add_row(store, GOOD, "call", f"Alarm {a}. Trykk 1.", a)
            for a in ("alm-1", "alm-2")
        ]
        box.wake()
        await ends(store, bad, "failed")
        for nid in ok:
            await ends(store, nid, "sent")
        assert_poisoned(await row_state(store, bad), await audits(store, bad))
        assert len(transport.calls) == 1
        twiml = transport.calls[0][1]
        assert "alm-1" in twiml and "alm-2" in twiml and "alm-bad" not in twiml


async def test_a_pass_step_that_raises_strikes_its_row_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = outbox_mod.plan_call

    def plan_call(rows: Any, *args: Any, **kw: Any) -> Any:
        if any(r["phone"] == BAD for r in rows):
            raise KeyError("a bug in planning this number's call")
        return real(rows, *args, **kw)

    monkeypatch.setattr(outbox_mod, "plan_call", plan_call)
    async with running_outbox(tmp_path) as (box, store, transport):
        await add_alarm(store, "alm-1")
        await add_alarm(store, "alm-2")
        bad = await add_row(store, BAD, "call", "Alarm 1. Trykk 1.", "alm-1")
        sms = await add_row(store, GOOD, "sms", "behind the bad row", None)
        call = await add_row(store, GOOD, "call", "Alarm 2. Trykk 1.", "alm-2")
        box.wake()
        await ends(store, bad, "failed")
        await ends(store, sms, "sent")
        await ends(store, call, "sent")
        assert_poisoned(await row_state(store, bad), await audits(store, bad))
        assert BAD not in transport.tries


async def test_an_outcome_that_cannot_be_stored_ends_failed_and_frees_the_others(
    tmp_path: Path,
) -> None:
    async with running_outbox(tmp_path) as (box, store, transport):
        transport.weird_sid_for.add(BAD)  # a SID the database cannot bind
        bad = await add_row(store, BAD, "sms", "its outcome will not store", None)
        good = await add_row(store, GOOD, "sms", "fine", None)
        box.wake()
        await ends(store, good, "sent")
        await ends(store, bad, "failed")
        row = await row_state(store, bad)
        assert row["error"].startswith("the outcome could not be recorded")
        events = await audits(store, bad)
        assert [e for e, _ in events] == ["notification_failed"] and events[0][1]["poison"]
        assert transport.tries[BAD] == 1, "sent once: the failure was in recording it"
