"""One QPS budget per account: N enroll processes sharing one budget (PostgreSQL, Redis) vs alone.

The no-work server of benchmarks/quota.py (Q calls per fixed 1-s window on each of detect
and add, ``--shape`` for another, error 18 beyond) runs in its own process, a fresh one
per run. Against it, for N = 2 and 4:

1. N ``faceflow enroll`` processes with ``--qps Q --qps-budget postgresql://...``: one
   budget for the account, so together they should send Q;
2. the same with ``--qps-budget redis://...`` (skipped, with the reason printed, when no
   redis-server can be found);
3. the same N processes with ``--qps Q`` each and no budget (separate limiters, each
   believing it owns the account's Q): they offer N*Q and learn from the 18s.

Each run enrolls Q * ``--seconds`` rows in total (split evenly between the processes);
utilisation is the server's successful calls/s over the run without its first and last
2 seconds, divided by Q; "18 share" is the share of calls rejected. Goal (issue 15):
with the budget, together >= 0.95 Q and <= 0.5 % rejected.

    .venv/bin/python benchmarks/budget.py [--q 10] [--seconds 20] [--procs 2 4]
        [--stores postgresql redis]

The budget's PostgreSQL is a temporary local cluster (pipeline.postgres.LocalCluster),
its Redis a temporary local redis-server (pipeline.redis_server.LocalRedis).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, write_result  # noqa: E402
from benchmarks.quota import admin, make_manifest, utilisation  # noqa: E402
from pipeline.postgres import LocalCluster  # noqa: E402
from pipeline.redis_server import LocalRedis, RedisUnavailable  # noqa: E402

FACEFLOW = Path(sys.executable).parent / "faceflow"


def split_manifest(manifest: Path, parts: int) -> list[Path]:
    lines = manifest.read_text().splitlines()
    header, rows = lines[0], lines[1:]
    out = []
    for k in range(parts):
        path = manifest.with_name(f"part{k}.csv")
        path.write_text("\n".join([header, *rows[k::parts]]) + "\n")
        out.append(path)
    return out


def run_processes(url: str, manifests: list[Path], folder: Path, q: float,
                  budget: str | None) -> float:
    """Run one enroll process per manifest at once; seconds until the last finished."""
    env = {**os.environ, "FACEFLOW_API_KEY": "bench-ak", "FACEFLOW_SECRET_KEY": "bench-sk"}
    start = time.perf_counter()
    procs = []
    for k, manifest in enumerate(manifests):
        command = [str(FACEFLOW), "enroll", str(manifest), "--group", "bench", "--qps", str(q),
                   "--endpoint", url, "--concurrency", "16", "--flush-seconds", "5",
                   "--run-dir", str(folder / f"run-{k}")]
        if budget:
            command += ["--qps-budget", budget]
        procs.append(subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"enroll exited {proc.returncode}: {err[-2500:]}")
    return time.perf_counter() - start


def measure(q: float, shape: str, seconds: int, counts: list[int],
            budget_urls: dict[str, str]) -> dict[str, Any]:
    """``budget_urls``: store name (PostgreSQL, Redis) -> its URL; each gets a row per N."""
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = make_manifest(folder, int(q * seconds))
        for n in counts:
            parts = split_manifest(manifest, n)
            plan: list[tuple[str, str | None, str | None]] = [
                (f"{n} processes, one {store} budget", store, url)
                for store, url in budget_urls.items()]
            plan.append((f"{n} processes, separate limiters", None, None))
            for label, store, budget in plan:
                run_dir = folder / f"{n}-{store or 'separate'}"
                with _server(q, shape) as url:
                    wall = run_processes(url, parts, run_dir, q, budget)
                    stats = _counts(admin(url, "/admin/stats"))
                runs[label] = {"processes": n, "shared_budget": budget is not None,
                               "store": store, "wall_s": round(wall, 1),
                               **utilisation(stats, q)}
    return runs


@contextmanager
def _server(q: float, shape: str) -> Iterator[str]:
    """quota.py's counting server for one run: its URL."""
    spec = json.dumps({"q": q, "shape": shape, "faults": {}})
    server = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "quota.py"),
                               "--serve", spec], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        yield f"http://127.0.0.1:{server.stdout.readline().strip()}"
    finally:
        server.terminate()
        server.wait(10)


def _counts(stats: dict[str, Any]) -> dict[str, Any]:
    """quota.py's {interface: {"ok"|"limited": {second: n}}} as utilisation() reads it."""
    return {"ok": {name: kinds.get("ok", {}) for name, kinds in stats.items()},
            "rejected": {name: kinds.get("limited", {}) for name, kinds in stats.items()}}


def verdict(run: dict[str, Any]) -> str:
    ok = all(run[i]["utilisation"] >= 0.95 and run[i]["rejected_share"] <= 0.005
             for i in ("detect", "add"))
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=float, default=10.0, help="server quota per interface")
    parser.add_argument("--seconds", type=int, default=20, help="length of each run")
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--shape", default="fixed", choices=("fixed", "sliding", "bucket"),
                        help="how the server counts its quota")
    parser.add_argument("--stores", nargs="+", default=["postgresql", "redis"],
                        choices=("postgresql", "redis"), help="the budget stores to measure")
    args = parser.parse_args()
    skipped: dict[str, str] = {}
    with ExitStack() as stack:
        urls: dict[str, str] = {}
        if "postgresql" in args.stores:
            urls["PostgreSQL"] = stack.enter_context(LocalCluster()).url
        if "redis" in args.stores:
            try:
                urls["Redis"] = stack.enter_context(LocalRedis()).url
            except RedisUnavailable as exc:
                skipped["Redis"] = str(exc)
                print(f"Redis rows skipped: {exc}")
        runs = measure(args.q, args.shape, args.seconds, args.procs, urls)
    report = {"q": args.q, "shape": args.shape, "seconds": args.seconds, "runs": runs,
              "verdicts": {k: verdict(r) for k, r in runs.items() if r["shared_budget"]},
              "skipped": skipped,
              "goal": "shared budget: together >= 0.95 Q, <= 0.5 % rejected"}
    path = write_result("budget", report)
    print(f"server quota Q = {args.q:g} calls/s per interface ({args.shape} windows); "
          "utilisation = successful calls/s / Q, all processes together")
    print(f"{'run':38} {'wall s':>7} {'detect':>8} {'add':>8} {'18 share':>9} {'goal':>6}")
    for label, run in runs.items():
        share = max(run["detect"]["rejected_share"], run["add"]["rejected_share"])
        goal = verdict(run) if run["shared_budget"] else ""
        print(f"{label:38} {run['wall_s']:7.1f} {run['detect']['utilisation']:8.3f} "
              f"{run['add']['utilisation']:8.3f} {share:9.2%} {goal:>6}")
    print(f"\nwritten: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
