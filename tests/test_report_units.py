"""The monthly report's aggregation (domain/report.py) at exact instants, and its HTML / CSV.

Months are calendar months in Europe/Oslo: October 2026 has the night the clocks go back
(25 October, 03:00 CEST -> 02:00 CET: a 745-hour month), March 2027 the night they go forward
(28 March: 743 hours). Everything belongs to the month it began in.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from zoneinfo import ZoneInfo

import pytest

from jaa_gateway.domain.report import (
    AlarmRow,
    BadMonth,
    CheckinDueRow,
    DenialRow,
    Rows,
    SessionRow,
    Validity,
    ack_times,
    month_of,
    monthly_report,
    nearest_rank,
    previous_month,
)
from jaa_gateway.report import render
from jaa_gateway.report import words as w
from tests.support.cfg import config_dict, make_config, oslo, utc

OSLO = ZoneInfo("Europe/Oslo")


def ts(d: dt.datetime) -> float:
    return d.timestamp()


def alarm(
    aid: str,
    opened: dt.datetime,
    *,
    kind: str = "sos",
    state: str = "acknowledged",
    location: str | None = "d1-123",
    alerted: dt.datetime | None = None,
    acked: dt.datetime | None = None,
) -> AlarmRow:
    return AlarmRow(
        aid,
        kind,
        state,
        location,
        ts(opened),
        ts(alerted) if alerted else (ts(opened) if state != "notice" else None),
        ts(acked) if acked else None,
    )


# ------------------------------------------------------------------ months


def test_months_are_local_calendar_months_with_their_dst_nights() -> None:
    oct26 = month_of("2026-10", OSLO)
    assert oct26.start == ts(utc(2026, 9, 30, 22))  # midnight CEST
    assert oct26.end == ts(utc(2026, 10, 31, 23))  # midnight CET
    assert (oct26.end - oct26.start) / 3600 == 31 * 24 + 1
    mar27 = month_of("2027-03", OSLO)
    assert (mar27.end - mar27.start) / 3600 == 31 * 24 - 1
    dec = month_of("2026-12", OSLO)
    assert (dec.first_day, dec.last_day, dec.next_first_day) == (
        dt.date(2026, 12, 1),
        dt.date(2026, 12, 31),
        dt.date(2027, 1, 1),
    )
    assert len(month_of("2028-02", OSLO).days()) == 29
    # the last instant of a month is in it, midnight is the next month's
    assert oct26.holds(oct26.end - 0.001) and not oct26.holds(oct26.end)


@pytest.mark.parametrize("bad", ["2026-13", "2026-00", "26-10", "2026-1", "2026/10", "", "x"])
def test_a_bad_month_is_refused(bad: str) -> None:
    with pytest.raises(BadMonth):
        month_of(bad, OSLO)


def test_previous_month_is_the_one_to_sign_off() -> None:
    # 1 November 00:30 in Oslo is still 31 October in UTC: the month before is October
    assert previous_month(ts(oslo(2026, 11, 1, 0, 30)), OSLO).label == "2026-10"
    assert previous_month(ts(oslo(2027, 1, 15)), OSLO).label == "2026-12"


# ------------------------------------------------------------------ aggregation


def test_a_month_with_the_clocks_going_back() -> None:
    month = month_of("2026-10", OSLO)
    rows = Rows(
        sessions=[
            # 01:30 CEST -> 02:30 CET (the second 02:30): two real hours, one on the wall clock
            SessionRow("s1", "ola", "d1-123", ts(oslo(2026, 10, 25, 1, 30)), None),
            # 00:10 on 1 October local = 22:10 UTC on 30 September: October's
            SessionRow("s2", "ola", "w-1", ts(oslo(2026, 10, 1, 0, 10)), None),
            # 23:50 on 30 September local: September's, though it ends in October
            SessionRow("s0", "ola", "d1-123", ts(oslo(2026, 9, 30, 23, 50)), None),
            # 23:30 on 31 October local = 22:30 UTC: October's, ends in November
            SessionRow("s3", "per", "d1-123", ts(oslo(2026, 10, 31, 23, 30)), None),
        ],
    )
    ended = {
        "s1": ts(oslo(2026, 10, 25, 2, 30, fold=1)),
        "s2": ts(oslo(2026, 10, 1, 1, 10)),
        "s0": ts(oslo(2026, 10, 1, 0, 50)),
        "s3": ts(oslo(2026, 11, 1, 1, 0)),
    }
    rows = Rows(
        sessions=[
            SessionRow(s.id, s.person, s.location, s.started_at, ended[s.id]) for s in rows.sessions
        ]
    )
    r = monthly_report(rows, month, OSLO, ts(oslo(2026, 11, 2)), ["d1-123", "w-1"])
    assert r.site.sessions == 3
    assert r.site.hours == pytest.approx(2 + 1 + 1.5)
    assert r.locations["d1-123"].sessions == 2
    assert r.locations["d1-123"].hours == pytest.approx(3.5)
    assert r.locations["w-1"].hours == pytest.approx(1.0)
    assert r.site.ongoing == 0
    # 31 local days, whatever the UTC dates
    assert r.alarms_per_day[0][0] == dt.date(2026, 10, 1)
    assert len(r.alarms_per_day) == 31
    # alarms in both 02:30s of that night are on the 25th; 00:30 on the 1st is October's
    twice = [
        alarm("first", oslo(2026, 10, 25, 2, 30, fold=0)),
        alarm("second", oslo(2026, 10, 25, 2, 30, fold=1)),
        alarm("first-day", oslo(2026, 10, 1, 0, 30)),
        alarm("sept", oslo(2026, 9, 30, 23, 59)),
    ]
    r = monthly_report(Rows(alarms=twice), month, OSLO, ts(oslo(2026, 11, 2)), [])
    per_day = dict(r.alarms_per_day)
    assert per_day[dt.date(2026, 10, 25)] == 2 and per_day[dt.date(2026, 10, 1)] == 1
    assert sum(per_day.values()) == 3


def test_a_running_session_counts_up_to_now() -> None:
    month = month_of("2027-03", OSLO)
    start = ts(oslo(2027, 3, 28, 1, 0))  # the spring-forward night: 01:00 -> 04:00 is 2 h
    rows = Rows(sessions=[SessionRow("s", "ola", "d1-123", start, None)])
    r = monthly_report(rows, month, OSLO, ts(oslo(2027, 3, 28, 4, 0)), ["d1-123"])
    assert (r.site.sessions, r.site.ongoing) == (1, 1)
    assert r.site.hours == pytest.approx(2.0)


def test_an_alarm_across_midnight_of_the_months_end_stays_in_its_month() -> None:
    jan = month_of("2027-01", OSLO)
    feb = month_of("2027-02", OSLO)
    late = alarm(
        "late",
        oslo(2027, 1, 31, 23, 59, 30),
        acked=oslo(2027, 2, 1, 0, 1, 0),  # 90 s later, in February
    )
    rows = Rows(alarms=[late])
    r_jan = monthly_report(rows, jan, OSLO, ts(oslo(2027, 2, 5)), ["d1-123"])
    r_feb = monthly_report(rows, feb, OSLO, ts(oslo(2027, 3, 5)), ["d1-123"])
    assert r_jan.site.alarms == {"sos": 1}
    assert r_jan.site.ack.median_s == pytest.approx(90.0)
    assert r_jan.site.ack.within == {60.0: 0.0, 180.0: 1.0}
    assert r_jan.alarms_per_day[-1] == (dt.date(2027, 1, 31), 1)
    assert r_feb.site.alarm_count == 0 and r_feb.site.ack.alerted == 0
    assert r_feb.site.empty and r_feb.alarms_per_day[0] == (dt.date(2027, 2, 1), 0)
    # midnight itself (00:00:00 on 1 February) is February's
    at_midnight = alarm("mid", oslo(2027, 2, 1, 0, 0, 0), acked=oslo(2027, 2, 1, 0, 0, 20))
    r2 = monthly_report(Rows(alarms=[at_midnight]), jan, OSLO, ts(oslo(2027, 3, 1)), [])
    assert r2.site.alarm_count == 0
    r3 = monthly_report(Rows(alarms=[at_midnight]), feb, OSLO, ts(oslo(2027, 3, 1)), [])
    assert r3.site.alarms == {"sos": 1}


def test_ack_times_median_p90_slowest_and_shares() -> None:
    t0 = oslo(2026, 11, 3, 12)
    secs = [10, 20, 30, 40, 50, 70, 100, 150, 200, 400]
    alarms = [alarm(f"a{i}", t0, acked=t0 + dt.timedelta(seconds=s)) for i, s in enumerate(secs)]
    # a man-down: the pre-alarm (30 s) is not the guards' time; acked 25 s after the alert
    fall = oslo(2026, 11, 4, 9)
    alarms.append(
        alarm(
            "md",
            fall,
            kind="man_down",
            alerted=fall + dt.timedelta(seconds=30),
            acked=fall + dt.timedelta(seconds=55),
        )
    )
    # alerted, never acknowledged: in the denominator of the shares
    alarms.append(alarm("open", t0, state="escalating"))
    # a pre-alarm the worker cancelled: the guards were never alerted
    alarms.append(AlarmRow("c", "man_down", "cancelled", "d1-123", ts(t0), None, None))
    # a notice is not an alarm
    alarms.append(alarm("n", t0, kind="unattended_entry", state="notice"))
    a = ack_times(alarms)
    answers = sorted([*secs, 25])
    assert (a.alerted, a.acknowledged, a.unanswered) == (12, 11, 1)
    assert a.median_s == 50  # 11 answers: the 6th
    assert a.p90_s == nearest_rank(answers, 90) == 200  # rank ceil(9.9) = 10
    assert a.slowest_s == 400
    assert a.within[60.0] == pytest.approx(6 / 12)  # 10 20 25 30 40 50
    assert a.within[180.0] == pytest.approx(9 / 12)
    r = monthly_report(Rows(alarms=alarms), month_of("2026-11", OSLO), OSLO, ts(t0), [])
    assert r.site.alarms == {"sos": 11, "man_down": 2}
    assert r.site.cancelled == 1
    assert r.site.unattended_entries == 1
    assert dict(r.alarms_per_day)[dt.date(2026, 11, 3)] == 12
    assert dict(r.alarms_per_day)[dt.date(2026, 11, 4)] == 1


def test_even_count_median_and_nothing_acknowledged() -> None:
    t0 = oslo(2026, 11, 3, 12)
    two = [alarm(f"a{s}", t0, acked=t0 + dt.timedelta(seconds=s)) for s in (30, 90)]
    assert ack_times(two).median_s == 60.0
    none = ack_times([alarm("x", t0, state="escalating")])
    assert (none.median_s, none.p90_s, none.slowest_s) == (None, None, None)
    assert none.within == {60.0: 0.0, 180.0: 0.0}
    assert ack_times([]).within == {60.0: None, 180.0: None}


def test_denials_missed_checkins_and_locations() -> None:
    month = month_of("2026-11", OSLO)
    t = ts(oslo(2026, 11, 10, 20))
    rows = Rows(
        denials=[
            DenialRow(t, "training_expired", "d1-123", "nils"),
            DenialRow(t, "training_expired", "w-1", "nils"),
            DenialRow(t, "no_assessment", "d1-123", "per"),
            DenialRow(t, "unknown_device", None, None),
            DenialRow(ts(oslo(2026, 12, 1)), "no_assessment", "d1-123", "per"),  # December
        ],
        checkins_due=[CheckinDueRow(t, "d1-123"), CheckinDueRow(t, "old-lab")],
        alarms=[
            alarm("cl", oslo(2026, 11, 2), kind="contact_lost", location=None, state="escalating"),
            alarm("u", oslo(2026, 11, 2, 23), kind="unattended_entry", state="notice"),
        ],
    )
    r = monthly_report(rows, month, OSLO, t, ["d1-123", "w-1"])
    assert r.site.denials == {"training_expired": 2, "no_assessment": 1, "unknown_device": 1}
    assert r.locations["d1-123"].denials == {"no_assessment": 1, "training_expired": 1}
    assert r.site.checkins_missed == 2
    # a location since removed from the config still has its row, after the configured ones
    assert list(r.locations) == ["d1-123", "w-1", "old-lab"]
    assert r.locations["old-lab"].checkins_missed == 1
    assert r.unlocated_alarms == 1
    assert r.locations["d1-123"].unattended_entries == 1
    assert r.locations["w-1"].denied == 1 and not r.locations["w-1"].empty


def test_what_runs_out_within_30_days_of_the_months_end() -> None:
    month = month_of("2026-11", OSLO)  # last day 30 November; +30 days = 30 December
    items = [
        Validity("training", "ola", "ola", dt.date(2026, 12, 30)),  # the last day in
        Validity("training", "per", "per", dt.date(2026, 12, 31)),  # one day too late
        Validity("assessment", "RA-1", "ola", dt.date(2026, 11, 15), ("d1-123",)),  # ran out
        Validity("assessment", "RA-0", "ola", dt.date(2026, 10, 31)),  # before the month
        Validity("training", "kari", "kari", dt.date(2026, 11, 30)),
    ]
    r = monthly_report(Rows(), month, OSLO, ts(oslo(2026, 12, 1)), [], items)
    assert [(e.item.id, e.days_after_month) for e in r.expiring] == [
        ("RA-1", -15),
        ("kari", 0),
        ("ola", 30),
    ]


# ------------------------------------------------------------------ words and rendering


def test_number_formats() -> None:
    assert w.number("nb", 1234.5) == "1 234,5" and w.number("en", 1234.5) == "1,234.5"
    assert w.duration("nb", 42.4) == "42 s"
    assert w.duration("nb", 125) == "2 min 05 s"
    assert w.duration("nb", 3780) == "1 t 03 min" and w.duration("en", 3780) == "1 h 03 min"
    assert w.share("nb", 0.834) == "83 %" and w.share("en", 0.834) == "83%"
    assert w.share("nb", None) == "–"
    assert w.month_name("nb", 2026, 10) == "oktober 2026"
    assert w.reason_label("nb", "training_expired") == "HMS-opplæringen mangler eller er utløpt"
    assert w.kind_label("nb", "sos") == "SOS (nødknapp)"
    assert w.kind_label("en", "something_new") == "something_new"


def _cfg(lang: str = "nb"):  # type: ignore[no-untyped-def]
    d = config_dict()
    d["gateway"]["language"] = lang
    return make_config(d)


def test_an_empty_month_is_a_valid_report_in_both_formats() -> None:
    for lang in ("nb", "en"):
        cfg = _cfg(lang)
        month = month_of("2026-02", cfg.tz)
        r = monthly_report(
            Rows(), month, cfg.tz, ts(oslo(2026, 3, 1)), [x.id for x in cfg.locations]
        )
        page = render.html(cfg, r)
        assert 'data-empty="1"' in page and "<svg" in page and "<script" not in page
        assert w.words(lang)["nothing"] in page and w.words(lang)["signature"] in page
        rows = list(csv.reader(io.StringIO(render.csv_text(cfg, r))))
        assert rows[0] == list(render.CSV_COLUMNS)
        assert all(len(x) == len(render.CSV_COLUMNS) for x in rows)
        by = {(x[1], x[2], x[3], x[4]): x[6] for x in rows[1:]}
        assert by[("site", "", "sessions", "")] == "0"
        assert by[("site", "", "ack_median_s", "")] == ""
        assert sum(1 for x in rows if x[3] == "alarms_per_day") == 28


def test_html_and_csv_carry_the_numbers() -> None:
    cfg = _cfg("nb")
    month = month_of("2026-11", cfg.tz)
    t0 = oslo(2026, 11, 3, 12)
    rows = Rows(
        sessions=[SessionRow("s", "ola", "d1-123", ts(t0), ts(t0 + dt.timedelta(hours=2.5)))],
        denials=[DenialRow(ts(t0), "training_expired", "d1-123", "nils")],
        alarms=[alarm("a", t0, acked=t0 + dt.timedelta(seconds=45))],
    )
    r = monthly_report(rows, month, cfg.tz, ts(oslo(2026, 12, 1)), [x.id for x in cfg.locations])
    page = render.html(cfg, r)
    assert "Månedsrapport for alenearbeid: november 2026" in page
    assert "HMS-opplæringen mangler eller er utløpt" in page
    assert '<b data-key="hours">2,5</b>' in page
    assert '<b data-key="median">45 s</b>' in page
    assert '<b data-key="within60">100 %</b>' in page
    assert "<title>2026-11-03: 1</title>" in page  # the chart's bar for that day
    rows_ = list(csv.DictReader(io.StringIO(render.csv_text(cfg, r))))
    get = {(x["scope"], x["location"], x["measure"], x["item"]): x["value"] for x in rows_}
    assert get[("site", "", "hours", "")] == "2.5000"
    assert get[("location", "d1-123", "denied_starts", "training_expired")] == "1"
    assert get[("site", "", "alarms", "sos")] == "1"
    assert get[("site", "", "ack_within_60s_share", "")] == "1.0000"
    assert get[("site", "", "alarms_per_day", "2026-11-03")] == "1"


def test_the_style_hash_matches_the_inline_style() -> None:
    import base64
    import hashlib
    import re

    cfg = _cfg()
    r = monthly_report(Rows(), month_of("2026-02", cfg.tz), cfg.tz, 0.0, [])
    css = re.search(r"<style>(.*?)</style>", render.html(cfg, r), re.S)
    assert css is not None
    digest = base64.b64encode(hashlib.sha256(css.group(1).encode()).digest()).decode()
    assert render.style_hash() == f"'sha256-{digest}'"
