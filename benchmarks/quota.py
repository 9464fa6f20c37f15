"""Quota use under real service behaviour: faceflow against the naive script, side by side.

Each scenario runs a no-work server in its own process that admits Q calls/s on each of
detect and add, counted as a token bucket (bursts up to Q), fixed calendar-second
windows or a sliding 1-s window (pipeline/engine/windows.py); over it, error 18. Some
scenarios add a storm (random 18/4 and HTTP 500 on admitted calls, and calls never
answered) or hung calls only. The client never learns the shape. Against it run:

- faceflow enroll (the real job, client and governor) with ``--qps Q`` (quota known),
  ``--qps 3Q`` or no ``--qps`` (unknown: it must find Q);
- the naive script a user would otherwise write around the SDK: 8 threads calling detect
  then add row by row with blocking HTTP (urllib, the SDK's 60-s timeout), sleeping 1 s
  on error 18 and trying again; any other error fails the row.

Each run enrolls Q x ``--seconds`` rows (twice that in the storm) and is stopped at a
deadline (2x its nominal length + 20 s); rows left then are "unfinished". The server
counts every call per second. Printed per run: achieved Q share (successful calls/s
over the steady part, without the first 2 s and the last 2 s, the worse of detect and
add, / Q), the share of calls answered 4/18 (overall, and after the first 10 s),
rows/s in the first and the last quarter of the run, rows failed (and unfinished), wall
seconds ("Q >10s": the Q share from 10 s on, after an unknown quota's search).

Quarters, honestly defined: the run's span is from the second of the first successful
add to that of the last (every row, the slowest retries included); rows/s per quarter
are successful adds per second in its first and last quarter. The last quarter so
holds the drain, when fewer rows are left than the job runs at once (16) and the
lanes cannot be kept busy; "drain s" says how long that was (from when all but 16 rows
were added to the last add). The storm's goal is judged on the whole span, drain
included.
Scenarios run ``--parallel`` at a time, each client and server in its own
process: they spend their time waiting on the quota.

Goals (issue 12): quota known >= 0.97 Q and <= 0.5 % rejected; unknown >= 0.95 Q after
the search and <= 2 % rejected after the first 10 s (<= 5 % overall); storm: last
quarter >= 0.9x the first, no row failed; 5 % hung calls: no row failed, about as fast
as without hangs.

    .venv/bin/python benchmarks/quota.py [--q 10] [--seconds 40] [--parallel 5] [--hogs 2]

``--hogs N`` runs N CPU-bound processes (``while 1: pass``) for the whole benchmark, to
show the figures hold on a busy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
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
STORM = {"18": 0.20, "4": 0.05, "http500": 0.02, "hang": 0.02}
HUNG = {"hang": 0.05}
NAIVE = "naive: 8 threads, sleep 1 s on 18"


def scenarios(q: float) -> list[dict[str, Any]]:
    """Every run: a name, the server (shape, faults) and the client (who, --qps)."""
    runs: list[dict[str, Any]] = []
    for shape in ("bucket", "fixed", "sliding"):
        for client, qps, label in (("faceflow", q, "faceflow --qps Q"),
                                   ("faceflow", 3 * q, "faceflow --qps 3Q (unknown quota)"),
                                   ("naive", None, NAIVE)):
            runs.append({"name": f"{shape}: {label}", "shape": shape, "faults": {},
                         "client": client, "qps": qps, "kind": "known" if qps == q else
                         "unknown" if client == "faceflow" else "naive", "length": 1})
    for shape in ("bucket", "fixed", "sliding"):  # no ceiling at all: it starts at 8/s
        runs.append({"name": f"{shape}: faceflow, no --qps (unknown quota)", "shape": shape,
                     "faults": {}, "client": "faceflow", "qps": None, "kind": "unknown",
                     "length": 1})
    for client, qps, label in (("faceflow", q, "faceflow --qps Q"), ("naive", None, NAIVE)):
        runs.append({"name": f"storm: {label}", "shape": "fixed", "faults": STORM,
                     "client": client, "qps": qps, "kind": "storm", "length": 2})
        runs.append({"name": f"5% hung: {label}", "shape": "sliding", "faults": HUNG,
                     "client": client, "qps": qps, "kind": "hung", "length": 1})
    return runs


# -- the no-work server (its own process) -----------------------------------------------------

def serve(config: dict[str, Any]) -> None:
    """Run the counting server for one scenario; print its port."""
    import random

    from aiohttp import web

    from pipeline.engine.windows import make_window

    q, faults = float(config["q"]), dict(config.get("faults") or {})
    windows = {name: make_window(config["shape"], q) for name in ("detect", "add")}
    counts: dict[str, dict[str, dict[int, int]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(int)))
    rng, log_ids = random.Random(config.get("seed", 1)), iter(range(1, 10**9))

    async def token(_: web.Request) -> web.Response:
        return web.json_response({"access_token": "bench", "expires_in": 2592000,
                                  "scope": "brain_all_scope"})

    def draw() -> str | None:
        roll = rng.random()
        for kind, rate in faults.items():
            if roll < rate:
                return kind
            roll -= rate
        return None

    async def api(request: web.Request) -> web.StreamResponse:
        await request.read()
        name = INTERFACES.get(request.path)
        if name is None:
            return web.json_response({"error_code": 216102, "error_msg": "service not support",
                                      "log_id": next(log_ids)})
        now = time.monotonic()
        sec = int(now)
        if not windows[name].admit(now):
            counts[name]["limited"][sec] += 1
            return web.json_response({"error_code": 18, "log_id": next(log_ids),
                                      "error_msg": "Open api qps request limit reached"})
        fault = draw()
        if fault == "hang":
            counts[name]["hang"][sec] += 1
            await asyncio.sleep(3600)  # never answered: the client must give up
        if fault == "http500":
            counts[name]["fault"][sec] += 1
            return web.Response(status=500, text="<html>Internal Server Error</html>",
                                content_type="text/html")
        if fault in ("18", "4"):
            counts[name]["limited"][sec] += 1
            return web.json_response({"error_code": int(fault), "log_id": next(log_ids),
                                      "error_msg": "Open api request limit reached"})
        counts[name]["ok"][sec] += 1
        body: dict[str, Any] = {"log_id": next(log_ids)}
        if name == "detect":
            body.update(result_num=1, result=[FACE])
        return web.json_response(body)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({n: {k: dict(v) for k, v in kinds.items()}
                                  for n, kinds in counts.items()})

    app = web.Application(client_max_size=32 * 2**20)
    app.router.add_route("*", "/oauth/2.0/token", token)
    app.router.add_get("/admin/stats", stats)
    app.router.add_post("/{tail:.*}", api)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def admin(url: str, path: str, method: str = "GET") -> Any:
    """The JSON reply of a benchmark server's admin endpoint (v3.py and budget.py use it too)."""
    req = urllib.request.Request(url + path, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as reply:
        return json.load(reply)


# -- figures from {"ok"|"rejected": {interface: {second: n}}} counts (benchmarks/v3.py and
# benchmarks/budget.py count their servers' calls so) ------------------------------------------

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


# -- the clients --------------------------------------------------------------------------------

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


def run_faceflow(url: str, manifest: Path, run_dir: Path, qps: float | None,
                 deadline: float) -> dict[str, Any]:
    """faceflow enroll in this process; stopped (interrupted) at ``deadline`` seconds."""
    from pipeline.client.config import Settings
    from pipeline.enroll.job import EnrollConfig, run_enroll
    from pipeline.runs.outcomes import SUCCESS_STATUSES

    settings = Settings(endpoint=url, api_key="bench-ak", secret_key="bench-sk")
    config = EnrollConfig(manifest=manifest, settings=settings, group="bench", qps=qps,
                          concurrency=16, run_dir=run_dir, flush_seconds=5)

    async def go() -> Any:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(deadline, stop.set)
        return await run_enroll(config, stop=stop)

    t = time.perf_counter()
    result = asyncio.run(go())
    failed = sum(n for s, n in result.counts.items() if s not in SUCCESS_STATUSES)
    return {"wall_s": round(time.perf_counter() - t, 1), "rows_failed": failed,
            "unfinished": result.remaining, "stop": result.stop_reason}


def run_naive(url: str, image: bytes, rows: int, deadline: float, threads: int = 8
              ) -> dict[str, Any]:
    """The script a user would write around the SDK: blocking calls, sleep 1 s on 18."""
    with urllib.request.urlopen(f"{url}/oauth/2.0/token?grant_type=client_credentials"
                                "&client_id=a&client_secret=b", timeout=10) as reply:
        token = json.load(reply)["access_token"]
    b64 = base64.b64encode(image).decode()
    stop_at = time.monotonic() + deadline
    tally = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def call(path: str, fields: dict[str, str]) -> dict[str, Any]:
        data = urllib.parse.urlencode(fields).encode()
        while True:
            req = urllib.request.Request(f"{url}{path}?access_token={token}", data=data)
            with urllib.request.urlopen(req, timeout=60) as reply:  # the SDK's default
                body = json.load(reply)
            if body.get("error_code") != 18:
                return body
            time.sleep(1.0)

    def row(i: int) -> None:
        if time.monotonic() > stop_at:
            return
        try:
            found = call("/rest/2.0/face/v2/detect", {"image": b64, "face_fields": "qualities"})
            added = call("/rest/2.0/face/v2/faceset/user/add",
                         {"uid": f"n{i}", "user_info": "x", "group_id": "naive", "image": b64})
            ok = "error_code" not in found and "error_code" not in added
        except (OSError, ValueError, urllib.error.URLError):
            ok = False  # HTTP 500 (urllib raises), a timeout, a reply that is not JSON
        with lock:
            tally["ok" if ok else "failed"] += 1

    t = time.perf_counter()
    pool = ThreadPoolExecutor(threads)
    futures = [pool.submit(row, i) for i in range(rows)]
    while time.monotonic() < stop_at + 1 and not all(f.done() for f in futures):
        time.sleep(0.2)
    pool.shutdown(wait=False, cancel_futures=True)
    done = tally["ok"] + tally["failed"]
    return {"wall_s": round(time.perf_counter() - t, 1), "rows_failed": tally["failed"],
            "unfinished": rows - done, "stop": None if done == rows else "deadline"}


# -- measuring --------------------------------------------------------------------------------

def _series(stats: dict[str, Any], name: str, kind: str) -> dict[int, int]:
    return {int(s): n for s, n in stats.get(name, {}).get(kind, {}).items()}


def measure_run(stats: dict[str, Any], q: float, rows: int | None = None,
                in_flight: int = 16) -> dict[str, Any]:
    """The figures of one run from the server's per-second counts. With ``rows``: also
    ``drain_s``, the seconds from when all but ``in_flight`` rows were added (the job
    can no longer keep its lanes busy) to the last add (they are in the last quarter)."""
    ok = {n: _series(stats, n, "ok") for n in ("detect", "add")}
    seconds = [s for n in ok for s in ok[n]]
    if not seconds:
        return {"q_share": 0.0, "q_share_after_10s": 0.0, "rejected": 0.0,
                "rejected_after_10s": 0.0,
                "rows_per_s_first_quarter": 0.0, "rows_per_s_last_quarter": 0.0, "calls": 0}
    first, last = min(seconds), max(seconds)
    steady = range(first + 2, max(first + 3, last - 1))
    share = min(sum(ok[n].get(s, 0) for s in steady) / len(steady) / q for n in ok)
    settled = range(first + 10, max(first + 11, last - 1))  # after the search
    share10 = min(sum(ok[n].get(s, 0) for s in settled) / len(settled) / q for n in ok)
    calls = rejected = calls10 = rejected10 = 0
    for name in ("detect", "add"):
        for kind in ("ok", "limited", "fault", "hang"):
            for sec, n in _series(stats, name, kind).items():
                calls += n
                rejected += n if kind == "limited" else 0
                if sec >= first + 10:
                    calls10 += n
                    rejected10 += n if kind == "limited" else 0
    span = last - first + 1
    quarter = max(1, span // 4)
    adds = ok["add"]
    head = sum(adds.get(s, 0) for s in range(first, first + quarter)) / quarter
    tail = sum(adds.get(s, 0) for s in range(last + 1 - quarter, last + 1)) / quarter
    drain = None
    if rows is not None:
        done = 0
        for sec in range(first, last + 1):
            done += adds.get(sec, 0)
            if done >= rows - in_flight:
                drain = last - sec
                break
    return {"q_share": round(share, 3), "q_share_after_10s": round(share10, 3),
            "drain_s": drain, "rejected": round(rejected / max(1, calls), 4),
            "rejected_after_10s": round(rejected10 / max(1, calls10), 4),
            "rows_per_s_first_quarter": round(head, 2), "rows_per_s_last_quarter": round(tail, 2),
            "calls": calls, "seconds": span}


def one_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one scenario (its server in a child process, the client here); the figures."""
    server = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps(spec)],
                              stdout=subprocess.PIPE, text=True)
    rows = int(spec["q"] * spec["seconds"] * spec["length"])
    deadline = 2 * spec["seconds"] * spec["length"] + 20
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        with tempfile.TemporaryDirectory() as tmp:
            manifest = make_manifest(Path(tmp), rows)
            if spec["client"] == "faceflow":
                outcome = run_faceflow(url, manifest, Path(tmp) / "run", spec["qps"], deadline)
            else:
                outcome = run_naive(url, (Path(tmp) / "face.jpg").read_bytes(), rows, deadline)
        stats = admin(url, "/admin/stats")
    finally:
        server.terminate()
        server.wait(10)
    return {**{k: spec[k] for k in ("name", "kind", "client", "qps")}, "rows": rows,
            **outcome, **measure_run(stats, spec["q"], rows)}


def verdict(run: dict[str, Any], runs: list[dict[str, Any]]) -> str | None:
    """PASS/FAIL against the goal of the run's kind (naive runs have none)."""
    if run["client"] != "faceflow":
        return None
    clean = run["rows_failed"] == 0 and run["unfinished"] == 0
    if run["kind"] == "known":
        ok = run["q_share"] >= 0.97 and run["rejected"] <= 0.005
    elif run["kind"] == "unknown":
        ok = (run["q_share_after_10s"] >= 0.95 and run["rejected_after_10s"] <= 0.02
              and run["rejected"] <= 0.05)
    elif run["kind"] == "storm":
        ok = run["rows_per_s_last_quarter"] >= 0.9 * run["rows_per_s_first_quarter"]
    else:  # hung: about as fast as the same server without hangs
        plain = next((r for r in runs if r["name"] == "sliding: faceflow --qps Q"), None)
        ok = plain is None or run["wall_s"] <= 1.2 * plain["wall_s"]
    return "PASS" if ok and clean else "FAIL"


# -- the table ----------------------------------------------------------------------------------

def print_report(report: dict[str, Any]) -> None:
    print(f"server quota Q = {report['q']:g} calls/s on each of detect and add; "
          f"{report['hogs']} CPU-bound processes beside; load average "
          f"{report['loadavg_before']:.1f} before")
    print(f"{'run':44} {'Q share':>7} {'Q >10s':>6} {'rej %':>6} {'rej>10s':>7} "
          f"{'rows/s 1st/last q':>17} {'drain s':>7} {'failed':>6} {'left':>5} {'wall s':>6}  "
          "verdict")
    for run in report["runs"]:
        quarters = f"{run['rows_per_s_first_quarter']:.1f} / {run['rows_per_s_last_quarter']:.1f}"
        print(f"{run['name']:44} {run['q_share']:7.3f} {run['q_share_after_10s']:6.3f} "
              f"{100 * run['rejected']:6.2f} "
              f"{100 * run['rejected_after_10s']:7.2f} {quarters:>17} "
              f"{'-' if run.get('drain_s') is None else run['drain_s']:>7} {run['rows_failed']:6d} "
              f"{run['unfinished']:5d} {run['wall_s']:6.1f}  {run['verdict'] or ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=float, default=10.0, help="server quota per interface")
    parser.add_argument("--seconds", type=int, default=40, help="nominal length of a run")
    parser.add_argument("--parallel", type=int, default=5, help="runs side by side")
    parser.add_argument("--hogs", type=int, default=0, help="CPU-bound processes beside")
    parser.add_argument("--only", nargs="*", default=None, help="run names containing these")
    parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(json.loads(args.serve))
        return
    if args.run is not None:
        print(json.dumps(one_run(json.loads(args.run))), flush=True)
        os._exit(0)  # the naive script's hung threads must not keep the process
    specs = [{**s, "q": args.q, "seconds": args.seconds} for s in scenarios(args.q)]
    if args.only:
        specs = [s for s in specs if any(word in s["name"] for word in args.only)]
    report = {"q": args.q, "seconds": args.seconds, "hogs": args.hogs,
              "loadavg_before": os.getloadavg()[0], "runs": measure(specs, args)}
    write_result("quota" if not args.hogs and not args.only else
                 f"quota_hogs{args.hogs}" if not args.only else "quota_partial", report)
    print_report(report)


def measure(specs: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(args.hogs)]
    try:
        # the longest first, so the last batch is not one long run alone
        order = sorted(specs, key=lambda s: -s["length"])
        with ThreadPoolExecutor(args.parallel) as pool:
            results = dict(zip([s["name"] for s in order], pool.map(_child, order), strict=True))
    finally:
        for hog in hogs:
            hog.kill()
    runs = [results[s["name"]] for s in specs]
    for run in runs:
        run["verdict"] = verdict(run, runs)
    return runs


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, "--run", json.dumps(spec)],
                         capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{spec['name']} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    main()
