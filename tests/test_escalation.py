"""Escalation: targets, the frozen chain snapshot, who each step pages when it goes out (late
resolution, DST nights included), and the timetable."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaa_gateway.config import Chain
from jaa_gateway.domain.escalation import (
    DUE_STEPS_CAP,
    Page,
    PlannedStep,
    due_steps,
    exhausted_after,
    first_step_has_someone,
    next_due,
    planned_step,
    resolve_step,
    resolve_targets,
    snapshot_chain,
)
from jaa_gateway.domain.model import ChainSnapshot, StepSnapshot, Target
from tests.support.cfg import OSLO, config_dict, make_config, oslo, utc

M = dt.timedelta(minutes=1)
CFG = make_config()
WED_NIGHT = oslo(2026, 9, 9, 20, 0)
WED_DAY = oslo(2026, 9, 9, 12, 0)
SAT_DAY = oslo(2026, 9, 12, 12, 0)


def ids(targets: tuple[Target, ...]) -> list[str]:
    return [t.person_id for t in targets]


def guards() -> Chain:
    chain = CFG.chain("guards")
    assert chain is not None
    return chain


def snap(
    afters: list[float], repeat: int = 0, repeat_after: float = 60, keep_paging: float = 300
) -> ChainSnapshot:
    """A snapshot with steps at `afters` minutes; repeat_after/keep_paging in seconds."""
    return ChainSnapshot(
        chain_id="c",
        repeat=repeat,
        repeat_after=dt.timedelta(seconds=repeat_after),
        keep_paging=dt.timedelta(seconds=keep_paging),
        steps=tuple(
            StepSnapshot(after=a * M, via=("sms",), spec=("person:x",), at_open=()) for a in afters
        ),
    )


# --------------------------------------------------------------------------- targets


def test_roster_target_is_who_is_on_duty_now() -> None:
    assert ids(resolve_targets(CFG, ["roster:security-desk"], "ola", WED_NIGHT)) == ["guard-night"]
    assert ids(resolve_targets(CFG, ["roster:security-desk"], "ola", WED_DAY)) == ["guard-day"]
    assert resolve_targets(CFG, ["roster:security-desk"], "ola", SAT_DAY) == ()


def test_targets_carry_name_and_phone() -> None:
    (t,) = resolve_targets(CFG, ["person:head-security"], None, WED_DAY)
    assert t == Target(person_id="head-security", name="Per Sikkerhet", phone="+4790000002")


def test_supervisor_target_needs_a_worker_with_a_supervisor() -> None:
    assert ids(resolve_targets(CFG, ["supervisor"], "ola", WED_DAY)) == ["kari"]
    assert resolve_targets(CFG, ["supervisor"], None, WED_DAY) == ()
    assert resolve_targets(CFG, ["supervisor"], "nils", WED_DAY) == ()  # nils has none
    assert resolve_targets(CFG, ["supervisor"], "ghost", WED_DAY) == ()


def test_targets_deduplicated_in_order() -> None:
    spec = ["person:kari", "roster:security-desk", "supervisor", "person:guard-night"]
    assert ids(resolve_targets(CFG, spec, "ola", WED_NIGHT)) == ["kari", "guard-night"]


def test_unknown_reference_resolves_to_nobody() -> None:
    assert resolve_targets(CFG, ["person:ghost", "roster:ghost"], "ola", WED_DAY) == ()


@pytest.mark.parametrize("bad", ["", "roster:", "person:", "everyone", "supervisor:kari"])
def test_malformed_target_is_an_error(bad: str) -> None:
    with pytest.raises(ValueError, match="is not a target"):
        resolve_targets(CFG, [bad], "ola", WED_DAY)


def test_first_step_has_someone() -> None:
    assert first_step_has_someone(CFG, guards(), "ola", WED_NIGHT)
    assert not first_step_has_someone(CFG, guards(), "ola", SAT_DAY)
    data = config_dict()
    data["escalation_chains"][0]["steps"][0]["notify"] = ["roster:security-desk", "supervisor"]
    cfg = make_config(data)
    chain = cfg.chain("guards")
    assert chain is not None
    assert first_step_has_someone(cfg, chain, "ola", SAT_DAY)  # kari, the supervisor
    assert not first_step_has_someone(cfg, chain, "nils", SAT_DAY)  # no supervisor


def test_snapshot_freezes_the_steps_and_who_they_named_at_the_instant() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    assert s.chain_id == "guards"
    assert (s.repeat, s.repeat_after, s.keep_paging) == (1, M, 5 * M)
    assert [st_.after for st_ in s.steps] == [dt.timedelta(0), 2 * M, 5 * M]
    assert [st_.via for st_ in s.steps] == [("sms", "call"), ("call",), ("call", "sms")]
    assert [ids(st_.at_open) for st_ in s.steps] == [
        ["guard-night"],
        ["guard-night", "kari"],
        ["head-security"],
    ]
    assert s.steps[1].spec == ("roster:security-desk", "supervisor")
    assert s.steps[1].named == (("guard-night",), ("kari",))
    # frozen: the day shift at a later instant does not change the snapshot taken at night
    later = snapshot_chain(CFG, guards(), "ola", WED_DAY)
    assert ids(later.steps[0].at_open) == ["guard-day"]
    assert ids(s.steps[0].at_open) == ["guard-night"]


def test_snapshot_json_round_trip() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    data = json.loads(json.dumps(s.to_json()))
    assert data["repeat_after"] == 60.0
    assert data["steps"][1]["after"] == 120.0
    assert ChainSnapshot.from_json(data) == s


def _good_json() -> dict[str, Any]:
    return snapshot_chain(CFG, guards(), "ola", WED_NIGHT).to_json()


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda d: d.pop("steps"), "steps"),
        (lambda d: d.update(steps=[]), "at least one step"),
        (lambda d: d.update(repeat="1"), "repeat"),
        (lambda d: d.update(repeat=True), "repeat"),
        (lambda d: d.update(repeat=-1), "repeat"),
        (lambda d: d.update(keep_paging=-5), "keep_paging"),
        (lambda d: d.update(keep_paging=float("nan")), "keep_paging"),
        (lambda d: d.update(repeat_after="60"), "repeat_after"),
        (lambda d: d.update(chain_id=7), "chain_id"),
        (lambda d: d["steps"][0].update(via=["fax"]), "channel"),
        (lambda d: d["steps"][0].update(via=[]), "channel"),
        (lambda d: d["steps"][0].update(after=1e30), "too large"),
        (lambda d: d["steps"][2].update(after=1), "in order"),
        (lambda d: d["steps"][0]["at_open"][0].pop("phone"), "phone"),
        (lambda d: d["steps"][0].update(at_open="guard"), "at_open"),
        (lambda d: d["steps"][0].update(spec=[1]), "spec"),
        (lambda d: d["steps"][0].pop("named"), "named"),
        (lambda d: d["steps"][0].update(named=[]), "1 in 'spec'"),
        (lambda d: d["steps"][0].update(named=[["kari"]]), "not in 'at_open'"),
        (lambda d: d["steps"][0].update(named=["guard-night"]), "lists of strings"),
        (lambda d: d["steps"][0].update(named=[[7]]), "strings"),
        (lambda d: d["steps"][0].pop("at_open"), "targets"),
    ],
)
def test_snapshot_from_bad_json_is_a_clear_error(mutate: Any, match: str) -> None:
    data = _good_json()
    mutate(data)
    with pytest.raises(ValueError, match=match):
        ChainSnapshot.from_json(data)


def test_snapshot_from_json_not_an_object() -> None:
    with pytest.raises(ValueError, match="expected an object"):
        ChainSnapshot.from_json([1, 2])


# --------------------------------------------------------------------------- resolved late


def paged(
    cfg: Any, s: ChainSnapshot, k: int, start: dt.datetime, worker: str | None = "ola"
) -> list[str]:
    """Who step run k of `s` pages when it goes out (at its due instant)."""
    p = planned_step(s, k)
    assert p is not None
    return ids(resolve_step(cfg, s.steps[p.step_index], worker, p.due_at(start)).targets)


def test_steps_page_who_is_on_duty_when_they_go_out_not_at_open() -> None:
    # opened 16:57 on a Wednesday: the day guard; step 1 at 16:59; step 2 (head) at 17:02;
    # run 1 at 17:03 and 17:05: the night guard, who came on at 17:00
    start = oslo(2026, 9, 9, 16, 57)
    s = snapshot_chain(CFG, guards(), "ola", start)
    assert ids(s.steps[0].at_open) == ["guard-day"]
    assert [paged(CFG, s, k, start) for k in range(7)] == [
        ["guard-day"],
        ["guard-day", "kari"],
        ["head-security"],
        ["guard-night"],
        ["guard-night", "kari"],
        ["head-security"],
        ["head-security"],  # keep paging: the last step
    ]


def test_handover_instant_to_the_microsecond() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_DAY)
    step = s.steps[0]
    before = dt.datetime(2026, 9, 9, 16, 59, 59, 999999, tzinfo=OSLO)
    assert ids(resolve_step(CFG, step, "ola", before).targets) == ["guard-day"]
    assert ids(resolve_step(CFG, step, "ola", oslo(2026, 9, 9, 17, 0)).targets) == ["guard-night"]


def test_each_page_says_which_entry_named_the_person() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    got = resolve_step(CFG, s.steps[1], "ola", WED_NIGHT)
    assert got.missing == ()
    assert [pg.to_json() for pg in got.pages] == [
        {"person": "guard-night", "from": "roster:security-desk", "fallback": False},
        {"person": "kari", "from": "supervisor", "fallback": False},
    ]


def test_people_and_phones_come_from_the_config_at_send_time() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    data = config_dict()
    for p in data["people"]:
        if p["id"] == "guard-night":
            p["phone"] = "+4790000099"
        if p["id"] == "ola":
            p["supervisor"] = "head-security"  # a new supervisor since the alarm opened
    data["assessments"][0]["approved_by"] = "head-security"
    cfg = make_config(data)
    got = resolve_step(cfg, s.steps[1], "ola", WED_NIGHT)
    assert [(t.person_id, t.phone) for t in got.targets] == [
        ("guard-night", "+4790000099"),
        ("head-security", "+4790000002"),
    ]


def test_a_step_that_finds_nobody_on_duty_pages_nobody_and_falls_back_on_nothing() -> None:
    # opened Friday 16:50 with the day guard; on Saturday daytime the roster has a gap: the
    # entry still exists, so nobody is paged (the caller audits and logs it), and the day guard
    # who went home on Friday is not paged either
    start = oslo(2026, 9, 11, 16, 50)
    s = snapshot_chain(CFG, guards(), "ola", start)
    got = resolve_step(CFG, s.steps[0], "ola", SAT_DAY)
    assert got.pages == () and got.missing == ()


def _without(kind: str, ident: str) -> Any:
    data = config_dict()
    if kind == "rosters":
        data["rosters"] = [r for r in data["rosters"] if r["id"] != ident]
        for c in data["escalation_chains"]:
            for st_ in c["steps"]:
                st_["notify"] = [e for e in st_["notify"] if e != f"roster:{ident}"] or [
                    "person:kari"
                ]
    else:
        data["people"] = [p for p in data["people"] if p["id"] != ident]
        data["devices"] = [d for d in data["devices"] if d["person"] != ident]
        data["assessments"] = [a for a in data["assessments"] if a["person"] != ident]
        for c in data["escalation_chains"]:
            for st_ in c["steps"]:
                st_["notify"] = [e for e in st_["notify"] if e != f"person:{ident}"] or [
                    "person:kari"
                ]
    return make_config(data)


def test_a_roster_the_config_no_longer_knows_falls_back_to_who_it_named_at_open() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_DAY)
    cfg = _without("rosters", "security-desk")
    got = resolve_step(cfg, s.steps[1], "ola", WED_NIGHT)
    assert got.missing == ("roster:security-desk",)
    assert got.pages == (
        Page(s.steps[1].at_open[0], "roster:security-desk", fallback=True),
        Page(s.steps[1].at_open[1], "supervisor", fallback=False),
    )
    assert ids(got.targets) == ["guard-day", "kari"]


def test_a_person_the_config_no_longer_knows_is_paged_on_the_frozen_number() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    cfg = _without("people", "head-security")
    got = resolve_step(cfg, s.steps[2], "ola", WED_NIGHT)
    assert got.missing == ("person:head-security",)
    (pg,) = got.pages
    assert pg.fallback and pg.target == Target("head-security", "Per Sikkerhet", "+4790000002")


def test_the_supervisor_of_a_worker_the_config_no_longer_knows_falls_back() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    cfg = _without("people", "ola")
    got = resolve_step(cfg, s.steps[1], "ola", WED_NIGHT)
    assert got.missing == ("supervisor",)
    assert [(pg.target.person_id, pg.source, pg.fallback) for pg in got.pages] == [
        ("guard-night", "roster:security-desk", False),
        ("kari", "supervisor", True),
    ]


def test_fallback_is_per_entry_the_old_shift_is_not_paged_for_a_missing_person() -> None:
    # step 1 named the day guard (roster) and kari (supervisor) at open; the worker is gone at
    # night: kari is the fallback for "supervisor", the roster still says the night guard
    s = snapshot_chain(CFG, guards(), "ola", WED_DAY)
    got = resolve_step(_without("people", "ola"), s.steps[1], "ola", WED_NIGHT)
    assert ids(got.targets) == ["guard-night", "kari"]


def test_a_stored_entry_that_cannot_be_read_falls_back_instead_of_stopping_the_alarm() -> None:
    data = snapshot_chain(CFG, guards(), "ola", WED_NIGHT).to_json()
    data["steps"][2]["spec"] = ["everyone"]
    step = ChainSnapshot.from_json(data).steps[2]
    got = resolve_step(CFG, step, "ola", WED_NIGHT)
    assert got.missing == ("everyone",)
    assert [(pg.target.person_id, pg.fallback) for pg in got.pages] == [("head-security", True)]


def _old_row(s: ChainSnapshot) -> dict[str, Any]:
    """The chain JSON of an alarm stored before late resolution: `targets`, no `named`."""
    data = s.to_json()
    for st_ in data["steps"]:
        st_["targets"] = st_.pop("at_open")
        del st_["named"]
    return data


def test_chains_stored_before_late_resolution_still_read_and_resolve_late() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_DAY)
    old = ChainSnapshot.from_json(json.loads(json.dumps(_old_row(s))))
    assert [ids(st_.at_open) for st_ in old.steps] == [ids(st_.at_open) for st_ in s.steps]
    assert all(st_.named is None for st_ in old.steps)
    assert old.to_json()["steps"][0]["at_open"] == s.to_json()["steps"][0]["at_open"]
    # looked up when each step goes out, like a new alarm
    assert ids(resolve_step(CFG, old.steps[0], "ola", WED_NIGHT).targets) == ["guard-night"]
    # without `named`, a lost roster or supervisor falls back to everyone the step named at
    # open; a lost person:ID to that person
    got = resolve_step(_without("people", "ola"), old.steps[1], "ola", WED_NIGHT)
    assert got.missing == ("supervisor",)
    assert ids(got.targets) == ["guard-night", "guard-day", "kari"]
    data = _old_row(s)
    data["steps"][2]["spec"] = ["roster:security-desk", "person:head-security"]
    data["steps"][2]["targets"].insert(0, s.steps[0].at_open[0].to_json())  # guard-day
    old = ChainSnapshot.from_json(data)
    got = resolve_step(_without("people", "head-security"), old.steps[2], "ola", WED_NIGHT)
    assert got.missing == ("person:head-security",)
    assert ids(got.targets) == ["guard-night", "head-security"]


# DST nights: a roster whose handover is at 02:30, in the hour the clocks change


def _small_hours_cfg() -> Any:
    data = config_dict()
    data["people"] += [
        {"id": "anne", "name": "Anne Vakt", "phone": "+4790000011", "roles": ["guard"]},
        {"id": "bjorn", "name": "Bjørn Vakt", "phone": "+4790000012", "roles": ["guard"]},
    ]
    every = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    data["rosters"].append(
        {
            "id": "small-hours",
            "shifts": [
                {"days": every, "start": "20:00", "end": "02:30", "people": ["anne"]},
                {"days": every, "start": "02:30", "end": "09:00", "people": ["bjorn"]},
            ],
        }
    )
    data["escalation_chains"].append(
        {
            "id": "night",
            "repeat": 0,
            "repeat_after": "1m",
            "keep_paging": "10m",
            "steps": [
                {"after": "0s", "notify": ["roster:small-hours"], "via": ["sms"]},
                {"after": "3m", "notify": ["roster:small-hours", "person:kari"], "via": ["call"]},
            ],
        }
    )
    return make_config(data)


def _timeline(cfg: Any, start: dt.datetime, upto: int) -> list[tuple[str, list[str]]]:
    chain = cfg.chain("night")
    s = snapshot_chain(cfg, chain, "ola", start)
    out = []
    for k in range(upto):
        p = planned_step(s, k)
        assert p is not None
        at = p.due_at(start)
        out.append((at.astimezone(OSLO).strftime("%H:%M%z"), paged(cfg, s, k, start)))
    return out


def test_escalation_across_the_spring_forward_handover() -> None:
    # 29 March 2026: 02:00 CET jumps to 03:00 CEST (01:00 UTC); 02:30 never happens, so the
    # handover is at the jump. Opened 01:58 CET: step 0 Anne; step 1 (3 min later = 03:01
    # CEST) Bjørn, not Anne who went home at the jump; the pages after it Bjørn
    cfg = _small_hours_cfg()
    start = oslo(2026, 3, 29, 1, 58)
    assert _timeline(cfg, start, 4) == [
        ("01:58+0100", ["anne"]),
        ("03:01+0200", ["bjorn", "kari"]),
        ("03:11+0200", ["bjorn", "kari"]),
        ("03:21+0200", ["bjorn", "kari"]),
    ]
    step = snapshot_chain(cfg, cfg.chain("night"), "ola", start).steps[0]
    on = [ids(resolve_step(cfg, step, None, utc(2026, 3, 29, 0, 59, 59)).targets)]
    on.append(ids(resolve_step(cfg, step, None, utc(2026, 3, 29, 1, 0)).targets))
    assert on == [["anne"], ["bjorn"]]


def test_escalation_across_the_fall_back_handover() -> None:
    # 25 October 2026: 03:00 CEST falls back to 02:00 CET (01:00 UTC); 02:xx happens twice.
    # The handover is the first 02:30 (00:30 UTC). Opened 02:28 CEST: step 0 Anne; step 1 at
    # 02:31 CEST Bjørn; the pages at 02:41 CEST, 02:51 CEST, then 02:01 CET and 02:11 CET (the
    # wall clock shows Anne's hours again): still Bjørn, never Anne who went home
    cfg = _small_hours_cfg()
    start = oslo(2026, 10, 25, 2, 28)
    assert start.utcoffset() == dt.timedelta(hours=2)
    assert _timeline(cfg, start, 6) == [
        ("02:28+0200", ["anne"]),
        ("02:31+0200", ["bjorn", "kari"]),
        ("02:41+0200", ["bjorn", "kari"]),
        ("02:51+0200", ["bjorn", "kari"]),
        ("02:01+0100", ["bjorn", "kari"]),
        ("02:11+0100", ["bjorn", "kari"]),
    ]
    step = snapshot_chain(cfg, cfg.chain("night"), "ola", start).steps[0]
    for at, who in [
        (utc(2026, 10, 25, 0, 29, 59), "anne"),  # 02:29:59 CEST
        (utc(2026, 10, 25, 0, 30), "bjorn"),  # 02:30 CEST: the handover
        (utc(2026, 10, 25, 1, 29, 59), "bjorn"),  # 02:29:59 CET, the second time round
        (utc(2026, 10, 25, 1, 30), "bjorn"),  # 02:30 CET
        (utc(2026, 10, 25, 7, 59, 59), "bjorn"),  # 08:59:59 CET
    ]:
        assert ids(resolve_step(cfg, step, None, at).targets) == [who], at


# --------------------------------------------------------------------------- timetable


def offsets(s: ChainSnapshot, upto: int) -> list[float | None]:
    out: list[float | None] = []
    for k in range(upto):
        p = planned_step(s, k)
        out.append(None if p is None else p.offset / M)
    return out


def test_contract_chain_timetable() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    # run 0 at 0, 2, 5; run 1 starts 5 + 1 = 6: 6, 8, 11; then pages every 5 m after 11
    assert offsets(s, 9) == [0, 2, 5, 6, 8, 11, 16, 21, 26]
    assert exhausted_after(s) == 6
    assert planned_step(s, 4) == PlannedStep(
        k=4, run=1, step_index=1, offset=8 * M, is_keep_paging=False
    )
    assert planned_step(s, 7) == PlannedStep(
        k=7, run=None, step_index=2, offset=21 * M, is_keep_paging=True
    )


def test_no_repeat_and_repeat_after_gap() -> None:
    assert offsets(snap([0, 3], repeat=0, keep_paging=120), 4) == [0, 3, 5, 7]
    # repeat 2, repeat_after 10 m: runs start at 0, 13, 26
    assert offsets(snap([0, 3], repeat=2, repeat_after=600, keep_paging=0), 7) == [
        0, 3, 13, 16, 26, 29, None,
    ]  # fmt: skip
    assert exhausted_after(snap([0, 3], repeat=2)) == 6


def test_keep_paging_zero_stops_after_the_chain() -> None:
    s = snap([0, 2, 5], repeat=1, keep_paging=0)
    assert planned_step(s, 5) is not None
    assert planned_step(s, 6) is None
    assert next_due(s, WED_NIGHT, 6) is None
    assert due_steps(s, WED_NIGHT, 6, WED_NIGHT + dt.timedelta(days=3)) == []


def test_single_step_chain_pages_the_same_step() -> None:
    s = snap([0], repeat=0, keep_paging=60)
    plan = [planned_step(s, k) for k in range(3)]
    assert [(p.k, p.step_index, p.is_keep_paging) for p in plan if p] == [
        (0, 0, False), (1, 0, True), (2, 0, True),
    ]  # fmt: skip
    assert offsets(s, 3) == [0, 1, 2]


def test_negative_k_is_an_error() -> None:
    with pytest.raises(ValueError):
        planned_step(snap([0]), -1)
    with pytest.raises(ValueError):
        due_steps(snap([0]), WED_NIGHT, -1, WED_NIGHT)


def test_next_due_is_elapsed_time_across_spring_forward() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    start = oslo(2026, 3, 29, 1, 59)  # CET; clocks jump to 03:00 a minute later
    due = next_due(s, start, 1)
    assert due is not None
    assert due - start == 2 * M
    assert due == utc(2026, 3, 29, 1, 1)
    assert due.astimezone(OSLO).strftime("%H:%M") == "03:01"


def test_next_due_is_elapsed_time_across_fall_back() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    start = oslo(2026, 10, 25, 2, 58)  # the first 02:58, CEST
    due = next_due(s, start, 2)  # 5 minutes later: 03:03 CEST would be wrong, it is 02:03 CET
    assert due is not None
    assert due == utc(2026, 10, 25, 1, 3)
    assert due - start == 5 * M


def test_naive_start_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_due(snap([0]), dt.datetime(2026, 9, 9, 12), 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        due_steps(snap([0]), dt.datetime(2026, 9, 9, 12), 0, WED_NIGHT)


def test_due_steps_step_by_step() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    t0 = WED_NIGHT
    assert due_steps(s, t0, 0, t0 - dt.timedelta(seconds=1)) == []
    assert [p.k for p in due_steps(s, t0, 0, t0)] == [0]
    assert due_steps(s, t0, 1, t0 + 2 * M - dt.timedelta(microseconds=1)) == []
    assert [p.k for p in due_steps(s, t0, 1, t0 + 2 * M)] == [1]
    assert next_due(s, t0, 2) == t0 + 5 * M


def test_due_steps_catch_up_runs_every_missed_regular_step() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    got = due_steps(s, WED_NIGHT, 1, WED_NIGHT + 12 * M)
    assert [p.k for p in got] == [1, 2, 3, 4, 5]
    assert not any(p.is_keep_paging for p in got)


def test_due_steps_collapses_missed_pages_into_the_latest() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    t0 = WED_NIGHT
    # an hour down: the regular steps all run; pages were due at 16, 21, ... 56: only the 56 one
    got = due_steps(s, t0, 0, t0 + 60 * M)
    assert [p.k for p in got] == [0, 1, 2, 3, 4, 5, 14]
    assert got[-1].is_keep_paging and got[-1].offset == 56 * M
    assert due_steps(s, t0, 15, t0 + 60 * M) == []
    assert next_due(s, t0, 15) == t0 + 61 * M
    # already exhausted and paging: pages k=8..11 (26, 31, 36, 41 m) collapse into k=11
    got = due_steps(s, t0, 8, t0 + 44 * M)
    assert [(p.k, p.offset / M) for p in got] == [(11, 41)]


def test_due_steps_cap_then_continue() -> None:
    s = snap([0] * 20, repeat=100, repeat_after=0, keep_paging=60)  # 2020 steps all at once
    now = WED_NIGHT + M // 2
    first = due_steps(s, WED_NIGHT, 0, now)
    assert len(first) == DUE_STEPS_CAP
    second = due_steps(s, WED_NIGHT, first[-1].k + 1, now)
    assert len(second) == DUE_STEPS_CAP
    third = due_steps(s, WED_NIGHT, second[-1].k + 1, now)
    assert [p.k for p in third] == list(range(2000, 2020))
    assert due_steps(s, WED_NIGHT, 2020, now) == []  # the first page is a minute later
    assert [p.k for p in due_steps(s, WED_NIGHT, 0, now, cap=3)] == [0, 1, 2]


CHAINS = st.builds(
    snap,
    afters=st.lists(st.integers(0, 30), min_size=1, max_size=5).map(sorted),
    repeat=st.integers(0, 4),
    repeat_after=st.integers(0, 900),
    keep_paging=st.sampled_from([0, 1, 59, 300]),
)


@settings(max_examples=200)
@given(
    s=CHAINS,
    gaps=st.lists(st.integers(0, 4000), min_size=1, max_size=30),
)
def test_polling_due_steps_sends_every_regular_step_once_in_order(
    s: ChainSnapshot, gaps: list[int]
) -> None:
    start = utc(2026, 3, 29, 0, 30)  # across the spring-forward switch
    now = start
    next_k = 0
    sent: list[PlannedStep] = []
    for gap in gaps:
        now += dt.timedelta(seconds=gap)
        got = due_steps(s, start, next_k, now)
        assert sum(p.is_keep_paging for p in got) <= 1
        for p in got:
            assert p.k >= next_k
            assert p.due_at(start) <= now
        if got:
            next_k = got[-1].k + 1
        # whatever is still planned is in the future
        nd = next_due(s, start, next_k)
        assert nd is None or nd > now
        sent.extend(got)
    ks = [p.k for p in sent]
    assert ks == sorted(set(ks))
    end = exhausted_after(s)
    regular = [k for k in ks if k < end]
    assert regular == list(range(len(regular)))  # no regular step skipped
    offs = [p.offset for p in sent]
    assert offs == sorted(offs)
