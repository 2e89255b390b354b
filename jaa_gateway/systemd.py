"""systemd's notify protocol (Type=notify): readiness, stopping, the watchdog."""

from __future__ import annotations

import asyncio
import os
import socket


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) something; a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


async def watchdog() -> None:
    """Ping systemd's watchdog at half its period (WATCHDOG_USEC), or idle when none is asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec or not usec.isdigit():
        await asyncio.Event().wait()  # no watchdog asked for: idle (a return is a fault)
        return
    period = int(usec) / 2e6
    while True:
        # sent from the event loop itself: a blocked loop stops the pings and gets killed
        sd_notify("WATCHDOG=1")
        await asyncio.sleep(period)
