"""Console passwords (CONTRACT §9): bcrypt hashes made by `jaa-gateway hash-password`.

Hashing and checking are CPU-bound on purpose (cost 12: ~0.2 s); callers on the event loop run
`check` in a thread.
"""

from __future__ import annotations

import re
from typing import Final

import bcrypt

COST: Final = 12
MIN_LENGTH: Final = 10
# bcrypt reads only the first 72 bytes; a longer password would be silently cut
MAX_BYTES: Final = 72
HASH_RE: Final = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")
# checked for an unknown person too, so the answer takes as long as for a known one
_DUMMY: Final = b"$2b$12$CejGYG3oCW2xlpZG0rgXu.mAwQ2M56KIBsl/tXVwRH6KQZDCqg.li"


class BadPassword(ValueError):
    """A password that may not be used (too short, too long); the message says why."""


def validate(password: str) -> bytes:
    if len(password) < MIN_LENGTH:
        raise BadPassword(f"a console password must be at least {MIN_LENGTH} characters long")
    raw = password.encode("utf-8")
    if len(raw) > MAX_BYTES:
        raise BadPassword(f"a console password must be at most {MAX_BYTES} bytes (UTF-8)")
    return raw


def hash_password(password: str, cost: int = COST) -> str:
    return bcrypt.hashpw(validate(password), bcrypt.gensalt(cost)).decode("ascii")


def check(password: str, hashed: str | None) -> bool:
    """Whether ``password`` matches ``hashed``; with no hash, a dummy check and False."""
    raw = password.encode("utf-8", "replace")
    if len(raw) > MAX_BYTES or not password:
        raw = raw[:MAX_BYTES]
        hashed = None
    target = hashed.encode("ascii") if hashed is not None else _DUMMY
    try:
        ok = bcrypt.checkpw(raw or b"-", target)
    except ValueError:
        return False
    return ok and hashed is not None
