"""The leader's lease (CONTRACT §8, issue 13): pure rules, time as an argument.

The lease is one row in the database: the node that holds it, a fencing token, and an expiry
set by the *database's* clock (``now() + lease``) on every acquire and renewal. A standby takes
the lease only once that expiry has passed, and the token goes up by one with every takeover.

A node never reads the database's clock to decide whether it may act. It counts on its own
monotonic clock from the instant it *sent* the renewal that succeeded: the database set the
expiry at or after that instant, so ``sent_at + lease`` is never later than the real expiry
(clock rates on two machines differ by parts per million, not by the margins used here). It
acts only until ``sent_at + ACT_FRACTION * lease``, which leaves a quarter of the lease to stop
(disconnect MQTT, cancel timers and sends) before any standby may take over.

A paused process (SIGSTOP, a long GC, a VM migration) wakes with its monotonic clock advanced:
`may_act` is false at once, whatever its loops have not yet noticed. What it might still have in
flight is stopped by the fence in the database (`store/leases.py`): every transaction that
writes checks the token under a row lock, so it cannot commit once another node holds the lease.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# renewals per lease: a renewal or two may fail (a slow statement, a loaded box) and the leader
# still acts on
RENEWALS_PER_LEASE = 4
# the leader acts for this share of the lease after the renewal that succeeded was sent
ACT_FRACTION = 0.75

Role = Literal["leader", "standby"]


@dataclass(frozen=True)
class Timing:
    lease: float  # seconds

    def __post_init__(self) -> None:
        if not self.lease > 0:
            raise ValueError("the lease must be a positive number of seconds")

    @property
    def renew_every(self) -> float:
        """How often the leader renews and a standby tries to take over."""
        return self.lease / RENEWALS_PER_LEASE

    @property
    def act_for(self) -> float:
        """How long after a successful renewal was sent the leader may act."""
        return self.lease * ACT_FRACTION

    @property
    def stuck_tx_after(self) -> float:
        """The server ends a session idle inside a transaction after this long (seconds): a
        paused leader must not hold row locks (its fence included) that block the takeover."""
        return self.lease / 2


@dataclass(frozen=True)
class Held:
    """This node holds the lease: `token`, confirmed by a statement sent at `sent_at`
    (local monotonic seconds)."""

    token: int
    sent_at: float


@dataclass(frozen=True)
class Seen:
    """The lease row as the database answered an attempt to acquire or renew it."""

    node: str | None
    token: int
    mine: bool  # the UPDATE matched: this node holds it now
    live: bool  # unexpired by the database's clock


def act_until(held: Held, timing: Timing) -> float:
    return held.sent_at + timing.act_for


def may_act(held: Held | None, now: float, timing: Timing) -> bool:
    """Whether this node may act (MQTT, timers, sends, writes) at local monotonic `now`."""
    return held is not None and now < act_until(held, timing)


def offered_token(held: Held | None, now: float, timing: Timing) -> int | None:
    """The token to renew with. Only a lease this node may still act on is renewed; once it
    has stepped down it takes the lease again only after expiry, with a new token, like any
    standby (whatever its own transactions from before might still try)."""
    if held is None or not may_act(held, now, timing):
        return None
    return held.token


def after_attempt(
    held: Held | None, sent_at: float, seen: Seen | None, timing: Timing
) -> Held | None:
    """What this node holds after an attempt sent at `sent_at`.

    `seen` is None when the attempt failed (the database unreachable, a timeout): nothing is
    confirmed, the old lease keeps its old local deadline. An answer that it is not ours ends
    ours at once.
    """
    if seen is None:
        return held
    if not seen.mine:
        return None
    if held is not None and held.token == seen.token and held.sent_at > sent_at:
        return held  # an older answer arriving late never moves the deadline back
    return Held(seen.token, sent_at)


def next_attempt(sent_at: float, timing: Timing) -> float:
    """When to try again after an attempt sent at `sent_at` (leader or standby alike)."""
    return sent_at + timing.renew_every


def leader_of(
    seen: Seen | None, node: str, held: Held | None, now: float, timing: Timing
) -> str | None:
    """Who leads, for /healthz and the 503 body: this node while it may act, else the row's
    holder while the row is live, else nobody (None)."""
    if may_act(held, now, timing):
        return node
    if seen is not None and seen.live and seen.node != node:
        return seen.node
    return None


def role(held: Held | None, now: float, timing: Timing) -> Role:
    return "leader" if may_act(held, now, timing) else "standby"
