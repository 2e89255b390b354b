"""A fixed-offset time zone made for a test, so a wall-clock HH:MM falls a few seconds away.

Roster times are HH:MM in the site's zone (CONTRACT §2), and every real zone's offset today is a
whole number of minutes, so a shift boundary is always on a real minute boundary: a test would
wait up to a minute for one. Instead the test gives the site a zone of its own whose offset (in
whole seconds, like the local mean time of old zones) puts the wall clock's "12:00" a few
seconds from now. Nothing in the daemon is faked: every part of it (engine, deadlines, outbox,
MQTT edge, HTTP) keeps reading the one real clock; only the site's zone is unusual.

The zone is a TZif file (RFC 8536, version 1: one local time type, no transitions) in a
directory that `zoneinfo.reset_tzpath` adds for the test and removes afterwards.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct
import zoneinfo
from collections.abc import Iterator
from pathlib import Path

DAY = 86_400
_names = itertools.count(1)


def _tzif(utoff: int, abbr: bytes = b"TST") -> bytes:
    # header: magic, version 1, 15 reserved bytes, then the six counts (RFC 8536 §3.1):
    # isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt
    header = b"TZif" + b"\0" + b"\0" * 15 + struct.pack(">6l", 0, 0, 0, 0, 1, len(abbr) + 1)
    return header + struct.pack(">lBB", utoff, 0, 0) + abbr + b"\0"


def offset_for(wall_seconds_of_day: int, at_epoch: int) -> int:
    """The offset (seconds, within +-12 h) at which epoch second `at_epoch` shows that wall time."""
    off = (wall_seconds_of_day - at_epoch) % DAY
    return off - DAY if off >= DAY // 2 else off


@contextlib.contextmanager
def fixed_zone(directory: Path, utoff: int) -> Iterator[str]:
    """A zone key, known to zoneinfo while the context lasts, whose offset is `utoff` s."""
    key = f"jaatest/fixed-{os.getpid()}-{next(_names)}"
    path = directory / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_tzif(utoff))
    before = zoneinfo.TZPATH
    zoneinfo.reset_tzpath([str(directory.resolve()), *before])
    try:
        yield key
    finally:
        zoneinfo.reset_tzpath(before)
