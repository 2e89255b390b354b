"""APScheduler for the periodic housekeeping jobs.

Per-session and per-alarm deadlines are not APScheduler jobs: they live in the core's heap
(`jaa_gateway/deadlines.py`), because one job per session is skipped as "missed" under load
(STYLE.md's measurement).
"""

from __future__ import annotations

from apscheduler.schedulers.asyncio import AsyncIOScheduler


def housekeeping_scheduler() -> AsyncIOScheduler:
    """APScheduler for periodic jobs (misfire_grace_time=None: late is better than skipped)."""
    return AsyncIOScheduler(
        job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1}
    )
