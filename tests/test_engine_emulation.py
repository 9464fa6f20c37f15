"""Emulation (QPS 18, quota 17, faults), token expiry and the loopback-only admin endpoints.

A module engine whose clock the tests move (``advance_clock``) instead of sleeping; the
unit tests drive :class:`Emulation` with fake clocks.
"""

from __future__ import annotations

import asyncio
import math
import random
from datetime import date, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from support.engine_http import Api, b64

from pipeline.engine.app import _loopback_only, is_loopback
from pipeline.engine.emulation import Emulation, EmulationConfig

pytestmark = pytest.mark.dlib


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    from pipeline.engine.server import EngineServer

    with EngineServer(tmp_path_factory.mktemp("emulation"), token_ttl=60) as srv:
        yield srv


@pytest.fixture()
async def api(server: Any):
    server.configure_emulation(qps=None, daily_quota=None, faults={}, reset=True)
    async with Api(server) as client:
        yield client


def _align_to_second(server: Any) -> None:
    # Start the test just after a window boundary, so all its calls share one window.
    now = server.state.monotonic()
    server.advance_clock(math.ceil(now) - now + 0.001)


async def test_expired_token_is_111(api: Api, server: Any) -> None:
    assert "error_code" not in await api.call("faceset/group/getlist")
    server.advance_clock(61)
    assert (await api.call("faceset/group/getlist"))["error_code"] == 111
    _, fresh = await api.get_token()
    assert "error_code" not in await api.call("faceset/group/getlist", token=fresh["access_token"])


async def test_qps_limit_answers_18_beyond_the_limit(api: Api, server: Any) -> None:
    await api.get_token()
    server.configure_emulation(qps=3, reset=True)
    _align_to_second(server)
    codes = [(await api.call("faceset/group/getlist")).get("error_code") for _ in range(5)]
    assert codes == [None, None, None, 18, 18]
    # Other interfaces have their own window.
    assert (await api.call("faceset/user/get", uid="x"))["error_code"] == 216611
    server.advance_clock(1.0)
    assert "error_code" not in await api.call("faceset/group/getlist")


async def test_rejected_call_does_no_work(api: Api, server: Any, samples_dir: Any) -> None:
    image = b64(samples_dir / "astronaut.png")
    server.configure_emulation(qps=1, reset=True)
    _align_to_second(server)
    await api.call("faceset/group/getlist", token=None)  # fetch the token outside the limit
    server.advance_clock(1.0)
    _align_to_second(server)
    first = await api.call("faceset/user/add", uid="u1", user_info="x", group_id="emu",
                           image=image)
    second = await api.call("faceset/user/add", uid="u2", user_info="x", group_id="emu",
                            image=image)
    assert "error_code" not in first and second["error_code"] == 18
    assert [m.uid for m in server.store.group_users("emu")] == ["u1"]


async def test_daily_quota_answers_17_until_the_next_day(api: Api, server: Any) -> None:
    await api.get_token()
    server.configure_emulation(daily_quota=2, reset=True)
    codes = [(await api.call("faceset/group/getlist")).get("error_code") for _ in range(3)]
    assert codes == [None, None, 17]
    server.advance_clock(86400)
    _, token = await api.get_token()
    assert "error_code" not in await api.call("faceset/group/getlist",
                                              token=token["access_token"])


async def test_faults_follow_the_seeded_rates(api: Api, server: Any) -> None:
    await api.get_token()
    faults = {"216400": 0.2, "4": 0.1, "http500": 0.1, "drop": 0.1}
    server.configure_emulation(faults=faults, seed=7)
    seen = [await _outcome(api) for _ in range(60)]
    expected = _expected_outcomes(faults, seed=7, n=60)
    assert seen == expected
    assert {"216400", "4", "http500", "drop", "ok"} == set(seen)


async def _outcome(api: Api) -> str:
    url = api.server.url + "/rest/2.0/face/v2/faceset/group/getlist"
    try:
        async with aiohttp.ClientSession() as session:  # a dropped connection stays dropped
            async with session.post(url, params={"access_token": api.token}) as resp:
                if resp.status == 500:
                    return "http500"
                body = await resp.json()
    except aiohttp.ClientError:
        return "drop"
    return str(body.get("error_code", "ok"))


def _expected_outcomes(faults: dict[str, float], seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        draw, kind = rng.random(), "ok"
        for name, rate in faults.items():
            if draw < rate:
                kind = name
                break
            draw -= rate
        out.append(kind)
    return out


async def test_slow_fault_delays_the_reply(api: Api, server: Any) -> None:
    await api.get_token()
    server.configure_emulation(faults={"slow": 1.0}, delay=0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    reply = await api.call("faceset/group/getlist")
    assert "error_code" not in reply and loop.time() - start >= 0.3


async def test_admin_endpoints(api: Api, server: Any) -> None:
    async with api.session.post(server.url + "/admin/emulation",
                                json={"qps": {"detect": 5}, "daily_quota": 100}) as resp:
        assert resp.status == 200
    async with api.session.get(server.url + "/admin/emulation") as resp:
        shown = await resp.json()
    assert shown["qps"] == {"detect": 5} and shown["daily_quota"] == 100
    async with api.session.post(server.url + "/admin/emulation", json={"faults": {"x": 2}}) as r:
        assert r.status == 400
    async with api.session.get(server.url + "/admin/stats") as resp:
        stats = await resp.json()
    assert stats["calls"]["group_getlist"] >= 1 and "faces" in stats and "users" in stats


@pytest.mark.parametrize(
    ("remote", "allowed"),
    [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("10.0.0.5", False),
     ("192.168.1.20", False), ("2001:db8::1", False), (None, False), ("garbage", False)],
)
def test_loopback_check(remote: str | None, allowed: bool) -> None:
    assert is_loopback(remote) is allowed


def test_admin_refuses_a_non_loopback_peer() -> None:
    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("203.0.113.7", 40000) if name == "peername" else default

    request = make_mocked_request("GET", "/admin/stats", transport=Transport())
    assert request.remote == "203.0.113.7"
    with pytest.raises(web.HTTPForbidden):
        _loopback_only(request)


# -- unit tests with fake clocks ----------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.day = date(2026, 1, 1)

    def monotonic(self) -> float:
        return self.t

    def today(self) -> date:
        return self.day


def test_qps_window_is_exact_per_second_and_per_interface() -> None:
    clock = FakeClock()
    emu = Emulation(EmulationConfig(qps=2.5), clock.monotonic, clock.today)
    assert [emu.admit("detect").code for _ in range(3)] == [None, None, 18]
    assert emu.admit("match").code is None
    clock.t += 0.999
    assert emu.admit("detect").code == 18
    clock.t += 0.001
    assert emu.admit("detect").code is None


def test_quota_counts_admitted_calls_per_day() -> None:
    clock = FakeClock()
    emu = Emulation(EmulationConfig(qps={"detect": 1}, daily_quota=2), clock.monotonic,
                    clock.today)
    assert [emu.admit("detect").code for _ in range(2)] == [None, 18]  # 18 does not count
    clock.t += 1
    assert emu.admit("detect").code is None
    clock.t += 1
    assert emu.admit("detect").code == 17
    clock.day += timedelta(days=1)
    clock.t += 1
    assert emu.admit("detect").code is None


@pytest.mark.parametrize(
    "changes",
    [{"faults": {"216400": 0.7, "drop": 0.5}}, {"faults": {"teapot": 0.1}},
     {"daily_quota": -1}, {"colour": "red"}],
    ids=["rates-over-1", "unknown-fault", "negative-quota", "unknown-key"],
)
def test_bad_emulation_settings_are_refused(changes: dict) -> None:
    with pytest.raises(ValueError):
        Emulation().configure(changes)
