"""The demo's console: one readable, timestamped line per thing that happened.

Times are seconds since the demo started. Columns: when, who acted, over which channel, what.
The console notifier's output (the SMS and calls the gateway "sends") is captured here too, so
the story can check what was sent to whom.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jaa_gateway.config import Config

WHO_WIDTH = 18
VIA_WIDTH = 5
INDENT = " " * (9 + WHO_WIDTH + VIA_WIDTH + 2)

# what jaa_gateway.notify.console.ConsoleNotifier writes
_NOTIFY_RE = re.compile(r"^(SMS |CALL) to (\+\d+) \[([^\]]+)\]: ?(.*)$")


def _print(text: str) -> None:
    print(text, flush=True)


@dataclass
class Notification:
    channel: str  # "sms" | "call"
    to: str
    sid: str
    at: float
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


class Timeline:
    def __init__(
        self,
        cfg: Config | None = None,
        write: Callable[[str], None] = _print,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._write = write
        self._clock = clock
        self.t0 = clock()
        self.notifications: list[Notification] = []
        self.scene_no = 0

    def now(self) -> float:
        return self._clock() - self.t0

    def since(self, at: float) -> float:
        """A time.monotonic() instant as seconds since the start."""
        return at - self.t0

    # ------------------------------------------------------------------ output

    def raw(self, text: str = "") -> None:
        self._write(text)

    def header(self) -> None:
        self._write(f"{'time':>7}  {'who':<{WHO_WIDTH}} {'via':<{VIA_WIDTH}}  what")

    def scene(self, title: str) -> None:
        self.scene_no += 1
        head = f"-- {self.scene_no}. {title} "
        self._write("")
        self._write(head + "-" * max(3, 96 - len(head)))

    def line(self, who: str, via: str, what: str, at: float | None = None) -> None:
        t = self.now() if at is None else self.since(at)
        first, *rest = what.splitlines() or [""]
        who = who if len(who) <= WHO_WIDTH else who[: WHO_WIDTH - 1] + "…"
        self._write(f"{t:6.2f}s  {who:<{WHO_WIDTH}} {via:<{VIA_WIDTH}}  {first}")
        for more in rest:
            self._write(INDENT + more)

    def note(self, text: str) -> None:
        """The narrator: what is about to happen, or why."""
        self._write(INDENT + "# " + text)

    # ------------------------------------------------------------------ people

    def person_label(self, phone: str) -> str:
        p = self.cfg.person_by_phone(phone) if self.cfg is not None else None
        return f"{p.name} {phone}" if p is not None else phone

    # ------------------------------------------------------------------ console notifier

    def notify_write(self, line: str) -> None:
        """`write` of the gateway's console notifier: each SMS / call becomes a timeline line."""
        m = _NOTIFY_RE.match(line)
        if m is None:
            if self.notifications and line.startswith("     "):
                # a further line of the SMS just printed
                self.notifications[-1].lines.append(line.strip())
                self._write(INDENT + "  " + line.strip())
            else:
                self.line("gateway", "?", line)
            return
        kind, to, sid, text = m.groups()
        channel = "sms" if kind.strip() == "SMS" else "call"
        n = Notification(channel=channel, to=to, sid=sid, at=self._clock(), lines=[text])
        self.notifications.append(n)
        self.line("gateway", channel, f"-> {self.person_label(to)}: {text}")

    def sms(self) -> list[Notification]:
        return [n for n in self.notifications if n.channel == "sms"]

    def calls(self) -> list[Notification]:
        return [n for n in self.notifications if n.channel == "call"]

    # ------------------------------------------------------------------ log lines

    def log_line(self, level: str, event: str, kv: dict[str, Any]) -> None:
        pairs = " ".join(f"{k}={v}" for k, v in kv.items())
        short = {"warning": "warn", "critical": "crit"}.get(level, level)
        self.line("log", short[:VIA_WIDTH], f"{event} {pairs}".rstrip())


def table(rows: list[tuple[str, str]], title: str) -> list[str]:
    """A two-column text table."""
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    rule = "+" + "-" * (width + 2) + "+" + "-" * (vwidth + 2) + "+"
    out = [title, rule]
    out += [f"| {k:<{width}} | {v:<{vwidth}} |" for k, v in rows]
    out.append(rule)
    return out
