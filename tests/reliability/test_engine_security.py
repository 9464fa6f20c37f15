"""The engine as an attack surface: where it listens, tokens, admin access, body sizes,
and the filesystem.

* `faceflow engine serve` binds 127.0.0.1 by default (checked in /proc/net/tcp, not only
  in the printed URL).
* Every face interface answers 110 without a valid token.
* /admin/* answer loopback peers only: the predicate, and the real app behind a
  middleware that makes requests come from a chosen address (the machine has no other
  interface to test from, and 127.0.0.2 is loopback too).
* A 30 MB body gets a JSON error on every endpoint, and the engine goes on serving.
* Path-like uids, group ids and ID numbers are refused by validation; no file appears
  outside (or inside) the data dir.
"""

from __future__ import annotations

import base64
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from support.engine_http import Api, b64
from support.reliability import FACEFLOW, LISTENING, ROOT, face_crop

from pipeline.engine.app import create_app, is_loopback
from pipeline.engine.interfaces import INTERFACES
from pipeline.engine.state import EngineConfig, EngineState

pytestmark = [pytest.mark.dlib]

API = "/rest/2.0/face/v2/"
BIG = 30 * 2**20


@pytest.fixture(scope="module")
def secure_engine(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An engine whose data dir is the only thing in its parent folder."""
    from pipeline.engine.server import EngineServer  # noqa: PLC0415

    parent = tmp_path_factory.mktemp("secure")
    with EngineServer(parent / "data") as server:
        yield server


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# -- where it listens --------------------------------------------------------------------


def _listening(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp* print them) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


@pytest.mark.slow
def test_engine_serve_binds_loopback_by_default(tmp_path: Path) -> None:
    proc = subprocess.Popen([FACEFLOW, "engine", "serve", "--port", "0", "--data-dir",
                             str(tmp_path / "data")], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        match = LISTENING.search(proc.stdout.readline())
        assert match is not None
        assert match.group(1).startswith("http://127.0.0.1:")
        assert _listening(int(match.group(2))) == ["0100007F"]  # 127.0.0.1, nothing else
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # a clean stop


# -- tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(INTERFACES))
@pytest.mark.parametrize("token", ["", "24.forged.2592000.0-faceflow"], ids=["none", "forged"])
async def test_every_interface_wants_a_valid_token(secure_engine: Any, name: str,
                                                   token: str) -> None:
    async with Api(secure_engine) as api:
        reply = await api.call(INTERFACES[name][0], token=token, uid="u1", group_id="g1",
                               image=b64(b"\xff\xd8\xff"))
    assert reply["error_code"] == 110 and reply["log_id"] > 0


# -- admin endpoints -----------------------------------------------------------------------


@pytest.mark.parametrize(("remote", "allowed"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("127.255.255.254", True), ("::1", True),
    ("10.0.0.7", False), ("192.168.1.20", False), ("8.8.8.8", False), ("0.0.0.0", False),
    ("::", False), ("fe80::1%eth0", False), ("::ffff:10.0.0.7", False), ("", False),
    (None, False), ("localhost", False), ("127.0.0.1.evil.example", False),
])
def test_the_loopback_predicate(remote: str | None, allowed: bool) -> None:
    assert is_loopback(remote) is allowed


@web.middleware
async def _from_header(request: web.Request, handler: Any) -> web.StreamResponse:
    """Make the request come from the address in X-Test-Remote (a test-only front)."""
    remote = request.headers.get("X-Test-Remote")
    return await handler(request.clone(remote=remote) if remote else request)


async def test_admin_endpoints_refuse_other_peers(tmp_path: Path) -> None:
    state = EngineState(EngineConfig(tmp_path / "data", "ak", "sk"))  # no model pool needed
    app = create_app(state)
    app.middlewares.insert(0, _from_header)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:
            async def status(method: str, path: str, remote: str | None) -> int:
                headers = {"X-Test-Remote": remote} if remote else {}
                async with session.request(method, url + path, headers=headers,
                                           json={"daily_quota": 0}) as resp:
                    return resp.status

            for path in ("/admin/stats", "/admin/emulation"):
                assert await status("GET", path, "10.0.0.7") == 403
                assert await status("GET", path, None) == 200
                assert await status("GET", path, "127.0.0.2") == 200
            assert await status("POST", "/admin/emulation", "192.168.1.20") == 403
            assert state.emulation.config.daily_quota is None  # the refused POST changed nothing
            assert await status("POST", "/admin/emulation", None) == 200
            assert state.emulation.config.daily_quota == 0
    finally:
        await runner.cleanup()
        state.close()


# -- body size ---------------------------------------------------------------------------------


async def test_a_30mb_body_gets_a_json_error_everywhere_and_the_engine_lives_on(
    secure_engine: Any, samples_dir: Path
) -> None:
    body = b"image=" + b"A" * BIG
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with Api(secure_engine) as api:
        token = (await api.get_token())[1]["access_token"]
        for path, query in [(API + "detect", {"access_token": token}),
                            (API + "faceset/user/add", {"access_token": token}),
                            ("/oauth/2.0/token", {"grant_type": "client_credentials"}),
                            ("/admin/emulation", {})]:
            async with api.session.post(secure_engine.url + path, params=query, data=body,
                                        headers=form) as resp:
                reply = await resp.json()  # JSON, whatever the endpoint
            assert reply["error_code"] == 216103, (path, reply)
        face = base64.b64encode((samples_dir / "obama_01.jpg").read_bytes()).decode()
        alive = await api.call("detect", image=face)
    assert alive["result_num"] == 1


# -- the filesystem ----------------------------------------------------------------------------


async def test_path_like_ids_are_refused_and_nothing_is_written_outside_the_data_dir(
    secure_engine: Any, samples_dir: Path
) -> None:
    marker = f"escape_{secrets.token_hex(4)}"
    parent = secure_engine.data_dir.parent
    before = _tree(parent)
    face = b64(face_crop(samples_dir, "obama_01.jpg"))
    attempts = [
        ("faceset/user/add", {"uid": f"../../{marker}", "user_info": "x", "group_id": "g"}),
        ("faceset/user/add", {"uid": "u1", "user_info": "x", "group_id": f"../{marker}"}),
        ("faceset/user/add", {"uid": "u1\x00", "user_info": "x", "group_id": "g"}),
        ("faceset/user/add", {"uid": "u1", "user_info": "x", "group_id": f"/tmp/{marker}"}),
        ("faceset/user/get", {"uid": f"..\\..\\{marker}"}),
        ("faceset/group/getusers", {"group_id": f"../../{marker}"}),
        ("faceset/group/adduser", {"src_group_id": "g", "group_id": f"../{marker}",
                                   "uid": "u1"}),
        ("person/verify", {"id_card_number": f"../../{marker}", "name": "x"}),
    ]
    async with Api(secure_engine) as api:
        for path, fields in attempts:
            reply = await api.call(path, image=face, **fields)
            assert reply.get("error_code") == 216100, (path, fields, reply)
    assert secure_engine.store.counts()["users"] == 0  # nothing was registered
    after = _tree(parent)
    assert after - before <= {"data/faceset.sqlite3-wal", "data/faceset.sqlite3-shm"}
    assert {p.split("/")[0] for p in after} == {"data"}
    assert not any(marker in p for p in after)
    # where "../../<marker>" or "/tmp/<marker>" would land from the data dir or the cwd
    for base in (parent.parent, ROOT, ROOT.parent, ROOT.parent.parent, Path("/tmp")):
        assert not list(base.glob(f"*{marker}*")), base


async def test_a_traversal_url_gets_the_unknown_path_error(secure_engine: Any) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/rest/2.0/face/v2/../../../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd"):
            async with session.get(secure_engine.url + path) as resp:
                status, reply = resp.status, await resp.json()
            assert status == 200 and reply["error_code"] == 216102
            assert "root:" not in str(reply)
