"""Console logins (CONTRACT §9): sessions in a cookie, CSRF tokens, and the login throttle.

Sessions live in this node's memory: a restart or a fail-over to another node asks the guards
to log in again (nothing else is lost: the alarms are in the store). Every check takes `now`
(epoch seconds), so tests drive expiry and the throttle at exact instants.
"""

from __future__ import annotations

import hmac
import math
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

COOKIE: Final = "jaa_console"
LOGIN_COOKIE: Final = "jaa_console_login"  # the login form's own CSRF token (double submit)
COOKIE_PATH: Final = "/console"
# a session lasts one long shift; then the guard logs in again
SESSION_LIFETIME_S: Final = 12 * 3600.0
# login failures: this many within the window blocks further tries for the rest of it
PERSON_FAILURES: Final = 5
ADDRESS_FAILURES: Final = 20
FAILURE_WINDOW_S: Final = 15 * 60.0
# memory bounds: the oldest entries go first (an attacker cannot grow them without end)
MAX_SESSIONS: Final = 10_000
MAX_THROTTLE_KEYS: Final = 50_000
# the page loads nothing from elsewhere and runs no inline script: an injected tag is inert
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def same(a: str | None, b: str | None) -> bool:
    """Constant-time equality of two tokens; a missing one never matches."""
    if not a or not b:
        return False
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass
class ConsoleSession:
    token: str
    person: str
    csrf: str
    created: float
    expires: float


class Sessions:
    def __init__(self, lifetime_s: float = SESSION_LIFETIME_S) -> None:
        self.lifetime_s = lifetime_s
        self._by_token: OrderedDict[str, ConsoleSession] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_token)

    def create(self, person: str, now: float) -> ConsoleSession:
        s = ConsoleSession(new_token(), person, new_token(), now, now + self.lifetime_s)
        self._by_token[s.token] = s
        while len(self._by_token) > MAX_SESSIONS:
            self._by_token.popitem(last=False)
        return s

    def get(self, token: str | None, now: float) -> ConsoleSession | None:
        if not token:
            return None
        s = self._by_token.get(token)
        if s is None:
            return None
        if now >= s.expires:
            del self._by_token[token]
            return None
        return s

    def drop(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)

    def drop_person(self, person: str) -> None:
        for token in [t for t, s in self._by_token.items() if s.person == person]:
            del self._by_token[token]


@dataclass
class _Failures:
    times: list[float] = field(default_factory=list)


class Throttle:
    """Failed logins per person id and per address: past the limit within the window, a login
    is refused (429) before its password is even checked, until the oldest failure ages out."""

    def __init__(
        self,
        person_limit: int = PERSON_FAILURES,
        address_limit: int = ADDRESS_FAILURES,
        window_s: float = FAILURE_WINDOW_S,
    ) -> None:
        self.limits = {"person": person_limit, "address": address_limit}
        self.window_s = window_s
        self._seen: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def _recent(self, key: tuple[str, str], now: float) -> list[float]:
        f = self._seen.get(key)
        if f is None:
            return []
        f.times = [t for t in f.times if t > now - self.window_s]
        if not f.times:
            del self._seen[key]
        return f.times

    def retry_after(self, person: str, address: str, now: float) -> int | None:
        """Seconds until a login may be tried again, or None when it may be tried now."""
        waits: list[float] = []
        for kind, value in (("person", person), ("address", address)):
            times = self._recent((kind, value), now)
            if len(times) >= self.limits[kind]:
                waits.append(times[-self.limits[kind]] + self.window_s - now)
        if not waits:
            return None
        return max(1, math.ceil(max(waits)))

    def failed(self, person: str, address: str, now: float) -> None:
        for key in (("person", person), ("address", address)):
            f = self._seen.setdefault(key, _Failures())
            f.times.append(now)
            self._seen.move_to_end(key)
        while len(self._seen) > MAX_THROTTLE_KEYS:
            self._seen.popitem(last=False)

    def succeeded(self, person: str) -> None:
        # the address keeps its count: one good login must not reopen it to a password spray
        self._seen.pop(("person", person), None)
