"""The guard console in tests: who may log in, and an HTTP client that logs in like a browser
(its own cookie handling, so the Secure cookie is sent over the loopback's plain HTTP)."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie
from typing import Any

import aiohttp

from jaa_gateway.passwords import hash_password

PASSWORD = "correct horse battery"
# cost 4 (the least bcrypt takes): tests log in many times; production hashes use 12
HASHED = hash_password(PASSWORD, cost=4)
CONSOLE_PEOPLE = ("guard-1", "head-security")

_META_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
_FORM_CSRF = re.compile(r'name="csrf" value="([^"]*)"')


def with_console(cfg: dict[str, Any]) -> None:
    """A `site_config` patch: guard-1 and head-security get a console password."""
    for p in cfg["people"]:
        if p["id"] in CONSOLE_PEOPLE:
            p["console_password"] = HASHED


class ConsoleClient:
    def __init__(self, base: str, origin: str | None = None) -> None:
        self.base = base
        self.origin = origin
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        self.csrf: str | None = None

    async def close(self) -> None:
        await self.http.close()

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {}
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if self.origin is not None:
            h["Origin"] = self.origin
        return h | (extra or {})

    def _take_cookies(self, r: aiohttp.ClientResponse) -> None:
        for raw in r.headers.getall("Set-Cookie", []):
            self.set_cookie_headers.append(raw)
            c: SimpleCookie = SimpleCookie()
            c.load(raw)
            for name, morsel in c.items():
                if morsel["max-age"] == "0" or morsel.value == "":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    async def request(
        self,
        method: str,
        path: str,
        data: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.http.request(
            method,
            self.base + path,
            data=data,
            headers=self._headers(headers),
            allow_redirects=False,
        ) as r:
            self._take_cookies(r)
            return r.status, await r.text(), r

    async def login(self, person: str = "guard-1", password: str = PASSWORD) -> int:
        """The login form, then its POST; returns the POST's status (303: logged in)."""
        self.cookies.pop("jaa_console", None)  # a fresh login, as after closing the browser
        status, body, _ = await self.request("GET", "/console/login")
        assert status == 200, body
        m = _FORM_CSRF.search(body)
        assert m is not None
        status, body, _ = await self.request(
            "POST", "/console/login", {"csrf": m.group(1), "person": person, "password": password}
        )
        if status == 303:
            status_page, page, _ = await self.request("GET", "/console")
            assert status_page == 200, page
            found = _META_CSRF.search(page)
            assert found is not None
            self.csrf = found.group(1)
        return status

    async def act(
        self, alarm_id: str, action: str, note: str | None = None, csrf: str | None = None
    ) -> tuple[int, Any]:
        """POST an action as the page's script does; ``csrf`` overrides the session's token."""
        data = {"csrf": (self.csrf or "") if csrf is None else csrf}
        if note is not None:
            data["note"] = note
        status, body, _ = await self.request(
            "POST",
            f"/console/alarms/{alarm_id}/{action}",
            data,
            headers={"Accept": "application/json"},
        )
        return status, body
