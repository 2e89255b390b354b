"""The one backoff: exact delays for both of its callers' ranges (notify: full jitter; MQTT
reconnect: half of each pause kept)."""

from __future__ import annotations

import pytest

from jaa_gateway.adapters.mqtt import BACKOFF_BASE, BACKOFF_CAP, reconnect_delay
from jaa_gateway.backoff import backoff_delay


@pytest.mark.parametrize(
    ("attempt", "r", "floor", "expected"),
    [
        (1, 0.0, 0.0, 0.0),
        (1, 1.0, 0.0, 1.0),
        (3, 0.5, 0.0, 2.0),
        (6, 1.0, 0.0, 30.0),  # 32 capped
        (1, 0.0, 0.5, 0.5),
        (1, 1.0, 0.5, 1.0),
        (4, 0.5, 0.5, 6.0),  # d = 8, in [4, 8]
        (10, 0.0, 0.5, 15.0),  # d capped at 30, never below half of it
        (3, 0.25, 1.0, 4.0),  # floor 1: no jitter at all
    ],
)
def test_exact_delays(attempt: int, r: float, floor: float, expected: float) -> None:
    got = backoff_delay(attempt, base=1.0, cap=30.0, floor=floor, rand=lambda: r)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize("floor", [-0.1, 1.5, float("nan")])
def test_floor_outside_zero_to_one_is_refused(floor: float) -> None:
    with pytest.raises(ValueError, match="floor"):
        backoff_delay(1, floor=floor, rand=lambda: 0.5)


def test_reconnect_keeps_its_range() -> None:
    """MQTT: first pause 0.1-0.2 s, doubling, never more than the cap, never under half of it."""
    assert (BACKOFF_BASE, BACKOFF_CAP) == (0.2, 5.0)
    for attempt in range(0, 40):
        d = min(BACKOFF_CAP, BACKOFF_BASE * 2.0**attempt)
        assert reconnect_delay(attempt, lambda: 0.0) == pytest.approx(d / 2)
        assert reconnect_delay(attempt, lambda: 1.0) == pytest.approx(d)
