"""Engine search at scale: the embedded index (numpy) against PostgreSQL + pgvector HNSW.

What it measures, for each size (default 100k faces in one group):

* identify latency p50/p99 (the search an identify runs: top 1 user, up to 5 faces each)
  and the rank-1 hit rate: how often the planted same-person face is the top user;
* PostgreSQL: load time (COPY), HNSW build time (``index_large_groups``, the partial
  index of one large group), then latency and rank-1 at several ``hnsw.ef_search``,
  and how often HNSW finds the exact search's nearest face. The smallest ef_search that
  does for all probes but 0.1 % (a margin over the 99.5 % bound) is the one the engine
  uses (pipeline/engine/pgstore.py EF_SEARCH); rank-1 itself also depends on the model
  (impostors nearer than the person's second photo), which exact search shows.

Descriptors are real where possible: dlib descriptors of data/samples and ../shared/faces
(when present) are computed here; same-person pairs among them are planted as probes.
The other faces are generated from the real ones: a Gaussian with their mean and
(shrunk) covariance, scaled so that generated "different people" lie at the distances
real different people do (median matched), then normalised like dlib's. Generated
same-person probes sit at the median real same-person distance from their face.
Random unit vectors (the usual stand-in) are far easier to tell apart than real faces.

    .venv/bin/python benchmarks/scale_engine.py [--sizes 100000 [1000000]] [--queries 300]
        [--ef 100 200 400 800] [--m 16] [--ef-construction 200 [64 ...]] [--exact-sizes ...]

Each ``--ef-construction`` value is one HNSW build on the same load, measured at every
``--ef`` and dropped (the first value's figures are the headline ones). Prints a table;
writes benchmarks/results/scale_engine.json (sizes up to 100k, what make bench runs) or
scale_engine_large.json (``--sizes 100000 1000000``: run_all.py --large), with ``_m<M>``
appended for another m than the engine's; a long run writes what it has after every build.
The PostgreSQL cluster is a temporary local one (pipeline.postgres.LocalCluster, shared
buffers sized to the table and index), removed afterwards.

How long, on 2 cores with other work (2026-11-29): 100k with one build about 3 minutes
(build ~1 minute); ``--sizes 100000 1000000`` about 30 minutes, most of it the 1M build
(22 minutes under nice 19 at load 4-9; 2.3 GB of maintenance_work_mem), plus ~3 minutes
for each further ``--ef-construction`` at 100k and ~15-20 at 1M.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, write_result  # noqa: E402
from pipeline.engine.index import SearchIndex  # noqa: E402
from pipeline.engine.pgstore import (  # noqa: E402
    EF_SEARCH,
    HNSW_EF_CONSTRUCTION,
    HNSW_M,
    LARGE_GROUP,
    PgIndex,
    PgStore,
    build_memory_mb,
    index_large_groups,
    index_name,
    migrate,
)
from pipeline.engine.store import Change, FaceRow  # noqa: E402
from pipeline.postgres import LocalCluster  # noqa: E402

SAMPLES = ROOT / "data" / "samples"
DEVSET = ROOT.parent / "shared" / "faces"
GROUP = "bench_big"
PER_USER = 5


# -- descriptors ------------------------------------------------------------------------------

def real_descriptors() -> list[tuple[str, np.ndarray]]:
    """(identity, unit descriptor) of every photo with one face (samples + dev set)."""
    from pipeline.engine import models as M  # noqa: PLC0415
    from pipeline.engine.images import decode_image  # noqa: PLC0415

    models = M.Models("hog")
    photos: list[tuple[str, Path]] = []
    labels = DEVSET / "labels.csv"
    if labels.exists():  # the labelled set (it holds the samples' people too)
        for line in labels.read_text().splitlines()[1:]:
            name, identity, faces = (line.split(",") + ["", ""])[:3]
            if faces.strip() == "1":
                photos.append((identity, DEVSET / name))
    else:
        for path in sorted(SAMPLES.glob("*")):
            if path.suffix.lower() in (".jpg", ".png") and not path.name.startswith("no_"):
                photos.append((path.stem.split("_")[0], path))
    out: list[tuple[str, np.ndarray]] = []
    for identity, path in photos:
        try:
            rgb = decode_image(path.read_bytes())
        except Exception:  # noqa: BLE001 - a photo the engine refuses is just skipped
            continue
        faces = M.analyse_array(models, rgb, M.AnalyseOptions(descriptor=True)).faces
        if len(faces) == 1 and faces[0].descriptor is not None:
            vec = np.asarray(faces[0].descriptor, dtype=np.float32)
            # Copies of one image (crops, re-encodings) are one photo, not a second one.
            if all(np.linalg.norm(vec - v) >= 0.04 for _, v in out):
                out.append((identity, vec))
    return out


def _pair_distances(real: list[tuple[str, np.ndarray]]) -> tuple[list[float], list[float]]:
    same, diff = [], []
    for i, (a, va) in enumerate(real):
        for b, vb in real[i + 1:]:
            d = float(np.linalg.norm(va - vb))
            if d < 0.04:
                continue  # the same image re-encoded, not a second photo
            (same if a == b else diff).append(d)
    return same, diff


class Generator:
    """Descriptors shaped like the real ones (see the module docstring)."""

    def __init__(self, real: list[tuple[str, np.ndarray]], seed: int = 7) -> None:
        self.rng = np.random.default_rng(seed)
        x = np.stack([v for _, v in real]).astype(np.float64)
        self.mean = x.mean(axis=0)
        cov = np.cov(x, rowvar=False)
        shrunk = 0.5 * cov + 0.5 * np.trace(cov) / 128 * np.eye(128)
        self.root = np.linalg.cholesky(shrunk + 1e-9 * np.eye(128))
        same, diff = _pair_distances(real)
        self.same_median = statistics.median(same) if same else 0.30
        self.diff_median = statistics.median(diff) if diff else 0.60
        self.scale = self._fit_scale()

    def _raw(self, n: int, scale: float) -> np.ndarray:
        z = self.rng.normal(size=(n, 128)) @ self.root.T * scale + self.mean
        return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)

    def _fit_scale(self) -> float:
        lo, hi = 0.05, 20.0
        for _ in range(30):
            mid = (lo * hi) ** 0.5
            v = self._raw(400, mid)
            d = np.linalg.norm(v[:200] - v[200:], axis=1)
            lo, hi = (mid, hi) if np.median(d) < self.diff_median else (lo, mid)
        return (lo * hi) ** 0.5

    def people(self, n: int) -> np.ndarray:
        return self._raw(n, self.scale)

    def second_photo(self, face: np.ndarray) -> np.ndarray:
        """A probe at about the median real same-person distance from ``face``."""
        noise = self.rng.normal(size=128)
        noise -= noise @ face * face  # tangent to the sphere at face
        noise *= self.same_median / np.linalg.norm(noise)
        out = face + noise
        return (out / np.linalg.norm(out)).astype(np.float32)


def build_set(size: int, queries: int, real: list[tuple[str, np.ndarray]], gen: Generator
              ) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]:
    """(faces to enroll as (uid, vec), probes as (expected uid, vec))."""
    faces: list[tuple[str, np.ndarray]] = []
    probes: list[tuple[str, np.ndarray]] = []
    seen: dict[str, int] = {}
    for identity, vec in real:  # the first photo of each real person is enrolled
        if identity not in seen:
            seen[identity] = len(faces)
            faces.append((f"real_{identity}", vec))
        else:
            probes.append((f"real_{identity}", vec))
    planted = gen.people(queries - min(len(probes), queries // 2))
    for i, vec in enumerate(planted):
        faces.append((f"p{i}", vec))
        probes.append((f"p{i}", gen.second_photo(vec)))
    rest = size - len(faces)
    for start in range(0, rest, 50_000):
        block = gen.people(min(50_000, rest - start))
        faces += [(f"g{start + i}", v) for i, v in enumerate(block)]
    return faces, probes


# -- measuring --------------------------------------------------------------------------------

def _ms(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"p50_ms": round(1000 * statistics.median(ordered), 2),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2)}


def run_searches(index: Any, probes: list[tuple[str, np.ndarray]]) -> tuple[dict, list[float]]:
    """Latency and rank-1 over the probes, and the distance of each probe's top face."""
    times, tops, hits = [], [], 0
    for uid, vec in probes:
        start = time.perf_counter()
        found = index.search(vec, [GROUP], 1, per_user=PER_USER)
        times.append(time.perf_counter() - start)
        tops.append(found[0].distances[0] if found else 9.0)
        hits += bool(found) and found[0].uid == uid
    return {**_ms(times), "rank1": round(hits / len(probes), 4)}, tops


def embedded(faces: list[tuple[str, np.ndarray]], probes: list) -> tuple[dict, list[float]]:
    index = SearchIndex()
    start = time.perf_counter()
    index.apply(Change(tuple(FaceRow(i + 1, GROUP, uid, "", vec)
                             for i, (uid, vec) in enumerate(faces))))
    load = time.perf_counter() - start
    result, tops = run_searches(index, probes)
    return {**result, "load_s": round(load, 2)}, tops


def postgres(faces: list[tuple[str, np.ndarray]], probes: list, efs: list[int],
             exact_tops: list[float], m: int, builds: list[int],
             out: dict[str, Any] | None = None, progress: Any = None) -> dict[str, Any]:
    """Load the faces into a local PostgreSQL, then for each ef_construction in ``builds``
    build the group's HNSW index, measure it at every ef_search, drop it. Figures go into
    ``out`` as they come (``progress`` is called after each build)."""
    n = len(faces)
    # Room for the table and the index in shared buffers; the build's memory is the
    # engine's own choice (index_large_groups: build_memory_mb).
    settings = {"shared_buffers": f"{max(512, n * 3 // 1000)}MB",
                "max_parallel_maintenance_workers": "2", "max_wal_size": "8GB"}
    out = {} if out is None else out
    out.update(m=m, builds={})
    with LocalCluster(settings=settings) as cluster:
        migrate(cluster.url)
        store = PgStore(cluster.url)
        try:
            start = time.perf_counter()
            for i in range(0, n, 20_000):
                store.seed_faces(GROUP, [(u, "", v) for u, v in faces[i:i + 20_000]])
            out["load_s"] = round(time.perf_counter() - start, 1)
            out["table_mb"] = round(store._query(
                "SELECT pg_total_relation_size('engine_faces')")[0][0] / 2**20)
            exact, _ = run_searches(PgIndex(store), probes[: min(len(probes), 60)])
            out["exact_60_queries"] = exact
            _say(progress, f"{n:,}: loaded in {out['load_s']} s; exact p50 {exact['p50_ms']} ms")
            for ef_construction in builds:
                start = time.perf_counter()
                index_large_groups(cluster.url, min_faces=1, m=m,
                                   ef_construction=ef_construction)
                build = round(time.perf_counter() - start, 1)
                size = store._query("SELECT pg_relation_size(%s::regclass)",
                                    (index_name(GROUP),))[0][0]
                by_ef = {}
                for ef in efs:
                    result, tops = run_searches(PgIndex(store, ef_search=ef), probes)
                    # Found the exact search's nearest face (ties: another at the same d).
                    agree = sum(a <= b + 1e-5 for a, b in zip(tops, exact_tops, strict=True))
                    by_ef[str(ef)] = {**result, "same_top_as_exact": round(agree / len(tops), 4)}
                out["builds"][str(ef_construction)] = {
                    "build_s": build, "index_mb": round(size / 2**20),
                    "build_memory_mb": build_memory_mb(n, m), "hnsw": by_ef,
                    "chosen_ef_search": choose_ef(by_ef, len(probes))}
                if ef_construction == builds[0]:  # the headline figures: the first build's
                    out.update(ef_construction=ef_construction, build_s=build, hnsw=by_ef,
                               chosen_ef_search=out["builds"][str(ef_construction)][
                                   "chosen_ef_search"])
                _say(progress, f"{n:,}: ef_construction {ef_construction} built in {build} s "
                     f"({size / 2**20:.0f} MB); " + ", ".join(
                         f"ef {ef}: p50 {r['p50_ms']} ms, = exact {r['same_top_as_exact']:.2%}"
                         for ef, r in by_ef.items()))
                if progress is not None:
                    progress(None)
                with store._tx() as db:  # the next build starts from no index
                    db.execute(f'DROP INDEX "{index_name(GROUP)}"')
                    db.execute("UPDATE engine_groups SET hnsw_index = NULL")
        finally:
            store.close()
    return out


def _say(_: Any, text: str) -> None:
    print(text, flush=True)


def exact_by_size(gen: Generator, sizes: list[int], queries: int = 40) -> dict[str, Any]:
    """PostgreSQL's exact search (no HNSW index) p50/p99 by group size: where an index
    starts to pay (pipeline/engine/pgstore.py LARGE_GROUP)."""
    out: dict[str, Any] = {}
    with LocalCluster(settings={"shared_buffers": "256MB"}) as cluster:
        migrate(cluster.url)
        store = PgStore(cluster.url)
        try:
            index = PgIndex(store)
            for n in sizes:
                group = f"exact_{n}"
                store.seed_faces(group, [(f"u{i}", "", v) for i, v in enumerate(gen.people(n))])
                probes = [(f"u{i}", gen.second_photo(v)) for i, v in
                          enumerate(gen.people(queries))]
                times = []
                for _, vec in probes:
                    start = time.perf_counter()
                    index.search(vec, [group], 1, per_user=PER_USER)
                    times.append(time.perf_counter() - start)
                out[str(n)] = _ms(times)
        finally:
            store.close()
    return out


def choose_ef(by_ef: dict[str, dict[str, Any]], probes: int) -> int | None:
    """The smallest ef_search that found exact search's top face for every probe but at
    most 0.1 % of them (the bound is 99.5 %; a few hundred probes cannot tell 99.5 from
    99.7 %, so the choice keeps a margin).

    Against exact search, not against the truth: at 100k faces some impostors are
    nearer than the person's own second photo, which no index setting changes.
    """
    allowed = int(0.001 * probes)
    good = [int(ef) for ef, r in by_ef.items()
            if round((1 - r["same_top_as_exact"]) * probes) <= allowed]
    return min(good) if good else None


def result_name(sizes: list[int], m: int = HNSW_M) -> str:
    """``scale_engine`` (make bench: 100k) or ``scale_engine_large`` (past 100k, run with
    ``benchmarks/run_all.py --large``), so neither run overwrites the other's figures;
    ``_m<M>`` added for another m than the engine's."""
    name = "scale_engine" if max(sizes) <= 100_000 else "scale_engine_large"
    return name if m == HNSW_M else f"{name}_m{m}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--ef", type=int, nargs="+", default=[100, 200, 400, 800])
    parser.add_argument("--exact-sizes", type=int, nargs="*", default=[2000, 5000, 10000, 20000])
    parser.add_argument("--m", type=int, default=HNSW_M)
    parser.add_argument("--ef-construction", type=int, nargs="+",
                        default=[HNSW_EF_CONSTRUCTION],
                        help="one HNSW build per value (the first is the headline figure)")
    args = parser.parse_args()
    real = real_descriptors()
    gen = Generator(real)
    report: dict[str, Any] = {
        "real_photos": len(real), "real_identities": len({i for i, _ in real}),
        "same_person_median_d": round(gen.same_median, 3),
        "different_person_median_d": round(gen.diff_median, 3),
        "engine_ef_search": EF_SEARCH, "engine_large_group": LARGE_GROUP, "sizes": {}}
    name = result_name(args.sizes, args.m)
    started = time.perf_counter()
    for size in args.sizes:
        faces, probes = build_set(size, args.queries, real, gen)
        emb, tops = embedded(faces, probes)
        print(f"{size:,}: embedded p50 {emb['p50_ms']} ms, rank-1 {emb['rank1']:.2%}",
              flush=True)
        entry: dict[str, Any] = {"faces": len(faces), "probes": len(probes), "embedded": emb}
        report["sizes"][str(size)] = entry

        def partial(_: object, entry: dict[str, Any] = entry) -> None:
            # Written after every build: a long run stopped midway keeps what it measured.
            entry["partial"] = True
            write_result(name, {**report, "wall_s": round(time.perf_counter() - started)})

        entry["postgresql"] = {}
        postgres(faces, probes, args.ef, tops, args.m, args.ef_construction,
                 entry["postgresql"], partial)
        entry.pop("partial", None)
        print_size(size, entry)
        del faces
    if args.exact_sizes:
        report["postgres_exact_by_group_size"] = exact_by_size(gen, args.exact_sizes)
        print("\npostgres exact search (no index) by group size: " + ", ".join(
            f"{int(n):,}: p50 {r['p50_ms']} ms" for n, r in
            report["postgres_exact_by_group_size"].items()))
    report["wall_s"] = round(time.perf_counter() - started)
    write_result(name, report)
    print(f"\nreal descriptors: {report['real_photos']} photos of "
          f"{report['real_identities']} people; median distance same person "
          f"{report['same_person_median_d']}, different {report['different_person_median_d']}"
          f"; {report['wall_s']} s in all; wrote benchmarks/results/{name}.json")


def print_size(size: int, r: dict[str, Any]) -> None:
    emb, pg = r["embedded"], r["postgresql"]
    print(f"\n{size:,} faces, {r['probes']} identify probes (top 1 user, {PER_USER} faces each)")
    print(f"  {'search':<28}{'p50 ms':>9}{'p99 ms':>9}{'rank-1':>9}{'= exact':>9}")
    print(f"  {'embedded numpy (exact)':<28}{emb['p50_ms']:>9}{emb['p99_ms']:>9}"
          f"{emb['rank1']:>9.2%}{'':>9}")
    ex = pg["exact_60_queries"]
    print(f"  {'postgres exact (60 probes)':<28}{ex['p50_ms']:>9}{ex['p99_ms']:>9}"
          f"{ex['rank1']:>9.2%}{'':>9}")
    for ef, h in pg["hnsw"].items():
        print(f"  {'postgres hnsw ef=' + ef:<28}{h['p50_ms']:>9}{h['p99_ms']:>9}"
              f"{h['rank1']:>9.2%}{h['same_top_as_exact']:>9.2%}")
    for efc, b in pg["builds"].items():
        if efc != str(pg["ef_construction"]):
            for ef, h in b["hnsw"].items():
                print(f"  {'  ef_construction ' + efc + ', ef=' + ef:<28}{h['p50_ms']:>9}"
                      f"{h['p99_ms']:>9}{h['rank1']:>9.2%}{h['same_top_as_exact']:>9.2%}")
    print(f"  postgres load {pg['load_s']} s, table {pg['table_mb']} MB")
    for efc, b in pg["builds"].items():
        print(f"  HNSW build m={pg['m']}, ef_construction={efc}: {b['build_s']} s, index "
              f"{b['index_mb']} MB (maintenance_work_mem {b['build_memory_mb']} MB); "
              f"chosen ef_search: {b['chosen_ef_search']}")


if __name__ == "__main__":
    main()
