"""structlog set-up: JSON lines for `run`, a readable console for `demo`."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, TextIO, cast

import structlog


class _LossyStdout:
    """The current sys.stdout for log lines; a line that cannot be written is dropped.

    A closed or broken stdout (the journal restarted, the reader of a pipe gone) raises on every
    write, and the log call would raise inside whatever logged: the MQTT reader, an alarm step.
    Losing a log line is better than stopping alarms.
    """

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except (OSError, ValueError):
            return 0

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()


def configure(fmt: str = "json", level: int = logging.INFO) -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stdout.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _LossyStdout())),
        cache_logger_on_first_use=False,
    )
    # libraries that log through stdlib logging (aiomqtt, apscheduler, aiohttp): warnings only
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s"
    )
