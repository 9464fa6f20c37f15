"""Audit benchmark: API calls and wall time for 1k and 10k faces, to show linear growth.

The search side is synthetic (tests/support/audit_double.py): every photo is a unique 16x16
PNG whose bytes the double maps to a 128-d descriptor, the faceset is seeded
directly with one face per photo, and identify scores only the probe's bucket plus
k background faces (O(k) per call, so the double's own search does not grow with
n). What is measured is the real audit: planning from an enrollment run directory
(what enroll leaves: run.json and an outcome part), the real client over HTTP on
127.0.0.1 (token, rate limiter, retries), probe records journaled to the audit's
run directory, findings, clusters and report.html. Photos are served from memory.
Planted: ~2% of identities enrolled under a second uid (another photo), ~1% exact
copies under another uid, ~1% uids holding a second person, ~5% uids with a second
photo of themselves (not a finding).

Prints calls per face and time per face at each size and their 10k/1k ratios,
the planted findings recovered, and writes benchmarks/results/audit.json.
Usage: .venv/bin/python benchmarks/audit.py [--sizes 1000,10000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.audit_double import FaceDouble, descriptors, enroll_run, png, variant  # noqa: E402

from pipeline.audit.job import AuditConfig, read_findings, run_audit  # noqa: E402
from pipeline.client.config import Settings  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "audit.json"
GROUP = "bench"


def build(root: Path, n: int, double: FaceDouble, seed: int = 7
          ) -> tuple[Path, dict[str, bytes], dict[str, int]]:
    """An enrollment run of ``n`` photos, the double seeded with them.

    Returns (run dir, path -> photo bytes, planted findings per kind).
    """
    rng = np.random.default_rng(seed)
    people = descriptors(2 * n, seed)  # the second half: strangers, never enrolled
    rows: list[tuple[str, bytes, np.ndarray, int]] = []  # (uid, bytes, descriptor, person)
    planted = {"same_person_multiple_uids": 0, "exact_copy": 0, "multiple_people_one_uid": 0}
    i = 0
    while len(rows) < n:
        uid, face = f"u{i:06d}", people[i]
        rows.append((uid, png(i, 0), face, i))
        roll = rng.random()
        if roll < 0.02:  # the same person again under another uid, another photo
            rows.append((f"{uid}_dup", png(i, 1), variant(face, i), i))
            planted["same_person_multiple_uids"] += 1
        elif roll < 0.03:  # the same bytes under another uid
            rows.append((f"{uid}_copy", rows[-1][1], face, i))
            planted["exact_copy"] += 1
        elif roll < 0.04:  # someone else's photo under this uid
            rows.append((uid, png(i, 2), people[n + i], n + i))
            planted["multiple_people_one_uid"] += 1
        elif roll < 0.09:  # a second photo of the same person, same uid: not a finding
            rows.append((uid, png(i, 3), variant(face, i + 1), i))
        i += 1
    run_dir, photos = enroll_run(root, GROUP, rows[:n], double)
    return run_dir, photos, planted


async def measure(n: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, FaceDouble(buckets=True) as double:
        root = Path(tmp)
        t0 = time.perf_counter()
        enroll_dir, photos, planted = build(root, n, double)
        setup_s = time.perf_counter() - t0
        settings = Settings(endpoint=double.url, api_key=_s("bench-ak"),
                            secret_key=_s("bench-sk"))
        config = AuditConfig(settings=settings, groups=(GROUP,), run_dirs=(enroll_dir,),
                             run_dir=root / "audit", concurrency=concurrency, qps=1e6)
        t1 = time.perf_counter()
        result = await run_audit(config, loader=lambda img: photos[img.path])
        wall = time.perf_counter() - t1
        findings = read_findings(result.run_dir)
    calls = {k: v for k, v in double.calls.items() if k != "token"}
    total_calls = sum(calls.values())
    return {
        "faces": n, "probes": result.probes, "wall_s": round(wall, 3),
        "setup_s": round(setup_s, 3), "calls": calls, "total_calls": total_calls,
        "calls_per_face": round(total_calls / n, 4), "ms_per_face": round(1000 * wall / n, 4),
        "planted": planted, "found": dict(result.counts), "clusters": result.clusters,
        "failed_probes": result.failed,
        "unconfirmed": sum(not f.confirmed for f in findings),
    }


def _s(value: str) -> Any:
    from pipeline.client.config import Secret  # noqa: PLC0415

    return Secret(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = [asyncio.run(measure(n, args.concurrency)) for n in sizes]
    for r in runs:
        print(f"{r['faces']:>6} faces: {r['total_calls']:>6} calls ({r['calls']}), "
              f"{r['calls_per_face']:.3f} calls/face, {r['wall_s']:.2f} s, "
              f"{r['ms_per_face']:.3f} ms/face; planted {r['planted']} found {r['found']}")
    summary: dict[str, Any] = {"runs": runs, "concurrency": args.concurrency,
                               "python": platform.python_version(),
                               "machine": platform.machine()}
    if len(runs) >= 2:
        small, big = runs[0], runs[-1]
        summary["ratio"] = {
            "faces": big["faces"] / small["faces"],
            "calls_per_face": round(big["calls_per_face"] / small["calls_per_face"], 3),
            "time_per_face": round(big["ms_per_face"] / small["ms_per_face"], 3),
        }
        print(f"{big['faces']}/{small['faces']} faces: calls per face x"
              f"{summary['ratio']['calls_per_face']}, time per face x"
              f"{summary['ratio']['time_per_face']} (1.0 = linear growth)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
