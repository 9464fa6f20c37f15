"""Quota use: how close faceflow gets to the QPS the account pays for, against the naive way.

A server that does no work runs in another process and enforces Q calls per fixed
1-second window on each of detect and add (error 18 beyond it), decided by the engine's
own :class:`pipeline.engine.emulation.Emulation` (the engine itself would spend ~0.1 s
of dlib per detect, which would measure dlib, not the client). Three runs against it,
each counted by the server:

1. faceflow enroll (the real runner and client) with ``--qps Q``: the client knows Q.
2. faceflow enroll with its limit set 3x above the server's (an unknown quota): it
   must find Q from the 18s. Utilisation per 5-s window shows how soon.
3. The naive script a user would otherwise write around the official SDK: a pool of
   8 threads calling detect then add row by row with blocking HTTP (urllib), sleeping
   1 s on error 18 and trying again.

Each run enrolls Q * ``--seconds`` rows; utilisation is successful calls/s over the
run without its first 2 and last 2 seconds (ramp-up, tail), divided by Q.

Goals (issue 7): known quota >= 0.97 Q successful calls/s and <= 0.5 % error 18;
unknown quota >= 0.95 Q within 30 s, and staying there.

    .venv/bin/python benchmarks/quota.py [--q 10] [--seconds 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, write_result  # noqa: E402

INTERFACES = {"/rest/2.0/face/v2/detect": "detect",
              "/rest/2.0/face/v2/faceset/user/add": "add"}
FACE = {"location": {"left": 10, "top": 10, "width": 180, "height": 180},
        "face_probability": 1.0, "rotation_angle": 0, "yaw": 0.0, "pitch": 0.0, "roll": 0.0,
        "qualities": {"occlusion": {p: 0.0 for p in ("left_eye", "right_eye", "nose", "mouth",
                                                     "left_cheek", "right_cheek", "chin")},
                      "blur": 0.05, "illumination": 120, "completeness": 1}}


# -- the no-work server (its own process) -----------------------------------------------------

def serve(q: float) -> None:
    """Run the counting server; print its port; Q per fixed 1-s window per interface
    (0: no limit)."""
    from aiohttp import web

    from pipeline.engine.emulation import Emulation, EmulationConfig

    # The engine's own emulation decides each call: the same fixed 1-s windows, exactly.
    state: dict[str, Any] = {"q": q, "ok": defaultdict(lambda: defaultdict(int)),
                             "rejected": defaultdict(lambda: defaultdict(int)),
                             "emulation": Emulation(EmulationConfig(qps=q or None)), "log": 1}

    async def token(_: web.Request) -> web.Response:
        return web.json_response({"access_token": "bench", "expires_in": 2592000,
                                  "scope": "brain_all_scope"})

    async def api(request: web.Request) -> web.Response:
        await request.read()
        name = INTERFACES.get(request.path)
        state["log"] += 1
        if name is None:
            return web.json_response({"error_code": 216102, "error_msg": "service not support",
                                      "log_id": state["log"]})
        sec = int(time.monotonic())  # the clock the emulation's windows use
        if state["emulation"].admit(name).kind != "ok":
            state["rejected"][name][sec] += 1
            return web.json_response({"error_code": 18, "log_id": state["log"],
                                      "error_msg": "Open api qps request limit reached"})
        state["ok"][name][sec] += 1
        body = {"log_id": state["log"]}
        if name == "detect":
            body.update(result_num=1, result=[FACE])
        return web.json_response(body)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({k: {n: dict(v) for n, v in state[k].items()}
                                  for k in ("ok", "rejected")})

    async def reset(request: web.Request) -> web.Response:
        state["q"] = float(request.query.get("q", state["q"]))
        state["emulation"].configure({"qps": state["q"] or None, "reset": True})
        for key in ("ok", "rejected"):
            state[key].clear()
        return web.json_response({"q": state["q"]})

    app = web.Application(client_max_size=32 * 2**20)
    app.router.add_route("*", "/oauth/2.0/token", token)
    app.router.add_post("/admin/reset", reset)
    app.router.add_get("/admin/stats", stats)
    app.router.add_post("/{tail:.*}", api)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def _admin(url: str, path: str, method: str = "GET") -> Any:
    req = urllib.request.Request(url + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as reply:
        return json.load(reply)


# -- measuring --------------------------------------------------------------------------------

def utilisation(stats: dict[str, Any], q: float, window: tuple[int, int] | None = None
                ) -> dict[str, Any]:
    """Per interface: successful calls/s over the steady part of the run, / Q; 18 share."""
    out = {}
    for name in ("detect", "add"):
        ok = {int(s): n for s, n in stats["ok"].get(name, {}).items()}
        rej = {int(s): n for s, n in stats["rejected"].get(name, {}).items()}
        if not ok:
            out[name] = None
            continue
        first, last = min(ok), max(ok)
        lo, hi = window or (first + 2, last - 2)  # skip the ramp-up and the tail
        span = range(lo, hi + 1)
        rate = sum(ok.get(s, 0) for s in span) / max(1, len(span))
        calls = sum(ok.values()) + sum(rej.values())
        out[name] = {"ok_per_s": round(rate, 3), "utilisation": round(rate / q, 4),
                     "calls": calls, "rejected": sum(rej.values()),
                     "rejected_share": round(sum(rej.values()) / calls, 4),
                     "seconds": len(span)}
    return out


def timeline(stats: dict[str, Any], q: float, step: int = 5) -> dict[str, list[float]]:
    """Per interface: utilisation per ``step``-second window from the run's first call
    (the last, partial window left out)."""
    seconds = [int(s) for name in ("detect", "add") for s in stats["ok"].get(name, {})]
    if not seconds:
        return {}
    first, last = min(seconds), max(seconds)
    out = {}
    for name in ("detect", "add"):
        ok = {int(s): n for s, n in stats["ok"].get(name, {}).items()}
        out[name] = [round(sum(ok.get(s, 0) for s in range(t, t + step)) / step / q, 3)
                     for t in range(first, last - step + 1, step)]
    return out


def after(line: dict[str, list[float]], seconds: int, step: int = 5) -> dict[str, float] | None:
    """Worst and mean utilisation over the windows from ``seconds`` on, both interfaces."""
    values = [min(pair) for pair in zip(line["detect"], line["add"], strict=True)]
    values = values[seconds // step:]
    if not values:
        return None
    return {"min": min(values), "mean": round(sum(values) / len(values), 3),
            "windows": len(values)}


def make_manifest(folder: Path, rows: int) -> Path:
    """``rows`` rows with distinct uids over one small photo (the server ignores it)."""
    from PIL import Image

    photo = folder / "face.jpg"
    Image.open(ROOT / "data" / "samples" / "obama_01.jpg").convert("RGB") \
        .resize((200, 250)).save(photo, quality=90)
    path = folder / "manifest.csv"
    lines = ["uid,image,user_info"] + [f"u{i},face.jpg,member {i}" for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_faceflow(url: str, manifest: Path, run_dir: Path, qps: float) -> float:
    from pipeline.client.config import Settings
    from pipeline.enroll.job import EnrollConfig, run_enroll

    settings = Settings(endpoint=url, api_key="bench-ak", secret_key="bench-sk")
    config = EnrollConfig(manifest=manifest, settings=settings, group="bench", qps=qps,
                          concurrency=16, run_dir=run_dir, flush_seconds=5)
    t = time.perf_counter()
    result = asyncio.run(run_enroll(config))
    assert result.remaining == 0, "the run did not finish"
    return time.perf_counter() - t


def run_naive(url: str, image: bytes, rows: int, threads: int = 8) -> float:
    """The script a user would write around the SDK: blocking calls, sleep 1 s on 18."""
    import base64

    with urllib.request.urlopen(f"{url}/oauth/2.0/token?grant_type=client_credentials"
                                "&client_id=a&client_secret=b", timeout=10) as reply:
        token = json.load(reply)["access_token"]
    b64 = base64.b64encode(image).decode()

    def call(path: str, fields: dict[str, str]) -> dict[str, Any]:
        data = urllib.parse.urlencode(fields).encode()
        while True:
            req = urllib.request.Request(f"{url}{path}?access_token={token}", data=data)
            with urllib.request.urlopen(req, timeout=60) as reply:
                body = json.load(reply)
            if body.get("error_code") != 18:
                return body
            time.sleep(1.0)

    def row(i: int) -> None:
        call("/rest/2.0/face/v2/detect", {"image": b64, "face_fields": "qualities"})
        call("/rest/2.0/face/v2/faceset/user/add",
             {"uid": f"n{i}", "user_info": "x", "group_id": "naive", "image": b64})

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(row, range(rows)))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=float, default=10.0, help="server quota per interface")
    parser.add_argument("--seconds", type=int, default=60, help="length of each run")
    parser.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    q = args.q
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(q)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        report = measure(url, q, args.seconds)
        report["verdicts"] = verdicts(report)
    finally:
        server.terminate()
        server.wait(10)
    path = write_result("quota", report)
    print_report(report)
    print(f"\nwritten: {path.relative_to(ROOT)}")


def measure(url: str, q: float, seconds: int) -> dict[str, Any]:
    rows = int(q * seconds)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = make_manifest(folder, rows)
        runs = {}
        for label, qps in (("faceflow, --qps Q", q), ("faceflow, --qps 3Q (unknown quota)", 3 * q)):
            _admin(url, f"/admin/reset?q={q}", "POST")
            wall = run_faceflow(url, manifest, folder / f"run{len(runs)}", qps)
            stats = _admin(url, "/admin/stats")
            line = timeline(stats, q)
            runs[label] = {"client_qps": qps, "rows": rows, "wall_s": round(wall, 1),
                           **utilisation(stats, q), "timeline_5s": line,
                           "after_30s": after(line, 30)}
        _admin(url, f"/admin/reset?q={q}", "POST")
        wall = run_naive(url, (folder / "face.jpg").read_bytes(), rows)
        stats = _admin(url, "/admin/stats")
        runs["naive: 8 threads, sleep 1 s on 18"] = {
            "client_qps": None, "rows": rows, "wall_s": round(wall, 1),
            **utilisation(stats, q), "timeline_5s": timeline(stats, q)}
        runs["naive: 8 threads, sleep 1 s on 18"]["after_30s"] = after(
            runs["naive: 8 threads, sleep 1 s on 18"]["timeline_5s"], 30)
    return {"q": q, "runs": runs, "goals": {
        "known_quota": ">= 0.97 Q successful calls/s, <= 0.5 % error 18",
        "unknown_quota": ">= 0.95 Q within 30 s, and stays there"}}


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    runs = list(report["runs"].values())
    known, unknown = runs[0], runs[1]
    k_ok = all(known[i]["utilisation"] >= 0.97 and known[i]["rejected_share"] <= 0.005
               for i in ("detect", "add"))
    settled = unknown["after_30s"]
    u_ok = settled is not None and settled["min"] >= 0.95
    return {"known_quota": "PASS" if k_ok else "FAIL",
            "unknown_quota": "PASS" if u_ok else "FAIL"}


def print_report(report: dict[str, Any]) -> None:
    q = report["q"]
    print(f"server quota Q = {q:g} calls/s per interface (fixed 1-s windows); "
          "utilisation = successful calls/s / Q over the steady part of each run")
    print(f"{'run':38} {'wall s':>7} {'detect':>8} {'add':>8} {'18 share':>9}")
    for label, run in report["runs"].items():
        share = max(run["detect"]["rejected_share"], run["add"]["rejected_share"])
        print(f"{label:38} {run['wall_s']:7.1f} {run['detect']['utilisation']:8.3f} "
              f"{run['add']['utilisation']:8.3f} {share:9.2%}")
    unknown = list(report["runs"].values())[1]
    for name, line in unknown["timeline_5s"].items():
        print(f"unknown quota, {name} utilisation per 5 s from the first call: {line}")
    print("unknown quota, from 30 s on (worse of detect/add per window):", unknown["after_30s"])
    print("verdicts:", report["verdicts"])


if __name__ == "__main__":
    main()
