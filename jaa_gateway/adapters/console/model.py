"""What the page shows, shaped from the store's rows and the config: pure (`now` and the
language are arguments), so it is tested at exact instants without a browser."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from jaa_gateway.adapters.console.texts import event_word, status_word, words
from jaa_gateway.board import Snapshot
from jaa_gateway.config import Config
from jaa_gateway.domain import roster, texts
from jaa_gateway.domain.alarm import RUNNING, AlarmState
from jaa_gateway.domain.session import CheckinState, checkin_timer

Row = dict[str, Any]
# a session turns amber this long before its check-in is due
CHECKIN_WARN_S = 5 * 60.0
# "ago" is measured from these, in epoch milliseconds, by the page's script


@dataclass(frozen=True)
class DeskStatus:
    """The gateway's health for the header, read from memory (no database round trip)."""

    mqtt_connected: bool
    degraded: list[str] = field(default_factory=list)
    twilio_failing: bool = False
    notify_driver: str = "twilio"
    clustered: bool = False
    may_act: bool = True
    leader: str | None = None
    node: str | None = None
    database_ok: bool = True


@dataclass(frozen=True)
class Notified:
    who: str
    channel: str
    status: str
    bad: bool


@dataclass(frozen=True)
class AlarmView:
    id: str
    code: str
    kind: str
    kind_words: str
    state: str
    state_words: str
    worker: str
    location: str
    map_url: str | None
    opened_ms: int
    opened_at: str
    notified: list[Notified]
    acknowledged_by: str | None
    acknowledged_at: str | None
    exhausted: bool
    may_ack: bool
    may_resolve: bool


@dataclass(frozen=True)
class SessionView:
    id: str
    worker: str
    location: str
    since_ms: int
    since: str
    due_ms: int | None
    due_at: str | None
    ends_at: str
    battery: str | None
    heard_ms: int | None
    warn: bool


@dataclass(frozen=True)
class DenialView:
    at: str
    worker: str
    location: str
    reason: str


@dataclass(frozen=True)
class BoardView:
    alarms: list[AlarmView]
    sessions: list[SessionView]
    denials: list[DenialView]
    quiet_after_ms: int  # a device not heard this long is shown amber


@dataclass(frozen=True)
class StatusView:
    ok: bool
    problems: list[str]
    on_duty: list[tuple[str, str]]  # (roster id, names)
    role_line: str | None
    may_act: bool


def _ms(ts: float | None) -> int | None:
    return None if ts is None else round(ts * 1000)


def clock_text(ts: float, tz: ZoneInfo, now: float) -> str:
    """HH:MM in the site's zone, with the date when it is not today."""
    t = dt.datetime.fromtimestamp(ts, tz)
    if t.date() == dt.datetime.fromtimestamp(now, tz).date():
        return t.strftime("%H:%M")
    return t.strftime("%d.%m. %H:%M")


def day_start(tz: ZoneInfo, now: float) -> float:
    """Local midnight of ``now``'s day in the site's zone (DST aware)."""
    d = dt.datetime.fromtimestamp(now, tz).date()
    return dt.datetime.combine(d, dt.time(0), tz).timestamp()


def person_name(cfg: Config, pid: str | None, lang: str) -> str:
    if pid is None:
        return words(lang)["unknown_worker"]
    p = cfg.person(pid)
    return p.name if p is not None else pid


def location_name(cfg: Config, lid: str | None, lang: str) -> str:
    if lid is None:
        return words(lang)["unknown_location"]
    loc = cfg.location(lid)
    return loc.name if loc is not None else lid


def _kind_words(lang: str, kind: str) -> str:
    try:
        return texts.kind_name("nb" if lang == "nb" else "en", kind)
    except ValueError:
        return kind


def _notified(cfg: Config, lang: str, rows: list[Row]) -> list[Notified]:
    t = words(lang)
    out: list[Notified] = []
    for n in rows:
        if n["purpose"] != "alarm":
            continue
        code = n["delivery_status"] or n["state"]
        out.append(
            Notified(
                who=person_name(cfg, n["person"], lang),
                channel=t.get(f"ch_{n['channel']}") or str(n["channel"]),
                status=status_word(lang, code),
                bad=code in ("failed", "undelivered", "busy", "no-answer", "canceled"),
            )
        )
    return out


def alarm_view(cfg: Config, lang: str, a: Row, notes: list[Row], now: float) -> AlarmView:
    t = words(lang)
    state = a["state"]
    return AlarmView(
        id=a["id"],
        code=a["code"],
        kind=a["kind"],
        kind_words=_kind_words(lang, a["kind"]),
        state=state,
        state_words=t.get(f"state_{state}") or str(state),
        worker=person_name(cfg, a["person"], lang),
        location=location_name(cfg, a["location"], lang),
        map_url=texts.map_link(a["lat"], a["lon"]),
        opened_ms=_ms(a["opened_at"]) or 0,
        opened_at=clock_text(a["opened_at"], cfg.tz, now),
        notified=_notified(cfg, lang, notes),
        acknowledged_by=(
            person_name(cfg, a["acknowledged_by"], lang) if a["acknowledged_by"] else None
        ),
        acknowledged_at=(
            clock_text(a["acknowledged_at"], cfg.tz, now) if a["acknowledged_at"] else None
        ),
        exhausted=bool(a["exhausted"]),
        may_ack=state in RUNNING,
        may_resolve=state == AlarmState.ACKNOWLEDGED,
    )


def session_view(
    cfg: Config, lang: str, s: Row, device: Row | None, now: float, quiet_after_s: float
) -> SessionView:
    due = checkin_timer(
        CheckinState(s["checkin_state"]),
        due_at=s["checkin_due_at"],
        grace_until=s["checkin_grace_until"],
    )
    heard = device["last_seen"] if device is not None else None
    battery = device["battery"] if device is not None else None
    warn = (due is not None and due - now <= CHECKIN_WARN_S) or (
        s["device"] is not None and (heard is None or now - heard >= quiet_after_s)
    )
    return SessionView(
        id=s["id"],
        worker=person_name(cfg, s["person"], lang),
        location=location_name(cfg, s["location"], lang),
        since_ms=_ms(s["started_at"]) or 0,
        since=clock_text(s["started_at"], cfg.tz, now),
        due_ms=_ms(due),
        due_at=clock_text(due, cfg.tz, now) if due is not None else None,
        ends_at=clock_text(s["ends_at"], cfg.tz, now),
        battery=f"{battery:.0f} %" if battery is not None else None,
        heard_ms=_ms(heard),
        warn=warn,
    )


def denial_view(cfg: Config, lang: str, e: Row, now: float) -> DenialView:
    data = e["data"] or {}
    return DenialView(
        at=clock_text(e["ts"], cfg.tz, now),
        worker=(
            person_name(cfg, e["actor"], lang)
            if e["actor"] and cfg.person(e["actor"]) is not None
            else str(data.get("device") or e["actor"] or words(lang)["unknown_worker"])
        ),
        location=location_name(cfg, data.get("location"), lang),
        reason=texts.reason_name("nb" if lang == "nb" else "en", str(data.get("reason", ""))),
    )


def board_view(cfg: Config, lang: str, snap: Snapshot, now: float) -> BoardView:
    quiet_after = cfg.timing.device_timeout.total_seconds() / 2
    return BoardView(
        alarms=[
            alarm_view(cfg, lang, a, snap.notifications.get(a["id"], []), now) for a in snap.alarms
        ],
        sessions=[
            session_view(
                cfg, lang, s, snap.devices.get(s["device"] or ""), now, quiet_after_s=quiet_after
            )
            for s in snap.sessions
        ],
        denials=[denial_view(cfg, lang, e, now) for e in snap.denials],
        quiet_after_ms=int(quiet_after * 1000),
    )


def status_view(cfg: Config, lang: str, st: DeskStatus, now: float) -> StatusView:
    t = words(lang)
    problems: list[str] = []
    if not st.database_ok:
        problems.append(t["db_down"])
    if not st.mqtt_connected:
        problems.append(t["mqtt_down"])
    if st.twilio_failing:
        problems.append(t["twilio_failing"])
    problems.extend(st.degraded)
    if st.notify_driver == "console":
        problems.append(t["console_driver"])
    at = dt.datetime.fromtimestamp(now, dt.UTC)
    duty = [
        (
            r.id,
            ", ".join(person_name(cfg, p, lang) for p in roster.on_duty(r, cfg.tz, at))
            or t["nobody_on_duty"],
        )
        for r in cfg.rosters
    ]
    role_line: str | None = None
    if st.clustered:
        role_line = (
            f"{t['leader']}: {st.node}"
            if st.may_act
            else t["standby"].format(leader=st.leader or t["no_leader"])
        )
    return StatusView(
        ok=not problems, problems=problems, on_duty=duty, role_line=role_line, may_act=st.may_act
    )


def timeline_lines(
    cfg: Config, lang: str, events: list[Row], now: float
) -> list[tuple[str, str, str]]:
    """(time, what, details) per audit event of an alarm, oldest first."""
    out: list[tuple[str, str, str]] = []
    for e in events:
        data = e["data"] or {}
        bits: list[str] = []
        if e["actor"]:
            bits.append(person_name(cfg, e["actor"], lang))
        for key in ("channel", "via", "status", "note", "why", "k"):
            if data.get(key) not in (None, "", []):
                value = data[key]
                if key == "status":
                    value = status_word(lang, str(value))
                bits.append(f"{key}: {value}")
        out.append(
            (clock_text(e["ts"], cfg.tz, now), event_word(lang, e["event"]), " · ".join(bits))
        )
    return out
