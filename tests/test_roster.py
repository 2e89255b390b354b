"""Rosters and HH:MM windows, on local wall-clock time in Europe/Oslo (DST nights included)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaa_gateway.config import Roster, Window
from jaa_gateway.domain.roster import in_window, on_duty
from tests.support.cfg import OSLO, make_config, oslo, utc


def W(start: str, end: str) -> Window:
    return Window.model_validate({"start": start, "end": end})


def R(*shifts: dict[str, object]) -> Roster:
    return Roster.model_validate({"id": "r", "shifts": list(shifts)})


def shift(days: list[str], start: str, end: str, people: list[str]) -> dict[str, object]:
    return {"days": days, "start": start, "end": end, "people": people}


# --------------------------------------------------------------------------- in_window


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (oslo(2026, 9, 9, 6, 59, 59), False),
        (oslo(2026, 9, 9, 7, 0, 0), True),  # start inclusive
        (oslo(2026, 9, 9, 22, 59, 59), True),
        (oslo(2026, 9, 9, 23, 0, 0), False),  # end exclusive
        (oslo(2026, 9, 9, 3, 0), False),
    ],
)
def test_in_window_daytime_edges(now: dt.datetime, expected: bool) -> None:
    assert in_window(W("07:00", "23:00"), OSLO, now) is expected


def test_in_window_end_exclusive_to_the_microsecond() -> None:
    w = W("07:00", "23:00")
    assert in_window(w, OSLO, dt.datetime(2026, 9, 9, 22, 59, 59, 999999, tzinfo=OSLO))
    assert not in_window(w, OSLO, oslo(2026, 9, 9, 23, 0))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (oslo(2026, 9, 9, 16, 59), False),
        (oslo(2026, 9, 9, 17, 0), True),
        (oslo(2026, 9, 9, 23, 59), True),
        (oslo(2026, 9, 10, 0, 0), True),
        (oslo(2026, 9, 10, 6, 59, 59), True),
        (oslo(2026, 9, 10, 7, 0), False),
        (oslo(2026, 9, 10, 12, 0), False),
    ],
)
def test_in_window_crossing_midnight(now: dt.datetime, expected: bool) -> None:
    assert in_window(W("17:00", "07:00"), OSLO, now) is expected


@pytest.mark.parametrize("hour", [0, 5, 12, 23])
def test_in_window_start_equals_end_is_all_day(hour: int) -> None:
    assert in_window(W("08:00", "08:00"), OSLO, oslo(2026, 9, 9, hour, 30))


def test_in_window_uses_site_wall_clock_not_utc() -> None:
    # 06:30 UTC is 08:30 in Oslo in summer, 07:30 in winter
    w = W("08:00", "09:00")
    assert in_window(w, OSLO, utc(2026, 7, 1, 6, 30))
    assert not in_window(w, OSLO, utc(2026, 1, 15, 6, 30))


def test_in_window_spring_forward_night() -> None:
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:xx never happens
    w = W("02:00", "03:00")
    assert not in_window(w, OSLO, utc(2026, 3, 29, 0, 59, 59))  # 01:59:59 CET
    assert not in_window(w, OSLO, utc(2026, 3, 29, 1, 0))  # 03:00 CEST
    assert in_window(W("03:00", "04:00"), OSLO, utc(2026, 3, 29, 1, 0))
    # a 17:00-07:00 window ends at 07:00 CEST = 05:00 UTC that morning
    night = W("17:00", "07:00")
    assert in_window(night, OSLO, utc(2026, 3, 29, 4, 59, 59))
    assert not in_window(night, OSLO, utc(2026, 3, 29, 5, 0))


def test_in_window_fall_back_night_both_folds() -> None:
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:30 happens twice
    w = W("02:00", "03:00")
    first = utc(2026, 10, 25, 0, 30)
    second = utc(2026, 10, 25, 1, 30)
    assert first.astimezone(OSLO).strftime("%H:%M") == "02:30"
    assert second.astimezone(OSLO).strftime("%H:%M") == "02:30"
    assert in_window(w, OSLO, first)
    assert in_window(w, OSLO, second)
    assert not in_window(w, OSLO, utc(2026, 10, 25, 2, 0))  # 03:00 CET
    night = W("17:00", "07:00")
    assert in_window(night, OSLO, utc(2026, 10, 25, 5, 59, 59))  # 06:59:59 CET
    assert not in_window(night, OSLO, utc(2026, 10, 25, 6, 0))  # 07:00 CET


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        in_window(W("07:00", "23:00"), OSLO, dt.datetime(2026, 9, 9, 12, 0))
    with pytest.raises(ValueError, match="timezone-aware"):
        on_duty(R(shift(["mon"], "07:00", "17:00", ["a"])), OSLO, dt.datetime(2026, 9, 7, 12))


HHMM = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))
INSTANTS = st.datetimes(
    min_value=dt.datetime(2025, 1, 1),
    max_value=dt.datetime(2028, 12, 31),
    timezones=st.just(dt.UTC),
)


@given(start=HHMM, end=HHMM, now=INSTANTS)
def test_a_window_and_its_complement_partition_the_day(
    start: str, end: str, now: dt.datetime
) -> None:
    if start == end:
        assert in_window(W(start, end), OSLO, now)
    else:
        assert in_window(W(start, end), OSLO, now) != in_window(W(end, start), OSLO, now)


# --------------------------------------------------------------------------- on_duty

FRI_NIGHT = R(shift(["fri"], "17:00", "07:00", ["night"]))


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (oslo(2026, 9, 11, 16, 59), []),  # Fri before start
        (oslo(2026, 9, 11, 17, 0), ["night"]),  # Fri 17:00
        (oslo(2026, 9, 12, 0, 0), ["night"]),  # Sat midnight: still Friday's shift
        (oslo(2026, 9, 12, 6, 59, 59), ["night"]),
        (oslo(2026, 9, 12, 7, 0), []),  # Sat 07:00: over
        (oslo(2026, 9, 12, 18, 0), []),  # Sat evening: Saturday is not listed
        (oslo(2026, 9, 11, 6, 0), []),  # Fri morning belongs to Thursday, not listed
        (oslo(2026, 9, 10, 23, 0), []),  # Thu night
    ],
)
def test_night_shift_belongs_to_the_day_it_starts(now: dt.datetime, expected: list[str]) -> None:
    assert on_duty(FRI_NIGHT, OSLO, now) == expected


def test_sunday_night_shift_runs_into_monday() -> None:
    r = R(shift(["sun"], "17:00", "07:00", ["n"]))
    assert on_duty(r, OSLO, oslo(2026, 9, 14, 6, 0)) == ["n"]  # Monday 06:00
    assert on_duty(r, OSLO, oslo(2026, 9, 14, 7, 0)) == []
    assert on_duty(r, OSLO, oslo(2026, 9, 13, 6, 0)) == []  # Sunday 06:00: Saturday's, unlisted


def test_day_shift_edges() -> None:
    r = R(shift(["mon", "tue", "wed", "thu", "fri"], "07:00", "17:00", ["d"]))
    assert on_duty(r, OSLO, oslo(2026, 9, 9, 7, 0)) == ["d"]
    assert on_duty(r, OSLO, oslo(2026, 9, 9, 16, 59, 59)) == ["d"]
    assert on_duty(r, OSLO, oslo(2026, 9, 9, 17, 0)) == []
    assert on_duty(r, OSLO, oslo(2026, 9, 12, 12, 0)) == []  # Saturday


def test_whole_day_shift_runs_from_start_to_same_time_next_day() -> None:
    r = R(shift(["sat"], "08:00", "08:00", ["w"]))
    assert on_duty(r, OSLO, oslo(2026, 9, 12, 7, 59)) == []  # Sat before start
    assert on_duty(r, OSLO, oslo(2026, 9, 12, 8, 0)) == ["w"]
    assert on_duty(r, OSLO, oslo(2026, 9, 13, 7, 59, 59)) == ["w"]  # Sunday morning
    assert on_duty(r, OSLO, oslo(2026, 9, 13, 8, 0)) == []


def test_whole_day_shift_at_midnight_is_the_calendar_day() -> None:
    r = R(shift(["mon"], "00:00", "00:00", ["w"]))
    assert on_duty(r, OSLO, oslo(2026, 9, 13, 23, 59, 59)) == []  # Sunday
    assert on_duty(r, OSLO, oslo(2026, 9, 14, 0, 0)) == ["w"]
    assert on_duty(r, OSLO, oslo(2026, 9, 14, 23, 59, 59)) == ["w"]
    assert on_duty(r, OSLO, oslo(2026, 9, 15, 0, 0)) == []


def test_order_kept_and_no_duplicates() -> None:
    r = R(
        shift(["wed"], "07:00", "17:00", ["b", "a"]),
        shift(["wed"], "12:00", "20:00", ["a", "c", "b"]),
        shift(["wed"], "18:00", "20:00", ["z"]),
    )
    assert on_duty(r, OSLO, oslo(2026, 9, 9, 13, 0)) == ["b", "a", "c"]
    assert on_duty(r, OSLO, oslo(2026, 9, 9, 8, 0)) == ["b", "a"]
    assert on_duty(r, OSLO, oslo(2026, 9, 9, 19, 0)) == ["a", "c", "b", "z"]


def _minutes_on_duty(roster: Roster, start_utc: dt.datetime, hours: int) -> int:
    return sum(
        1 for m in range(hours * 60) if on_duty(roster, OSLO, start_utc + dt.timedelta(minutes=m))
    )


def test_night_shift_is_13_hours_on_spring_forward_night() -> None:
    night = R(shift(["sat"], "17:00", "07:00", ["n"]))
    # Saturday 28 March 12:00 UTC .. Sunday 29 March 12:00 UTC
    assert _minutes_on_duty(night, utc(2026, 3, 28, 12), 24) == 13 * 60
    assert on_duty(night, OSLO, utc(2026, 3, 28, 16, 0)) == ["n"]  # 17:00 CET
    assert on_duty(night, OSLO, utc(2026, 3, 29, 4, 59)) == ["n"]  # 06:59 CEST
    assert on_duty(night, OSLO, utc(2026, 3, 29, 5, 0)) == []  # 07:00 CEST


def test_night_shift_is_15_hours_on_fall_back_night() -> None:
    night = R(shift(["sat"], "17:00", "07:00", ["n"]))
    assert _minutes_on_duty(night, utc(2026, 10, 24, 12), 24) == 15 * 60
    assert on_duty(night, OSLO, utc(2026, 10, 24, 15, 0)) == ["n"]  # 17:00 CEST
    assert on_duty(night, OSLO, utc(2026, 10, 25, 5, 59)) == ["n"]  # 06:59 CET
    assert on_duty(night, OSLO, utc(2026, 10, 25, 6, 0)) == []  # 07:00 CET


def test_contract_roster_handover() -> None:
    cfg = make_config()
    desk = cfg.roster("security-desk")
    assert desk is not None
    assert on_duty(desk, cfg.tz, oslo(2026, 9, 9, 16, 59)) == ["guard-day"]
    assert on_duty(desk, cfg.tz, oslo(2026, 9, 9, 17, 0)) == ["guard-night"]
    assert on_duty(desk, cfg.tz, oslo(2026, 9, 10, 6, 59)) == ["guard-night"]
    assert on_duty(desk, cfg.tz, oslo(2026, 9, 10, 7, 0)) == ["guard-day"]
    assert on_duty(desk, cfg.tz, oslo(2026, 9, 12, 12, 0)) == []  # Saturday daytime: nobody


@given(now=INSTANTS)
def test_contract_roster_gap_is_exactly_weekend_daytime(now: dt.datetime) -> None:
    cfg = make_config()
    desk = cfg.roster("security-desk")
    assert desk is not None
    local = now.astimezone(OSLO)
    weekend_day = local.weekday() >= 5 and dt.time(7) <= local.time() < dt.time(17)
    assert (on_duty(desk, OSLO, now) == []) is weekend_day


# ----------------------------------------------------------------------- handovers, DST nights


def _handovers(roster: Roster, start_utc: dt.datetime, hours: int) -> list[tuple[str, list[str]]]:
    """Each change of who is on duty, minute by minute: (local time, people)."""
    out: list[tuple[str, list[str]]] = []
    for m in range(hours * 60):
        now = start_utc + dt.timedelta(minutes=m)
        people = on_duty(roster, OSLO, now)
        if not out or out[-1][1] != people:
            out.append((now.astimezone(OSLO).strftime("%a %H:%M%z"), people))
    return out


EVERY = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


def test_handover_in_the_hour_that_never_happens_is_at_the_jump() -> None:
    r = R(shift(EVERY, "20:00", "02:30", ["a"]), shift(EVERY, "02:30", "20:00", ["b"]))
    assert _handovers(r, utc(2026, 3, 28, 12), 24) == [
        ("Sat 13:00+0100", ["b"]),
        ("Sat 20:00+0100", ["a"]),
        ("Sun 03:00+0200", ["b"]),  # 02:30 never happens: at the jump from 02:00 CET
    ]


def test_handover_in_the_hour_that_happens_twice_is_once_the_first_time() -> None:
    # the wall clock shows 02:00-02:29 a second time after the handover at the first 02:30: the
    # guard who went home is not on duty again
    r = R(shift(EVERY, "20:00", "02:30", ["a"]), shift(EVERY, "02:30", "20:00", ["b"]))
    assert _handovers(r, utc(2026, 10, 24, 12), 24) == [
        ("Sat 14:00+0200", ["b"]),
        ("Sat 20:00+0200", ["a"]),
        ("Sun 02:30+0200", ["b"]),
    ]
    assert on_duty(r, OSLO, oslo(2026, 10, 25, 2, 29, 59, fold=0)) == ["a"]
    assert on_duty(r, OSLO, oslo(2026, 10, 25, 2, 0, 0, fold=1)) == ["b"]
    assert on_duty(r, OSLO, oslo(2026, 10, 25, 2, 29, 59, fold=1)) == ["b"]


def test_shift_starting_in_the_repeated_hour_starts_once() -> None:
    r = R(shift(["sun"], "02:15", "02:45", ["x"]))
    assert on_duty(r, OSLO, oslo(2026, 10, 25, 2, 14, 59)) == []
    assert on_duty(r, OSLO, oslo(2026, 10, 25, 2, 15)) == ["x"]
    assert on_duty(r, OSLO, oslo(2026, 10, 25, 2, 44, 59)) == ["x"]
    assert on_duty(r, OSLO, oslo(2026, 10, 25, 2, 45)) == []
    assert on_duty(r, OSLO, oslo(2026, 10, 25, 2, 20, fold=1)) == []  # over: not again


@settings(max_examples=40, deadline=None)
@given(a=HHMM, b=HHMM, night=st.sampled_from([utc(2026, 3, 28, 12), utc(2026, 10, 24, 12)]))
def test_two_complementary_shifts_never_hand_back_on_dst_nights(
    a: str, b: str, night: dt.datetime
) -> None:
    if a == b:
        return
    r = R(shift(EVERY, a, b, ["x"]), shift(EVERY, b, a, ["y"]))
    changes = _handovers(r, night, 24)
    # somebody at every minute, never both; the wall clock covers 25 h of these 24 h on
    # 29 March (a handover time may come round twice: at most 4 handovers) and 23 h on
    # 25 October (each handover time once: at most 2; a guard back on duty in the repeated
    # hour would make 4)
    assert all(len(people) == 1 for _, people in changes)
    most = 4 if night.month == 3 else 2
    assert len(changes) - 1 <= most, changes
