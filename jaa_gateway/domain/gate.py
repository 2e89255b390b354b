"""May this lone-work session start now?  -> Started | Denied(reason, detail).

The reasons are checked in the order of CONTRACT §3; the first that applies is the answer.
When a person has several assessments for a location they are filtered step by step (covering,
valid today, allowing lone work, within allowed hours, JAA available), and the denial names the
rule at which none was left. `detail` is a sentence the worker can act on.
"""

from __future__ import annotations

import datetime as dt
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from jaa_gateway.config import Assessment, Config, Person, Window
from jaa_gateway.domain.escalation import first_step_has_someone
from jaa_gateway.domain.roster import in_window, require_aware

DenyReason = Literal[
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
]

# the contract's order, derived from the type so the two cannot drift apart
DENY_REASONS: Final[tuple[DenyReason, ...]] = typing.get_args(DenyReason)


@dataclass(frozen=True, slots=True)
class Started:
    person_id: str
    location_id: str
    assessment_id: str
    checkin_interval: dt.timedelta | None
    ends_at: dt.datetime  # UTC


@dataclass(frozen=True, slots=True)
class Denied:
    reason: DenyReason
    detail: str


def _hhmm(t: dt.time) -> str:
    return t.strftime("%H:%M")


def _window_text(w: Window) -> str:
    return f"between {_hhmm(w.start)} and {_hhmm(w.end)}"


def _ids(items: Sequence[Assessment]) -> str:
    names = [a.id for a in items]
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _not_valid_detail(covering: Sequence[Assessment], today: dt.date) -> str:
    # name the newest assessment: it is the one the worker most likely meant to use
    newest = max(covering, key=lambda a: (a.valid_until, a.valid_from))
    if newest.valid_from > today:
        return f"Risk assessment {newest.id} is not valid until {newest.valid_from.isoformat()}."
    return f"Risk assessment {newest.id} expired on {newest.valid_until.isoformat()}."


def decide_start(
    cfg: Config,
    *,
    now: dt.datetime,
    person: Person | None,
    location_id: str | None,
    source: Literal["device", "badge"],
    device_id: str | None,
    assessments: Sequence[Assessment],
    device_last_seen: Mapping[str, dt.datetime],
    planned_minutes: int | None = None,
) -> Started | Denied:
    """Apply the gate's rules at `now`.

    `assessments` are all known assessments (config and API); those of other people or places
    are ignored. `device_last_seen` maps device ids to when they were last heard from.
    `planned_minutes` (from the device) may shorten the session, never lengthen it past the
    assessment's max_duration; it must be a positive integer when given.
    """
    require_aware(now)
    if source not in ("device", "badge"):
        raise ValueError(f"source must be 'device' or 'badge', got {source!r}")
    if planned_minutes is not None and (
        isinstance(planned_minutes, bool)
        or not isinstance(planned_minutes, int)
        or planned_minutes < 1
    ):
        raise ValueError(f"planned_minutes must be a positive integer, got {planned_minutes!r}")

    # 1-2: who is asking
    if source == "badge" and person is None:
        return Denied("unknown_badge", "This badge is not registered to anyone.")
    if source == "device":
        device = cfg.device(device_id) if device_id is not None else None
        if device is None or person is None:
            return Denied("unknown_device", "This alarm device is not registered.")
        if device.person != person.id:
            return Denied(
                "unknown_device", f"This alarm device is not registered to {person.name}."
            )
    assert person is not None  # both sources checked above

    # 3: where
    location = cfg.location(location_id) if location_id is not None else None
    if location is None:
        return Denied(
            "unknown_location",
            f"Location {location_id!r} is not known." if location_id else "No location given.",
        )

    # 4-7: the risk assessment, filtered progressively
    tz = cfg.tz
    today = now.astimezone(tz).date()
    covering = [a for a in assessments if a.person == person.id and location.id in a.locations]
    if not covering:
        return Denied(
            "no_assessment",
            f"There is no risk assessment for {person.name} working alone in {location.name}.",
        )
    valid = [a for a in covering if a.valid_from <= today <= a.valid_until]
    if not valid:
        return Denied("assessment_not_valid", _not_valid_detail(covering, today))
    allowed = [a for a in valid if a.lone_work_allowed]
    if not allowed:
        verb = "does" if len(valid) == 1 else "do"
        return Denied(
            "lone_work_not_allowed",
            f"Risk assessment {_ids(valid)} {verb} not allow lone work.",
        )
    in_hours = [
        a for a in allowed if a.allowed_hours is None or in_window(a.allowed_hours, tz, now)
    ]
    if not in_hours:
        parts = [
            f"{a.id} allows lone work only {_window_text(a.allowed_hours)}"
            for a in allowed
            if a.allowed_hours is not None
        ]
        return Denied("outside_allowed_hours", "; ".join(parts) + ".")

    # 8: the worker's training
    trained_until = person.hse_training_until
    if trained_until is None:
        return Denied(
            "training_expired",
            f"{person.name} has no recorded HSE training; lone work needs current training.",
        )
    if trained_until < today:
        return Denied(
            "training_expired",
            f"The HSE training of {person.name} expired on {trained_until.isoformat()}.",
        )

    # 9: a JAA when the assessment requires one
    holder_device = cfg.device_of(person.id)
    jaa_online = holder_device is not None and (
        (source == "device" and device_id == holder_device.id)
        or _fresh(device_last_seen.get(holder_device.id), now, cfg.timing.device_timeout)
    )
    # check-ins are asked of the JAA: an assessment with a check-in interval needs one too,
    # or the first checkin_due would go nowhere and end in a certain missed_checkin alarm
    usable = [a for a in in_hours if jaa_online or not _needs_jaa(a)]
    if not usable:
        needs = (
            "requires a lone-work alarm (JAA)"
            if any(a.jaa_required for a in in_hours)
            else "asks for check-ins, which are made with the lone-work alarm (JAA)"
        )
        if holder_device is None:
            return Denied(
                "jaa_required",
                f"Risk assessment {_ids(in_hours)} {needs}, and {person.name} has none registered.",
            )
        return Denied(
            "jaa_required",
            f"Risk assessment {_ids(in_hours)} {needs}, and alarm "
            f"{holder_device.id} has not been heard from recently: switch it on and try again.",
        )

    # 10: somebody must be there to help
    chain = cfg.chain(location.escalation)
    if chain is None or not first_step_has_someone(cfg, chain, person.id, now):
        return Denied(
            "no_assistance",
            f"Nobody is on duty to respond to an alarm from {location.name} right now, "
            "so lone work is not allowed.",
        )

    chosen = usable[0]
    return Started(
        person_id=person.id,
        location_id=location.id,
        assessment_id=chosen.id,
        checkin_interval=chosen.checkin_interval,
        ends_at=now.astimezone(dt.UTC) + _session_length(chosen.max_duration, planned_minutes),
    )


def _needs_jaa(a: Assessment) -> bool:
    return a.jaa_required or a.checkin_interval is not None


def _fresh(last_seen: dt.datetime | None, now: dt.datetime, timeout: dt.timedelta) -> bool:
    if last_seen is None:
        return False
    require_aware(last_seen, "device_last_seen")
    return now - last_seen <= timeout


def _session_length(max_duration: dt.timedelta, planned_minutes: int | None) -> dt.timedelta:
    # compare in seconds first: a huge planned_minutes would overflow timedelta
    if planned_minutes is None or planned_minutes * 60 >= max_duration.total_seconds():
        return max_duration
    return dt.timedelta(minutes=planned_minutes)
