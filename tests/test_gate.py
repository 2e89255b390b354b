"""The gate: every deny reason, their order, boundary instants and DST nights."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import pytest

from jaa_gateway.config import Assessment, Config, Person, Window
from jaa_gateway.domain.gate import DENY_REASONS, Denied, Started, decide_start
from tests.support.cfg import config_dict, make_config, oslo, utc

CFG = make_config()
WED_EVENING = oslo(2026, 9, 9, 20, 0)  # guard-night on duty, inside 07:00-23:00


def person(pid: str = "ola", cfg: Config = CFG) -> Person:
    p = cfg.person(pid)
    assert p is not None
    return p


def ra(**changes: Any) -> Assessment:
    base = CFG.assessments[0]
    return base.model_copy(update=changes)


def decide(
    now: dt.datetime = WED_EVENING,
    *,
    cfg: Config = CFG,
    who: Person | Literal["default"] | None = "default",
    location_id: str | None = "d1-123",
    source: Literal["device", "badge"] = "badge",
    device_id: str | None = None,
    assessments: Sequence[Assessment] | None = None,
    last_seen: Mapping[str, dt.datetime] | None = None,
    planned_minutes: int | None = None,
) -> Started | Denied:
    return decide_start(
        cfg,
        now=now,
        person=person(cfg=cfg) if who == "default" else who,
        location_id=location_id,
        source=source,
        device_id=device_id,
        assessments=list(cfg.assessments) if assessments is None else assessments,
        device_last_seen={"jaa-0042": now - dt.timedelta(seconds=10)}
        if last_seen is None
        else last_seen,
        planned_minutes=planned_minutes,
    )


def denied(result: Started | Denied) -> Denied:
    assert isinstance(result, Denied), result
    return result


def started(result: Started | Denied) -> Started:
    assert isinstance(result, Started), result
    return result


# --------------------------------------------------------------------------- start


def test_started_from_badge() -> None:
    r = started(decide())
    assert r == Started(
        person_id="ola",
        location_id="d1-123",
        assessment_id="RA-2026-017",
        checkin_interval=dt.timedelta(minutes=30),
        ends_at=WED_EVENING + dt.timedelta(hours=4),
    )
    assert r.ends_at.utcoffset() == dt.timedelta(0)


def test_started_from_device_counts_as_hearing_from_it() -> None:
    r = decide(source="device", device_id="jaa-0042", last_seen={})
    assert started(r).assessment_id == "RA-2026-017"


def test_planned_minutes_shortens_never_lengthens() -> None:
    assert started(decide(planned_minutes=90)).ends_at == WED_EVENING + dt.timedelta(minutes=90)
    assert started(decide(planned_minutes=240)).ends_at == WED_EVENING + dt.timedelta(hours=4)
    assert started(decide(planned_minutes=600)).ends_at == WED_EVENING + dt.timedelta(hours=4)
    assert started(decide(planned_minutes=10**15)).ends_at == WED_EVENING + dt.timedelta(hours=4)


@pytest.mark.parametrize("bad", [0, -5, True])
def test_bad_planned_minutes_is_an_error(bad: int) -> None:
    with pytest.raises(ValueError, match="planned_minutes"):
        decide(planned_minutes=bad)


def test_ends_at_is_elapsed_time_across_fall_back() -> None:
    data = config_dict()
    data["assessments"][0]["allowed_hours"] = None
    data["assessments"][0]["valid_from"] = "2026-01-01"
    cfg = make_config(data)
    now = oslo(2026, 10, 25, 1, 0)  # CEST; the clocks go back at 03:00
    r = started(decide(now, cfg=cfg))
    assert r.ends_at == utc(2026, 10, 25, 3, 0)  # 4 real hours: 04:00 CET, not 05:00
    assert r.ends_at - now == dt.timedelta(hours=4)


def test_no_checkin_interval() -> None:
    r = started(decide(assessments=[ra(checkin_interval=None)]))
    assert r.checkin_interval is None


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(dt.datetime(2026, 9, 9, 20, 0))


# --------------------------------------------------------------------------- each reason


def test_unknown_badge() -> None:
    r = denied(decide(who=None, source="badge"))
    assert r.reason == "unknown_badge"
    assert r.detail == "This badge is not registered to anyone."


@pytest.mark.parametrize(
    ("device_id", "who"),
    [("ghost", "default"), (None, "default"), ("jaa-0042", None)],
)
def test_unknown_device(device_id: str | None, who: Any) -> None:
    assert denied(decide(source="device", device_id=device_id, who=who)).reason == "unknown_device"


def test_device_of_someone_else_is_unknown_device() -> None:
    r = denied(decide(source="device", device_id="jaa-0042", who=person("kari")))
    assert r.reason == "unknown_device"


@pytest.mark.parametrize("loc", ["nowhere", None])
def test_unknown_location(loc: str | None) -> None:
    assert denied(decide(location_id=loc)).reason == "unknown_location"


def test_no_assessment() -> None:
    assert denied(decide(assessments=[])).reason == "no_assessment"
    assert denied(decide(assessments=[ra(person="nils")])).reason == "no_assessment"
    r = denied(decide(assessments=[ra(locations=["lab-quiet"])]))
    assert r.reason == "no_assessment"
    assert "Realfagbygget D1-123" in r.detail


def test_assessment_expired_detail() -> None:
    r = denied(decide(assessments=[ra(valid_until=dt.date(2026, 9, 8))]))
    assert r == Denied("assessment_not_valid", "Risk assessment RA-2026-017 expired on 2026-09-08.")


def test_assessment_not_yet_valid_detail() -> None:
    r = denied(decide(oslo(2026, 8, 31, 20, 0)))
    assert r == Denied(
        "assessment_not_valid", "Risk assessment RA-2026-017 is not valid until 2026-09-01."
    )


def _all_day() -> Config:
    data = config_dict()
    data["assessments"][0]["allowed_hours"] = None
    data["people"][0]["hse_training_until"] = "2030-01-01"
    return make_config(data)


@pytest.mark.parametrize(
    ("now", "ok"),
    [
        (oslo(2027, 8, 31, 23, 59, 59), True),  # valid through the end of valid_until
        (oslo(2027, 9, 1, 0, 0, 0), False),
        (utc(2027, 8, 31, 21, 59, 59), True),  # 23:59:59 CEST
        (utc(2027, 8, 31, 22, 0, 0), False),  # 00:00 CEST the next day
        (oslo(2026, 9, 1, 0, 0, 0), True),  # valid from the start of valid_from
        (oslo(2026, 8, 31, 23, 59, 59), False),
    ],
)
def test_validity_boundaries_in_site_zone(now: dt.datetime, ok: bool) -> None:
    r = decide(now, cfg=_all_day())
    if ok:
        started(r)
    else:
        assert denied(r).reason == "assessment_not_valid"


def test_lone_work_not_allowed() -> None:
    r = denied(decide(assessments=[ra(lone_work_allowed=False)]))
    assert r == Denied(
        "lone_work_not_allowed", "Risk assessment RA-2026-017 does not allow lone work."
    )


@pytest.mark.parametrize(
    ("now", "ok"),
    [
        (oslo(2026, 9, 9, 6, 59, 59), False),
        (oslo(2026, 9, 9, 7, 0, 0), True),
        (oslo(2026, 9, 9, 22, 59, 59), True),
        (oslo(2026, 9, 9, 23, 0, 0), False),
    ],
)
def test_allowed_hours_edges(now: dt.datetime, ok: bool) -> None:
    r = decide(now)
    if ok:
        started(r)
    else:
        assert denied(r) == Denied(
            "outside_allowed_hours", "RA-2026-017 allows lone work only between 07:00 and 23:00."
        )


NIGHT_WORK = Window.model_validate({"start": "17:00", "end": "07:00"})


@pytest.mark.parametrize(
    ("now", "ok"),
    [
        (utc(2026, 3, 29, 4, 59, 59), True),  # 06:59:59 CEST
        (utc(2026, 3, 29, 5, 0, 0), False),  # 07:00 CEST (06:00 CET would still be night)
        (utc(2026, 10, 25, 0, 30), True),  # first 02:30 (CEST)
        (utc(2026, 10, 25, 1, 30), True),  # second 02:30 (CET)
        (utc(2026, 10, 25, 5, 59, 59), True),  # 06:59:59 CET
        (utc(2026, 10, 25, 6, 0, 0), False),  # 07:00 CET (08:00 CEST would be out anyway)
    ],
)
def test_allowed_hours_on_dst_nights(now: dt.datetime, ok: bool) -> None:
    night_ra = ra(allowed_hours=NIGHT_WORK, valid_from=dt.date(2026, 1, 1))
    r = decide(now, assessments=[night_ra])
    if ok:
        started(r)
    else:
        assert denied(r).reason == "outside_allowed_hours"


def test_training_missing_or_expired() -> None:
    untrained = person().model_copy(update={"hse_training_until": None})
    r = denied(decide(who=untrained))
    assert r.reason == "training_expired"
    assert "no recorded HSE training" in r.detail
    lapsed = person().model_copy(update={"hse_training_until": dt.date(2026, 9, 8)})
    r = denied(decide(who=lapsed))
    assert r == Denied(
        "training_expired", "The HSE training of Ola Nordmann expired on 2026-09-08."
    )
    last_day = person().model_copy(update={"hse_training_until": dt.date(2026, 9, 9)})
    started(decide(who=last_day))


@pytest.mark.parametrize(
    ("age_s", "ok"), [(0, True), (119, True), (120, True), (121, False), (3600, False)]
)
def test_jaa_freshness_from_badge(age_s: int, ok: bool) -> None:
    r = decide(last_seen={"jaa-0042": WED_EVENING - dt.timedelta(seconds=age_s)})
    if ok:
        started(r)
    else:
        r = denied(r)
        assert r.reason == "jaa_required"
        assert "jaa-0042" in r.detail and "RA-2026-017" in r.detail


def test_jaa_never_heard_from() -> None:
    assert denied(decide(last_seen={})).reason == "jaa_required"


def test_jaa_required_without_a_device() -> None:
    data = config_dict()
    data["devices"] = []
    cfg = make_config(data)
    r = denied(decide(cfg=cfg, last_seen={}))
    assert r.reason == "jaa_required"
    assert "has none registered" in r.detail


def test_acute_injury_risk_forces_jaa_even_if_requires_jaa_false() -> None:
    # config forbids this combination, but API data or a store row might carry it
    a = ra(requires_jaa=False, acute_injury_risk=True)
    assert denied(decide(assessments=[a], last_seen={})).reason == "jaa_required"


def test_no_jaa_needed_without_acute_risk() -> None:
    a = ra(requires_jaa=False, acute_injury_risk=False, checkin_interval=None)
    assert started(decide(assessments=[a], last_seen={})).assessment_id == "RA-2026-017"


def test_checkin_interval_needs_a_live_jaa() -> None:
    # check-ins are made with the JAA: without one the first checkin_due goes nowhere
    a = ra(requires_jaa=False, acute_injury_risk=False)
    assert a.checkin_interval is not None
    r = denied(decide(assessments=[a], last_seen={}))
    assert r.reason == "jaa_required"
    assert "check-ins" in r.detail


def test_no_assistance_on_saturday_daytime() -> None:
    r = denied(decide(oslo(2026, 9, 12, 12, 0)))
    assert r.reason == "no_assistance"
    assert "Realfagbygget D1-123" in r.detail
    started(decide(oslo(2026, 9, 12, 17, 0)))  # the night guard comes on


def test_supervisor_in_first_step_counts_as_assistance() -> None:
    data = config_dict()
    data["escalation_chains"][0]["steps"][0]["notify"] = ["roster:security-desk", "supervisor"]
    cfg = make_config(data)
    started(decide(oslo(2026, 9, 12, 12, 0), cfg=cfg))


# --------------------------------------------------------------------------- several assessments


def test_several_assessments_filtered_progressively() -> None:
    expired = ra(id="RA-OLD", valid_until=dt.date(2026, 8, 31), valid_from=dt.date(2025, 9, 1))
    no_lone = ra(id="RA-NOLONE", lone_work_allowed=False)
    day_only = ra(
        id="RA-DAY", allowed_hours=Window.model_validate({"start": "07:00", "end": "17:00"})
    )
    evening = ra(
        id="RA-EVE", allowed_hours=Window.model_validate({"start": "17:00", "end": "22:00"})
    )
    # expired and no-lone drop out; of the two in-hours candidates at 20:00 only RA-EVE is left
    r = started(decide(assessments=[expired, no_lone, day_only, evening]))
    assert r.assessment_id == "RA-EVE"
    # at 22:30 neither window: the denial names both windows
    r2 = denied(decide(oslo(2026, 9, 9, 22, 30), assessments=[expired, no_lone, day_only, evening]))
    assert r2 == Denied(
        "outside_allowed_hours",
        "RA-DAY allows lone work only between 07:00 and 17:00; "
        "RA-EVE allows lone work only between 17:00 and 22:00.",
    )
    # only the expired one and the no-lone one: the set empties at lone_work_not_allowed
    r3 = denied(decide(assessments=[expired, no_lone]))
    assert r3 == Denied(
        "lone_work_not_allowed", "Risk assessment RA-NOLONE does not allow lone work."
    )


def test_several_invalid_assessments_name_the_newest() -> None:
    old = ra(id="RA-OLD", valid_from=dt.date(2024, 1, 1), valid_until=dt.date(2025, 1, 1))
    newer = ra(id="RA-NEWER", valid_from=dt.date(2025, 1, 1), valid_until=dt.date(2026, 9, 1))
    r = denied(decide(assessments=[newer, old]))
    assert r.detail == "Risk assessment RA-NEWER expired on 2026-09-01."


def test_jaa_free_assessment_preferred_when_device_is_silent() -> None:
    needs = ra(id="RA-JAA")
    free = ra(id="RA-FREE", requires_jaa=False, acute_injury_risk=False, checkin_interval=None)
    r = started(decide(assessments=[needs, free], last_seen={}))
    assert r.assessment_id == "RA-FREE"
    r = started(decide(assessments=[needs, free]))  # both usable: the first given wins
    assert r.assessment_id == "RA-JAA"


# --------------------------------------------------------------------------- the order


@dataclasses.dataclass
class Scenario:
    now: dt.datetime = WED_EVENING
    who: Person | None = dataclasses.field(default_factory=person)
    source: Literal["device", "badge"] = "badge"
    device_id: str | None = None
    location_id: str = "d1-123"
    assessment: Assessment = dataclasses.field(default_factory=ra)
    last_seen: dict[str, dt.datetime] = dataclasses.field(
        default_factory=lambda: {"jaa-0042": WED_EVENING}
    )

    def run(self, cfg: Config) -> Started | Denied:
        return decide_start(
            cfg,
            now=self.now,
            person=self.who,
            location_id=self.location_id,
            source=self.source,
            device_id=self.device_id,
            assessments=[self.assessment],
            device_last_seen=self.last_seen,
        )


def _set(s: Scenario, **changes: Any) -> None:
    for name, value in changes.items():
        setattr(s, name, value)


def _set_ra(s: Scenario, **changes: Any) -> None:
    s.assessment = s.assessment.model_copy(update=changes)


def _set_training(s: Scenario) -> None:
    if s.who is not None:
        s.who = s.who.model_copy(update={"hse_training_until": dt.date(2026, 1, 1)})


# Each breaks exactly one rule in the base scenario. They are applied last rule first, so an
# earlier rule's break wins where two touch the same field (no person at all beats an expired
# training; an unknown location beats the unstaffed one).
BREAKS: dict[str, Callable[[Scenario], None]] = {
    "unknown_badge": lambda s: _set(s, who=None),
    "unknown_device": lambda s: _set(s, source="device", device_id="ghost"),
    "unknown_location": lambda s: _set(s, location_id="nowhere"),
    "no_assessment": lambda s: _set_ra(s, locations=["somewhere-else"]),
    "assessment_not_valid": lambda s: _set_ra(s, valid_until=dt.date(2026, 9, 8)),
    "lone_work_not_allowed": lambda s: _set_ra(s, lone_work_allowed=False),
    "outside_allowed_hours": lambda s: _set_ra(
        s, allowed_hours=Window.model_validate({"start": "07:00", "end": "19:00"})
    ),
    "training_expired": _set_training,
    "jaa_required": lambda s: _set(s, last_seen={}),
    # the location whose chain only has a Saturday roster; the assessment covers both places
    "no_assistance": lambda s: _set(s, location_id="lab-quiet"),
}


def _scenario(broken: Sequence[str]) -> Scenario:
    s = Scenario()
    _set_ra(s, locations=["d1-123", "lab-quiet"])
    for reason in sorted(broken, key=DENY_REASONS.index, reverse=True):
        BREAKS[reason](s)
    return s


def test_deny_reasons_tuple_is_the_contract_order() -> None:
    assert DENY_REASONS == (
        "unknown_badge",
        "unknown_device",
        "unknown_location",
        "no_assessment",
        "assessment_not_valid",
        "lone_work_not_allowed",
        "outside_allowed_hours",
        "training_expired",
        "jaa_required",
        "no_assistance",
    )
    assert set(BREAKS) == set(DENY_REASONS)


def test_base_scenario_starts() -> None:
    started(_scenario([]).run(CFG))


@pytest.mark.parametrize("reason", DENY_REASONS)
def test_each_break_alone_gives_its_reason(reason: str) -> None:
    r = denied(_scenario([reason]).run(CFG))
    assert r.reason == reason
    assert r.detail and r.detail.endswith(".")


_PAIRS = [
    (a, b)
    for a, b in itertools.combinations(DENY_REASONS, 2)
    # both are about who is asking: they cannot both be set up at once
    if {a, b} != {"unknown_badge", "unknown_device"}
]


@pytest.mark.parametrize(("earlier", "later"), _PAIRS)
def test_a_case_failing_two_rules_gets_the_earlier_reason(earlier: str, later: str) -> None:
    assert denied(_scenario([later]).run(CFG)).reason == later  # the later one alone fails
    assert denied(_scenario([earlier, later]).run(CFG)).reason == earlier


@pytest.mark.parametrize("first", range(len(DENY_REASONS)))
def test_everything_broken_from_a_rule_on_gives_that_rule(first: int) -> None:
    broken = [r for r in DENY_REASONS[first:] if not (first == 0 and r == "unknown_device")]
    assert denied(_scenario(broken).run(CFG)).reason == DENY_REASONS[first]
