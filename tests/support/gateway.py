"""Run the real daemon for end-to-end tests: in-process (App) or as a subprocess (for kill -9).

`site_config(...)` is a small, complete site whose timings are a second or two, so timing tests
run fast; tests patch it for their case.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from jaa_gateway.app import App
from jaa_gateway.config import Config, parse_config
from tests.support.broker import free_port
from tests.support.twilio_double import TwilioDouble, sign_webhook

TOKEN = "test-token-0123456789abcdef"
PUBLIC_URL = "https://jaa.example.test"

PHONES = {
    "ola": "+4791234567",
    "kari": "+4791234568",
    "guard-1": "+4791234569",
    "guard-2": "+4791234570",
    "head-security": "+4791234571",
    "per": "+4791234572",
    "nils": "+4791234573",
}


def site_config(
    db_path: Path, broker_port: int, twilio: TwilioDouble | None, http_port: int | None = None
) -> dict[str, Any]:
    people = [
        {
            "id": "ola",
            "name": "Ola Nordmann",
            "phone": PHONES["ola"],
            "badges": ["04A1B2C3"],
            "roles": ["worker"],
            "supervisor": "kari",
            "hse_training_until": "2099-12-31",
        },
        {
            "id": "kari",
            "name": "Kari Hansen",
            "phone": PHONES["kari"],
            "roles": ["supervisor"],
            "hse_training_until": "2099-12-31",
        },
        {"id": "guard-1", "name": "Geir Vakt", "phone": PHONES["guard-1"], "roles": ["guard"]},
        {"id": "guard-2", "name": "Guro Vakt", "phone": PHONES["guard-2"], "roles": ["guard"]},
        {
            "id": "head-security",
            "name": "Hanne Sjef",
            "phone": PHONES["head-security"],
            "roles": ["head", "guard"],
        },
        {
            "id": "per",
            "name": "Per Student",
            "phone": PHONES["per"],
            "badges": ["0BADBEEF"],
            "roles": ["worker"],
            "supervisor": "kari",
            "hse_training_until": "2099-12-31",
        },
        {
            "id": "nils",
            "name": "Nils Nyansatt",
            "phone": PHONES["nils"],
            "badges": ["0C0FFEE0"],
            "roles": ["worker"],
            "supervisor": "kari",
        },
    ]
    cfg: dict[str, Any] = {
        "gateway": {
            "site": "testsite",
            "timezone": "Europe/Oslo",
            "database": f"sqlite:///{db_path}",
            "language": "nb",
            "default_escalation": "guards",
        },
        "mqtt": {
            "host": "127.0.0.1",
            "port": broker_port,
            "client_id": f"jaa-gw-test-{os.getpid()}-{broker_port}",
            "topic_prefix": "jaa",
        },
        "http": {
            "listen": f"127.0.0.1:{http_port or free_port()}",
            "public_url": PUBLIC_URL,
            "api_tokens": {"facility": TOKEN},
        },
        "notify": {"driver": "twilio" if twilio else "console", "call_spacing": "1s"},
        "timing": {
            "prealarm_window": "1s",
            "checkin_grace": "1s",
            "overrun_grace": "1s",
            "device_timeout": "30s",
        },
        "people": people,
        "devices": [
            {"id": "jaa-0042", "person": "ola"},
            {"id": "jaa-0043", "person": "per"},
            {"id": "jaa-0044", "person": "nils"},
        ],
        "locations": [
            {
                "id": "d1-123",
                "name": "Realfagbygget D1-123",
                "kind": "lab",
                "doors": ["door-d1-123"],
                "escalation": "guards",
                "after_hours": {"start": "00:00", "end": "00:00"},
            },
            {
                "id": "w-1",
                "name": "Verkstedet",
                "kind": "workshop",
                "doors": ["door-w-1"],
                "escalation": "guards",
            },
        ],
        "rosters": [
            {
                "id": "desk",
                "shifts": [
                    {
                        "days": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"],
                        "start": "00:00",
                        "end": "00:00",
                        "people": ["guard-1"],
                    }
                ],
            }
        ],
        "escalation_chains": [
            {
                "id": "guards",
                "repeat": 0,
                "repeat_after": "1s",
                "keep_paging": "0",
                "steps": [
                    {"after": "0s", "notify": ["roster:desk"], "via": ["sms", "call"]},
                    {"after": "2s", "notify": ["person:guard-2", "supervisor"], "via": ["sms"]},
                    {"after": "4s", "notify": ["person:head-security"], "via": ["sms"]},
                ],
            }
        ],
        "assessments": [
            {
                "id": "RA-1",
                "person": "ola",
                "locations": ["d1-123"],
                "activity": "Titration with concentrated acids",
                "acute_injury_risk": True,
                "lone_work_allowed": True,
                "requires_jaa": True,
                "checkin_interval": "30m",
                "max_duration": "4h",
                "valid_from": "2020-01-01",
                "valid_until": "2099-12-31",
                "approved_by": "kari",
            }
        ],
    }
    if twilio is not None:
        cfg["twilio"] = {
            "account_sid": twilio.account_sid,
            "auth_token": twilio.auth_token,
            "from_number": "+4722334455",
            "api_base": twilio.api_base,
            "request_timeout": "2s",
        }
    else:
        cfg["twilio"] = {
            "account_sid": "AC" + "0" * 32,
            "auth_token": "console-token",
            "from_number": "+4722334455",
        }
    return cfg


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def to_toml(cfg: dict[str, Any]) -> str:
    """Enough TOML for our config shape: tables of scalars, arrays of tables."""
    out: list[str] = []
    for key, val in cfg.items():
        if isinstance(val, dict):
            out.append(f"[{key}]")
            out.extend(f"{k} = {_toml_value(v)}" for k, v in val.items())
        else:
            for item in val:
                out.append(f"[[{key}]]")
                out.extend(f"{k} = {_toml_value(v)}" for k, v in item.items())
        out.append("")
    return "\n".join(out)


class Client:
    """HTTP client for the daemon: API with the token, and Twilio webhooks signed."""

    def __init__(self, base: str, auth_token: str) -> None:
        self.base = base
        self.auth_token = auth_token
        self.session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.session.close()

    async def api(
        self, method: str, path: str, body: Any = None, token: str | None = TOKEN
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.session.request(method, self.base + path, json=body, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else None
            except json.JSONDecodeError:
                return r.status, text

    async def webhook(
        self, path: str, params: dict[str, str], *, signature: str | None = None
    ) -> tuple[int, str]:
        sig = (
            signature
            if signature is not None
            else sign_webhook(self.auth_token, PUBLIC_URL + path, params)
        )
        async with self.session.post(
            self.base + path, data=params, headers={"X-Twilio-Signature": sig}
        ) as r:
            return r.status, await r.text()


class InProcessGateway:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.app: App | None = None
        self._task: asyncio.Task[None] | None = None
        self.client = Client(
            f"http://{cfg.http.listen}",
            cfg.twilio.auth_token.get_secret_value() if cfg.twilio else "",
        )

    async def start(self, timeout: float = 10.0) -> App:
        self.app = App(self.cfg)
        self._task = asyncio.create_task(self.app.run(), name="gateway-under-test")
        ready = asyncio.create_task(self.app.ready.wait())
        done, _ = await asyncio.wait(
            {ready, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self._task in done:
            ready.cancel()
            self._task.result()
        if ready not in done:
            raise AssertionError("gateway did not become ready")
        return self.app

    async def stop(self) -> None:
        if self.app is not None and self._task is not None:
            self.app.stopping.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 10)
        self.app = None

    async def close(self) -> None:
        await self.stop()
        await self.client.close()


@contextlib.asynccontextmanager
async def running_gateway(cfg_dict: dict[str, Any]) -> AsyncIterator[InProcessGateway]:
    gw = InProcessGateway(parse_config(copy.deepcopy(cfg_dict), "test"))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


class GatewayProcess:
    """The daemon as a child process (`jaa-gateway run`), for SIGKILL and restart tests."""

    def __init__(self, cfg_dict: dict[str, Any], workdir: Path) -> None:
        self.cfg_dict = cfg_dict
        self.path = workdir / "gateway.toml"
        self.path.write_text(to_toml(cfg_dict))
        self.log_path = workdir / "gateway.log"
        self.proc: subprocess.Popen[bytes] | None = None
        host, port = cfg_dict["http"]["listen"].rsplit(":", 1)
        self.base = f"http://{host}:{port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jaa_gateway.cli", "run", "--config", str(self.path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    async def wait_ready(self, timeout: float = 15.0) -> float:
        """Wait until /healthz says 200; returns the seconds it took."""
        t0 = time.monotonic()
        async with aiohttp.ClientSession() as s:
            while time.monotonic() - t0 < timeout:
                assert self.proc is not None and self.proc.poll() is None, self.log_tail()
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(self.base + "/healthz") as r:
                        if r.status == 200:
                            return time.monotonic() - t0
                await asyncio.sleep(0.05)
        raise AssertionError("gateway process not ready:\n" + self.log_tail())

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 12.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""
