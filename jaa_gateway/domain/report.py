"""The monthly lone-work report (CONTRACT §10): rows in, numbers out.

Pure: no I/O, no clock; the month, the site's zone and `now` are arguments.

What belongs to a month: everything that *began* in it, in the site's zone. A session counts
in the month it started, with its whole length (a night shift from 31 January 22:00 to
1 February 02:00 is four hours of January); an alarm counts in the month it was opened, with
its acknowledgement time even when the guard answered after midnight of the month's end.
Durations are real elapsed time (epoch seconds), so a session over the night the clocks go
back is an hour longer than the wall clock says.

Time to acknowledgement is counted from when the guards were alerted (the escalation's start:
after a man-down pre-alarm, not from the fall) to the acknowledgement, the way alarm receiving
centres report their answer times. Every alarm that reached the guards is in the shares'
denominator: one never acknowledged counts as not answered within 60 s or 180 s. The median is
the usual one (the mean of the two middle values for an even count); the 90th percentile is the
nearest rank (the smallest time at least 90 % of the answers were at or under).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

# a notice is not an alarm: it is counted on its own (unattended entries)
NOTICE_KINDS = frozenset({"unattended_entry", "gateway_degraded"})
ACK_WITHIN = (60.0, 180.0)
EXPIRY_DAYS = 30
_MONTH_RE = re.compile(r"^([0-9]{4})-([0-9]{2})$")


class BadMonth(ValueError):
    """The month is not YYYY-MM (or is out of range)."""


@dataclass(frozen=True)
class Month:
    year: int
    month: int
    start: float  # epoch seconds of local midnight on the 1st
    end: float  # epoch seconds of local midnight on the 1st of the next month (exclusive)

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def first_day(self) -> dt.date:
        return dt.date(self.year, self.month, 1)

    @property
    def last_day(self) -> dt.date:
        return self.next_first_day - dt.timedelta(days=1)

    @property
    def next_first_day(self) -> dt.date:
        return dt.date(self.year + self.month // 12, self.month % 12 + 1, 1)

    def days(self) -> list[dt.date]:
        n = (self.next_first_day - self.first_day).days
        return [self.first_day + dt.timedelta(days=i) for i in range(n)]

    def holds(self, ts: float) -> bool:
        return self.start <= ts < self.end


def _midnight(day: dt.date, tz: ZoneInfo) -> float:
    return dt.datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def month_of(text: str, tz: ZoneInfo) -> Month:
    """``"2026-03"`` -> that calendar month in ``tz``; BadMonth for anything else."""
    m = _MONTH_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise BadMonth(f"month must be YYYY-MM (e.g. 2026-03), not {str(text)[:20]!r}")
    year, month = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12 or not 2000 <= year <= 2999:
        raise BadMonth(f"month {text.strip()!r} is out of range (2000-01 .. 2999-12)")
    first = dt.date(year, month, 1)
    nxt = dt.date(year + month // 12, month % 12 + 1, 1)
    return Month(year, month, _midnight(first, tz), _midnight(nxt, tz))


def month_at(now: float, tz: ZoneInfo) -> Month:
    """The calendar month ``now`` is in."""
    today = dt.datetime.fromtimestamp(now, tz).date()
    return month_of(f"{today.year:04d}-{today.month:02d}", tz)


def previous_month(now: float, tz: ZoneInfo) -> Month:
    """The calendar month before the one ``now`` is in (the one a head signs off)."""
    today = dt.datetime.fromtimestamp(now, tz).date()
    last = today.replace(day=1) - dt.timedelta(days=1)
    return month_of(f"{last.year:04d}-{last.month:02d}", tz)


# ------------------------------------------------------------------ rows in


@dataclass(frozen=True)
class SessionRow:
    id: str
    person: str
    location: str
    started_at: float
    ended_at: float | None  # None: still running


@dataclass(frozen=True)
class DenialRow:
    ts: float
    reason: str
    location: str | None
    person: str | None


@dataclass(frozen=True)
class AlarmRow:
    id: str
    kind: str
    state: str
    location: str | None
    opened_at: float
    escalation_started_at: float | None
    acknowledged_at: float | None


@dataclass(frozen=True)
class CheckinDueRow:
    """A `checkin_due` sent because a check-in was missed (reason ``checkin``)."""

    ts: float
    location: str | None


@dataclass(frozen=True)
class Rows:
    sessions: Sequence[SessionRow] = ()
    denials: Sequence[DenialRow] = ()
    alarms: Sequence[AlarmRow] = ()
    checkins_due: Sequence[CheckinDueRow] = ()


@dataclass(frozen=True)
class Validity:
    """Something that runs out: an assessment's ``valid_until`` or a person's HMS training."""

    what: str  # "assessment" | "training"
    id: str  # the assessment's id, or the person's
    holder: str  # the worker (assessment) or the person (training)
    until: dt.date  # the last day it is valid
    locations: tuple[str, ...] = ()


# ------------------------------------------------------------------ numbers out


@dataclass(frozen=True)
class AckTimes:
    alerted: int  # alarms that reached the guards
    acknowledged: int
    median_s: float | None
    p90_s: float | None
    slowest_s: float | None
    within: dict[float, float | None]  # seconds -> share of `alerted` (None: nothing alerted)

    @property
    def unanswered(self) -> int:
        return self.alerted - self.acknowledged


@dataclass(frozen=True)
class Figures:
    sessions: int
    ongoing: int  # of those, still running at `now`
    hours: float
    denials: dict[str, int]  # reason -> count, most first
    alarms: dict[str, int]  # kind -> count, most first (cancelled pre-alarms included)
    cancelled: int  # pre-alarms the worker cancelled
    ack: AckTimes
    checkins_missed: int  # check-in reminders sent because a check-in was late
    unattended_entries: int

    @property
    def denied(self) -> int:
        return sum(self.denials.values())

    @property
    def alarm_count(self) -> int:
        return sum(self.alarms.values())

    @property
    def empty(self) -> bool:
        return not (
            self.sessions
            or self.denied
            or self.alarm_count
            or self.checkins_missed
            or self.unattended_entries
        )


@dataclass(frozen=True)
class Expiring:
    item: Validity
    days_after_month: int  # days from the month's last day to `until` (negative: already out)


@dataclass(frozen=True)
class MonthlyReport:
    month: Month
    site: Figures
    locations: dict[str, Figures]  # location id -> figures, in the order given
    alarms_per_day: list[tuple[dt.date, int]]
    expiring: list[Expiring]
    now: float
    # alarms not tied to a location (contact_lost, an sos outside any session with no position)
    unlocated_alarms: int = 0


def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of sorted ``values`` (non-empty)."""
    rank = max(1, math.ceil(pct / 100.0 * len(values)))
    return values[rank - 1]


def ack_times(alarms: Iterable[AlarmRow]) -> AckTimes:
    answers: list[float] = []
    alerted = 0
    for a in alarms:
        if a.kind in NOTICE_KINDS or a.state == "notice":
            continue
        start = a.escalation_started_at
        if start is None and a.acknowledged_at is None:
            continue  # a pre-alarm the worker cancelled: the guards were never alerted
        alerted += 1
        if a.acknowledged_at is not None:
            answers.append(
                max(0.0, a.acknowledged_at - (start if start is not None else a.opened_at))
            )
    answers.sort()
    within: dict[float, float | None] = {
        w: (sum(1 for x in answers if x <= w) / alerted if alerted else None) for w in ACK_WITHIN
    }
    return AckTimes(
        alerted=alerted,
        acknowledged=len(answers),
        median_s=statistics.median(answers) if answers else None,
        p90_s=nearest_rank(answers, 90) if answers else None,
        slowest_s=answers[-1] if answers else None,
        within=within,
    )


def _most_first(counts: Counter[str]) -> dict[str, int]:
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def figures(rows: Rows, month: Month, now: float) -> Figures:
    """The numbers of ``rows`` that began in ``month`` (rows outside it are left out)."""
    sessions = [s for s in rows.sessions if month.holds(s.started_at)]
    seconds = 0.0
    ongoing = 0
    for s in sessions:
        end = s.ended_at
        if end is None:
            ongoing += 1
            end = max(s.started_at, now)
        seconds += max(0.0, end - s.started_at)
    alarms = [a for a in rows.alarms if month.holds(a.opened_at)]
    real = [a for a in alarms if a.kind not in NOTICE_KINDS and a.state != "notice"]
    return Figures(
        sessions=len(sessions),
        ongoing=ongoing,
        hours=seconds / 3600.0,
        denials=_most_first(Counter(d.reason for d in rows.denials if month.holds(d.ts))),
        alarms=_most_first(Counter(a.kind for a in real)),
        cancelled=sum(
            1 for a in real if a.state == "cancelled" and a.escalation_started_at is None
        ),
        ack=ack_times(real),
        checkins_missed=sum(1 for c in rows.checkins_due if month.holds(c.ts)),
        unattended_entries=sum(1 for a in alarms if a.kind == "unattended_entry"),
    )


def _at(rows: Rows, location: str) -> Rows:
    return Rows(
        sessions=[s for s in rows.sessions if s.location == location],
        denials=[d for d in rows.denials if d.location == location],
        alarms=[a for a in rows.alarms if a.location == location],
        checkins_due=[c for c in rows.checkins_due if c.location == location],
    )


def alarms_per_day(
    alarms: Iterable[AlarmRow], month: Month, tz: ZoneInfo
) -> list[tuple[dt.date, int]]:
    """Alarms (not notices) opened on each local day of the month, every day listed."""
    counts: Counter[dt.date] = Counter(
        dt.datetime.fromtimestamp(a.opened_at, tz).date()
        for a in alarms
        if month.holds(a.opened_at) and a.kind not in NOTICE_KINDS and a.state != "notice"
    )
    return [(d, counts.get(d, 0)) for d in month.days()]


def expiring(items: Iterable[Validity], month: Month, days: int = EXPIRY_DAYS) -> list[Expiring]:
    """What runs out from the month's first day up to ``days`` after its last, soonest first
    (what ran out during the month is listed too: its holder is being denied now)."""
    last = month.last_day
    out = [
        Expiring(v, (v.until - last).days)
        for v in items
        if month.first_day <= v.until <= last + dt.timedelta(days=days)
    ]
    return sorted(out, key=lambda e: (e.item.until, e.item.what, e.item.id))


def monthly_report(
    rows: Rows,
    month: Month,
    tz: ZoneInfo,
    now: float,
    locations: Sequence[str],
    validity: Iterable[Validity] = (),
) -> MonthlyReport:
    """The report of ``month``: the site, and each of ``locations`` (the configured ones, in
    config order) plus any other location the rows name (one since removed from the config)."""
    order = list(dict.fromkeys(locations))
    seen = {s.location for s in rows.sessions if month.holds(s.started_at)}
    seen |= {d.location for d in rows.denials if d.location and month.holds(d.ts)}
    seen |= {a.location for a in rows.alarms if a.location and month.holds(a.opened_at)}
    seen |= {c.location for c in rows.checkins_due if c.location and month.holds(c.ts)}
    order += sorted(x for x in seen if x is not None and x not in order)
    return MonthlyReport(
        month=month,
        site=figures(rows, month, now),
        locations={loc: figures(_at(rows, loc), month, now) for loc in order},
        alarms_per_day=alarms_per_day(rows.alarms, month, tz),
        expiring=expiring(validity, month),
        now=now,
        unlocated_alarms=sum(
            1
            for a in rows.alarms
            if a.location is None
            and month.holds(a.opened_at)
            and a.kind not in NOTICE_KINDS
            and a.state != "notice"
        ),
    )
