"""`make bench`: run every benchmark in its own process, collect the figures.

Each script prints its own table and writes ``benchmarks/results/<name>.json``; this
runs them one after the other (each alone on the machine, so their figures do not
disturb each other), with a time budget each, then writes
``benchmarks/results/latest.json`` (every result plus the machine) and
``benchmarks/results/latest.md`` (the table the README shows). A missed goal is a
figure, not a failure: the exit code is non-zero only when a script crashed or ran
out of its budget.

    .venv/bin/python benchmarks/run_all.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, ROOT, machine  # noqa: E402

#: name -> (command after the interpreter, budget in seconds). Run in this order.
SCRIPTS: dict[str, tuple[list[str], int]] = {
    "client_overhead": (["benchmarks/client_overhead.py"], 120),
    "quota": (["benchmarks/quota.py", "--q", "10", "--seconds", "40"], 240),
    "engine": (["benchmarks/engine.py", "--quick"], 300),
    "audit": (["benchmarks/audit.py"], 120),
    "manifest": (["benchmarks/bench_manifest.py", "--rows", "1000000", "10000000",
                  "--iterate-max", "1000000"], 300),
    "resume": (["benchmarks/bench_resume.py", "--rows", "1000000"], 240),
}


def run(name: str, command: list[str], budget: int) -> dict[str, Any]:
    """Run one script; its figures come from the JSON file it writes."""
    result_file = RESULTS / f"{name}.json"
    before = result_file.stat().st_mtime if result_file.exists() else None
    start = time.perf_counter()
    print(f"\n=== {name}: {' '.join(command)} (budget {budget} s)", flush=True)
    try:
        proc = subprocess.run([sys.executable, *command], cwd=ROOT, timeout=budget)
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        status = f"over its {budget} s budget"
    wall = round(time.perf_counter() - start, 1)
    fresh = result_file.exists() and result_file.stat().st_mtime != before
    data = json.loads(result_file.read_text()) if fresh else None
    return {"status": status if fresh or status != "ok" else "wrote no result",
            "wall_s": wall, "command": ".venv/bin/python " + " ".join(command), "result": data}


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, figure, goal, verdict) rows for the markdown table."""
    out: list[tuple[str, str, str, str]] = []
    for name, entry in results.items():
        data = entry["result"]
        if data is None:
            out.append((name, entry["status"], "", "no figure"))
            continue
        out += ROWS.get(name, _generic)(data)
    return out


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _client(d: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    worst = d["worst_cpu_ms_per_call"]
    return [("client CPU per call, small image (token, limiter, retry, parse)",
             f"{d['fixed_overhead_ms_per_call']:.2f} ms", "<= 1 ms",
             _verdict(d["fixed_overhead_ms_per_call"] <= 1)),
            ("client CPU per call, 274 KiB photo (+ base64 and form escaping)",
             f"{worst:.2f} ms", "<= 1 ms", _verdict(worst <= 1))]


def _quota(d: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    out = []
    for label, run in d["runs"].items():
        share = max(run["detect"]["rejected_share"], run["add"]["rejected_share"])
        util = min(run["detect"]["utilisation"], run["add"]["utilisation"])
        goal, ok = "", None
        if "3Q" in label:
            goal, ok = ">= 0.95 Q within 30 s", d["verdicts"]["unknown_quota"] == "PASS"
        elif "faceflow" in label:
            goal, ok = ">= 0.97 Q, <= 0.5 % 18s", d["verdicts"]["known_quota"] == "PASS"
        out.append((f"quota use at Q={d['q']:g}: {label}",
                    f"{util:.3f} Q, {share:.1%} error 18", goal,
                    "" if ok is None else _verdict(ok)))
    return out


def _engine(d: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    ms = d["ms_per_image"]
    acc = d["pair_accuracy"]["engine_score_80"]
    search = d["identify"]["100000"]["search_only_ms"]["p50"]
    return [
        ("engine ms/image: detect+qualities+descriptor vs face_recognition-style",
         f"{ms['engine_detect_qualities_descriptor']:.0f} vs {ms['face_recognition_style']:.0f}"
         f" ms (ratio {d['cost_ratio_vs_face_recognition']:.2f})", "<= 0.5x",
         _verdict(d["cost_ratio_vs_face_recognition"] <= 0.5)),
        ("engine pairs at score 80 (dev set, distinct photos)",
         f"genuine {acc['true_accepts']}/{acc['genuine_pairs']}, impostor "
         f"{acc['false_accepts']}/{acc['impostor_pairs']}", "", ""),
        ("engine images/s, 1 and 2 workers",
         ", ".join(f"{v:.2f}" for v in d["images_per_second"].values()), "", ""),
        ("identify search p50 at 100k faces", f"{search:.1f} ms", "<= 10 ms",
         _verdict(search <= 10)),
    ]


def _audit(d: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(f"audit at {r['faces']:,} faces", f"{r['calls_per_face']:.3f} calls/face, "
             f"{r['ms_per_face']:.2f} ms/face", "linear (O(n*k))", "") for r in d["runs"]]


def _manifest(d: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(f"manifest {r['rows']:,} rows: {r['mode']}",
             f"{r['wall_s']:.1f} s, {r['rows_per_s']:,} rows/s, peak RSS {r['peak_rss_mb']} MB",
             "RSS <= 300 MB", _verdict(r["peak_rss_mb"] <= 300)) for r in d["runs"]]


def _resume(d: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(f"resume decision on a finished {d['rows']:,}-row run", f"{d['worst_wall_s']:.2f} s",
             "<= 10 s", _verdict(d["verdict"] == "PASS"))]


def _generic(d: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    return [(d.get("benchmark", "?"), json.dumps(d)[:80], "", "")]


ROWS = {"client_overhead": _client, "quota": _quota, "engine": _engine, "audit": _audit,
        "manifest": _manifest, "resume": _resume}


def markdown(results: dict[str, Any], facts: dict[str, Any], total: float) -> str:
    lines = [f"Measured {facts['date']} on {facts['cpu']} ({facts['cores']} cores), "
             f"{facts['platform']}, Python {facts['python']}; `make bench` took {total:.0f} s.",
             "", "| measure | figure | goal | verdict |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows(results)]
    lines += ["", "Commands: " + "; ".join(f"`{e['command']}`" for e in results.values())]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS))
    args = parser.parse_args()
    start = time.perf_counter()
    results = {name: run(name, *SCRIPTS[name]) for name in args.only}
    total = time.perf_counter() - start
    facts = machine()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(
        {"machine": facts, "total_s": round(total, 1), "results": results}, indent=2) + "\n")
    table = markdown(results, facts, total)
    (RESULTS / "latest.md").write_text(table)
    print("\n" + table)
    return 0 if all(e["status"] == "ok" for e in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
