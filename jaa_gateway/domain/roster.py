"""Who is on duty at an instant, and whether an instant falls in an HH:MM window.

Every HH:MM in the config is local wall-clock time in the site's zone. Rules are evaluated on the
wall clock, not by adding hours to a start instant, so the nights the clocks change come out
right: a 17:00-07:00 shift lasts 13 h on 29 March 2026 and 15 h on 25 October 2026.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from jaa_gateway.config import DAYS, Roster, Shift, Window


def require_aware(now: dt.datetime, name: str = "now") -> None:
    """Naive datetimes are ambiguous for a safety rule: refuse them loudly."""
    if not isinstance(now, dt.datetime):
        raise TypeError(f"{name} must be a datetime, not {type(now).__name__}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {now.isoformat()}")


def _wall(tz: ZoneInfo, now: dt.datetime) -> tuple[dt.date, dt.time]:
    require_aware(now)
    local = now.astimezone(tz)
    return local.date(), local.time().replace(tzinfo=None, fold=0)


def _time_in(start: dt.time, end: dt.time, t: dt.time) -> bool:
    if start < end:
        return start <= t < end
    if start > end:
        return t >= start or t < end
    return True


def in_window(window: Window, tz: ZoneInfo, now: dt.datetime) -> bool:
    """True when `now`'s local wall time is in the window (start inclusive, end exclusive).

    A window with start > end crosses midnight; start == end means all day.
    """
    _, t = _wall(tz, now)
    return _time_in(window.start, window.end, t)


def _day_name(d: dt.date) -> str:
    return DAYS[d.weekday()]


def _ambiguous(tz: ZoneInfo, day: dt.date, t: dt.time) -> bool:
    """Whether wall time `t` on `day` happens twice (or never) in `tz`."""
    d = dt.datetime.combine(day, t, tzinfo=tz)
    return d.utcoffset() != d.replace(fold=1).utcoffset()


def shift_covers(shift: Shift, tz: ZoneInfo, now: dt.datetime) -> bool:
    """True when `now` falls in one of the shift's occurrences.

    An occurrence belongs to the day it starts: a "fri" 17:00-07:00 shift covers Friday 17:00 to
    Saturday 07:00. start == end is a whole day: from start on a listed day to the same wall time
    the next day.

    A handover is one instant. When the clocks go back and a start or end falls in the hour that
    happens twice, it is the first time that hour comes round: the guard who handed over at the
    first 02:30 is not on duty again when the wall clock shows 02:00-02:29 a second time. (A
    handover at a wall time that never happens, when the clocks go forward, is at the jump.)
    """
    require_aware(now)
    local = now.astimezone(tz)
    today, t = _wall(tz, now)
    second_pass = local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()

    def reached(b: dt.time) -> bool:
        return t >= b or (second_pass and _ambiguous(tz, today, b))

    days = set(shift.days)
    started_today = _day_name(today) in days
    started_yesterday = _day_name(today - dt.timedelta(days=1)) in days
    start, end = shift.start, shift.end
    if start < end:
        return started_today and reached(start) and not reached(end)
    if start > end:
        return (started_today and reached(start)) or (started_yesterday and not reached(end))
    return (started_today and reached(start)) or (started_yesterday and not reached(start))


def on_duty(roster: Roster, tz: ZoneInfo, now: dt.datetime) -> list[str]:
    """Ids of the people on duty at `now`, in roster order, each once."""
    out: list[str] = []
    for shift in roster.shifts:
        if shift_covers(shift, tz, now):
            for pid in shift.people:
                if pid not in out:
                    out.append(pid)
    return out
