"""`make bench`: run every benchmark in its own process, collect the figures.

Each script prints its own table and writes ``benchmarks/results/<name>.json``; this
runs them in :data:`STAGES` (each script in a fresh process, so its RSS and CPU are
its own) with a time budget each, then writes ``benchmarks/results/latest.json``
(every result plus the machine) and ``benchmarks/results/latest.md`` (the table the
README shows: measure, figure, goal, verdict, and the command that printed it). A
missed goal is a figure, not a failure: the exit code is non-zero only when a script
crashed, wrote no result or ran out of its budget.

    .venv/bin/python benchmarks/run_all.py [--only NAME ...] [--large]

``--only`` reruns some scripts; the others keep their figures from the last latest.json.
``--large`` adds the scripts of :data:`LARGE` (too long for make bench: the engine's
search at 1,000,000 faces, about 35 minutes on 2 cores); ``--only`` can name them too.
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

#: name -> (command after the interpreter, budget in seconds).
SCRIPTS: dict[str, tuple[list[str], int]] = {
    "client_overhead": (["benchmarks/client_overhead.py"], 120),
    "engine": (["benchmarks/engine.py", "--quick"], 420),  # dlib and sface when installed
    "calibration": (["benchmarks/calibration.py"], 180),
    "audit": (["benchmarks/audit.py"], 120),
    "scale": (["benchmarks/scale.py", "--sizes", "1000000", "10000000",
               "--enroll-rows", "10000"], 540),
    "quota": (["benchmarks/quota.py", "--q", "10", "--seconds", "40"], 420),
    "resume_finished": (["benchmarks/resume_finished.py"], 120),
    "ledger": (["benchmarks/ledger.py"], 420),
    "scale_engine": (["benchmarks/scale_engine.py", "--sizes", "100000", "1000000",
                      "--ef", "200", "400"], 1200),
    "scale_replicas": (["benchmarks/scale_replicas.py"], 420),
    "scale_engine_large": (["benchmarks/scale_engine.py", "--sizes", "1000000",
                            "--hnsw-up-to", "1000000", "--ef", "200", "400", "800",
                            "--exact-sizes", "--name", "scale_engine_large"], 4 * 3600),
    "budget": (["benchmarks/budget.py", "--q", "10", "--seconds", "20"], 420),
    "v3": (["benchmarks/v3.py", "--q", "10", "--seconds", "30"], 300),
}
#: One stage after the other; the scripts of a stage run side by side. Only quota shares
#: the machine (with scale): it spends its time waiting (10 calls/s per interface to a
#: no-work server, ~2 % of a core), and side by side they save ~3 of the 10 minutes
#: allowed. Everything else runs alone, so its CPU figures are undisturbed.
STAGES: list[list[str]] = [["client_overhead"], ["engine"], ["calibration"], ["audit"],
                           ["scale", "quota"], ["resume_finished"], ["ledger"],
                           ["scale_engine"], ["scale_replicas"], ["budget"], ["v3"],
                           ["scale_engine_large"]]
#: Run only with --large (or named by --only): over make bench's ~10 minutes a script.
LARGE = {"scale_engine_large"}

Row = tuple[str, str, str, str]  # measure, figure, goal, verdict


# -- running --------------------------------------------------------------------------------

def start(name: str) -> tuple[subprocess.Popen[bytes], float, float | None]:
    """Start one script: (process, start time, mtime of its previous result file)."""
    command, budget = SCRIPTS[name]
    result_file = RESULTS / f"{name}.json"
    before = result_file.stat().st_mtime if result_file.exists() else None
    print(f"\n=== {name}: {' '.join(command)} (budget {budget} s)", flush=True)
    return subprocess.Popen([sys.executable, *command], cwd=ROOT), time.perf_counter(), before


def finish(name: str, proc: subprocess.Popen[bytes], started: float, before: float | None
           ) -> dict[str, Any]:
    """Wait for one script (killed past its budget); its figures come from its JSON file."""
    command, budget = SCRIPTS[name]
    try:
        proc.wait(timeout=max(1.0, budget - (time.perf_counter() - started)))
        status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        status = f"over its {budget} s budget"
    wall = round(time.perf_counter() - started, 1)
    result_file = RESULTS / f"{name}.json"
    fresh = result_file.exists() and result_file.stat().st_mtime != before
    data = json.loads(result_file.read_text()) if fresh and status == "ok" else None
    return {"status": "wrote no result" if status == "ok" and not fresh else status,
            "wall_s": wall, "command": ".venv/bin/python " + " ".join(command), "result": data}


def run_stage(names: list[str]) -> dict[str, Any]:
    running = {name: start(name) for name in names}
    return {name: finish(name, *running[name]) for name in names}


# -- the table ------------------------------------------------------------------------------

def _verdict(ok: bool | None) -> str:
    return "" if ok is None else "met" if ok else "**NOT met**"


def _client(d: dict[str, Any]) -> list[Row]:
    goal = f"<= {d['goal_ms_per_call']:g} ms"
    return [("client CPU per detect call, 1.8 KB image (token, limiter, retry, parse)",
             f"{d['fixed_overhead_ms_per_call']:.2f} ms", goal,
             _verdict(d["verdict_fixed_overhead"] == "PASS")),
            ("client CPU per detect call, worst image size (+ base64 and form escaping)",
             f"{d['worst_cpu_ms_per_call']:.2f} ms", goal, _verdict(d["verdict"] == "PASS"))]


def _quota(d: dict[str, Any]) -> list[Row]:
    q = d["q"]
    goals = {"known": ">= 0.97 Q, <= 0.5 % rejected",
             "unknown": ">= 0.95 Q after 10 s, <= 2 % rejected after 10 s (<= 5 % in all)",
             "storm": "last quarter >= 0.9x first, no row failed",
             "hung": "no row failed, wall <= 1.2x without hangs"}
    out: list[Row] = []
    for run in d["runs"]:
        figure = (f"{run['q_share']:.3f} Q ({run.get('q_share_after_10s', 0):.3f} Q after "
                  f"10 s), {100 * run['rejected']:.2f} % rejected "
                  f"({100 * run['rejected_after_10s']:.2f} % after 10 s), rows/s "
                  f"{run['rows_per_s_first_quarter']:.1f} first / "
                  f"{run['rows_per_s_last_quarter']:.1f} last quarter, "
                  f"{run['rows_failed']} failed, {run['unfinished']} unfinished, "
                  f"{run['wall_s']:.0f} s")
        ok = None if run["verdict"] is None else run["verdict"] == "PASS"
        goal = goals.get(run["kind"], "") if run["client"] == "faceflow" else ""
        out.append((f"quota Q={q:g}/s, {run['rows']} rows: {run['name']}", figure, goal,
                    _verdict(ok)))
    return out


def _engine(d: dict[str, Any]) -> list[Row]:
    ms, ratio = d["ms_per_image"], d["cost_ratio_vs_face_recognition"]
    search = d["identify"]["100000"]["search_only_ms"]["p50"]
    roc = (d.get("pair_accuracy") or {}).get("engine_roc") or []
    return [
        ("engine ms/image: detect+qualities+descriptor vs face_recognition-style",
         f"{ms['engine_detect_qualities_descriptor']:.0f} vs "
         f"{ms['face_recognition_style']:.0f} ms (ratio {ratio:.2f})", "<= 0.5", _verdict(
             ratio <= 0.5)),
        ("engine pairs at score 70/80/90 (dev set, distinct photos)",
         "; ".join(f"{p['score']:g}: genuine {p['true_accepts']}/{p['genuine_pairs']}, "
                   f"impostor {p['false_accepts']}/{p['impostor_pairs']}" for p in roc) or
         "dev set absent", "", ""),
        ("engine images/s with 1 and 2 model workers",
         ", ".join(f"{v:.2f}" for v in d["images_per_second"].values()), "", ""),
        *_other_models(d),
        ("engine identify, search only, p50 at 100k faces", f"{search:.1f} ms", "<= 10 ms",
         _verdict(search <= 10)),
    ]


def _other_models(d: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for name, m in d.get("models", {}).items():
        if name == "dlib":
            continue
        rates = ", ".join(f"{v:.2f}" for v in m["images_per_second"].values())
        pairs = "; ".join(f"{p['score']:g}: genuine {p['true_accepts']}/{p['genuine_pairs']}, "
                          f"impostor {p['false_accepts']}/{p['impostor_pairs']}"
                          for p in m["roc"] or []) or "dev set absent"
        out.append((f"engine --model {name}: ms/image, images/s with 1 and 2 workers, pairs at "
                    "score 70/80/90", f"{m['ms_per_image']:.0f} ms; {rates} images/s; {pairs}",
                    "", ""))
    return out


def _calibration(d: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for model, m in d["models"].items():
        fit = m["fit"]
        out.append((
            f"{model} score calibration: different-person unit distances, "
            f"{fit['impostor_pairs']} pairs of stated-licence photos (normal model; score 80 = "
            "modelled FAR 1e-4)",
            f"mean {fit['impostor_mean']}, sd {fit['impostor_sd']}; 80 at d "
            f"{fit['anchors_fitted']['80.0']} (shipped {m['anchors_shipped']['80.0']})", "", ""))
        for name, points in m["roc"].items():
            at80 = next((p for p in points if p["score"] == 80.0 and "TAR" in p), None)
            if at80 is None:
                continue
            ok = (at80["FAR"] <= 0.001 and (at80["TAR"] or 0) >= 0.97) \
                if at80["genuine_pairs"] else None
            out.append((f"{model} score >= 80 on {name}",
                        f"genuine {at80['true_accepts']}/{at80['genuine_pairs']}, impostor "
                        f"{at80['false_accepts']}/{at80['impostor_pairs']}",
                        ">= 97 % genuine, <= 0.1 % impostor", _verdict(ok)))
    return out


def _audit(d: dict[str, Any]) -> list[Row]:
    out: list[Row] = [(f"audit at {r['faces']:,} faces (protocol double)",
                       f"{r['calls_per_face']:.3f} calls/face, {r['ms_per_face']:.2f} ms/face",
                       "", "") for r in d["runs"]]
    ratio = d["ratio"]
    out.append((f"audit growth, x{ratio['faces']:g} faces",
                f"calls/face x{ratio['calls_per_face']:.3f}, time/face "
                f"x{ratio['time_per_face']:.3f}", "linear: x1 per face", _verdict(
                    ratio["calls_per_face"] <= 1.1 and ratio["time_per_face"] <= 1.1)))
    return out


def _scale(d: dict[str, Any]) -> list[Row]:
    goal = "peak RSS <= 300 MB"
    out: list[Row] = []
    for r in d["stream"]:
        if r["rows"] == 0:
            out.append(("peak RSS of a process that only imports the enroll modules",
                        f"{r['peak_rss_mb']} MB", "", ""))
            continue
        out.append((f"manifest of {r['rows']:,} rows ({r['csv_mib']} MiB CSV): validate, then "
                    "every row through the runner's feed and row check (no image read, no HTTP)",
                    f"validate {r['validate_s']:.1f} s + stream {r['stream_s']:.1f} s, "
                    f"peak RSS {r['peak_rss_mb']} MB{_peaks(r)}", goal,
                    _verdict(r["peak_rss_mb"] <= 300)))
    e = d["enroll"]
    samples = e["samples"]
    out.append((f"real enroll of {e['rows']:,} rows (FaceClient over HTTP, image reads, Parquet "
                "parts) against a no-work server, RSS sampled",
                f"{e['rows_per_s']} rows/s; RSS {samples[1][1]:.0f} MB after {samples[1][0]:,} "
                f"rows, {samples[-1][1]:.0f} MB at {samples[-1][0]:,} (second half "
                f"{e['growth_second_half_mb']:+.1f} MB); peak {e['peak_rss_mb']} MB", goal,
                _verdict(e["peak_rss_mb"] <= 300)))
    r = d["resume"]
    worst = max(r["runs"], key=lambda x: x["wall_s"])
    out.append((f"resume of a finished {r['rows']:,}-row run: open manifest + recover store + "
                "first row left, fresh process", f"{worst['wall_s']:.2f} s ({worst['attempt']})",
                "<= 10 s", _verdict(d["verdicts"]["resume"] == "PASS")))
    return out


def _peaks(r: dict[str, Any]) -> str:
    after = r.get("peak_rss_mb_after")
    if not after:
        return ""
    return (f" (peak after validation {after['validate']}, after opening the store "
            f"{after['store']}, at the first row {after['first_row']})")


def _resume_finished(d: dict[str, Any]) -> list[Row]:
    written, *unchanged = d["runs"]
    worst = max(unchanged, key=lambda r: r["wall_s"])
    return [(f"`faceflow enroll` again on a finished {d['rows']:,}-row run, "
             f"failures.csv ({written['failures_rows']:,} rows) missing, so written",
             f"{written['wall_s']:.2f} s, peak RSS {written['peak_rss_mb']} MB", "", ""),
            (f"`faceflow enroll` again on a finished {d['rows']:,}-row run, nothing changed",
             f"{worst['wall_s']:.2f} s, peak RSS {worst['peak_rss_mb']} MB",
             f"<= {d['goal_s']:g} s", _verdict(d["verdict"] == "PASS"))]


def _scale_engine(d: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for size, r in d["sizes"].items():
        emb, pg = r["embedded"], r.get("postgresql") or {}
        ivf = pg.get("ivfflat")
        n = f"{int(size):,} faces (real + generated descriptors)"
        if ivf:
            probes = str(ivf["engine_probes"])
            h = ivf["probes"][probes]
            out += [
                (f"identify search at {n}: embedded numpy vs PostgreSQL IVFFlat "
                 f"({ivf['lists']} lists, {probes} probed)",
                 f"p50/p99 {emb['p50_ms']}/{emb['p99_ms']} ms vs {h['p50_ms']}/{h['p99_ms']} "
                 f"ms; rank-1 {emb['rank1']:.2%} vs {h['rank1']:.2%} of {r['probes']} probes",
                 ">= 99.5 % rank-1", _verdict(h["rank1"] >= 0.995)),
                (f"IVFFlat at {n}: found exact search's nearest face",
                 f"{h['same_top_as_exact']:.2%}", ">= 99.9 %",
                 _verdict(h["same_top_as_exact"] >= 0.999)),
                (f"PostgreSQL at {n}: COPY load, IVFFlat build",
                 f"{pg['load_s']} s, {ivf['build_s']} s, index {ivf['index_mb']} MB", "", "")]
        for spec, b in pg.get("hnsw", {}).items():
            by_ef = b["ef_search"]
            out.append((f"HNSW (m:ef_construction {spec}) at {n}, for comparison: build; "
                        "p50 and nearest face found at ef_search " + "/".join(by_ef),
                        f"{b['build_s']} s, index {b['index_mb']} MB; " + ", ".join(
                            f"{h['p50_ms']} ms {h['same_top_as_exact']:.2%}"
                            for h in by_ef.values()), "", ""))
    if not out:
        out.append((d.get("benchmark", "scale_engine"), "stopped before any size's first "
                    "index build", "", "**no figure**"))
    exact = d.get("postgres_exact_by_group_size")
    if exact:
        out.append(("PostgreSQL exact search (no index), p50 by group size",
                    ", ".join(f"{int(n):,}: {r['p50_ms']} ms" for n, r in exact.items()),
                    "", ""))
    return out


def _scale_replicas(d: dict[str, Any]) -> list[Row]:
    runs = d["runs"]
    out: list[Row] = [("faces/s enrolled (user/add over HTTP, 1 model process per engine): "
                       + ", ".join(runs), ", ".join(f"{r['faces_per_s']:.2f}"
                                                    for r in runs.values()), "", "")]
    loop = d.get("loop") or {}
    for label, r in loop.items():
        if isinstance(r, dict):
            out.append((f"one replica, {loop['searchers']} slow searches at once, queries "
                        f"{label}: searches/s; cheap call (user/get) p50/p99",
                        f"{r['searches_per_s']}/s; {r['cheap_call']['p50_ms']}/"
                        f"{r['cheap_call']['p99_ms']} ms", "", ""))
    return out


def _budget(d: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for label, run in d["runs"].items():
        share = max(run["detect"]["rejected_share"], run["add"]["rejected_share"])
        util = min(run["detect"]["utilisation"], run["add"]["utilisation"])
        goal, ok = ("", None) if not run["shared_budget"] else (
            ">= 0.95 Q, <= 0.5 % error 18", d["verdicts"][label] == "PASS")
        out.append((f"account budget, server Q={d['q']:g}/s per interface: {label}",
                    f"{util:.3f} Q together, {share:.2%} of calls got error 18", goal,
                    _verdict(ok)))
    return out


def _generic(d: dict[str, Any]) -> list[Row]:
    return [(d.get("benchmark", "?"), json.dumps(d)[:80], "", "")]


def _ledger(d: dict[str, Any]) -> list[Row]:
    return [(f"ledger: decide what to send, {d['rows']:,}-row manifest with {d['known']:,} "
             "known (ledger lookup + one stat per known row); then writing the skipped_known "
             "outcomes", f"decide {d['decide_s']:.1f} s (validate {d['validate_s']:.1f} s "
             f"before); decide + write {d['decide_and_write_s']:.1f} s; peak RSS "
             f"{d['peak_rss_mb']} MB", f"decide <= {d['goal_s']:g} s",
             _verdict(d["verdict"] == "PASS"))]


def _v3(d: dict[str, Any]) -> list[Row]:
    runs = d["bytes"]["enrollable"]
    v2, v3 = runs["v2"], runs["v3"]
    out: list[Row] = [(
        f"bytes uploaded per enrolled row, {v3['rows']} enrollable rows: v3 (FACE_TOKEN "
        "writes) vs v2", f"{v3['per_enrolled_row']:,} B vs {v2['per_enrolled_row']:,} B "
        f"({runs['v3_over_v2']:.2f}); writes {v3['write_per_enrolled_row']} B vs "
        f"{v2['write_per_enrolled_row']:,} B", "about half", _verdict(
            runs["v3_over_v2"] <= 0.6))]
    q = d["quota"]
    goals = {"known": ">= 0.97 Q, <= 0.5 % error 18",
             "unknown": ">= 0.95 Q after 10 s, <= 2 % error 18 after 10 s (<= 5 % in all)"}
    for label, run in q["runs"].items():
        if "q_share" not in run:  # a result of the former v3.py (worst interface only)
            share = max(run["detect"]["rejected_share"], run["add"]["rejected_share"])
            util = min(run["detect"]["utilisation"], run["add"]["utilisation"])
            figure, goal, ok = f"{util:.3f} Q, {share:.2%} of calls got error 18", "", None
        else:  # the columns of quota.py
            figure = (f"{run['q_share']:.3f} Q ({run['q_share_after_10s']:.3f} Q after 10 s), "
                      f"{100 * run['rejected']:.2f} % error 18 "
                      f"({100 * run['rejected_after_10s']:.2f} % after 10 s)")
            goal, ok = goals[run["kind"]], run["verdict"] == "PASS"
        out.append((f"quota use on v3 paths, server Q={q['q']:g}/s, {run['rows']} rows: "
                    f"{label}", figure, goal, _verdict(ok)))
    return out


ROWS = {"client_overhead": _client, "quota": _quota, "engine": _engine, "audit": _audit,
        "scale": _scale, "resume_finished": _resume_finished, "calibration": _calibration,
        "ledger": _ledger, "scale_engine": _scale_engine, "scale_replicas": _scale_replicas,
        "scale_engine_large": _scale_engine,
        "budget": _budget, "v3": _v3}


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(measure, figure, goal, verdict, command) for the markdown table."""
    out = []
    for name, entry in results.items():
        command = f"`{entry['command']}`"
        if entry["result"] is None:
            out.append((name, entry["status"], "", "**no figure**", command))
            continue
        try:
            rows = ROWS.get(name, _generic)(entry["result"])
        except (KeyError, IndexError, TypeError) as exc:  # the script changed its JSON
            rows = [(name, f"result not understood ({type(exc).__name__}: {exc})", "",
                     "**no figure**")]
        out += [(*row, command) for row in rows]
    return out


def markdown(results: dict[str, Any], facts: dict[str, Any], wall: float, full: bool,
             rerun: list[str] | None = None) -> str:
    took = (f"`make bench` took {wall:.0f} s" if full
            else f"rerun of {', '.join(rerun or results)} took {wall:.0f} s (the other "
                 "figures kept from the last run)")
    lines = [f"Measured {facts['date']} on {facts['cpu']} ({facts['cores']} cores), "
             f"{facts['platform']}, Python {facts['python']}; {took} "
             f"(load average {facts['loadavg_1m']} at the end).",
             "", "| measure | figure | goal | verdict | printed by |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    lines += ["", "quota ran side by side with scale (it waits on a 10 calls/s limit); every "
              "other script ran alone. Each script prints more than this table; see "
              "`benchmarks/results/<name>.json`."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    regular = [name for name in SCRIPTS if name not in LARGE]
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=regular)
    parser.add_argument("--large", action="store_true",
                        help="also run the long scripts: " + ", ".join(sorted(LARGE)))
    args = parser.parse_args()
    if args.large:
        args.only = list(dict.fromkeys([*args.only, *LARGE]))
    latest = RESULTS / "latest.json"
    kept = json.loads(latest.read_text())["results"] if latest.exists() else {}
    begin = time.perf_counter()
    fresh: dict[str, Any] = {}
    for stage in STAGES:
        wanted = [name for name in stage if name in args.only]
        if wanted:
            fresh.update(run_stage(wanted))
    wall = time.perf_counter() - begin
    results = {name: fresh.get(name) or kept[name] for name in SCRIPTS
               if name in fresh or name in kept}
    facts = machine()
    full = set(args.only) >= set(regular)
    RESULTS.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps({"machine": facts, "wall_s": round(wall, 1), "full_run": full,
                                  "results": results}, indent=2) + "\n")
    table = markdown(results, facts, wall, full, list(fresh))
    (RESULTS / "latest.md").write_text(table)
    print("\n" + table)
    return 0 if all(e["status"] == "ok" for e in fresh.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
