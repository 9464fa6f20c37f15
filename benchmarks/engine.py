"""Engine benchmark: model cost vs a face_recognition-style pipeline, pair accuracy,
throughput with 1 and 2 worker processes, identify latency at 10k and 100k faces.

Run: ``.venv/bin/python benchmarks/engine.py [--quick]``. Prints a table and writes
benchmarks/results/engine.json. Photos: data/samples, plus ../shared/faces when present.

The baseline re-implements face_recognition's default calls with dlib directly:
``face_locations(img, number_of_times_to_upsample=1)`` (HOG on the full image, upsampled
once) then ``face_encodings`` (5-point landmarks + ResNet descriptor, 1 jitter) for every
face found; its same-person rule is raw distance <= 0.6. The engine: detect on a copy of
at most 1024 px (see pipeline/engine/models.py), 68 landmarks, pose, qualities, and the
descriptor of the largest face; same person when score >= 80.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import json
import multiprocessing
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.engine import models as M  # noqa: E402
from pipeline.engine.evaluation import (  # noqa: E402
    distinct_pairs,
    load_labels,
    pair_photos,
    roc_points,
)
from pipeline.engine.images import decode_image  # noqa: E402
from pipeline.engine.scoring import pair_score, scoring_model  # noqa: E402

SAMPLES = ROOT / "data" / "samples"
DEVSET = ROOT.parent / "shared" / "faces"
RESULTS = ROOT / "benchmarks" / "results" / "engine.json"
#: Scores whose ROC points are reported (modelled FAR 1e-3, 1e-4, 1e-5: see scoring.py).
ROC_SCORES = [70.0, 80.0, 90.0]


def photo_paths() -> list[Path]:
    exts = {".jpg", ".jpeg", ".png"}
    paths = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in exts)
    if (DEVSET / "labels.csv").exists():
        paths += sorted(p for p in DEVSET.iterdir() if p.suffix.lower() in exts)
    return paths


def baseline(models: M.Models, rgb: np.ndarray) -> list[np.ndarray]:
    """face_recognition-style: HOG with one upsample on the full image, every face encoded."""
    rects = models.detector(rgb, 1)
    return [np.asarray(models.facerec.compute_face_descriptor(rgb, models.sp5(rgb, r)))
            for r in rects]


def largest_baseline(models: M.Models, rgb: np.ndarray) -> np.ndarray | None:
    rects = list(models.detector(rgb, 1))
    if not rects:
        return None
    rect = max(rects, key=lambda r: r.area())
    return np.asarray(models.facerec.compute_face_descriptor(rgb, models.sp5(rgb, rect)))


def time_per_image(models: M.Models, arrays: list[np.ndarray]) -> dict[str, float]:
    """Mean ms per image for the three pipelines, on the same decoded arrays."""
    runs = {
        "engine_detect_qualities": lambda a: M.analyse_array(
            models, a, M.AnalyseOptions(max_faces=1, qualities=True)),
        "engine_detect_qualities_descriptor": lambda a: M.analyse_array(
            models, a, M.AnalyseOptions(max_faces=1, qualities=True, descriptor=True)),
        "face_recognition_style": lambda a: baseline(models, a),
    }
    out = {}
    for name, run in runs.items():
        start = time.perf_counter()
        for arr in arrays:
            run(arr)
        out[name] = 1000 * (time.perf_counter() - start) / len(arrays)
    return out


def accuracy(models: M.Models) -> dict[str, Any] | None:
    """ROC points of the engine's scores at 70/80/90 on distinct dev-set pairs, and the
    face_recognition-style rule (raw distance <= 0.6) on the same pairs."""
    if not (DEVSET / "labels.csv").exists():
        return None
    photos = load_labels(DEVSET)
    ours, base = {}, {}
    for photo in pair_photos(photos):
        rgb = decode_image(photo.path.read_bytes())
        faces = M.analyse_array(models, rgb, M.AnalyseOptions(descriptor=True)).faces
        if faces:
            ours[photo.path] = faces[0].descriptor
        vec = largest_baseline(models, rgb)
        if vec is not None:
            base[photo.path] = vec
    pairs = distinct_pairs(photos)
    engine_scored = [(p.genuine, pair_score(ours[p.a], ours[p.b])) for p in pairs
                     if p.a in ours and p.b in ours]
    # The baseline's rule (distance <= 0.6) expressed as a score: 1 accepted, 0 refused.
    base_scored = [(p.genuine, float(np.linalg.norm(base[p.a] - base[p.b]) <= 0.6))
                   for p in pairs if p.a in base and p.b in base]
    return {"engine_roc": roc_points(engine_scored, ROC_SCORES),
            "face_recognition_distance_0.6": roc_points(base_scored, [1.0])[0],
            "pairs_skipped_no_face": len(pairs) - len(engine_scored)}


def throughput(blobs: list[bytes], workers: int, model: str = "dlib") -> float:
    """Images per second through a spawn pool of ``workers`` (detect+qualities+descriptor)."""
    options = M.AnalyseOptions(max_faces=1, qualities=True, descriptor=True)
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx,
                                                initializer=M.init_worker,
                                                initargs=("hog", model)) as pool:
        for future in [pool.submit(M.warm_up) for _ in range(workers)]:
            future.result()
        start = time.perf_counter()
        list(pool.map(M.analyse, blobs, [options] * len(blobs)))
        return len(blobs) / (time.perf_counter() - start)


def identify_latency(sizes: list[int], probe: bytes, queries: int) -> dict[str, Any]:
    """p50/p95 ms of identify at each faceset size: index search alone and over HTTP."""
    from pipeline.engine.server import EngineServer

    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    with EngineServer() as engine:
        seeded = 0
        for size in sizes:
            vecs = rng.normal(size=(size - seeded, 128)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            engine.seed_faces("bench", [f"u{seeded + i}" for i in range(len(vecs))], vecs)
            seeded = size
            out[str(size)] = {"search_only_ms": _search_times(engine, rng, queries),
                              "http_end_to_end_ms": asyncio.run(_http_times(engine, probe, 15))}
    return out


def _search_times(engine: Any, rng: np.random.Generator, queries: int) -> dict[str, float]:
    probes = rng.normal(size=(queries, 128)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)

    def run() -> list[float]:
        times = []
        for probe in probes:
            start = time.perf_counter()
            engine.state.index.search(probe, ["bench"], top_users=5, per_user=5)
            times.append(1000 * (time.perf_counter() - start))
        return times

    return _percentiles(engine.call_in_loop(run))


async def _http_times(engine: Any, probe: bytes, n: int) -> dict[str, float]:
    import aiohttp

    image = base64.b64encode(probe).decode()
    async with aiohttp.ClientSession() as session:
        params = {"grant_type": "client_credentials", "client_id": engine.api_key,
                  "client_secret": engine.secret_key}
        async with session.get(engine.url + "/oauth/2.0/token", params=params) as resp:
            token = (await resp.json())["access_token"]
        times = []
        for _ in range(n + 1):
            start = time.perf_counter()
            async with session.post(engine.url + "/rest/2.0/face/v2/identify",
                                    params={"access_token": token},
                                    data={"group_id": "bench", "image": image,
                                          "user_top_num": "5"}) as resp:
                body = await resp.json()
            assert body.get("result_num") == 5, body
            times.append(1000 * (time.perf_counter() - start))
    return _percentiles(times[1:])


def _percentiles(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50": round(statistics.median(ordered), 3),
            "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 3), "n": len(ordered)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and queries")
    args = parser.parse_args()
    paths = photo_paths()[: 12 if args.quick else None]
    blobs = [p.read_bytes() for p in paths]
    arrays = [decode_image(b) for b in blobs]
    models = M.Models()
    report: dict[str, Any] = {"images": len(paths),
                              "mean_pixels": int(np.mean([a.shape[0] * a.shape[1]
                                                          for a in arrays]))}
    report["ms_per_image"] = {k: round(v, 1) for k, v in time_per_image(models, arrays).items()}
    ms = report["ms_per_image"]
    report["cost_ratio_vs_face_recognition"] = round(
        ms["engine_detect_qualities_descriptor"] / ms["face_recognition_style"], 3)
    report["pair_accuracy"] = accuracy(models)
    work = (blobs * 2)[: 16 if args.quick else 48]
    report["images_per_second"] = {str(w): round(throughput(work, w), 2) for w in (1, 2)}
    report["models"] = {"dlib": {
        "ms_per_image": ms["engine_detect_qualities_descriptor"],
        "images_per_second": report["images_per_second"],
        "roc": (report["pair_accuracy"] or {}).get("engine_roc")}}
    if "sface" in installed_models():
        report["models"]["sface"] = other_model("sface", arrays, work)
    probe = (SAMPLES / "obama_01.jpg").read_bytes()
    report["identify"] = identify_latency([10_000, 100_000], probe, 100 if args.quick else 300)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    _print(report)


def installed_models() -> list[str]:
    try:
        M.sface_model_dir()
    except M.ModelUnavailable:
        return ["dlib"]
    return ["dlib", "sface"]


def other_model(model: str, arrays: list[np.ndarray], work: list[bytes]) -> dict[str, Any]:
    """ms/image (detect+qualities+descriptor), images/s with 1 and 2 workers, and the ROC
    points at 70/80/90 on distinct dev-set pairs, for a model other than dlib."""
    models = M.Models(model=model)
    options = M.AnalyseOptions(max_faces=1, qualities=True, descriptor=True)
    M.analyse_array(models, arrays[0], options)  # first call loads the nets' buffers
    start = time.perf_counter()
    for arr in arrays:
        M.analyse_array(models, arr, options)
    ms = 1000 * (time.perf_counter() - start) / len(arrays)
    out: dict[str, Any] = {"ms_per_image": round(ms, 1), "images_per_second": {
        str(w): round(throughput(work, w, model), 2) for w in (1, 2)}, "roc": None}
    if (DEVSET / "labels.csv").exists():
        photos = load_labels(DEVSET)
        vecs = {}
        for photo in pair_photos(photos):
            faces = M.analyse_array(models, decode_image(photo.path.read_bytes()),
                                    M.AnalyseOptions(descriptor=True)).faces
            if faces:
                vecs[photo.path] = faces[0].descriptor
        with scoring_model(model):
            scored = [(p.genuine, pair_score(vecs[p.a], vecs[p.b]))
                      for p in distinct_pairs(photos) if p.a in vecs and p.b in vecs]
        out["roc"] = roc_points(scored, ROC_SCORES)
    return out


def _rates(p: dict[str, Any]) -> str:
    return (f"TAR {p['TAR']:.3f} ({p['true_accepts']}/{p['genuine_pairs']})  FAR {p['FAR']:.4f} "
            f"({p['false_accepts']}/{p['impostor_pairs']})")


def _print(report: dict[str, Any]) -> None:
    ms = report["ms_per_image"]
    print(f"images: {report['images']} (mean {report['mean_pixels'] / 1e6:.2f} Mpx)")
    print(f"{'pipeline':42} ms/image")
    for name, value in ms.items():
        print(f"{name:42} {value:8.1f}")
    for model, figures in report["models"].items():
        print(f"model {model}: {figures['ms_per_image']} ms/image, images/s with 1 and 2 "
              f"workers {figures['images_per_second']}")
        for point in figures["roc"] or []:
            print(f"  pairs score >= {point['score']:g}: {_rates(point)}")
    print(f"cost ratio engine/face_recognition-style: {report['cost_ratio_vs_face_recognition']}"
          " (goal <= 0.5)")
    acc = report["pair_accuracy"] or {}
    if acc:
        print(f"pairs face_recognition raw distance <= 0.6: "
              f"{_rates(acc['face_recognition_distance_0.6'])}")
    print("images/s by worker processes:", report["images_per_second"])
    for size, figures in report["identify"].items():
        print(f"identify @ {int(size):>7,} faces: search p50 {figures['search_only_ms']['p50']} ms"
              f" p95 {figures['search_only_ms']['p95']} ms; HTTP end-to-end p50 "
              f"{figures['http_end_to_end_ms']['p50']} ms (goal search p50 <= 10 ms)")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
