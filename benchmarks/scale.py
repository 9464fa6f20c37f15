"""Scale: peak memory at 1M and 10M manifest rows, RSS over a real enroll, resume time.

Sending 10M rows through a real service is days of calls, so this measures what can be
measured honestly, each part in a fresh process (its peak RSS is its own, VmHWM):

(a) **stream** -- for each ``--sizes`` manifest (generated: distinct uids over a few real
    photos): ``open_manifest`` (fingerprint, validation pass, duplicate pass), a run
    directory's record store (the done-bitmap), then every row through the runner's feed
    (``_AsyncRows``: batches read in a worker thread, done rows skipped) and its pure
    per-row check (``check_row`` with ``row_is_duplicate_of``). That is the enroll row
    pipeline minus reading the image and the two HTTP calls.
(b) **enroll** -- a real ``run_enroll`` (real FaceClient over HTTP, real image reads,
    outcomes journaled and written as Parquet parts) of ``--enroll-rows`` rows against a
    server that does no work and has no QPS limit (``benchmarks/quota.py --serve``), with
    the process RSS sampled every ``--sample-every`` rows: flat means no per-row growth.
(c) **resume** -- the finished 1M-row run that ``benchmarks/bench_resume.py`` builds (999,500
    outcomes in Parquet parts, 500 only in a crashed journal), in a temp dir; then, in a
    fresh process, the resume decision: open the manifest, recover the store (journal ->
    part, done-bitmap from every part), find the first row left.

Goals (issue 7): peak RSS <= 300 MB at every size; resume decides in <= 10 s. Generated
files live in a temporary directory that is deleted at the end.

    .venv/bin/python benchmarks/scale.py [--sizes 1000000 10000000] [--enroll-rows 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, write_result  # noqa: E402

PHOTOS = ("obama_01.jpg", "obama_02.jpg", "biden_01.jpg", "obama_03.jpg")
RSS_GOAL_MB = 300
RESUME_GOAL_S = 10.0


def peak_mb() -> float:
    """This process's peak RSS in MB (VmHWM: after exec, ru_maxrss may hold the parent's)."""
    return _status_mb("VmHWM:")


def rss_mb() -> float:
    """This process's current RSS in MB."""
    return _status_mb("VmRSS:")


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- generated inputs ---------------------------------------------------------------------

def copy_photos(folder: Path) -> list[str]:
    """The sample photos (downscaled to 400 px, ~30 KB) the manifests point at."""
    from PIL import Image

    names = []
    for name in PHOTOS:
        source = ROOT / "data" / "samples" / name
        if source.exists():
            image = Image.open(source).convert("RGB")
            image.thumbnail((400, 400))
            image.save(folder / name, quality=90)
            names.append(name)
    if not names:
        raise SystemExit("no sample photos in data/samples: run `make setup` first")
    return names


def write_manifest(path: Path, rows: int, photos: list[str], slice_rows: int = 1_000_000) -> None:
    """A CSV manifest (uid, image, user_info) of ``rows`` distinct uids over ``photos``."""
    schema = pa.schema([(n, pa.string()) for n in ("uid", "image", "user_info")])
    choices = pa.array(photos)
    with pcsv.CSVWriter(path, schema) as out:
        for start in range(0, rows, slice_rows):
            ids = pa.array(range(start, min(rows, start + slice_rows)), pa.int64())
            text = pc.cast(ids, pa.string())
            out.write_table(pa.table({
                "uid": pc.binary_join_element_wise("u", text, ""),
                "image": pc.take(choices, pc.remainder(ids, len(photos))),
                "user_info": pc.binary_join_element_wise("member ", text, ""),
            }, schema=schema))


# -- (a) stream: a child process per size ------------------------------------------------

def stream_child(manifest: Path, run_dir: Path) -> dict[str, Any]:
    """In the child: validate, open a store, feed every row through the runner's check."""
    from pipeline.enroll.job import _AsyncRows, check_row  # the runner's own feed and check
    from pipeline.runs.manifest import open_manifest
    from pipeline.runs.outcomes import OUTCOME_SCHEMA
    from pipeline.runs.rundir import RunDir

    start = time.perf_counter()
    m = open_manifest(manifest, default_group="bench")
    opened = time.perf_counter()
    peaks = {"validate": round(peak_mb())}
    store = RunDir(run_dir).open_store(OUTCOME_SCHEMA, m.num_rows)
    peaks["store"] = round(peak_mb())

    async def feed() -> tuple[int, int]:
        seen = refused = 0
        async for row in _AsyncRows(m, store.done, asyncio.Event()):
            if not seen:  # what the feed holds before the first row (its start-up arrays)
                peaks["first_row"] = round(peak_mb())
            seen += 1
            refused += check_row(row, m.row_is_duplicate_of(row.row)) is not None
        return seen, refused

    seen, refused = asyncio.run(feed())
    assert seen == m.num_rows, (seen, m.num_rows)
    end = time.perf_counter()
    return {"rows": m.num_rows, "validate_s": round(opened - start, 2),
            "stream_s": round(end - opened, 2), "rows_per_s": round(m.num_rows / (end - start)),
            "refused_rows": refused, "peak_rss_mb": round(peak_mb()),
            "peak_rss_mb_after": peaks}


def run_child(*args: str) -> dict[str, Any]:
    """Run this file with ``args`` in a fresh process; its last stdout line is JSON."""
    out = subprocess.run([sys.executable, __file__, *args], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_stream(folder: Path, sizes: list[int], photos: list[str]) -> list[dict[str, Any]]:
    results = [{"rows": 0, "what": "import only", **run_child("--child", "import")}]
    for rows in sizes:
        path = folder / f"manifest-{rows}.csv"
        t = time.perf_counter()
        write_manifest(path, rows, photos)
        built = time.perf_counter() - t
        result = run_child("--child", "stream", str(path), str(folder / f"run-{rows}"))
        result.update(csv_mib=round(path.stat().st_size / 2**20), generated_s=round(built, 1))
        results.append({"what": "validate + stream every row", **result})
        path.unlink()
        shutil.rmtree(folder / f"run-{rows}", ignore_errors=True)
        print(f"  {rows:>12,} rows ({result['csv_mib']} MiB CSV): validate "
              f"{result['validate_s']:.1f} s, stream {result['stream_s']:.1f} s, "
              f"peak RSS {result['peak_rss_mb']} MB (after validation "
              f"{result['peak_rss_mb_after']['validate']}, store "
              f"{result['peak_rss_mb_after']['store']}, first row "
              f"{result['peak_rss_mb_after']['first_row']})", flush=True)
    return results


# -- (b) a real enroll against the no-work server, RSS sampled ----------------------------

def enroll_child(manifest: Path, run_dir: Path, url: str, every: int) -> dict[str, Any]:
    """In the child: a real enroll; RSS sampled every ``every`` rows by an observer."""
    from pipeline.client.config import Settings
    from pipeline.enroll.job import EnrollConfig, EnrollObserver, run_enroll

    samples: list[tuple[int, float]] = [(0, round(rss_mb(), 1))]

    class Sampler(EnrollObserver):
        def row_done(self, outcome: Any, progress: Any) -> None:
            if progress.done % every == 0:
                samples.append((progress.done, round(rss_mb(), 1)))

    settings = Settings(endpoint=url, api_key="bench-ak", secret_key="bench-sk")
    config = EnrollConfig(manifest=manifest, settings=settings, group="bench", qps=None,
                          concurrency=16, run_dir=run_dir)
    t = time.perf_counter()
    result = asyncio.run(run_enroll(config, observer=Sampler()))
    wall = time.perf_counter() - t
    return {"rows": result.total_rows, "counts": dict(result.counts), "wall_s": round(wall, 1),
            "rows_per_s": round(result.total_rows / wall), "samples": samples,
            "peak_rss_mb": round(peak_mb())}


def measure_enroll(folder: Path, rows: int, every: int, photos: list[str]) -> dict[str, Any]:
    path = folder / "enroll.csv"
    write_manifest(path, rows, photos)
    # quota.py's counting server with a limit no run reaches: the server does no work.
    spec = json.dumps({"q": 1e9, "shape": "bucket", "faults": {}})
    server = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "quota.py"),
                               "--serve", spec], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}"
        result = run_child("--child", "enroll", str(path), str(folder / "run-enroll"), url,
                           str(every))
    finally:
        server.terminate()
        server.wait(10)
    samples = result["samples"]
    # Growth over the second half of the run: a leak per row shows here, warm-up does not.
    half = [mb for done, mb in samples if done >= rows // 2]
    result["growth_second_half_mb"] = round(half[-1] - half[0], 1) if half else None
    result["rss_after_first_sample_mb"] = samples[1][1] if len(samples) > 1 else None
    print(f"  enroll {rows:,} rows: {result['wall_s']} s ({result['rows_per_s']} rows/s), "
          f"RSS {samples[0][1]} MB at start, {result['rss_after_first_sample_mb']} MB after "
          f"{every:,} rows, {samples[-1][1]} MB at the end; peak {result['peak_rss_mb']} MB",
          flush=True)
    return result


# -- (c) resume of a finished 1M-row run (bench_resume.py's fixture and measurement) ------

def measure_resume(folder: Path, rows: int) -> dict[str, Any]:
    import bench_resume  # benchmarks/bench_resume.py (the enroll engineer's)

    t = time.perf_counter()
    bench_resume.build(folder, rows)
    built = time.perf_counter() - t
    out = []
    for attempt in ("first resume (recovers the 500-row journal)", "second resume (parts only)"):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", bench_resume._MEASURE, str(folder),
                               str(rows), "run"], cwd=ROOT, check=True, capture_output=True,
                              text=True)
        wall = time.perf_counter() - t
        stats = json.loads(proc.stdout)
        out.append({"attempt": attempt, "wall_s": round(wall, 2),
                    **{k: round(v, 3) if isinstance(v, float) else v for k, v in stats.items()}})
        print(f"  {attempt}: {wall:.2f} s in a fresh process (imports {stats['imports_s']:.2f}, "
              f"manifest {stats['manifest_s']:.2f}, store {stats['store_s']:.2f}, first row "
              f"left {stats['left_s']:.3f}); rows left {stats['rows_left']}", flush=True)
    return {"rows": rows, "fixture_built_s": round(built, 1), "runs": out,
            "worst_wall_s": max(r["wall_s"] for r in out)}


# -- main -----------------------------------------------------------------------------------

def child(args: list[str]) -> None:
    kind, rest = args[0], args[1:]
    if kind == "import":
        import pipeline.enroll.job  # noqa: F401
        import pipeline.runs.manifest  # noqa: F401

        result: dict[str, Any] = {"peak_rss_mb": round(peak_mb())}
    elif kind == "stream":
        result = stream_child(Path(rest[0]), Path(rest[1]))
    else:
        result = enroll_child(Path(rest[0]), Path(rest[1]), rest[2], int(rest[3]))
    print(json.dumps(result))


def verdicts(report: dict[str, Any]) -> dict[str, str]:
    peaks = [r["peak_rss_mb"] for r in report["stream"]] + [report["enroll"]["peak_rss_mb"]]
    return {"rss": "PASS" if max(peaks) <= RSS_GOAL_MB else "FAIL",
            "resume": "PASS" if report["resume"]["worst_wall_s"] <= RESUME_GOAL_S else "FAIL"}


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--enroll-rows", type=int, default=20_000)
    parser.add_argument("--sample-every", type=int, default=1000)
    parser.add_argument("--resume-rows", type=int, default=1_000_000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    with tempfile.TemporaryDirectory(prefix="faceflow-scale-") as tmp:
        folder = Path(tmp)
        photos = copy_photos(folder)
        print("(a) validate + stream every row through the runner's feed, no image, no HTTP")
        report: dict[str, Any] = {"stream": measure_stream(folder, args.sizes, photos)}
        print("(b) real enroll against a no-work server, RSS sampled")
        report["enroll"] = measure_enroll(folder, args.enroll_rows, args.sample_every, photos)
        print("(c) resume decision on a finished run")
        report["resume"] = measure_resume(folder / "resume", args.resume_rows)
    report["goals"] = {"rss": f"peak RSS <= {RSS_GOAL_MB} MB at every size",
                       "resume": f"resume decision <= {RESUME_GOAL_S:g} s"}
    report["verdicts"] = verdicts(report)
    path = write_result("scale", report)
    print("verdicts:", report["verdicts"], f"\nwritten: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
