"""Devices heard: last seen, battery and position, kept in memory and stored in batches (a
heartbeat must not cost a transaction; at most a few seconds of last-seen times are at risk)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from jaa_gateway.config import Config
from jaa_gateway.domain.events import DeviceEvent
from jaa_gateway.store import queries as q
from jaa_gateway.store.db import Conn, Store
from jaa_gateway.store.schema import devices


@dataclass
class DeviceState:
    last_seen: float
    battery: float | None = None
    lat: float | None = None
    lon: float | None = None
    position_at: float | None = None


class Devices:
    def __init__(self, cfg: Config, store: Store) -> None:
        self._cfg = cfg
        self._store = store
        self.states: dict[str, DeviceState] = {}
        self._dirty: set[str] = set()

    async def load(self, conn: Conn) -> None:
        for r in (await conn.execute(select(devices))).mappings():
            self.states[r["id"]] = DeviceState(
                last_seen=r["last_seen"],
                battery=r["battery"],
                lat=r["lat"],
                lon=r["lon"],
                position_at=r["position_at"],
            )

    def forget(self) -> None:
        """Hot standby: a node that steps down drops what it heard (`load` reads it back)."""
        self.states.clear()
        self._dirty.clear()

    def get(self, device_id: str | None) -> DeviceState | None:
        return self.states.get(device_id) if device_id else None

    def last_seen(self, device_id: str) -> float | None:
        st = self.states.get(device_id)
        return st.last_seen if st else None

    def alive(self, device_id: str, now: dt.datetime) -> bool:
        st = self.states.get(device_id)
        timeout = self._cfg.timing.device_timeout.total_seconds()
        return st is not None and now.timestamp() - st.last_seen <= timeout

    def touch(self, ev: DeviceEvent) -> None:
        ts = ev.received_at.timestamp()
        st = self.states.get(ev.device_id)
        if st is None:
            st = self.states[ev.device_id] = DeviceState(last_seen=ts)
        st.last_seen = max(st.last_seen, ts)
        if ev.battery is not None:
            st.battery = ev.battery
        if ev.lat is not None and ev.lon is not None:
            st.lat, st.lon, st.position_at = ev.lat, ev.lon, ts
        self._dirty.add(ev.device_id)

    async def flush(self) -> int:
        """Write dirty device last-seen times (batched: at most a few seconds are at risk)."""
        if not self._dirty:
            return 0
        dirty, self._dirty = self._dirty, set()
        rows = []
        for d in dirty:
            st = self.states[d]
            rows.append(
                {
                    "id": d,
                    "last_seen": st.last_seen,
                    "battery": st.battery,
                    "lat": st.lat,
                    "lon": st.lon,
                    "position_at": st.position_at,
                }
            )
        try:
            async with self._store.tx() as conn:
                await q.upsert_devices(conn, rows)
        except Exception:
            self._dirty |= dirty
            raise
        return len(rows)
