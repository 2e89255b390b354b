"""Escalation: targets, the frozen chain snapshot and its timetable."""

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
    PlannedStep,
    due_steps,
    exhausted_after,
    first_step_has_someone,
    next_due,
    planned_step,
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
            StepSnapshot(after=a * M, via=("sms",), targets=(), spec=("person:x",)) for a in afters
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


def test_snapshot_resolves_every_step_at_the_instant() -> None:
    s = snapshot_chain(CFG, guards(), "ola", WED_NIGHT)
    assert s.chain_id == "guards"
    assert (s.repeat, s.repeat_after, s.keep_paging) == (1, M, 5 * M)
    assert [st_.after for st_ in s.steps] == [dt.timedelta(0), 2 * M, 5 * M]
    assert [st_.via for st_ in s.steps] == [("sms", "call"), ("call",), ("call", "sms")]
    assert [ids(st_.targets) for st_ in s.steps] == [
        ["guard-night"],
        ["guard-night", "kari"],
        ["head-security"],
    ]
    assert s.steps[1].spec == ("roster:security-desk", "supervisor")
    # frozen: the day shift at a later instant does not change the snapshot taken at night
    later = snapshot_chain(CFG, guards(), "ola", WED_DAY)
    assert ids(later.steps[0].targets) == ["guard-day"]
    assert ids(s.steps[0].targets) == ["guard-night"]


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
        (lambda d: d["steps"][0]["targets"][0].pop("phone"), "phone"),
        (lambda d: d["steps"][0].update(targets="guard"), "targets"),
        (lambda d: d["steps"][0].update(spec=[1]), "spec"),
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
