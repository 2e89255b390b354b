"""Escalation: freeze a chain onto an alarm, look up who each step pages, lay out the timetable.

Steps are frozen when the alarm opens (`snapshot_chain`); people are resolved late, at the
instant each step or keep-paging page goes out (`resolve_step`, CONTRACT §4): an escalation that
runs across a shift change pages the new shift. A notify entry the config no longer knows (a
roster or person removed, the worker gone) never pages nobody silently: it falls back to the
people it named when the alarm opened, and the caller audits that and logs an error.

The timetable numbers step runs k = 0, 1, 2, ... With n steps and `repeat` extra runs:

* run r (0..repeat) starts at R_r, where R_0 = 0 and R_{r+1} = R_r + steps[-1].after +
  repeat_after (the gap runs from the previous run's last step);
* step i of run r is k = r*n + i, due at R_r + steps[i].after;
* k = n*(repeat+1) - 1 is the last step of the last run, at T_last. From k = n*(repeat+1) on the
  chain is exhausted; the last step is paged again at T_last + j*keep_paging (j = 1, 2, ...) until
  someone acknowledges, or never when keep_paging is 0.

Offsets are real elapsed time: they are added to the escalation start in UTC, so a night when
the clocks change neither stretches nor shrinks an escalation.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jaa_gateway.config import Chain, Config
from jaa_gateway.domain.model import ChainSnapshot, StepSnapshot, Target
from jaa_gateway.domain.roster import on_duty, require_aware

# Enough for any sane chain (repeat <= 100 in config); guards against a runaway catch-up loop.
DUE_STEPS_CAP = 1000


# --------------------------------------------------------------------------- targets


def _entry_ids(
    cfg: Config, entry: str, worker_id: str | None, now: dt.datetime
) -> list[str] | None:
    """The person ids one `notify` entry names at `now`; None when the config does not know
    what the entry refers to (the roster, the person, or the worker for ``supervisor``).

    ``roster:ID`` is whoever is on duty at `now` (nobody in a gap between shifts); ``person:ID``
    that person; ``supervisor`` the worker's supervisor (nobody when there is no worker or the
    worker has no supervisor).
    """
    kind, sep, ref = entry.partition(":")
    if kind == "roster" and sep and ref:
        roster = cfg.roster(ref)
        return None if roster is None else on_duty(roster, cfg.tz, now)
    if kind == "person" and sep and ref:
        return None if cfg.person(ref) is None else [ref]
    if entry == "supervisor":
        if worker_id is None:
            return []
        worker = cfg.person(worker_id)
        if worker is None:
            return None
        if worker.supervisor is None:
            return []
        return None if cfg.person(worker.supervisor) is None else [worker.supervisor]
    raise ValueError(f"{entry!r} is not a target (roster:ID, person:ID or supervisor)")


def _target(cfg: Config, pid: str) -> Target | None:
    person = cfg.person(pid)
    return None if person is None else Target(person.id, person.name, person.phone)


def resolve_targets(
    cfg: Config, spec: Sequence[str], worker_id: str | None, now: dt.datetime
) -> tuple[Target, ...]:
    """Who a step's `notify` entries name at `now` in the config, each person once, in order.

    An entry the config does not know names nobody here (config validation rejects such ids);
    a running alarm resolves its frozen steps with `resolve_step` instead, which falls back.
    """
    require_aware(now)
    out: list[Target] = []
    seen: set[str] = set()
    for entry in spec:
        for pid in _entry_ids(cfg, entry, worker_id, now) or ():
            t = _target(cfg, pid)
            if t is not None and pid not in seen:
                seen.add(pid)
                out.append(t)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Page:
    """One person a step pages: who, which notify entry named them, and whether that came
    from the alarm's snapshot because the config no longer knows the entry."""

    target: Target
    source: str
    fallback: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"person": self.target.person_id, "from": self.source, "fallback": self.fallback}


@dataclass(frozen=True, slots=True)
class StepPeople:
    """Who one step pages at one instant; `missing` lists the entries that fell back."""

    pages: tuple[Page, ...]
    missing: tuple[str, ...]

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(p.target for p in self.pages)


def resolve_step(
    cfg: Config, step: StepSnapshot, worker_id: str | None, now: dt.datetime
) -> StepPeople:
    """Who a frozen step pages at `now`, each person once, in the order of its entries.

    People and their phones come from the current config. For an entry the config no longer
    knows, the people it named when the alarm opened are paged (their current phone when the
    config still has them, else the one frozen with the alarm): a page to someone who may have
    gone home beats a page to nobody. A step can still resolve to nobody (a roster gap, a worker
    without a supervisor): the caller audits that and logs an error.
    """
    require_aware(now)
    frozen = {t.person_id: t for t in step.at_open}
    pages: list[Page] = []
    missing: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(step.spec):
        try:
            ids = _entry_ids(cfg, entry, worker_id, now)
        except ValueError:
            ids = None  # a stored entry no version wrote: page who it named at open, audited
        fallback = ids is None
        if ids is None:
            missing.append(entry)
            ids = list(step.fallback_ids(i))
        for pid in ids:
            if pid in seen:
                continue
            t = _target(cfg, pid) or (frozen.get(pid) if fallback else None)
            if t is None:
                continue
            seen.add(pid)
            pages.append(Page(t, entry, fallback))
    return StepPeople(tuple(pages), tuple(missing))


def snapshot_chain(
    cfg: Config, chain: Chain, worker_id: str | None, now: dt.datetime
) -> ChainSnapshot:
    """Freeze `chain`'s steps onto an alarm, with the people each entry names at `now` kept
    as the fallback (who is paged is looked up again when each step goes out)."""
    require_aware(now)
    steps: list[StepSnapshot] = []
    for step in chain.steps:
        named = tuple(
            tuple(pid for pid in _entry_ids(cfg, e, worker_id, now) or () if cfg.person(pid))
            for e in step.notify
        )
        steps.append(
            StepSnapshot(
                after=step.after,
                via=tuple(step.via),
                spec=tuple(step.notify),
                at_open=resolve_targets(cfg, step.notify, worker_id, now),
                named=named,
            )
        )
    return ChainSnapshot(
        chain_id=chain.id,
        repeat=chain.repeat,
        repeat_after=chain.repeat_after,
        keep_paging=chain.keep_paging,
        steps=tuple(steps),
    )


def first_step_has_someone(
    cfg: Config, chain: Chain, worker_id: str | None, now: dt.datetime
) -> bool:
    """Whether the chain's first step reaches anybody at `now` (the gate's no_assistance rule)."""
    return bool(resolve_targets(cfg, chain.steps[0].notify, worker_id, now))


# --------------------------------------------------------------------------- timetable


@dataclass(frozen=True, slots=True)
class PlannedStep:
    """Step run number `k`: which step, in which run, and when relative to escalation start.

    `run` is None for keep-paging pages (after the chain is exhausted); their `step_index` is
    the last step's.
    """

    k: int
    run: int | None
    step_index: int
    offset: dt.timedelta
    is_keep_paging: bool

    def due_at(self, start: dt.datetime) -> dt.datetime:
        return _at(start, self.offset)


def _at(start: dt.datetime, offset: dt.timedelta) -> dt.datetime:
    require_aware(start, "start")
    return start.astimezone(dt.UTC) + offset


def exhausted_after(snap: ChainSnapshot) -> int:
    """The first k past the chain's regular runs: reaching it marks the escalation exhausted."""
    return len(snap.steps) * (snap.repeat + 1)


def _run_length(snap: ChainSnapshot) -> dt.timedelta:
    return snap.steps[-1].after + snap.repeat_after


def _t_last(snap: ChainSnapshot) -> dt.timedelta:
    return snap.repeat * _run_length(snap) + snap.steps[-1].after


def planned_step(snap: ChainSnapshot, k: int) -> PlannedStep | None:
    """Step run `k` of the timetable, or None past the chain when keep_paging is 0."""
    if k < 0:
        raise ValueError(f"step number k must be >= 0, got {k}")
    n = len(snap.steps)
    end = exhausted_after(snap)
    if k < end:
        run, i = divmod(k, n)
        return PlannedStep(
            k=k,
            run=run,
            step_index=i,
            offset=run * _run_length(snap) + snap.steps[i].after,
            is_keep_paging=False,
        )
    if snap.keep_paging <= dt.timedelta(0):
        return None
    j = k - end + 1
    return PlannedStep(
        k=k,
        run=None,
        step_index=n - 1,
        offset=_t_last(snap) + j * snap.keep_paging,
        is_keep_paging=True,
    )


def next_due(snap: ChainSnapshot, start: dt.datetime, next_k: int) -> dt.datetime | None:
    """When step run `next_k` is due (UTC), or None when nothing more is planned."""
    step = planned_step(snap, next_k)
    return None if step is None else step.due_at(start)


def due_steps(
    snap: ChainSnapshot,
    start: dt.datetime,
    next_k: int,
    now: dt.datetime,
    cap: int = DUE_STEPS_CAP,
) -> list[PlannedStep]:
    """The step runs with k >= next_k that are due at `now`, in order.

    Regular steps that were missed (e.g. during downtime) are all returned: each has its own
    targets and none may be skipped. Missed keep-paging pages collapse into the latest one, so a
    guard's phone does not get a burst of identical pages. The caller carries on from
    ``result[-1].k + 1``. At most `cap` steps are returned; the rest come on the next call.
    """
    if next_k < 0:
        raise ValueError(f"next_k must be >= 0, got {next_k}")
    if cap < 1:
        raise ValueError(f"cap must be >= 1, got {cap}")
    require_aware(now)
    require_aware(start, "start")
    elapsed = now.astimezone(dt.UTC) - start.astimezone(dt.UTC)
    out: list[PlannedStep] = []
    end = exhausted_after(snap)
    k = next_k
    while k < end and len(out) < cap:
        step = planned_step(snap, k)
        assert step is not None  # regular steps always exist
        if step.offset > elapsed:
            return out
        out.append(step)
        k += 1
    if k < end or len(out) >= cap or snap.keep_paging <= dt.timedelta(0):
        return out
    # k >= end: keep-paging pages, page j due at T_last + j*keep_paging
    since_last = elapsed - _t_last(snap)
    latest_j = since_last // snap.keep_paging  # timedelta // timedelta -> int (floor)
    first_j = k - end + 1
    if latest_j >= first_j:
        page = planned_step(snap, end + latest_j - 1)
        assert page is not None
        out.append(page)
    return out
