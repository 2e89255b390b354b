"""End to end: a wave of alarms for one guard (issue 11), and what a grouped call acknowledges.

- 200 workers press sos within 4 s: every worker is named in an SMS to the guard within 60 s,
  calls to the guard's number stay paced, each call reads at most a handful of alarms and its
  key press names exactly those, the daemon (a real subprocess) stays up and healthy, and every
  alarm is open in the API.
- A grouped call: pressing 1 acknowledges exactly the alarms the call read; the ones it did not
  read stay escalating and the next call reads them. A tampered action URL acknowledges nothing.

Real mosquitto, the Twilio double, the real daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp

from jaa_gateway.calls import MAX_SPOKEN
from jaa_gateway.domain import guard_texts, texts
from jaa_gateway.notify.base import MAX_TWIML_CHARS
from tests.support.broker import MosquittoBroker, probe
from tests.support.gateway import PHONES, PUBLIC_URL, Client, GatewayProcess, site_config
from tests.support.twilio_double import Recorded, TwilioDouble, sign_webhook
from tests.test_e2e_alarms import EARLY, event_topic, get_alarm, new_id, site, wait_cmd

GUARD = PHONES["guard-1"]


def with_workers(n: int, call_spacing: str) -> Any:
    """A site_config patch: n more workers, each with a device (sessions are not needed: an sos
    outside a session escalates through default_escalation)."""

    def patch(cfg: dict[str, Any]) -> None:
        cfg["notify"]["call_spacing"] = call_spacing
        for i in range(1, n + 1):
            cfg["people"].append(
                {
                    "id": f"w{i:03d}",
                    "name": f"Arbeider {i:03d}",
                    "phone": f"+4793{i:06d}",
                    "roles": ["worker"],
                    "supervisor": "kari",
                }
            )
            cfg["devices"].append({"id": f"dev-{i:03d}", "person": f"w{i:03d}"})

    return patch


def worker_name(i: int) -> str:
    return f"Arbeider {i:03d}"


def call_read(call: Recorded) -> tuple[list[str], list[str], str]:
    """(texts the call reads first, alarm ids its key press names, the action path+query)."""
    twiml = call.twiml or ""
    root = ET.fromstring(twiml)
    gather = root.find("Gather")
    assert gather is not None, twiml
    said = [(s.text or "") for s in gather.iter("Say")]
    parts = urlsplit(gather.attrib["action"])
    also = parse_qs(parts.query).get("also", [""])[0]
    ids = [unquote(parts.path.rsplit("/", 1)[1]), *[a for a in also.split(",") if a]]
    return said, ids, parts.path + (f"?{parts.query}" if parts.query else "")


def calls_to_guard(double: TwilioDouble) -> list[Recorded]:
    return sorted((r for r in double.calls if r.to == GUARD), key=lambda r: r.at)


def assert_paced(calls: list[Recorded], spacing: float) -> None:
    for a, b in itertools.pairwise(calls):
        assert b.at - a.at >= spacing - EARLY, f"two calls {b.at - a.at:.2f} s apart"


def assert_reads_what_it_acks(call: Recorded, alarm_of_worker: dict[int, str]) -> list[str]:
    """Every alarm the key press names is read in the call, and no other alarm is read."""
    said, ids, _ = call_read(call)
    assert len(call.twiml or "") <= MAX_TWIML_CHARS
    assert 1 <= len(ids) <= MAX_SPOKEN, ids
    read = [i for i, a in alarm_of_worker.items() if any(worker_name(i) in s for s in said)]
    assert sorted(alarm_of_worker[i] for i in read) == sorted(ids), (said, ids)
    return ids


# --------------------------------------------------------------------------- the wave

WAVE = 200
WAVE_SPACING = 3.0


@contextlib.asynccontextmanager
async def wave_gateway(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio: TwilioDouble
) -> AsyncIterator[tuple[GatewayProcess, Client]]:
    cfg = site_config(tmp_path / "state.db", mosquitto.port, twilio)
    with_workers(WAVE, f"{WAVE_SPACING:g}s")(cfg)
    proc = GatewayProcess(cfg, tmp_path)
    proc.start()
    client = Client(proc.base, twilio.auth_token)
    try:
        await proc.wait_ready(timeout=30)
        yield proc, client
    finally:
        with contextlib.suppress(Exception):
            if proc.proc is not None and proc.proc.poll() is None:
                proc.terminate()
        proc.kill9()
        await client.close()


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


async def test_a_wave_of_200_sos_is_sent_in_full_and_the_gateway_stays_up(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    async with (
        wave_gateway(tmp_path, mosquitto, twilio_double) as (proc, client),
        probe(mosquitto.port, "jaa/device/+/cmd") as p,
    ):
        assert proc.proc is not None
        t0 = time.monotonic()
        for burst in range(0, WAVE, 50):  # in bursts: the premise is "within 4 s", not a rate
            await asyncio.gather(
                *(
                    p.publish(event_topic(f"dev-{i:03d}"), {"id": new_id("sos"), "type": "sos"})
                    for i in range(burst + 1, burst + 51)
                )
            )
            await asyncio.sleep(0.3)
        published = time.monotonic() - t0
        assert published < 4.0, f"the wave took {published:.1f} s to publish"

        def named(d: TwilioDouble) -> set[int]:
            bodies = [r.body or "" for r in d.sms if r.to == GUARD]
            return {i for i in range(1, WAVE + 1) if any(worker_name(i) in b for b in bodies)}

        await twilio_double.wait_for(lambda d: len(named(d)) == WAVE, timeout=60)
        guard_sms = [r for r in twilio_double.sms if r.to == GUARD]
        last_sms = max(r.at for r in guard_sms) - t0
        # at least two grouped calls (the first call may read one alarm only)
        await twilio_double.wait_for(lambda d: len(calls_to_guard(d)) >= 3, timeout=15)
        calls = calls_to_guard(twilio_double)
        assert_paced(calls, WAVE_SPACING)
        async with aiohttp.ClientSession() as s, s.get(proc.base + "/healthz") as r:
            assert r.status == 200, await r.text()
        status, body = await client.api("GET", "/api/alarms?state=open")
        assert status == 200
        open_alarms = body["alarms"]
        assert len(open_alarms) == WAVE
        assert {a["person"] for a in open_alarms} == {f"w{i:03d}" for i in range(1, WAVE + 1)}
        assert {(a["kind"], a["state"]) for a in open_alarms} == {("sos", "escalating")}
        alarm_of_worker = {int(a["person"][1:]): a["id"] for a in open_alarms}
        for call in calls:
            assert_reads_what_it_acks(call, alarm_of_worker)
        assert max(len(call_read(c)[1]) for c in calls) == MAX_SPOKEN
        assert proc.proc.poll() is None, proc.log_tail()
        rss = peak_rss_kib(proc.proc.pid)
        print(
            f"\nwave of {WAVE} sos (published in {published:.1f} s): last SMS to the guard at "
            f"+{last_sms:.1f} s ({len(guard_sms)} SMS to the guard, "
            f"{len(twilio_double.sms)} in all), {len(calls)} calls to the guard by "
            f"+{calls[-1].at - t0:.1f} s (spacing {WAVE_SPACING:g} s), daemon peak RSS "
            f"{rss / 1024:.0f} MiB"
        )
        assert last_sms < 60


# --------------------------------------------------------------------------- a grouped call


async def test_pressing_1_acknowledges_exactly_the_alarms_the_call_read(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    n = MAX_SPOKEN + 3
    spacing = 2.0
    async with site(tmp_path, mosquitto, twilio_double, with_workers(n, f"{spacing:g}s")) as (
        gw,
        p,
        _,
    ):
        alarm_of_worker: dict[int, str] = {}
        for i in range(1, n + 1):
            eid = new_id("sos")
            await p.publish(event_topic(f"dev-{i:03d}"), {"id": eid, "type": "sos"})
            raised = await wait_cmd(
                p, f"dev-{i:03d}", "alarm_raised", lambda m, e=eid: m["re"] == e
            )
            alarm_of_worker[i] = raised["alarm"]
        await twilio_double.wait_for(lambda d: len(calls_to_guard(d)) >= 2, timeout=3 * spacing)
        first, second = calls_to_guard(twilio_double)[:2]
        first_ids = assert_reads_what_it_acks(first, alarm_of_worker)
        second_ids = assert_reads_what_it_acks(second, alarm_of_worker)
        assert not set(first_ids) & set(second_ids)
        unread = set(alarm_of_worker.values()) - set(first_ids) - set(second_ids)
        assert unread, "the test needs alarms the second call did not read"
        said, _, action = call_read(second)
        assert said[-1] == texts.more_alarms_voice("nb", len(unread))

        press = {"CallSid": second.sid or "", "To": GUARD, "Digits": "1", "AnsweredBy": "human"}
        # a tampered action URL (one unread alarm added) with the real URL's signature, and the
        # real URL signed with the wrong token: refused, nothing acknowledged
        real_sig = sign_webhook(twilio_double.auth_token, PUBLIC_URL + action, press)
        tampered = action + "," + sorted(unread)[0]
        status, _ = await gw.client.webhook(tampered, press, signature=real_sig)
        assert status == 403
        forged = sign_webhook("not-the-auth-token", PUBLIC_URL + action, press)
        status, _ = await gw.client.webhook(action, press, signature=forged)
        assert status == 403
        for aid in alarm_of_worker.values():
            assert (await get_alarm(gw, aid))["state"] == "escalating"

        # the guard presses 1 in the second call (signed as Twilio signs it)
        status, twiml = await gw.client.webhook(action, press)
        assert status == 200 and guard_texts.ack_voice_confirmation("nb") in twiml
        for aid in alarm_of_worker.values():
            a = await get_alarm(gw, aid)
            if aid in second_ids:
                assert (a["state"], a["acknowledged_by"]) == ("acknowledged", "guard-1")
                assert [
                    e["data"]["via"] for e in a["timeline"] if e["event"] == "alarm_acknowledged"
                ] == ["voice"]
            else:
                assert a["state"] == "escalating", (aid, a["state"])

        # the alarms no call read yet are read by the next call, which names no other
        await twilio_double.wait_for(lambda d: len(calls_to_guard(d)) >= 3, timeout=3 * spacing)
        calls = calls_to_guard(twilio_double)
        assert_paced(calls, spacing)
        third_ids = assert_reads_what_it_acks(calls[2], alarm_of_worker)
        assert set(third_ids) == unread
        assert call_read(calls[2])[0][-1] != texts.more_alarms_voice("nb", 1)
        await asyncio.sleep(spacing + 0.5)
        assert len(calls_to_guard(twilio_double)) == 3, "every alarm was read once: no more calls"
