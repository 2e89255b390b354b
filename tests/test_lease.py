"""The lease rules at exact instants (jaa_gateway/lease.py), the lease row and the fence on a real
PostgreSQL database (store/leases.py), and the [cluster] config check."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

import pytest
from sqlalchemy import text

from jaa_gateway import lease
from jaa_gateway.cluster import Role
from jaa_gateway.config import ConfigError, parse_config
from jaa_gateway.lease import Held, Seen, Timing
from jaa_gateway.store import leases
from jaa_gateway.store.db import Store
from tests.support.gateway import site_config

T = Timing(2.0)  # renew every 0.5 s, act for 1.5 s after a renewal was sent


def test_timing_derives_from_the_lease() -> None:
    assert (T.renew_every, T.act_for, T.stuck_tx_after) == (0.5, 1.5, 1.0)
    with pytest.raises(ValueError):
        Timing(0)


def test_a_leader_acts_until_three_quarters_of_the_lease_after_the_renewal_was_sent() -> None:
    held = Held(token=7, sent_at=100.0)
    assert lease.may_act(held, 100.0, T)
    assert lease.may_act(held, 101.499, T)
    assert not lease.may_act(held, 101.5, T)  # a quarter of the lease left to stop in
    assert not lease.may_act(None, 100.0, T)
    assert lease.role(held, 101.0, T) == "leader"
    assert lease.role(held, 101.5, T) == "standby"


def test_a_confirmed_renewal_moves_the_deadline_from_when_it_was_sent() -> None:
    held = Held(7, 100.0)
    mine = Seen(node="a", token=7, mine=True, live=True)
    assert lease.after_attempt(held, 100.5, mine, T) == Held(7, 100.5)
    # a failed attempt confirms nothing: the old deadline stands
    assert lease.after_attempt(held, 100.5, None, T) == held
    assert lease.after_attempt(None, 100.5, None, T) is None
    # an answer that it is someone else's ends ours at once
    theirs = Seen(node="b", token=8, mine=False, live=True)
    assert lease.after_attempt(held, 100.5, theirs, T) is None
    # a late answer to an older attempt never moves the deadline back
    assert lease.after_attempt(Held(7, 101.0), 100.5, mine, T) == Held(7, 101.0)
    # a takeover (new token) counts from its own attempt
    assert lease.after_attempt(None, 103.0, Seen("a", 9, True, True), T) == Held(9, 103.0)


def test_only_a_lease_it_may_still_act_on_is_renewed_with_its_token() -> None:
    held = Held(7, 100.0)
    assert lease.offered_token(held, 101.0, T) == 7
    # past the local deadline (a paused process waking up): it competes as a standby
    assert lease.offered_token(held, 101.5, T) is None
    assert lease.offered_token(None, 101.0, T) is None
    assert lease.next_attempt(100.0, T) == 100.5


def test_who_leads_as_a_node_sees_it() -> None:
    held = Held(7, 100.0)
    other = Seen(node="b", token=8, mine=False, live=True)
    expired = Seen(node="b", token=8, mine=False, live=False)
    assert lease.leader_of(None, "a", held, 100.1, T) == "a"
    assert lease.leader_of(other, "a", None, 100.1, T) == "b"
    assert lease.leader_of(expired, "a", None, 100.1, T) is None
    # this node's row, past its local deadline: not "a" (it has stopped acting)
    assert lease.leader_of(Seen("a", 7, True, True), "a", held, 101.6, T) is None


def test_role_object_follows_the_monotonic_clock() -> None:
    now = [100.0]
    role = Role("a", T, clock=lambda: now[0])
    assert (role.role, role.token, role.fence()) == ("standby", None, None)
    role.held = Held(3, 100.0)
    assert (role.role, role.token, role.fence()) == ("leader", 3, ("a", 3))
    now[0] = 101.5
    assert (role.role, role.token, role.fence(), role.may_act()) == ("standby", None, None, False)
    solo = Role.solo("gw")
    assert solo.may_act() and solo.leader == "gw" and not solo.clustered


def test_cluster_needs_postgresql(tmp_path: Path) -> None:
    cfg = site_config(tmp_path / "s.db", 1883, None)
    cfg["cluster"] = {"node": "gw-a", "lease": "2s"}
    with pytest.raises(ConfigError) as err:
        parse_config(copy.deepcopy(cfg), "t.toml")
    assert any("cluster" in p and "postgresql" in p for p in err.value.problems)
    cfg["gateway"]["database"] = "postgresql://jaa@db.example.org/jaa"
    parsed = parse_config(copy.deepcopy(cfg), "t.toml")
    assert parsed.cluster is not None and parsed.cluster.lease.total_seconds() == 2
    cfg["cluster"]["lease"] = "0s"
    with pytest.raises(ConfigError):
        parse_config(copy.deepcopy(cfg), "t.toml")
    cfg["cluster"] = {"node": "bad name!", "lease": "2s"}
    with pytest.raises(ConfigError):
        parse_config(copy.deepcopy(cfg), "t.toml")


@pytest.mark.postgres
async def test_lease_row_takeover_only_after_expiry_and_the_token_goes_up(
    postgres_url: str,
) -> None:
    a, b = Store(postgres_url, node="a"), Store(postgres_url, node="b")
    try:
        await a.migrate()
        await b.migrate()
        first = await leases.attempt(a, "a", 1.0, None)
        assert first.mine and first.node == "a"
        # b cannot take a live lease; it is told who holds it
        seen = await leases.attempt(b, "b", 1.0, None)
        assert (seen.mine, seen.node, seen.token, seen.live) == (False, "a", first.token, True)
        # a renews with its token: same token
        again = await leases.attempt(a, "a", 1.0, first.token)
        assert again.mine and again.token == first.token
        # a renewal with a wrong token is no renewal
        assert not (await leases.attempt(a, "a", 1.0, first.token + 5)).mine
        await asyncio.sleep(1.1)
        took = await leases.attempt(b, "b", 1.0, None)
        assert took.mine and took.node == "b" and took.token == first.token + 1
        # the old holder, late, renews nothing
        late = await leases.attempt(a, "a", 1.0, first.token)
        assert (late.mine, late.node) == (False, "b")
        # released by b: a takes it at once, with the next token
        assert await leases.release(b, "b", took.token)
        back = await leases.attempt(a, "a", 1.0, None)
        assert back.mine and back.token == took.token + 1
    finally:
        await a.close()
        await b.close()


@pytest.mark.postgres
async def test_the_fence_stops_a_writer_that_lost_the_lease(postgres_url: str) -> None:
    a, b = Store(postgres_url, node="a"), Store(postgres_url, node="b")
    try:
        await a.migrate()
        got = await leases.attempt(a, "a", 1.0, None)
        fence: list[tuple[str, int] | None] = [("a", got.token)]
        a.fence = lambda: fence[0]
        async with a.tx() as conn:
            await conn.execute(text("INSERT INTO health (node, written_at) VALUES ('x', 1)"))
        # reads are never fenced (a standby answers the API's reads)
        fence[0] = None
        async with a.tx() as conn:
            await conn.execute(text("SELECT count(*) FROM health"))
        # a node that believes it leads, but the lease moved on: nothing is written
        await asyncio.sleep(1.1)
        took = await leases.attempt(b, "b", 1.0, None)
        assert took.mine
        fence[0] = ("a", got.token)
        with pytest.raises(leases.NotLeader):
            async with a.tx() as conn:
                await conn.execute(text("INSERT INTO health (node, written_at) VALUES ('y', 2)"))
        # nor by a node that knows it does not lead
        fence[0] = None
        with pytest.raises(leases.NotLeader):
            async with a.tx() as conn:
                await conn.execute(text("INSERT INTO health (node, written_at) VALUES ('z', 3)"))
        async with b.tx() as conn:
            rows = (await conn.execute(text("SELECT node FROM health ORDER BY node"))).all()
        assert [r[0] for r in rows] == ["x"]
        # the node's own rows are not fenced: the health probe of a standby works
        await a.probe_write()
    finally:
        await a.close()
        await b.close()


@pytest.mark.postgres
async def test_a_takeover_waits_for_the_old_leaders_fenced_commit(postgres_url: str) -> None:
    """The share lock taken by the fence orders the takeover after the old leader's commit."""
    a, b = Store(postgres_url, node="a"), Store(postgres_url, node="b")
    try:
        await a.migrate()
        got = await leases.attempt(a, "a", 0.3, None)
        async with a.tx() as conn:
            await conn.execute(text("INSERT INTO health (node, written_at) VALUES ('w', 1)"))
            # the fence's check, then a pause between it and the COMMIT, past the expiry
            await leases.fence(conn, "a", got.token)
            await asyncio.sleep(0.45)
            attempt = asyncio.create_task(leases.attempt(b, "b", 1.0, None))
            await asyncio.sleep(0.1)
            assert not attempt.done()  # the takeover waits for the share lock
        took = await attempt
        async with b.tx() as conn:
            assert (await conn.execute(text("SELECT count(*) FROM health"))).scalar() == 1
        assert took.mine and took.token == got.token + 1
    finally:
        await a.close()
        await b.close()
