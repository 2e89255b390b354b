"""Hot standby over HTTP (CONTRACT §8): one middleware, keyed on method and path only, so it
does not depend on how the HTTP adapter arranges its handlers.

* ``GET /leader``: 200 on the leader, 503 elsewhere (the load balancer's check);
* on a node that may not act, every request that is not a read (a method other than GET, HEAD,
  OPTIONS: the API's writes and Twilio's webhooks) answers 503 ``not_leader`` naming the
  leader, before any handler runs; reads (the API's GETs, ``/healthz``, ``/metrics``) work.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

READS = frozenset({"GET", "HEAD", "OPTIONS"})
# writes a standby takes: a console login or logout touches only this node's own sessions
# (the console reads on every node; its acknowledge / resolve are leader-only like the API's)
LOCAL_WRITES = frozenset({"/console/login", "/console/logout"})
LEADER_PATH = "/leader"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RoleView(Protocol):
    node: str

    def may_act(self) -> bool: ...

    @property
    def leader(self) -> str | None: ...


def leader_middleware(role: RoleView) -> Middleware:
    @web.middleware
    async def leader_only(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == LEADER_PATH and request.method in READS:
            if role.may_act():
                return web.json_response({"role": "leader", "node": role.node})
            return web.json_response(
                {"role": "standby", "node": role.node, "leader": role.leader}, status=503
            )
        if request.method not in READS and request.path not in LOCAL_WRITES and not role.may_act():
            leader = role.leader
            where = f"node {leader!r}" if leader is not None else "no node at the moment"
            return web.json_response(
                {
                    "error": "not_leader",
                    "detail": f"This gateway ({role.node}) is a standby; the leader is {where}.",
                    "leader": leader,
                },
                status=503,
            )
        return await handler(request)

    return leader_only
