"""Value objects shared by the engine and the domain rules.

`ChainSnapshot` is an escalation chain's steps frozen onto an alarm when it opens (Grafana
OnCall's escalation snapshot): editing the config while an alarm is running cannot rewrite its
timetable, channels or notify entries. Who those entries name (who is on duty for a roster, a
person's phone) is looked up again when each step goes out (`escalation.resolve_step`); the
people they named when the alarm opened are kept only as the fallback for an entry the config no
longer knows. It round-trips through JSON so the store can keep it with the alarm.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CHANNELS = ("sms", "call")


@dataclass(frozen=True, slots=True)
class Target:
    """A person to notify, with a name and a phone number."""

    person_id: str
    name: str
    phone: str

    def to_json(self) -> dict[str, str]:
        return {"person_id": self.person_id, "name": self.name, "phone": self.phone}

    @classmethod
    def from_json(cls, data: object) -> Target:
        d = _mapping(data, "target")
        return cls(
            person_id=_str(d, "person_id", "target"),
            name=_str(d, "name", "target"),
            phone=_str(d, "phone", "target"),
        )


@dataclass(frozen=True, slots=True)
class StepSnapshot:
    """One chain step: when (from the run's start), how, and its raw `notify` entries (`spec`).

    `at_open` is everyone the entries named when the alarm opened, each once; `named[i]` the
    ids entry `spec[i]` named then. Neither is paged as such: who a step pages is looked up when
    it goes out; they are the fallback for an entry the config no longer knows. Alarms stored
    before late resolution carry only `targets` (read here as `at_open`) and no `named`.
    """

    after: dt.timedelta
    via: tuple[str, ...]
    spec: tuple[str, ...]
    at_open: tuple[Target, ...]
    named: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self) -> None:
        if self.after < dt.timedelta(0):
            raise ValueError("step 'after' cannot be negative")
        if not self.via:
            raise ValueError("a step needs at least one channel in 'via'")
        for ch in self.via:
            if ch not in CHANNELS:
                raise ValueError(f"unknown channel {ch!r} (expected one of {CHANNELS})")
        if self.named is not None:
            if len(self.named) != len(self.spec):
                raise ValueError(
                    f"'named' has {len(self.named)} entries for {len(self.spec)} in 'spec'"
                )
            known = {t.person_id for t in self.at_open}
            for ids in self.named:
                for pid in ids:
                    if pid not in known:
                        raise ValueError(f"'named' names {pid!r}, who is not in 'at_open'")

    def fallback_ids(self, entry_index: int) -> tuple[str, ...]:
        """Who to page for `spec[entry_index]` when the config no longer knows it.

        Without `named` (a chain stored before), a ``person:ID`` entry named that person; for a
        roster or the supervisor there is no telling, so everyone the step named at open.
        """
        if self.named is not None:
            return self.named[entry_index]
        everyone = tuple(t.person_id for t in self.at_open)
        kind, _, ref = self.spec[entry_index].partition(":")
        return (ref,) if kind == "person" and ref in everyone else everyone

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "after": self.after.total_seconds(),
            "via": list(self.via),
            "spec": list(self.spec),
            "at_open": [t.to_json() for t in self.at_open],
        }
        if self.named is not None:
            out["named"] = [list(ids) for ids in self.named]
        return out

    @classmethod
    def from_json(cls, data: object) -> StepSnapshot:
        """Both shapes: `at_open` + `named` (now), or `targets` (alarms stored before)."""
        d = _mapping(data, "step")
        if "at_open" in d:
            at_open = _list(d, "at_open", "step")
            named: tuple[tuple[str, ...], ...] | None = tuple(
                tuple(_strings(ids, "named", "step")) for ids in _list(d, "named", "step")
            )
        else:
            at_open = _list(d, "targets", "step")
            named = None
        return cls(
            after=_seconds(d, "after", "step"),
            via=tuple(_str_list(d, "via", "step")),
            spec=tuple(_str_list(d, "spec", "step")),
            at_open=tuple(Target.from_json(t) for t in at_open),
            named=named,
        )


@dataclass(frozen=True, slots=True)
class ChainSnapshot:
    """An escalation chain frozen onto an alarm (see escalation.py for its timetable)."""

    chain_id: str
    repeat: int
    repeat_after: dt.timedelta
    keep_paging: dt.timedelta
    steps: tuple[StepSnapshot, ...]

    def __post_init__(self) -> None:
        if not self.chain_id:
            raise ValueError("chain_id cannot be empty")
        if isinstance(self.repeat, bool) or not isinstance(self.repeat, int) or self.repeat < 0:
            raise ValueError(f"repeat must be an integer >= 0, got {self.repeat!r}")
        if self.repeat_after < dt.timedelta(0):
            raise ValueError("repeat_after cannot be negative")
        if self.keep_paging < dt.timedelta(0):
            raise ValueError("keep_paging cannot be negative")
        if not self.steps:
            raise ValueError("a chain needs at least one step")
        # the timetable relies on steps being in order; config enforces it, snapshots must too
        for prev, nxt in zip(self.steps, self.steps[1:], strict=False):
            if nxt.after < prev.after:
                raise ValueError("chain steps must be in order of 'after'")

    def to_json(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "repeat": self.repeat,
            "repeat_after": self.repeat_after.total_seconds(),
            "keep_paging": self.keep_paging.total_seconds(),
            "steps": [s.to_json() for s in self.steps],
        }

    @classmethod
    def from_json(cls, data: object) -> ChainSnapshot:
        """Rebuild a snapshot from `to_json()` output; raise ValueError on anything malformed."""
        d = _mapping(data, "chain snapshot")
        repeat = d.get("repeat")
        if isinstance(repeat, bool) or not isinstance(repeat, int):
            raise ValueError(f"chain snapshot: 'repeat' must be an integer, got {repeat!r}")
        return cls(
            chain_id=_str(d, "chain_id", "chain snapshot"),
            repeat=repeat,
            repeat_after=_seconds(d, "repeat_after", "chain snapshot"),
            keep_paging=_seconds(d, "keep_paging", "chain snapshot"),
            steps=tuple(StepSnapshot.from_json(s) for s in _list(d, "steps", "chain snapshot")),
        )


# --------------------------------------------------------------------------- JSON helpers


def _mapping(data: object, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: expected an object, got {type(data).__name__}")
    return data


def _str(d: Mapping[str, Any], key: str, what: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise ValueError(f"{what}: {key!r} must be a string, got {v!r}")
    return v


def _list(d: Mapping[str, Any], key: str, what: str) -> list[Any]:
    v = d.get(key)
    if not isinstance(v, list):
        raise ValueError(f"{what}: {key!r} must be a list, got {type(v).__name__}")
    return v


def _str_list(d: Mapping[str, Any], key: str, what: str) -> list[str]:
    return _strings(_list(d, key, what), key, what)


def _strings(items: object, key: str, what: str) -> list[str]:
    if not isinstance(items, list):
        raise ValueError(f"{what}: {key!r} must hold lists of strings, got {items!r}")
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what}: {key!r} must hold strings, got {item!r}")
    return items


def _seconds(d: Mapping[str, Any], key: str, what: str) -> dt.timedelta:
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{what}: {key!r} must be a number of seconds >= 0, got {v!r}")
    try:
        return dt.timedelta(seconds=v)
    except OverflowError:
        raise ValueError(f"{what}: {key!r} is too large: {v!r}") from None
