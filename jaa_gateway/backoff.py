"""Exponential backoff with jitter: the one formula behind every retry the gateway waits for.

Pure (``rand`` is given), so callers decide the randomness and tests the exact delays. The
notification retries use full jitter (``floor=0``); the MQTT reconnect keeps half of each
pause (``floor=0.5``), so a gateway never hammers a broker that has just come back.
"""

from __future__ import annotations

import math
from collections.abc import Callable

# 2**62 seconds is far beyond any cap; limiting the exponent keeps the arithmetic finite.
_MAX_EXPONENT = 62


def backoff_delay(
    attempt: int,
    *,
    base: float = 1.0,
    cap: float = 30.0,
    floor: float = 0.0,
    rand: Callable[[], float],
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    Uniform in ``[floor * d, d]`` with ``d = min(cap, base * 2**(attempt-1))``. With the default
    ``floor=0`` ("full jitter") many failures together (a Twilio outage, a 429 burst) spread their
    retries instead of returning in lockstep, and the first retry may go out almost at once.
    ``rand`` returns a float in [0, 1], e.g. ``random.random``.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts retries from 1, got {attempt}")
    if not (math.isfinite(base) and math.isfinite(cap)):
        raise ValueError(f"base and cap must be finite, got base={base}, cap={cap}")
    if not base > 0:
        raise ValueError(f"base must be a positive number of seconds, got {base}")
    if not cap >= base:
        raise ValueError(f"cap ({cap}) must be at least base ({base})")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor is a fraction of the pause in [0, 1], got {floor}")
    r = rand()
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"rand() must return a number in [0, 1], got {r}")
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
    return min(cap, ceiling * (floor + (1.0 - floor) * r))
