"""Parse a guard's SMS reply: "OK 1234" acknowledges alarm 1234, a bare "OK" the one open alarm.

Strict on purpose: an acknowledgement stops the calls, so only a reply that is plainly "OK" with
an optional 4-digit code counts. Case, spacing and obvious punctuation ("ok, 1234", "OK #1234",
"OK 1234!") are forgiven; a code inside other text, or a code of the wrong length, is not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

# Longer than any sane "OK 1234" reply, however punctuated; cheap rejection of long bodies.
_MAX_REPLY: Final = 40

# Explicit [oO][kK] and [0-9]: re.IGNORECASE would also accept the Kelvin sign, and \\d any
# script's digits.
_REPLY_RE: Final = re.compile(r"[oO][kK][\s,.:;#\-]*(?P<code>[0-9]{4})?[\s.!]*")


@dataclass(frozen=True, slots=True)
class SmsReply:
    code: str | None


def parse_sms_reply(body: str) -> SmsReply | None:
    """Return the reply's code (None for a bare OK), or None when it is not an acknowledgement."""
    if not isinstance(body, str):
        return None
    text = body.strip()
    if len(text) > _MAX_REPLY:
        return None
    m = _REPLY_RE.fullmatch(text)
    if m is None:
        return None
    return SmsReply(code=m.group("code"))
