"""Escalation: resolve a chain's targets, freeze it onto an alarm, and lay out its timetable.

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

from jaa_gateway.config import Chain, Config
from jaa_gateway.domain.model import ChainSnapshot, StepSnapshot, Target
from jaa_gateway.domain.roster import on_duty, require_aware

# Enough for any sane chain (repeat <= 100 in config); guards against a runaway catch-up loop.
DUE_STEPS_CAP = 1000


# --------------------------------------------------------------------------- targets


def resolve_targets(
    cfg: Config, spec: Sequence[str], worker_id: str | None, now: dt.datetime
) -> tuple[Target, ...]:
    """Who a step's `notify` entries name at `now`, each person once, in order.

    ``roster:ID`` is whoever is on duty at `now`; ``person:ID`` that person; ``supervisor`` the
    worker's supervisor (nobody when there is no worker or no supervisor). An id the config does
    not know resolves to nobody (config validation rejects such ids, so this is belt and braces).
    """
    require_aware(now)
    ids: list[str] = []
    for entry in spec:
        kind, sep, ref = entry.partition(":")
        if kind == "roster" and sep and ref:
            roster = cfg.roster(ref)
            if roster is not None:
                ids.extend(on_duty(roster, cfg.tz, now))
        elif kind == "person" and sep and ref:
            ids.append(ref)
        elif entry == "supervisor":
            worker = cfg.person(worker_id) if worker_id is not None else None
            if worker is not None and worker.supervisor is not None:
                ids.append(worker.supervisor)
        else:
            raise ValueError(f"{entry!r} is not a target (roster:ID, person:ID or supervisor)")
    out: list[Target] = []
    seen: set[str] = set()
    for pid in ids:
        person = cfg.person(pid)
        if person is None or pid in seen:
            continue
        seen.add(pid)
        out.append(Target(person_id=person.id, name=person.name, phone=person.phone))
    return tuple(out)


def snapshot_chain(
    cfg: Config, chain: Chain, worker_id: str | None, now: dt.datetime
) -> ChainSnapshot:
    """Freeze `chain` onto an alarm: every step's targets resolved at `now`."""
    return ChainSnapshot(
        chain_id=chain.id,
        repeat=chain.repeat,
        repeat_after=chain.repeat_after,
        keep_paging=chain.keep_paging,
        steps=tuple(
            StepSnapshot(
                after=step.after,
                via=tuple(step.via),
                targets=resolve_targets(cfg, step.notify, worker_id, now),
                spec=tuple(step.notify),
            )
            for step in chain.steps
        ),
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
