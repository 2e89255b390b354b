"""Notification transports behind one protocol: `Notifier` (SMS and calls).

`make_notifier(config)` picks the transport named by ``[notify] driver``. The Twilio module is
imported only when it is used, so the console path and the protocol stay light.
"""

from __future__ import annotations

from collections.abc import Callable

from jaa_gateway.config import Config
from jaa_gateway.notify.base import Notifier, SendResult, TransportError
from jaa_gateway.notify.console import ConsoleNotifier
from jaa_gateway.notify.retry import backoff_delay, is_retryable

__all__ = [
    "ConsoleNotifier",
    "Notifier",
    "SendResult",
    "TransportError",
    "backoff_delay",
    "is_retryable",
    "make_notifier",
    "start_notifier",
]


def make_notifier(config: Config, *, write: Callable[[str], None] | None = None) -> Notifier:
    """The notifier for ``config``; ``write`` redirects the console notifier's output."""
    if config.notify.driver == "console":
        return ConsoleNotifier() if write is None else ConsoleNotifier(write)
    if config.twilio is None:
        raise ValueError('[notify] driver = "twilio" needs a [twilio] section')
    from jaa_gateway.notify.twilio import TwilioNotifier

    return TwilioNotifier(config.twilio)


async def start_notifier(config: Config, *, write: Callable[[str], None] | None = None) -> Notifier:
    """`make_notifier`, then (Twilio) build the HTTP client and load twilio's lazily imported
    modules now, inside the running loop, so the first alarm SMS does not wait for them."""
    notifier = make_notifier(config, write=write)
    start = getattr(notifier, "start", None)
    if start is not None:
        await start()
    return notifier
