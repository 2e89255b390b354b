"""Retry policy for notifications: pure functions, so the outbox decides *when* and tests decide
the randomness. The delay is the core's one backoff (`jaa_gateway.backoff`), with full jitter."""

from __future__ import annotations

from jaa_gateway.backoff import backoff_delay
from jaa_gateway.notify.base import TransportError

__all__ = ["backoff_delay", "is_retryable"]


def is_retryable(err: TransportError) -> bool:
    """Whether another attempt of the same request may succeed."""
    return not err.permanent
