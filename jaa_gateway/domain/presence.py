"""Presence: is a silent device its own problem, or one of a common cause? (CONTRACT §4)

Pure: every function takes the instants it needs; nothing here reads a clock.

A *watch* is a session whose device is monitored; its ``since`` is the instant its
device_timeout counts from (the device last heard, the session's start, or contact's return,
whichever is latest). A watch *lapses* when ``now - since >= timeout``.

The rules, and why:

* **Mass silence.** When a watch lapses while the broker is reachable, the other watched
  devices are looked at. One counts as *silent* when it has not been heard for more than half a
  device_timeout: a working device is heard far more often than that (a heartbeat every third
  of device_timeout or so), and a device that fell silent together with the lapsing one, within
  the same device_timeout, has by then been silent for most of it. When at least three are
  silent and they are more than half of the watched, it is one common cause (a network cut, an
  access point down): one ``contact_lost`` instead of a ``device_offline`` per worker.
  Otherwise the lapsing device is on its own: ``device_offline`` at once.
* **Broker away.** While the gateway cannot reach the broker it hears nobody, so no
  ``device_offline`` is raised at all. ``contact_lost`` is raised when a watched device's
  device_timeout has run out during the outage, but not before the outage has lasted half a
  device_timeout: a blip of a second or two pages nobody, and a device that was already
  silent before the blip gets its own ``device_offline`` after it (see `after_return`).
* **Contact returns.** After a ``contact_lost`` every watched device gets a fresh
  device_timeout from the return. After a short outage that raised nothing, the time the broker
  was away does not count as a device's silence: each watch moves on by that much, no more, so
  a broker that flaps cannot keep postponing a dead device's alarm for ever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

# at least this many silent devices, and more than half of the watched, make a common cause
MIN_COMMON = 3
# how long after a reconnect the broker's queued events have to arrive (at most a quarter of
# device_timeout)
SETTLE_S = 2.0
# deadline comparisons: a timer firing a hair early is not early
EPS = 0.001


class Cause(StrEnum):
    BROKER = "broker"  # the gateway cannot reach the broker
    SILENCE = "silence"  # most watched devices fell silent together


@dataclass(frozen=True)
class Offline:
    """This device is on its own: raise its device_offline now."""


@dataclass(frozen=True)
class Hold:
    """Not yet: look again at `until` (None: when contact returns)."""

    until: float | None


@dataclass(frozen=True)
class Common:
    """A common cause: one contact_lost, no device_offline for this session."""

    cause: Cause
    unwatched: int


Verdict = Offline | Hold | Common


def is_silent(since: float, now: float, timeout: float) -> bool:
    """Not heard for more than half a device_timeout."""
    return now - since > timeout / 2


def silent_count(sinces: Iterable[float], now: float, timeout: float) -> int:
    return sum(1 for s in sinces if is_silent(s, now, timeout))


def is_mass_silence(n_silent: int, n_watched: int) -> bool:
    """At least MIN_COMMON silent, and more than half of those watched."""
    return n_silent >= MIN_COMMON and 2 * n_silent > n_watched


def contact_lost_due(sinces: Iterable[float], outage_start: float, timeout: float) -> float:
    """When, during a broker outage that began at `outage_start`, contact_lost is raised: once
    the first watched device's device_timeout has run out, and not before the outage has lasted
    half a device_timeout."""
    first = min(sinces, default=outage_start) + timeout
    return max(first, outage_start + timeout / 2)


def judge(
    sinces: Mapping[str, float],
    session: str,
    *,
    now: float,
    timeout: float,
    broker_up: bool,
    outage_start: float | None,
    episode: bool,
) -> Verdict:
    """The verdict on the lapsed watch `session` (one of `sinces`, the watched sessions).

    `episode`: a common cause is already in force (its contact_lost raised); the watch waits
    for contact to return."""
    if session not in sinces:
        raise ValueError(f"session {session!r} is not watched")
    if timeout <= 0:
        raise ValueError("device_timeout must be positive")
    if now - sinces[session] < timeout - EPS:
        raise ValueError(f"the watch of {session!r} has not lapsed at {now}")
    if episode:
        return Hold(None)
    if not broker_up:
        start = now if outage_start is None else outage_start
        at = contact_lost_due(sinces.values(), start, timeout)
        if now + EPS < at:
            return Hold(at)
        return Common(Cause.BROKER, len(sinces))
    n = silent_count(sinces.values(), now, timeout)
    if is_mass_silence(n, len(sinces)):
        return Common(Cause.SILENCE, n)
    return Offline()


def unwatched(sinces: Iterable[float], *, now: float, timeout: float, broker_up: bool) -> int:
    """How many watched sessions are unwatched right now (what a contact_lost alarm says):
    every one while the broker is away, the silent ones during a mass silence, else none."""
    values = list(sinces)
    if not broker_up:
        return len(values)
    n = silent_count(values, now, timeout)
    return n if is_mass_silence(n, len(values)) else 0


def settle(timeout: float) -> float:
    return min(SETTLE_S, timeout / 4)


def after_return(
    sinces: Mapping[str, float],
    *,
    outage_start: float | None,
    now: float,
    timeout: float,
    contact_lost: bool,
    first_connect: bool = False,
) -> dict[str, float]:
    """Each watch's new `since` when contact returns at `now`.

    After a contact_lost (`contact_lost`): every device gets a fresh device_timeout from now.
    Otherwise (a broker outage too short to raise anything): the time the broker was away does
    not count as silence. On the first connect after a start (`first_connect`) every device
    also has at least `settle` to be heard: what the broker queued for us while the gateway was
    down arrives just after the connect."""
    if contact_lost:
        return {s: max(v, now) for s, v in sinces.items()}
    away = max(0.0, now - outage_start) if outage_start is not None else 0.0
    floor = now + settle(timeout) - timeout if first_connect else float("-inf")
    return {s: max(v + away, floor) for s, v in sinces.items()}
