"""The lease row in the database (CONTRACT §8): acquire/renew, and the fence.

Acquire and renew are one statement: an UPDATE of the single row WHERE it has expired (by the
database's clock) OR it is ours (this node, this token), that sets the expiry to ``now() + lease``
and, unless it was ours, takes the next token. Two standbys racing for an expired lease are
serialised by the row lock: the second one's WHERE is evaluated again on the new row, which is
no longer expired, and it gets nothing.

The fence: a transaction of the leader that writes ends, just before its COMMIT, with
``SELECT ... FROM leases WHERE token = :mine AND node = :me AND expires_at > clock_timestamp()
FOR SHARE``. If the lease moved on, the row is not found and the transaction rolls back
(`NotLeader`). If it is found, the share lock holds until the COMMIT, and a takeover's UPDATE
waits for it: the takeover is ordered after every write the old leader committed, never beside
one. A leader paused between that check and its COMMIT holds the lock while it sleeps; the
server ends such a session (``idle_in_transaction_session_timeout``, half the lease, set on every
connection of a clustered gateway), rolling it back, so a takeover waits at most that long.

Why not a session advisory lock alone: the lock belongs to the connection, and a paused or hung
process keeps its connection (and its lock) open for as long as TCP lets it, so no standby could
take over; and when it is finally broken, nothing stops the old process, on waking, from going
on with what it had started on other connections. A lease with an expiry bounds the wait, and a
token checked inside each writing transaction stops the late writer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import text

from jaa_gateway.lease import Seen

if TYPE_CHECKING:
    from jaa_gateway.store.db import Conn, Store

NAME = "leader"


class NotLeader(Exception):
    """A fenced transaction of a node that does not hold the lease (nothing was written)."""


_ATTEMPT = text(
    """
    UPDATE leases SET
      token = CASE WHEN token = :mine AND node = :node THEN token ELSE token + 1 END,
      node = :node,
      expires_at = now() + make_interval(secs => :lease)
    WHERE name = :name AND (expires_at < now() OR (token = :mine AND node = :node))
    RETURNING node, token
    """
)
_READ = text("SELECT node, token, expires_at > now() FROM leases WHERE name = :name")
_FENCE = text(
    "SELECT 1 FROM leases WHERE name = :name AND token = :token AND node = :node "
    "AND expires_at > clock_timestamp() FOR SHARE"
)


async def attempt(store: Store, node: str, lease_s: float, mine: int | None) -> Seen:
    """Acquire (if expired) or renew (if `mine`) the lease; return the row as it stands.

    The statement does not wait on a lock for long: a takeover blocked behind a paused
    leader's fence gives up, and the next attempt tries again."""
    wait_ms = max(50, int(lease_s * 1000 / 4))
    async with store.tx(fenced=False) as conn:
        await conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")
        await conn.exec_driver_sql(f"SET LOCAL statement_timeout = {wait_ms * 2}")
        got = (
            await conn.execute(
                _ATTEMPT, {"node": node, "mine": mine, "lease": float(lease_s), "name": NAME}
            )
        ).first()
        if got is not None:
            return Seen(node=got[0], token=int(got[1]), mine=True, live=True)
        row = (await conn.execute(_READ, {"name": NAME})).first()
    if row is None:
        raise RuntimeError("the leases table has no leader row (migration 4 not applied?)")
    return Seen(node=row[0], token=int(row[1]), mine=False, live=bool(row[2]))


async def fence(conn: Conn, node: str, token: int) -> None:
    """The check at the end of a writing transaction (see the module's note)."""
    found = (await conn.execute(_FENCE, {"name": NAME, "token": token, "node": node})).first()
    if found is None:
        raise NotLeader(f"node {node} no longer holds the lease (token {token})")


async def release(store: Store, node: str, token: int) -> bool:
    """A leader that stops cleanly lets the lease go at once: a standby takes over at its next
    attempt instead of waiting out the lease. Only its own term (node and token)."""
    async with store.tx(fenced=False) as conn:
        res = await conn.execute(
            text(
                "UPDATE leases SET expires_at = now() "
                "WHERE name = :name AND node = :node AND token = :token"
            ),
            {"name": NAME, "node": node, "token": token},
        )
    return bool(res.rowcount)
