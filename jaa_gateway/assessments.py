"""The risk assessments the gate reads: config ones stored (config wins on conflicts), API ones
stored and read back, all cached in memory by id and by person."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import delete, insert, select, update

from jaa_gateway.config import Assessment, Config
from jaa_gateway.effects import Tx
from jaa_gateway.store import queries as q
from jaa_gateway.store.schema import assessments

log = structlog.get_logger("jaa_gateway.assessments")


class Assessments:
    def __init__(self, cfg: Config) -> None:
        self._cfg = cfg
        self.by_id: dict[str, Assessment] = {}
        self._by_person: dict[str, list[Assessment]] = {}

    def of_person(self, person_id: str) -> list[Assessment]:
        return self._by_person.get(person_id, [])

    async def load(self, tx: Tx) -> None:
        """Config assessments into the store (config wins on conflicts), API ones back out."""
        stored = {r["id"]: r for r in (await tx.conn.execute(select(assessments))).mappings()}
        in_config = {a.id for a in self._cfg.assessments}
        rows: list[dict[str, Any]] = []
        for a in self._cfg.assessments:
            data = a.model_dump(mode="json")
            old = stored.get(a.id)
            if old is not None and old["source"] == "api" and old["data"] != data:
                # config wins on conflicts; say so, the facility may be surprised
                log.warning("assessment_overridden_by_config", assessment=a.id)
                await q.add_audit(
                    tx.conn,
                    tx.ts,
                    "assessment_overridden_by_config",
                    actor="config",
                    assessment=a.id,
                )
            if old is None or old["data"] != data or old["source"] != "config":
                rows.append(
                    {
                        "id": a.id,
                        "data": data,
                        "source": "config",
                        "updated_at": tx.ts,
                        "updated_by": "config",
                    }
                )
        # an assessment taken out of the config file no longer allows anything
        gone = [i for i, r in stored.items() if r["source"] == "config" and i not in in_config]
        for i in range(0, len(gone), 500):
            await tx.conn.execute(
                delete(assessments).where(assessments.c.id.in_(gone[i : i + 500]))
            )
        for aid in gone:
            log.warning("assessment_removed_with_config", assessment=aid)
            await q.add_audit(
                tx.conn, tx.ts, "assessment_removed_with_config", actor="config", assessment=aid
            )
        await q.upsert_assessments(tx.conn, rows)
        loaded: dict[str, Assessment] = {a.id: a for a in self._cfg.assessments}
        for aid, r in stored.items():
            if aid in in_config or r["source"] != "api":
                continue
            try:
                loaded[aid] = Assessment.model_validate(r["data"])
            except Exception:
                log.error("assessment_unreadable", assessment=aid)
        self._set(loaded)

    def from_config(self) -> None:
        """The config's assessments only, without the store (a standby answering reads)."""
        self._set({a.id: a for a in self._cfg.assessments})

    def _set(self, items: dict[str, Assessment]) -> None:
        self.by_id = items
        by_person: dict[str, list[Assessment]] = {}
        for a in items.values():
            by_person.setdefault(a.person, []).append(a)
        self._by_person = by_person

    def _cached(self, a: Assessment) -> None:
        items = dict(self.by_id)
        items[a.id] = a
        self._set(items)

    async def put(self, tx: Tx, a: Assessment, actor: str) -> str:
        """Store an assessment from the API; returns 'created' or 'updated'."""
        row = (
            (await tx.conn.execute(select(assessments).where(assessments.c.id == a.id)))
            .mappings()
            .first()
        )
        if row is not None and row["source"] == "config":
            raise PermissionError(
                f"assessment {a.id} is defined in the config file; change it there"
            )
        data = a.model_dump(mode="json")
        if row is None:
            await tx.conn.execute(
                insert(assessments).values(
                    id=a.id, data=data, source="api", updated_at=tx.ts, updated_by=actor
                )
            )
        else:
            await tx.conn.execute(
                update(assessments)
                .where(assessments.c.id == a.id)
                .values(data=data, updated_at=tx.ts, updated_by=actor)
            )
        result = "created" if row is None else "updated"
        await q.add_audit(
            tx.conn, tx.ts, f"assessment_{result}", actor=actor, assessment=a.id, data=data
        )
        tx.after_commit.append(lambda: self._cached(a))
        return result
