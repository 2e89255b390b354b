"""Debian's Chromium driven by Playwright for the console's browser tests.

Playwright's own browser download is not used (nor reachable here): the tests launch
/usr/bin/chromium. Where Chromium or Playwright cannot be had, the browser tests skip with the
reason, except under CI=true, where that is a failure (as for PostgreSQL).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and the browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason}")


def chromium_path() -> str:
    """The Chromium to drive, or skip / fail with the reason."""
    if importlib.util.find_spec("playwright") is None:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    for candidate in (
        os.environ.get("JAA_CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    _unavailable("no chromium binary (apt-get install -y chromium; `make test` does it as root)")
    raise AssertionError("unreachable")
