"""What a grouped call reads and what pressing 1 in it acknowledges (jaa_gateway.calls)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from jaa_gateway.calls import MAX_SPOKEN, action_url, call_document, plan_call
from jaa_gateway.domain import texts
from jaa_gateway.domain.texts import Lang
from jaa_gateway.notify.base import MAX_TWIML_CHARS
from jaa_gateway.notify.twiml import spoken_text

URL = "https://jaa.example.test"
# names as long as config allows, full of what XML has to escape (each & is 5 characters)
LONG = "&<>" * 70


def alarm_id(i: int) -> str:
    return f"alm-{i:04d}-0123456789abcdef0123456789"  # 35 characters, like the real ones


def row(nid: int, i: int, lang: Lang = "nb", *, name: str | None = None, k: int = 0) -> Any:
    who = name if name is not None else f"Worker {i:03d} {LONG}"
    return {
        "id": nid,
        "alarm": alarm_id(i),
        "k": k,
        "channel": "call",
        "body": texts.alarm_voice(lang, "sos", who, f"Bygg {i} {LONG}"),
    }


def acked_ids(twiml: str) -> list[str]:
    """The alarm ids pressing 1 would acknowledge: those in the Gather's action URL."""
    gather = ET.fromstring(twiml).find("Gather")
    assert gather is not None, twiml
    parts = urlsplit(gather.attrib["action"])
    assert parts.path.startswith("/twilio/voice/")
    also = parse_qs(parts.query).get("also", [""])[0]
    return [unquote(parts.path.rsplit("/", 1)[1]), *[a for a in also.split(",") if a]]


@pytest.mark.parametrize("lang", ["nb", "en"])
@pytest.mark.parametrize("n", [1, 5, 6, 200, 1000])
def test_a_call_reads_at_most_a_handful_and_acks_exactly_what_it_reads(lang: Lang, n: int) -> None:
    rows = [row(1000 + i, i, lang) for i in range(n)]
    plan = plan_call(rows, lang, URL)
    twiml = call_document(plan.rows, plan.more, lang, URL)
    assert len(twiml) <= MAX_TWIML_CHARS
    read = [r["alarm"] for r in plan.rows]
    assert 1 <= len(read) <= min(n, MAX_SPOKEN)
    assert read == [alarm_id(i) for i in range(len(read))], "the oldest first"
    assert plan.more == n - len(read) and plan.bad == []
    said = spoken_text(twiml)
    # every alarm it acknowledges is read, and it acknowledges every alarm it reads
    assert acked_ids(twiml) == read
    assert said[: len(read)] == [" ".join(r["body"].split()) for r in plan.rows]
    for i in range(len(read)):
        assert f"Worker {i:03d}" in said[i]
    if plan.more:
        assert said[len(read) :] == [texts.more_alarms_voice(lang, plan.more)]
    else:
        assert len(said) == len(read)
    for a in range(len(read), n):
        assert alarm_id(a) not in twiml
    # the action URL is bounded whatever n is
    gather = ET.fromstring(twiml).find("Gather")
    assert gather is not None and len(gather.attrib["action"]) < 300


def test_short_texts_read_five_and_twice() -> None:
    rows = [row(i + 1, i) for i in range(7)]
    for i, r in enumerate(rows):
        r["body"] = texts.alarm_voice("nb", "sos", f"Arbeider {i}", "Lab")
    plan = plan_call(rows, "nb", URL)
    assert [r["alarm"] for r in plan.rows] == [alarm_id(i) for i in range(5)]
    assert plan.more == 2
    twiml = call_document(plan.rows, plan.more, "nb", URL)
    assert twiml.count("<Gather") == 2, "short enough to be read twice"
    assert "I tillegg er det 2 alarmer til" in twiml


def test_every_due_row_of_a_read_alarm_goes_with_it_and_the_oldest_row_decides() -> None:
    # alarm 7's call waited longest (row 1); alarm 3 has two rows (two steps)
    rows = [row(5, 3), row(1, 7), row(9, 3, k=1)] + [row(20 + i, 100 + i) for i in range(10)]
    plan = plan_call(rows, "en", URL)
    assert [r["id"] for r in plan.rows] == [1, 5, 9, 20, 21, 22]
    assert acked_ids(call_document(plan.rows, plan.more, "en", URL)) == [
        alarm_id(7),
        alarm_id(3),
        alarm_id(100),
        alarm_id(101),
        alarm_id(102),
    ]
    assert plan.more == 7


def test_a_row_that_cannot_be_spoken_is_set_aside_and_holds_up_no_other() -> None:
    bad = row(1, 0)
    bad["body"] = "\x00\x01 \x02"  # nothing left to say once cleaned
    rows = [bad, row(2, 1), row(3, 2)]
    plan = plan_call(rows, "nb", URL)
    assert [r["id"] for r in plan.rows] == [2, 3] and plan.more == 0
    assert [(r["id"], "empty" in why) for r, why in plan.bad] == [(1, True)]
    only_bad = plan_call([bad], "nb", URL)
    assert only_bad.rows == [] and only_bad.more == 0 and len(only_bad.bad) == 1


def test_fewer_alarms_are_read_when_five_would_not_fit() -> None:
    # 700-character texts: five do not fit in 4000 characters even read once
    rows = [row(i + 1, i) for i in range(8)]
    for r in rows:
        r["body"] = f"Alarm {r['id']}: " + "x" * 700
    plan = plan_call(rows, "en", URL)
    twiml = call_document(plan.rows, plan.more, "en", URL)
    assert len(twiml) <= MAX_TWIML_CHARS
    assert 1 <= len(plan.rows) < 5 and plan.more == 8 - len(plan.rows)
    assert acked_ids(twiml) == [r["alarm"] for r in plan.rows]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="limit"):
        plan_call([row(1, 1)], "nb", URL, limit=0)
    with pytest.raises(ValueError, match="at most 5"):
        call_document([row(i + 1, i) for i in range(6)], 0, "nb", URL)
    with pytest.raises(ValueError, match="positive"):
        texts.more_alarms_voice("nb", 0)
    assert plan_call([], "nb", URL).rows == []
    assert action_url(URL, ["a b", "c/d"]) == f"{URL}/twilio/voice/a%20b?also=c%2Fd"


@pytest.mark.parametrize("lang", ["nb", "en"])
def test_more_alarms_line(lang: Lang) -> None:
    one, many = texts.more_alarms_voice(lang, 1), texts.more_alarms_voice(lang, 195)
    assert "195" in many and "195" not in one
    if lang == "nb":
        assert one.startswith("I tillegg er det én alarm til") and "SMS" in one
    else:
        assert one.startswith("And 1 more alarm:") and "SMS" in many
