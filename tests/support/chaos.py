"""Crash loop ("chaos"): SIGKILL the real daemon at random moments while simulated devices raise
and repeat alarms, sessions start and lapse, and guards acknowledge by API and by signed SMS;
after each restart, check the invariants against the SQLite file (opened read-only) and the
Twilio double's records.

The parts:
- `chaos_config(...)`: the site of tests/support/gateway.py plus generated workers and devices,
  a chain with steps at 0/1/2 s and keep_paging, and assessments with 1 s check-ins.
- `ChaosRun`: the kill loop (seeded; kill moments: any time, just as a request reaches the
  double, just after a device event, just after a guard's acknowledgement went out, and during
  start-up), the simulated devices (they repeat an `sos` or `session_start`
  with the same id every 0.5 s until the gateway answers on the cmd topic: CONTRACT §3, the
  end-to-end acknowledgement that makes a kill between PUBACK and storage safe) and the guards.
- `check(...)`: the invariants, a pure function of a DB snapshot, the double's requests and the
  run's history, so tests/test_chaos.py can show that each invariant can fail.

Clocks: the daemon stores epoch seconds (time.time()); the double records time.time() on
arrival as well (`Recorded.wall`). Everything here is compared on the wall clock. Converting
the double's monotonic instants with a fixed offset is not enough: a slewed wall clock (seen on
this machine: 5 ms a second) drifts from the monotonic one by 0.1 s within a run.

Allowances: a step is owed once the gateway has been *up* for `step_slack` seconds since its
due time (a step falling due while the daemon is dead goes out after the restart, and a kill
during the allowance restarts the count). Calls get the call pacing on top.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import secrets
import sqlite3
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from jaa_gateway.domain import guard_texts
from tests.support.broker import MosquittoBroker, MqttProbe
from tests.support.gateway import PHONES, Client, GatewayProcess, site_config
from tests.support.twilio_double import Recorded, TwilioDouble

INF = math.inf
# rows are written with the daemon's tx.ts; due times are computed from the same clock
EARLY_DB = 0.01
# a request's arrival, stamped by the double's own time.time() (another task than the daemon's)
EARLY_WALL = 0.1

KILL_MODES = ("random", "request", "event", "ack")
GUARD = "guard-1"  # on duty (roster "desk"): step 0, so the one who can ack by SMS
LOCATION = "chaos-lab"


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ChaosSettings:
    seed: int = 20260901
    kills: int = 30
    # a hard stop: the run fails if the kills are not done by then (a hung restart, say)
    max_wall_s: float = 300.0
    sos_devices: int = 8
    session_devices: int = 4
    # share of kills that hit the start-up itself (migrate, outbox recovery, engine start)
    startup_kill_share: float = 0.2
    kill_weights: tuple[float, ...] = (0.4, 0.25, 0.15, 0.2)  # of KILL_MODES
    uptime_s: tuple[float, float] = (0.05, 1.2)  # how long the daemon lives after ready
    ack_delay_s: tuple[float, float] = (0.3, 4.0)  # from first sight of an open alarm
    sms_ack_share: float = 0.35
    resolve_share: float = 0.5
    settle_s: float = 4.0  # after the last restart: guards ack everything, steps drain
    keep_paging_s: float = 1.0
    step_slack: float = 3.0
    ack_in_flight: float = 1.0  # claim-before-ack to arrival: a request already on its way

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ChaosSettings:
        env = dict(os.environ) if env is None else env
        kills = int(env.get("CHAOS_KILLS", "15"))
        seed = int(env.get("CHAOS_SEED", str(cls.seed)))
        if kills < 1:
            raise ValueError("CHAOS_KILLS must be at least 1")
        # ~3.5 s a kill on a loaded 2-core machine (2.7 s when quiet): this bound only stops a
        # hung run, it is not the expected duration
        return cls(seed=seed, kills=kills, max_wall_s=max(180.0, kills * 6.0))


def chaos_config(
    db_path: Path, broker_port: int, twilio: TwilioDouble, s: ChaosSettings
) -> dict[str, Any]:
    cfg = site_config(db_path, broker_port, twilio)
    # no device_offline noise: session devices never send heartbeats
    cfg["timing"]["device_timeout"] = "10m"
    cfg["timing"]["checkin_grace"] = "1s"
    for i in range(s.sos_devices):
        _add_worker(cfg, f"sos-w{i:02d}", f"+4798{i:06d}", f"jaa-s{i:03d}")
    for i in range(s.session_devices):
        pid = f"ses-w{i:02d}"
        _add_worker(cfg, pid, f"+4797{i:06d}", f"jaa-c{i:03d}")
        cfg["assessments"].append(
            {
                "id": f"RA-CHAOS-{i:02d}",
                "person": pid,
                "locations": [LOCATION],
                "activity": "Crash-loop test work",
                "acute_injury_risk": True,
                "lone_work_allowed": True,
                "requires_jaa": True,
                "checkin_interval": "1s",
                "max_duration": "4h",
                "valid_from": "2020-01-01",
                "valid_until": "2099-12-31",
                "approved_by": "kari",
            }
        )
    cfg["locations"].append(
        {"id": LOCATION, "name": "Kaoslaben K-13", "kind": "lab", "escalation": "guards"}
    )
    cfg["escalation_chains"] = [
        {
            "id": "guards",
            "repeat": 0,
            "repeat_after": "1s",
            "keep_paging": f"{s.keep_paging_s}s",
            "steps": [
                {"after": "0s", "notify": ["roster:desk"], "via": ["sms", "call"]},
                {"after": "1s", "notify": ["person:guard-2", "supervisor"], "via": ["sms"]},
                {"after": "2s", "notify": ["person:head-security"], "via": ["sms"]},
            ],
        }
    ]
    return cfg


def _add_worker(cfg: dict[str, Any], pid: str, phone: str, device: str) -> None:
    cfg["people"].append(
        {
            "id": pid,
            "name": f"Arbeider {pid}",
            "phone": phone,
            "roles": ["worker"],
            "supervisor": "kari",
            "hse_training_until": "2099-12-31",
        }
    )
    cfg["devices"].append({"id": device, "person": pid})


# --------------------------------------------------------------------------- history


@dataclass
class Outage:
    start: float  # wall clock of the SIGKILL
    end: float = INF  # wall clock of the next ready (/healthz 200)


@dataclass
class History:
    """What the test did and saw, on the wall clock."""

    outages: list[Outage] = field(default_factory=list)
    kills: list[float] = field(default_factory=list)
    startup_kills: int = 0
    # sos event id -> every alarm id the gateway answered it with (a repeat must not differ)
    event_alarms: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    # alarm id -> (device, kind or None): alarms a device was told about on its cmd topic
    told: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    acks_confirmed: dict[str, float] = field(default_factory=dict)
    resolves_confirmed: dict[str, float] = field(default_factory=dict)
    acks_by: Counter[str] = field(default_factory=Counter)
    # alarms whose SMS "OK" webhook, sent again after a try that got no answer, was taken for
    # a replay while the first try had not acknowledged anything
    lost_sms_acks: list[str] = field(default_factory=list)

    def frozen(self) -> History:
        """A copy, for a check: what the devices and guards had been told and confirmed when
        a snapshot was about to be read. The tasks go on recording while it is read (it is
        awaited); a confirmation that arrived after the snapshot began may be of a commit the
        snapshot does not hold."""
        return History(
            outages=[Outage(o.start, o.end) for o in self.outages],
            kills=list(self.kills),
            startup_kills=self.startup_kills,
            event_alarms=defaultdict(set, {k: set(v) for k, v in self.event_alarms.items()}),
            told=dict(self.told),
            acks_confirmed=dict(self.acks_confirmed),
            resolves_confirmed=dict(self.resolves_confirmed),
            acks_by=Counter(self.acks_by),
            lost_sms_acks=list(self.lost_sms_acks),
        )

    def killed(self, at: float) -> None:
        self.kills.append(at)
        if not self.outages or self.outages[-1].end != INF:
            self.outages.append(Outage(at))

    def ready(self, at: float) -> None:
        if self.outages and self.outages[-1].end == INF:
            self.outages[-1].end = at

    def deadline_after(self, t: float, slack: float) -> float:
        """When the daemon has been up for `slack` seconds since `t` (INF while it is down)."""
        cur, left = t, slack
        for o in self.outages:
            if o.end <= cur:
                continue
            if o.start >= cur + left:
                break
            left -= max(0.0, o.start - cur)
            cur = max(cur, o.end)
            if cur == INF:
                return INF
        return cur + left

    def down_between(self, a: float, b: float) -> bool:
        return any(o.start <= b and o.end >= a for o in self.outages)

    def kills_between(self, a: float, b: float) -> int:
        return sum(1 for k in self.kills if a <= k <= b)


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class Req:
    """One request the double accepted, on the wall clock; `node`: the gateway that sent it,
    where several share one database (tests/support/chaos_ha.py), else empty."""

    kind: str
    to: str
    body: str
    twiml: str
    sid: str
    at: float
    node: str = ""


def requests_of(double: TwilioDouble, hist: History, node: str = "") -> list[Req]:
    return [_req(r, node) for r in list(double.attempts) if r.sid is not None]


def _req(r: Recorded, node: str) -> Req:
    assert r.sid is not None
    return Req(r.kind, r.to, r.body or "", r.twiml or "", r.sid, r.wall, node)


@dataclass(frozen=True)
class Snapshot:
    taken_at: float  # wall clock
    alarms: list[dict[str, Any]]
    notifications: list[dict[str, Any]]
    sessions: list[dict[str, Any]]


def read_db(path: Path) -> Snapshot:
    """One consistent read (a single read transaction) of the daemon's SQLite file, read-only."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("BEGIN")
        taken = time.time()
        alarms = [dict(r) for r in conn.execute("SELECT * FROM alarms")]
        notes = [dict(r) for r in conn.execute("SELECT * FROM notifications ORDER BY id")]
        sessions = [dict(r) for r in conn.execute("SELECT * FROM sessions")]
        conn.execute("COMMIT")
    finally:
        conn.close()
    for a in alarms:
        if isinstance(a.get("chain"), str):
            a["chain"] = json.loads(a["chain"])
    return Snapshot(taken, alarms, notes, sessions)


# --------------------------------------------------------------------------- the invariants


@dataclass
class CheckReport:
    violations: list[str] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class CheckParams:
    checkin_grace: float = 1.0
    step_slack: float = 3.0
    call_spacing: float = 1.0
    ack_in_flight: float = 1.0


def step_offset(chain: dict[str, Any], k: int) -> tuple[float, int, bool] | None:
    """(offset from the escalation start, step index, is keep-paging) of step run k, written
    from CONTRACT §4 independently of domain/escalation.py (an oracle must not share a bug)."""
    steps = chain["steps"]
    n, repeat = len(steps), int(chain["repeat"])
    end = n * (repeat + 1)
    run_len = float(steps[-1]["after"]) + float(chain["repeat_after"])
    if k < end:
        run, i = divmod(k, n)
        return run * run_len + float(steps[i]["after"]), i, False
    keep = float(chain["keep_paging"])
    if keep <= 0:
        return None
    t_last = repeat * run_len + float(steps[-1]["after"])
    return t_last + (k - end + 1) * keep, n - 1, True


_VOICE_URL = re.compile(r"/twilio/voice/([A-Za-z0-9._~%-]+)(?:\?also=([A-Za-z0-9._~%,-]+))?")


def call_alarm_ids(twiml: str) -> list[str]:
    m = _VOICE_URL.search(twiml.replace("&amp;", "&"))
    if m is None:
        return []
    ids = [m.group(1)]
    if m.group(2):
        ids.extend(x for x in m.group(2).split(",") if x)
    return ids


def check(
    snap: Snapshot,
    before: Sequence[Req],
    after: Sequence[Req],
    hist: History,
    p: CheckParams,
    *,
    final: bool = False,
) -> CheckReport:
    """The invariants. `before`: the double's requests read before the DB snapshot (used to
    explain every request); `after`: read after it (used to find the request of a recorded SID).
    """
    rep = CheckReport()
    bad = rep.violations.append
    now = snap.taken_at
    rows = snap.notifications
    alarms = {a["id"]: a for a in snap.alarms}

    # ---- attribute every request to the notification row(s) it carried
    by_sid: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["sid"]:
            by_sid[r["sid"]].append(r)
    got: dict[int, list[Req]] = defaultdict(list)
    after_sids = set()
    for q in after:
        after_sids.add(q.sid)
        for r in by_sid.get(q.sid, []):
            got[r["id"]].append(q)
    for sid, rs in by_sid.items():
        if sid not in after_sids:
            bad(f"notification(s) {[r['id'] for r in rs]} recorded SID {sid} the double never gave")
    # claims whose outcome was never recorded (a kill, or still in flight): each may have
    # reached the double without its SID being stored
    unrecorded = {
        r["id"]: int(r["attempts"]) - (1 if r["state"] in ("sent", "failed") else 0) for r in rows
    }
    for rid, u in unrecorded.items():
        if u < 0:
            bad(f"notification {rid} is sent/failed with no attempt counted")
    orphans = sorted((q for q in before if q.sid not in by_sid), key=lambda q: q.at)
    for q in orphans:
        if q.kind == "sms":
            slots = [
                [
                    r
                    for r in rows
                    if r["channel"] == "sms" and r["phone"] == q.to and r["body"] == q.body
                ]
            ]
        else:
            ids = call_alarm_ids(q.twiml)
            if not ids:
                bad(f"call to {q.to} at {q.at:.3f} names no alarm in its TwiML")
            slots = [
                [
                    r
                    for r in rows
                    if r["channel"] == "call" and r["phone"] == q.to and r["alarm"] == a
                ]
                for a in ids
            ]
        for cands in slots:
            pick = next(
                (
                    r
                    for r in cands
                    if unrecorded[r["id"]] > 0 and r["created_at"] <= q.at + EARLY_WALL
                ),
                None,
            )
            if pick is None:
                bad(
                    f"{q.kind} to {q.to} at {q.at:.3f} (sid {q.sid}) matches no claimed "
                    f"notification: a duplicate without a kill, or a send nobody asked for"
                )
                continue
            unrecorded[pick["id"]] -= 1
            got[pick["id"]].append(q)

    # ---- duplicates: at most one per kill that interrupted the row's sending
    for r in rows:
        n = len(got[r["id"]])
        if n > 1:
            dup = n - 1
            rep.counts["duplicates"] += dup
            if dup > 1:
                rep.counts["rows_duplicated_more_than_once"] += 1
            last = max(q.at for q in got[r["id"]])
            kills = hist.kills_between(float(r["created_at"]), last)
            if dup > kills:
                bad(
                    f"notification {r['id']} (alarm {r['alarm']} k={r['k']} {r['person']} "
                    f"{r['channel']}) reached the double {n} times with {kills} kill(s) between"
                )
    rep.counts["requests"] = len(after)

    # ---- alarms: exist, consistent states, escalation timetable
    step_rows: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["purpose"] == "alarm" and r["alarm"] is not None:
            step_rows[(r["alarm"], int(r["k"]))].append(r)
    for a in snap.alarms:
        rep.counts["alarms"] += 1
        rep.counts[f"alarms_{a['kind']}"] += 1
        rep.counts[f"state_{a['state']}"] += 1
        _check_alarm_state(a, bad)
        if a["chain"] is None or a["escalation_started_at"] is None:
            continue
        _check_escalation(a, step_rows, got, hist, p, now, rep)
    for key in step_rows:
        if key[0] not in alarms:
            bad(f"step rows for unknown alarm {key[0]}")

    # ---- what the devices and guards were told holds
    for aid, (device, kind) in hist.told.items():
        a = alarms.get(aid)
        if a is None:
            bad(f"device {device} was told about alarm {aid}, which is not in the database")
        elif a["device"] != device or (kind is not None and a["kind"] != kind):
            bad(f"alarm {aid} is {a['kind']} of {a['device']}; {device} was told {kind}")
    for eid, ids in hist.event_alarms.items():
        if len(ids) > 1:
            bad(f"repeats of event {eid} were answered with different alarms {sorted(ids)}")
    for aid, t in hist.acks_confirmed.items():
        a = alarms.get(aid)
        if a is None or a["state"] not in ("acknowledged", "resolved"):
            bad(
                f"alarm {aid}: acknowledgement confirmed at {t:.3f} but it is now "
                f"{a['state'] if a else 'missing'}"
            )
        elif a["acknowledged_at"] is None or a["acknowledged_at"] > t + EARLY_WALL:
            bad(f"alarm {aid}: acknowledged_at {a['acknowledged_at']} after the confirmation")
    for aid, t in hist.resolves_confirmed.items():
        a = alarms.get(aid)
        if a is None or a["state"] != "resolved":
            bad(
                f"alarm {aid}: resolve confirmed at {t:.3f} but it is "
                f"{a['state'] if a else 'missing'}"
            )
    rep.counts["acks_confirmed"] = len(hist.acks_confirmed)
    for aid in hist.lost_sms_acks:
        bad(f"alarm {aid}: a retried SMS acknowledgement was dropped as a replay")

    # ---- sessions lapse into exactly one missed_checkin alarm, never early
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for a in snap.alarms:
        if a["kind"] == "missed_checkin" and a["session"]:
            by_session[a["session"]].append(a)
    for s in snap.sessions:
        rep.counts["sessions"] += 1
        if not s["checkin_interval_s"]:
            continue
        # the simulated workers never check in: the alarm is due at start + interval + grace
        due = float(s["started_at"]) + float(s["checkin_interval_s"]) + p.checkin_grace
        mine = by_session.get(s["id"], [])
        if len(mine) > 1:
            bad(f"session {s['id']} has {len(mine)} missed_checkin alarms")
        for a in mine:
            if a["opened_at"] < due - EARLY_DB:
                bad(f"missed_checkin {a['id']} opened {due - a['opened_at']:.3f} s early")
        ended = float(s["ended_at"]) if s["ended_at"] is not None else INF
        if mine:
            rep.counts["sessions_lapsed"] += 1
        elif hist.deadline_after(due, p.step_slack) <= min(ended, now):
            bad(f"session {s['id']} lapsed at {due:.3f} (ended {ended}) with no missed_checkin")
    if final:
        # the daemon was stopped gracefully after a quiet spell: nothing may be left claimed
        # (a claim cut short by a kill is requeued at start-up) or overdue in the outbox
        for r in rows:
            overdue = r["state"] == "pending" and r["next_attempt_at"] < now - p.step_slack
            if r["state"] == "sending" or overdue:
                bad(
                    f"notification {r['id']} ({r['purpose']} alarm {r['alarm']} k={r['k']} "
                    f"{r['channel']}) left {r['state']} in the outbox"
                )
        still = [a["id"] for a in snap.alarms if a["state"] in ("prealarm", "escalating")]
        if still:
            bad(f"alarms still escalating after the guards acknowledged everything: {still}")
    return rep


def _check_alarm_state(a: dict[str, Any], bad: Callable[[str], None]) -> None:
    aid, st = a["id"], a["state"]
    if st == "escalating":
        if a["escalation_started_at"] is None or a["acknowledged_at"] is not None:
            bad(f"alarm {aid} escalating without a start, or with an acknowledgement")
    elif st == "acknowledged":
        if a["acknowledged_at"] is None or not a["acknowledged_by"] or a["resolved_at"]:
            bad(f"alarm {aid} acknowledged without who/when, or with resolved_at")
    elif st == "resolved":
        if a["acknowledged_at"] is None or a["resolved_at"] is None or not a["note"]:
            bad(f"alarm {aid} resolved without acknowledgement, time or note")
        elif a["resolved_at"] < a["acknowledged_at"]:
            bad(f"alarm {aid} resolved before it was acknowledged")
    elif st == "cancelled":
        if a["escalation_started_at"] is not None:
            bad(f"alarm {aid} cancelled after its escalation started")
    elif st not in ("prealarm", "notice"):
        bad(f"alarm {aid} has unknown state {st!r}")
    if a["acknowledged_at"] is not None and a["acknowledged_at"] < a["opened_at"]:
        bad(f"alarm {aid} acknowledged before it was opened")


def _check_escalation(
    a: dict[str, Any],
    step_rows: dict[tuple[str, int], list[dict[str, Any]]],
    got: dict[int, list[Req]],
    hist: History,
    p: CheckParams,
    now: float,
    rep: CheckReport,
) -> None:
    bad = rep.violations.append
    aid, chain = a["id"], a["chain"]
    start = float(a["escalation_started_at"])
    acked = float(a["acknowledged_at"]) if a["acknowledged_at"] is not None else INF
    ks = sorted(k for (x, k) in step_rows if x == aid)
    # every row: in the timetable, never early, never after the acknowledgement, one per pair
    for k in ks:
        plan = step_offset(chain, k)
        if plan is None:
            bad(f"alarm {aid}: step k={k} is past the chain (keep_paging 0)")
            continue
        due = start + plan[0]
        step = chain["steps"][plan[1]]
        # people are looked up as each step goes out; this site's roster is one all-day shift
        # and its config never changes, so that is who the step named at open ("targets" in
        # chains stored before late resolution)
        at_open = step["at_open"] if "at_open" in step else step["targets"]
        expected = {(t["person_id"], ch) for t in at_open for ch in step["via"]}
        pairs = [(r["person"], r["channel"]) for r in step_rows[(aid, k)]]
        if len(pairs) != len(set(pairs)) or set(pairs) != expected:
            bad(f"alarm {aid} k={k}: rows {sorted(pairs)}, expected {sorted(expected)}")
        for r in step_rows[(aid, k)]:
            if r["created_at"] < due - EARLY_DB:
                bad(f"alarm {aid} k={k} enqueued {due - r['created_at']:.3f} s early")
            if r["created_at"] > acked + EARLY_DB:
                bad(f"alarm {aid} k={k} enqueued after its acknowledgement")
            for q in got[r["id"]]:
                if q.at < due - EARLY_WALL:
                    bad(f"alarm {aid} k={k} {q.kind} to {q.to} {due - q.at:.3f} s early")
                if q.at > acked + p.ack_in_flight:
                    bad(
                        f"alarm {aid} k={k} {q.kind} to {q.to} reached the double "
                        f"{q.at - acked:.3f} s after the acknowledgement was stored"
                    )
                elif q.at > acked:
                    rep.counts["in_flight_at_ack"] += 1
                    if q.at > acked + 0.1:
                        rep.counts["in_flight_at_ack_over_100ms"] += 1
                    ms = int((q.at - acked) * 1000)
                    rep.counts["in_flight_at_ack_max_ms"] = max(
                        rep.counts["in_flight_at_ack_max_ms"], ms
                    )
    # every step due before min(now, ack) went out, each target on each channel
    limit = min(now, acked)
    k = 0
    while k < 100_000:
        plan = step_offset(chain, k)
        if plan is None or start + plan[0] > limit:
            break
        due = start + plan[0]
        step = chain["steps"][plan[1]]
        rs = step_rows.get((aid, k), [])
        if not rs:
            if plan[2] and _collapsed(chain, aid, k, start, step_rows, ks):
                rep.counts["pages_collapsed"] += 1
                nxt = step_offset(chain, k + 1)
                assert nxt is not None
                if not hist.down_between(due, start + nxt[0]):
                    # the daemon was up: its timer was more than keep_paging late
                    rep.counts["pages_collapsed_while_up"] += 1
            elif hist.deadline_after(due, p.step_slack) <= limit:
                bad(f"alarm {aid}: step k={k} due at {due:.3f} was never enqueued")
            k += 1
            continue
        rep.counts["steps"] += 1
        for r in rs:
            slack = p.step_slack + (p.call_spacing if r["channel"] == "call" else 0.0)
            if got[r["id"]]:
                rep.counts["step_requests_reached"] += 1
            elif hist.deadline_after(due, slack) <= limit:
                bad(
                    f"alarm {aid} k={k}: {r['channel']} to {r['person']} due at {due:.3f} "
                    f"never reached the double (state {r['state']}, attempts {r['attempts']})"
                )
        k += 1


def _collapsed(
    chain: dict[str, Any],
    aid: str,
    k: int,
    start: float,
    step_rows: dict[tuple[str, int], list[dict[str, Any]]],
    ks: Iterable[int],
) -> bool:
    """A keep-paging page may be skipped only because a later page was enqueued when the next
    one was already due (missed pages collapse into the latest, CONTRACT §4 / escalation.py)."""
    later = [x for x in ks if x > k]
    nxt = step_offset(chain, k + 1)
    if not later or nxt is None:
        return False
    first = min(float(r["created_at"]) for r in step_rows[(aid, later[0])])
    return first >= start + nxt[0] - EARLY_DB


# --------------------------------------------------------------------------- the run


@dataclass
class ChaosResult:
    settings: ChaosSettings
    kills: int
    startup_kills: int
    checks: int
    wall_s: float
    counts: Counter[str]
    violations: list[str]
    acks_by: Counter[str]
    kill_modes: Counter[str]

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"chaos: seed={self.settings.seed} kills={self.kills} "
            f"(during start-up {self.startup_kills}) checks={self.checks} "
            f"wall={self.wall_s:.1f}s",
            f"  kill moments: {dict(sorted(self.kill_modes.items()))}",
            f"  alarms={c['alarms']} (sos {c['alarms_sos']}, missed_checkin "
            f"{c['alarms_missed_checkin']}) acknowledged={c['state_acknowledged']} "
            f"resolved={c['state_resolved']} escalating={c['state_escalating']}",
            f"  acks api={self.acks_by['api']} sms={self.acks_by['sms']} "
            f"sessions={c['sessions']} lapsed={c['sessions_lapsed']}",
            f"  steps={c['steps']} step_requests={c['step_requests_reached']} "
            f"requests={c['requests']} duplicates={c['duplicates']} "
            f"(rows duplicated twice+: {c['rows_duplicated_more_than_once']}) "
            f"pages_collapsed={c['pages_collapsed']} (while up: {c['pages_collapsed_while_up']})",
            f"  requests in flight when the ack was stored: {c['in_flight_at_ack']} "
            f"(over 100 ms: {c['in_flight_at_ack_over_100ms']}; "
            f"at most {c['in_flight_at_ack_max_ms']} ms after it)",
            f"  violations={len(self.violations)}",
        ]
        lines.extend(f"    - {v}" for v in self.violations[:50])
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        return {
            "seed": self.settings.seed,
            "kills": self.kills,
            "startup_kills": self.startup_kills,
            "checks": self.checks,
            "wall_s": round(self.wall_s, 1),
            "counts": dict(self.counts),
            "acks_by": dict(self.acks_by),
            "kill_modes": dict(self.kill_modes),
            "violations": self.violations,
        }


async def _until(pred: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll `pred` until it holds (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    # the router task updates plain attributes; polling them is simpler than an event each
    while not pred():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)
    return True


@dataclass
class _Device:
    id: str
    rng: random.Random
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # event id -> answer
    acked: set[str] = field(default_factory=set)
    raised: list[tuple[str, str | None]] = field(default_factory=list)  # (alarm, kind)


class ChaosRun:
    def __init__(
        self,
        workdir: Path,
        broker: MosquittoBroker,
        twilio: TwilioDouble,
        settings: ChaosSettings,
        log: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.s = settings
        self.twilio = twilio
        self.broker = broker
        self.log = log
        self.rng = random.Random(settings.seed)
        self.db_path = workdir / "state.db"
        self.cfg = chaos_config(self.db_path, broker.port, twilio, settings)
        self._setup(workdir)
        self.hist = History()
        self.params = CheckParams(
            checkin_grace=1.0,
            step_slack=settings.step_slack,
            call_spacing=1.0,
            ack_in_flight=settings.ack_in_flight,
        )
        self.names = {p["id"]: p["name"] for p in self.cfg["people"]}
        self.devices: dict[str, _Device] = {}
        for d in self.cfg["devices"]:
            if d["id"].startswith(("jaa-s", "jaa-c")):
                self.devices[d["id"]] = _Device(
                    d["id"], random.Random(f"{settings.seed}:{d['id']}")
                )
        self.quiet = asyncio.Event()  # no new alarms or sessions from here on
        self.drain = asyncio.Event()  # guards acknowledge at once
        self.checks = 0
        self.published = 0  # device events published (the "event" kill moment waits on it)
        self.acks_started = 0
        # alarm -> the SMS webhook that got no answer: sent again as is, as Twilio retries
        self._sms_retry: dict[str, dict[str, str]] = {}
        self.kill_modes: Counter[str] = Counter()
        self.counts: Counter[str] = Counter()
        self.violations: list[str] = []
        self._probe: MqttProbe | None = None
        self._ack_at: dict[str, float] = {}
        self._resolve_at: dict[str, float] = {}

    def _setup(self, workdir: Path) -> None:
        """The daemon(s) and the guards' HTTP client (the HA run has three of the first)."""
        self.gw = GatewayProcess(self.cfg, workdir)
        self.client: Any = Client(self.gw.base, self.twilio.auth_token)

    def _attempts(self) -> list[Recorded]:
        """Every request that reached the Twilio double(s)."""
        return list(self.twilio.attempts)

    def _requests(self) -> list[Req]:
        return requests_of(self.twilio, self.hist)

    async def _snapshot(self) -> Snapshot:
        return await asyncio.to_thread(read_db, self.db_path)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> ChaosResult:
        t0 = time.monotonic()
        self.gw.start()
        await self.gw.wait_ready(30)
        async with MqttProbe(self.broker.port) as probe:
            self._probe = probe
            await probe.subscribe("jaa/device/+/cmd")
            tasks = [asyncio.create_task(self._router(), name="chaos-router")]
            for d in self.devices.values():
                actor = self._sos_device if d.id.startswith("jaa-s") else self._session_device
                tasks.append(asyncio.create_task(actor(d), name=f"chaos-{d.id}"))
            tasks.append(asyncio.create_task(self._guards(), name="chaos-guards"))
            try:
                await self._kill_loop(t0)
                self.quiet.set()
                self.drain.set()
                await self._watch(asyncio.sleep(self.s.settle_s))
                self.gw.terminate()
                await self._check(final=True)
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                self.gw.kill9()
                await self.client.close()
        return ChaosResult(
            settings=self.s,
            kills=len(self.hist.kills),
            startup_kills=self.hist.startup_kills,
            checks=self.checks,
            wall_s=time.monotonic() - t0,
            counts=self.counts,
            violations=self.violations,
            acks_by=self.hist.acks_by,
            kill_modes=self.kill_modes,
        )

    async def _watch(self, aw: Awaitable[Any]) -> None:
        """Await `aw` while making sure the daemon has not died on its own (a crash loop)."""
        task = asyncio.ensure_future(aw)
        while not task.done():
            await asyncio.wait({task}, timeout=0.2)
            proc = self.gw.proc
            if proc is not None and proc.poll() is not None:
                task.cancel()
                raise AssertionError(f"gateway exited by itself:\n{self.gw.log_tail()}")
        task.result()

    async def _kill_loop(self, t0: float) -> None:
        while len(self.hist.kills) < self.s.kills:
            if time.monotonic() - t0 > self.s.max_wall_s:
                raise AssertionError(f"only {len(self.hist.kills)} kills in {self.s.max_wall_s} s")
            mode = self.rng.choices(KILL_MODES, weights=self.s.kill_weights)[0]
            await self._watch(self._kill_moment(mode))
            self._kill()
            self.kill_modes[mode] += 1
            if self.rng.random() < self.s.startup_kill_share:
                # kill the start-up itself: migrate, outbox recovery, timers rebuilt
                mark = self._log_size()
                self.gw.start()
                await self._wait_log(mark, "db_ready", 30)
                await asyncio.sleep(self.rng.uniform(0.0, 0.3))
                self._kill()
                self.hist.startup_kills += 1
                self.kill_modes["startup"] += 1
            self.gw.start()
            await self.gw.wait_ready(30)
            self.hist.ready(time.time())
            await self._check()
            if self.checks % 10 == 0:
                self.log(
                    f"chaos: {len(self.hist.kills)} kills, {self.counts['alarms']} alarms, "
                    f"{time.monotonic() - t0:.0f} s"
                )

    async def _kill_moment(self, mode: str) -> None:
        """Wait for the moment of the next kill.

        random: any time in the daemon's life; request: just as a request reaches the double
        (between Twilio's answer and the SID being stored: the duplicate window); event: just
        after a device published a new event (between PUBACK and storage: the window the
        device's repeats cover); ack: just as a guard's acknowledgement (API or SMS webhook)
        went out.
        """
        if mode == "random":
            await asyncio.sleep(self.rng.uniform(*self.s.uptime_s))
            return
        n_req, n_ev, n_ack = len(self._attempts()), self.published, self.acks_started
        await asyncio.sleep(self.rng.uniform(0.0, self.s.uptime_s[1] / 2))
        if mode == "request":  # nothing sent within the wait: kill all the same
            await _until(lambda: len(self._attempts()) > n_req, 3.0, 0.002)
        elif mode == "event":
            await _until(lambda: self.published > n_ev, 3.0, 0.002)
        else:
            await _until(lambda: self.acks_started > n_ack, 3.0, 0.002)
        await asyncio.sleep(self.rng.uniform(0.0, 0.02))

    def _kill(self) -> None:
        self.hist.killed(time.time())
        self.gw.kill9()

    def _log_size(self) -> int:
        try:
            return self.gw.log_path.stat().st_size
        except OSError:
            return 0

    async def _wait_log(self, mark: int, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), self.gw.log_path.open("rb") as f:
                f.seek(mark)
                if needle.encode() in f.read():
                    return
            proc = self.gw.proc
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"gateway exited during start-up:\n{self.gw.log_tail()}")
            await asyncio.sleep(0.01)
        raise AssertionError(f"no {needle} in the gateway log within {timeout} s")

    async def _check(self, *, final: bool = False) -> None:
        hist = self.hist.frozen()
        before = self._requests()
        snap = await self._snapshot()
        after = self._requests()
        rep = check(snap, before, after, hist, self.params, final=final)
        self.checks += 1
        self.counts = rep.counts
        for v in rep.violations:
            if v not in self.violations:
                self.violations.append(v)

    # ------------------------------------------------------------------ devices

    async def _router(self) -> None:
        """Route the cmd topic to the simulated devices (and note what they were told)."""
        p = self._probe
        assert p is not None
        i = 0
        while True:
            seen = p.seen[i:]
            i += len(seen)
            for m in seen:
                dev = self.devices.get(m.topic.split("/")[2])
                try:
                    msg = m.json()
                except ValueError:
                    continue
                if dev is None or not isinstance(msg, dict):
                    continue
                re_ = msg.get("re")
                if isinstance(re_, str):
                    dev.answers.setdefault(re_, msg)
                aid = msg.get("alarm")
                if isinstance(aid, str):
                    kind = msg.get("kind")
                    if msg.get("type") in ("alarm_raised", "prealarm"):
                        self.hist.told.setdefault(aid, (dev.id, kind))
                        dev.raised.append((aid, kind))
                        if isinstance(re_, str):
                            self.hist.event_alarms[re_].add(aid)
                    elif msg.get("type") == "alarm_acknowledged":
                        self.hist.told.setdefault(aid, (dev.id, None))
                        dev.acked.add(aid)
                        if isinstance(re_, str):
                            self.hist.event_alarms[re_].add(aid)
            await asyncio.sleep(0.02)

    async def _until_answered(
        self, dev: _Device, payload: dict[str, Any], types: set[str]
    ) -> dict[str, Any]:
        """Publish, and repeat the same event every 0.5 s until the gateway answers it."""
        p = self._probe
        assert p is not None
        eid = payload["id"]
        while True:
            await p.publish(f"jaa/device/{dev.id}/event", payload)
            self.published += 1
            if await _until(lambda: dev.answers.get(eid, {}).get("type") in types, 0.5):
                return dev.answers[eid]

    async def _sos_device(self, dev: _Device) -> None:
        n = 0
        while not self.quiet.is_set():
            await asyncio.sleep(dev.rng.uniform(0.5, 5.0))
            if self.quiet.is_set():
                return
            n += 1
            eid = f"{dev.id}-sos-{n}-{secrets.token_hex(3)}"
            ans = await self._until_answered(
                dev, {"id": eid, "type": "sos"}, {"alarm_raised", "alarm_acknowledged"}
            )
            aid = ans["alarm"]
            await _until(lambda aid=aid: aid in dev.acked, 10.0, 0.1)

    async def _session_device(self, dev: _Device) -> None:
        n = 0
        while not self.quiet.is_set():
            await asyncio.sleep(dev.rng.uniform(0.3, 2.0))
            if self.quiet.is_set():
                return
            n += 1
            eid = f"{dev.id}-start-{n}-{secrets.token_hex(3)}"
            mark = len(dev.raised)
            ans = await self._until_answered(
                dev,
                {"id": eid, "type": "session_start", "location": LOCATION},
                {"session_started", "session_denied"},
            )
            if ans["type"] == "session_started":
                # no check-ins: the session lapses into a missed_checkin alarm
                await _until(lambda mark=mark: len(dev.raised) > mark, 8.0, 0.1)
                await asyncio.sleep(dev.rng.uniform(0.2, 2.0))
            await self._end_session(dev, n)

    async def _end_session(self, dev: _Device, n: int) -> None:
        # session_end is not answered again on a repeat: each try is a new event
        for j in range(1000):
            eid = f"{dev.id}-end-{n}-{j}-{secrets.token_hex(3)}"
            try:
                await asyncio.wait_for(
                    self._until_answered(
                        dev, {"id": eid, "type": "session_end"}, {"session_ended"}
                    ),
                    1.0,
                )
                return
            except TimeoutError:
                continue

    # ------------------------------------------------------------------ guards

    async def _guards(self) -> None:
        while True:
            try:
                async with asyncio.timeout(5):
                    status, body = await self.client.api("GET", "/api/alarms?state=open")
            except (aiohttp.ClientError, TimeoutError, OSError):
                await asyncio.sleep(0.2)
                continue
            if status == 200:
                for a in body["alarms"]:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with asyncio.timeout(5):
                            await self._guard(a)
            await asyncio.sleep(0.2)

    async def _guard(self, a: dict[str, Any]) -> None:
        aid, now = a["id"], time.time()
        drain = self.drain.is_set()
        if a["state"] == "escalating":
            at = self._ack_at.setdefault(aid, now + self.rng.uniform(*self.s.ack_delay_s))
            if now >= at or drain:
                use_sms = aid in self._sms_retry or (
                    self.rng.random() < self.s.sms_ack_share and self._guard_has_sms(a)
                )
                await (self._ack_sms(a) if use_sms else self._ack_api(a))
        elif a["state"] == "acknowledged" and not drain:
            at = self._resolve_at.setdefault(
                aid,
                now + self.rng.uniform(0.2, 2.0)
                if self.rng.random() < self.s.resolve_share
                else INF,
            )
            if now >= at:
                status, _ = await self.client.api(
                    "POST", f"/api/alarms/{aid}/resolve", {"by": GUARD, "note": "Sjekket, alt OK"}
                )
                if status == 200:
                    self.hist.resolves_confirmed[aid] = time.time()

    def _guard_has_sms(self, a: dict[str, Any]) -> bool:
        phone = PHONES[GUARD]
        return any(
            r.kind == "sms" and r.sid is not None and r.to == phone and a["code"] in (r.body or "")
            for r in self._attempts()
        )

    async def _ack_api(self, a: dict[str, Any]) -> None:
        self.acks_started += 1
        status, body = await self.client.api("POST", f"/api/alarms/{a['id']}/ack", {"by": GUARD})
        if status == 200 or (status == 409 and body.get("error") == "already_acknowledged"):
            self.hist.acks_confirmed.setdefault(a["id"], time.time())
            if status == 200:
                self.hist.acks_by["api"] += 1

    async def _ack_sms(self, a: dict[str, Any]) -> None:
        retry = self._sms_retry.get(a["id"])
        params = retry or {
            "MessageSid": "SM" + secrets.token_hex(16),
            "AccountSid": self.twilio.account_sid,
            "From": PHONES[GUARD],
            "To": self.cfg["twilio"]["from_number"],
            "Body": f"OK {a['code']}",
            "NumMedia": "0",
            "FromZip": "",
        }
        self._sms_retry[a["id"]] = params
        self.acks_started += 1
        status, xml = await self.client.webhook("/twilio/sms", params)
        if status != 200:
            return
        del self._sms_retry[a["id"]]
        msg = ET.fromstring(xml).findtext("Message") or ""
        if retry is not None and not msg:
            # answered as a replay of the first try, which got no answer: unless that first
            # try did acknowledge, the guard's OK is lost
            st, body = await self.client.api("GET", f"/api/alarms/{a['id']}")
            if st == 200 and body["state"] == "escalating":
                self.hist.lost_sms_acks.append(a["id"])
            return
        lang = self.cfg["gateway"]["language"]
        worker = self.names.get(a["person"]) if a["person"] else None
        if msg == guard_texts.ack_confirmation(lang, a["code"], a["kind"], worker):
            self.hist.acks_confirmed.setdefault(a["id"], time.time())
            self.hist.acks_by["sms"] += 1
        elif any(
            msg == guard_texts.already_acknowledged(lang, a["code"], name)
            for name in (None, *self.names.values())
        ):
            # someone was first: the acknowledgement is stored all the same
            self.hist.acks_confirmed.setdefault(a["id"], time.time())
