"""End to end: a shift change during an escalation pages the new shift (CONTRACT §4).

The daemon runs as in the other e2e tests (real mosquitto, the Twilio double, the HTTP API).
Its roster hands over from guard-1 to guard-2 at 12:00 on the site's wall clock, and the site's
zone is one made for the test (tests/support/tzfile.py) so that 12:00 falls a few seconds after
the test starts: no waiting for a real minute, and no clock faked inside the daemon.

An sos is raised a few seconds before the handover; keep_paging every 2 s. Every page before the
handover goes to guard-1, every page after it to guard-2 (none to guard-1, who went home), and
the alarm's timeline names who was paged at each step and which entry named them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

from tests.support.broker import MosquittoBroker
from tests.support.gateway import PHONES
from tests.support.twilio_double import TwilioDouble
from tests.support.tzfile import fixed_zone, offset_for
from tests.test_e2e_alarms import eventually, get_alarm, raise_sos, site, timeline

LEAD = 5  # seconds from the config being written to the handover (start-up takes ~0.1-2 s)
AFTER = 6.5  # seconds the escalation runs on after the handover: 3 pages at 2 s
EVERY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def _epoch(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339).timestamp()


def _from(page_list: list[dict[str, Any]], source: str) -> list[str]:
    return [pg["person"] for pg in page_list if pg["from"] == source]


async def test_a_shift_change_during_an_escalation_pages_the_new_shift(
    tmp_path: Path, mosquitto: MosquittoBroker, twilio_double: TwilioDouble
) -> None:
    handover = math.ceil(time.time()) + LEAD  # an epoch second
    with fixed_zone(tmp_path / "zones", offset_for(12 * 3600, handover)) as zone:

        def patch(cfg: dict[str, Any]) -> None:
            cfg["gateway"]["timezone"] = zone
            cfg["rosters"] = [
                {
                    "id": "desk",
                    "shifts": [
                        {"days": EVERY, "start": "00:00", "end": "12:00", "people": ["guard-1"]},
                        {"days": EVERY, "start": "12:00", "end": "00:00", "people": ["guard-2"]},
                    ],
                }
            ]
            cfg["escalation_chains"] = [
                {
                    "id": "guards",
                    "repeat": 0,
                    "repeat_after": "1s",
                    "keep_paging": "2s",
                    "steps": [
                        {"after": "0s", "notify": ["roster:desk"], "via": ["sms"]},
                        {
                            "after": "1s",
                            "notify": ["roster:desk", "person:head-security"],
                            "via": ["sms"],
                        },
                    ],
                }
            ]

        async with site(tmp_path, mosquitto, twilio_double, patch) as (gw, p, _):
            alarm_id, _t0 = await raise_sos(p)
            a = await get_alarm(gw, alarm_id)
            opened = _epoch(a["opened_at"])
            # the test proves nothing unless the alarm is open before the handover
            assert opened < handover - 1.0, (
                f"the alarm opened {handover - opened:.2f} s before the handover; the machine "
                "was too slow to start the gateway in time for this test"
            )
            print(f"\nthe alarm opened {handover - opened:.2f} s before the handover")
            local = dt.datetime.fromtimestamp(handover, dt.UTC).astimezone(
                dt.datetime.fromisoformat(a["opened_at"]).tzinfo
            )
            assert local.strftime("%H:%M:%S") == "12:00:00"
            await asyncio.sleep(max(0.0, handover + AFTER - time.time()))
            status, body = await gw.client.api(
                "POST", f"/api/alarms/{alarm_id}/ack", {"by": "guard-2"}
            )
            assert status == 200, body

            async def settled() -> dict[str, Any] | None:
                # a page enqueued just before the ack is sent or cancelled, not left in flight
                b = await get_alarm(gw, alarm_id)
                busy = [n for n in b["notifications"] if n["state"] in ("pending", "sending")]
                return None if busy else b

            a = await eventually(settled, timeout=10)

    steps = timeline(a, "escalation_step")
    before = [e for e in steps if _epoch(e["at"]) < handover]
    after = [e for e in steps if _epoch(e["at"]) >= handover]
    assert before and len(after) >= 2, [(e["at"], e["data"]["targets"]) for e in steps]
    assert [e["data"]["k"] for e in steps] == list(range(len(steps)))
    # who was paged at each step, and from which entry
    for e in before:
        assert _from(e["data"]["paged"], "roster:desk") == ["guard-1"], e
    for e in after:
        assert _from(e["data"]["paged"], "roster:desk") == ["guard-2"], e
        assert e["data"]["keep_paging"] is True
    for e in steps:
        d = e["data"]
        assert d["targets"] == [pg["person"] for pg in d["paged"]]
        assert not any(pg["fallback"] for pg in d["paged"])
        if d["step"] == 1:
            assert _from(d["paged"], "person:head-security") == ["head-security"]
    assert not timeline(a, "escalation_target_missing")
    assert not timeline(a, "escalation_step_without_targets")

    # the rows the gateway wrote, and what reached Twilio: none to guard-1 after the handover
    rows = [n for n in a["notifications"] if n["purpose"] == "alarm"]
    g1 = [n for n in rows if n["person"] == "guard-1"]
    g2 = [n for n in rows if n["person"] == "guard-2"]
    assert g1 and all(_epoch(n["created_at"]) < handover for n in g1), g1
    assert len(g2) == len(after) and all(_epoch(n["created_at"]) >= handover for n in g2), g2
    assert {n["state"] for n in rows} <= {"sent", "cancelled"}, rows
    sms_to = [r.to for r in twilio_double.sms]
    for who in ("guard-1", "guard-2", "head-security"):
        sent = [n for n in rows if n["person"] == who and n["state"] == "sent"]
        assert sms_to.count(PHONES[who]) == len(sent), (who, sms_to, sent)
    assert [n["state"] for n in g2[:2]] == ["sent", "sent"]  # guard-2 really was paged
