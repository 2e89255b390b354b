"""Backoff for notification retries: bounded, growing, jittered."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaa_gateway.notify.base import TransportError
from jaa_gateway.notify.retry import backoff_delay, is_retryable

attempts = st.integers(min_value=1, max_value=10_000)
bases = st.floats(min_value=0.001, max_value=60, allow_nan=False)
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(attempt=attempts, base=bases, extra=st.floats(min_value=0, max_value=600), r=unit)
def test_delay_is_within_the_jitter_window(
    attempt: int, base: float, extra: float, r: float
) -> None:
    cap = base + extra
    delay = backoff_delay(attempt, base=base, cap=cap, rand=lambda: r)
    ceiling = min(cap, base * 2.0 ** min(attempt - 1, 62))
    assert 0.0 <= delay <= cap
    assert delay <= ceiling * (1 + 1e-12)
    assert delay == pytest.approx(r * ceiling)


@given(attempt=st.integers(min_value=1, max_value=200), r=unit)
def test_delay_never_shrinks_as_attempts_grow(attempt: int, r: float) -> None:
    d1 = backoff_delay(attempt, rand=lambda: r)
    d2 = backoff_delay(attempt + 1, rand=lambda: r)
    assert d1 <= d2


def test_ceiling_doubles_until_the_cap() -> None:
    top = [backoff_delay(a, base=1.0, cap=30.0, rand=lambda: 1.0) for a in range(1, 8)]
    assert top == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_huge_attempt_numbers_stay_finite() -> None:
    assert backoff_delay(10**9, base=0.5, cap=20.0, rand=lambda: 1.0) == 20.0


def test_jitter_spreads_retries() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(5, base=1.0, cap=30.0, rand=rng.random) for _ in range(2000)]
    assert min(delays) < 1.0 and max(delays) > 15.0
    assert statistics.mean(delays) == pytest.approx(8.0, rel=0.1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attempt": 0},
        {"attempt": -3},
        {"attempt": 1, "base": 0.0},
        {"attempt": 1, "base": -1.0},
        {"attempt": 1, "base": 10.0, "cap": 5.0},
        {"attempt": 1, "base": float("inf"), "cap": float("inf")},
        {"attempt": 1, "base": float("nan")},
        {"attempt": 1, "rand": lambda: 1.5},
        {"attempt": 1, "rand": lambda: -0.1},
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"rand": lambda: 0.5} | kwargs
    with pytest.raises(ValueError):
        backoff_delay(**args)  # type: ignore[arg-type]


def test_is_retryable_follows_permanence() -> None:
    assert is_retryable(TransportError("HTTP 503", permanent=False, status=503))
    assert not is_retryable(TransportError("21211", permanent=True, status=400, code=21211))
