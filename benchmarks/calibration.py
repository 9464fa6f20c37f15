"""Score calibration: the different-person distance model behind pipeline/engine/scoring.py,
and the ROC points (same-person pass rate, different-person accept rate) of the scores.

Run: ``.venv/bin/python benchmarks/calibration.py [--model dlib|sface]`` (default: every
installed model). Prints a table per model and writes benchmarks/results/calibration.json.

Photos: the public-domain samples in data/samples (from PyPI, see data/fetch_samples.py),
always; ../shared/faces when present. The fit uses only photos whose licence is stated
(``evaluation.STATED_LICENCE``); all distinct dev-set pairs are scored as a check. Generated:
variants of the public-domain samples (rotated, scaled down, blurred, JPEG quality 20,
darkened, mirrored) against their original: same-photo pairs, so their pass rate is an
upper bound for pairs of different photos; against the other people they are impostors.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_result  # noqa: E402
from pipeline.engine import models as M  # noqa: E402
from pipeline.engine import scoring  # noqa: E402
from pipeline.engine.evaluation import (  # noqa: E402
    STATED_LICENCE,
    LabelledFace,
    LabelledPhoto,
    distinct_pairs,
    face_pairs,
    labelled_faces,
    load_labels,
    normal_fit,
    roc_points,
)
from pipeline.engine.images import decode_image  # noqa: E402

SAMPLES = ROOT / "data" / "samples"
DEVSET = ROOT.parent / "shared" / "faces"
THRESHOLDS = [50.0, 60.0, 70.0, 80.0, 90.0]
#: data/samples files (public domain, face_recognition sdist and scikit-image) -> identity.
SAMPLE_IDENTITIES = {"obama_01.jpg": "barack_obama", "obama_02.jpg": "barack_obama",
                     "obama_03.jpg": "barack_obama", "biden_01.jpg": "joe_biden",
                     "astronaut.png": "eileen_collins"}
VARIANTS = {
    "rotated 12 deg": lambda im: im.rotate(12, expand=True, fillcolor="white"),
    "scaled to 35 %": lambda im: im.resize((max(1, round(im.width * 0.35)),
                                            max(1, round(im.height * 0.35)))),
    "blurred r=2": lambda im: im.filter(ImageFilter.GaussianBlur(2)),
    "JPEG quality 20": lambda im: _jpeg(im, 20),
    "darkened x0.5": lambda im: ImageEnhance.Brightness(im).enhance(0.5),
    "mirrored": ImageOps.mirror,
}


def _jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


class Describer:
    """Raw descriptors of one model, largest face first, through the engine's detection."""

    def __init__(self, model: str) -> None:
        self.models = M.Models(model=model)

    def raw(self, rgb: np.ndarray, max_faces: int = 10) -> list[np.ndarray]:
        found = M.detect_faces(self.models, rgb)
        found.sort(key=lambda it: -(it[0].width() * it[0].height()))  # type: ignore[attr-defined]
        return [M.raw_descriptor(self.models, rgb, rect) for rect, _ in found[:max_faces]]


def _unit(vec: np.ndarray) -> np.ndarray:
    return vec / np.linalg.norm(vec)


def photo_set() -> tuple[list[LabelledPhoto], list[LabelledPhoto]]:
    """(photos of stated licence for the fit, every dev-set photo or [] when absent)."""
    dev = load_labels(DEVSET) if (DEVSET / "labels.csv").exists() else []
    seen = {hashlib.sha256(p.path.read_bytes()).hexdigest() for p in dev
            if p.path.name in STATED_LICENCE}
    fit = [p for p in dev if p.path.name in STATED_LICENCE]
    for name, identity in SAMPLE_IDENTITIES.items():
        path = SAMPLES / name
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() not in seen:
            fit.append(LabelledPhoto(path, identity, 1))
    return fit, dev


def describe_faces(describer: Describer, photos: list[LabelledPhoto]
                   ) -> dict[LabelledFace, np.ndarray]:
    """Raw descriptor of every usable face of ``photos`` (see ``labelled_faces``)."""
    out = {}
    for photo in photos:
        vecs = describer.raw(decode_image(photo.path.read_bytes()))
        for face in labelled_faces(photo, len(vecs)):
            out[face] = vecs[face.index]
    return out


#: Each model's published operating point as a unit distance (raw/unit ratio -> distance).
PUBLISHED = {
    "dlib": ("dlib's raw distance 0.6 (LFW 99.38 %)", lambda ratio: 0.6 / ratio),
    # OpenCV zoo's SFace: cosine similarity 0.363, i.e. unit distance sqrt(2 (1 - 0.363)).
    "sface": ("OpenCV zoo's cosine 0.363", lambda ratio: math.sqrt(2 * (1 - 0.363))),
}


def fit_model(vecs: dict[LabelledFace, np.ndarray], model: str) -> dict[str, Any]:
    """Normal model of different-person unit distances, with the checks the docstring cites."""
    pairs = face_pairs(list(vecs))
    unit = [(same, scoring.distance(_unit(vecs[a]), _unit(vecs[b]))) for a, b, same in pairs]
    raw = [scoring.distance(vecs[a], vecs[b]) for a, b, same in pairs if not same]
    impostor = sorted(d for same, d in unit if not same)
    mean, sd = normal_fit(impostor)
    cal = scoring.Calibration("fitted", mean, sd)
    n = len(impostor)
    ratio = float(np.mean(raw) / np.mean(impostor))
    label, published = PUBLISHED[model]
    return {
        "faces": len(vecs), "identities": len({f.identity for f in vecs}),
        "impostor_pairs": n, "genuine_pairs": sum(same for same, _ in unit),
        "impostor_mean": round(mean, 4), "impostor_sd": round(sd, 4),
        "lowest_impostor": [round(d, 3) for d in impostor[:3]],
        "model_at_lowest_ranks": [round(cal.distance_at_far((k + 0.5) / n), 3)
                                  for k in range(3)],
        "genuine_distances": sorted(round(d, 3) for same, d in unit if same),
        "raw_to_unit_ratio": round(ratio, 3),
        "published_point": label,
        "published_point_unit_distance": round(published(ratio), 3),
        "model_far_at_published_point": float(f"{cal.far_at_distance(published(ratio)):.2g}"),
        "anchors_fitted": {str(s): round(cal.distance_at_far(f), 3) for s, f in scoring.SCORE_FAR},
    }


def scored_faces(vecs: dict[LabelledFace, np.ndarray]) -> list[tuple[bool, float]]:
    return [(same, scoring.pair_score(_unit(vecs[a]), _unit(vecs[b])))
            for a, b, same in face_pairs(list(vecs))]


def dev_distinct(describer: Describer, dev: list[LabelledPhoto]) -> list[tuple[bool, float]]:
    """Scores of evaluation.distinct_pairs on the whole dev set (a check, not the fit)."""
    vecs = {}
    for photo in dev:
        if photo.path.name in {p.a.name for p in distinct_pairs(dev)} | {
                p.b.name for p in distinct_pairs(dev)}:
            found = describer.raw(decode_image(photo.path.read_bytes()), 1)
            if found:
                vecs[photo.path] = _unit(found[0])
    return [(p.genuine, scoring.pair_score(vecs[p.a], vecs[p.b])) for p in distinct_pairs(dev)
            if p.a in vecs and p.b in vecs]


def generated(describer: Describer) -> tuple[list[tuple[bool, float]], dict[str, list[float]]]:
    """Variants of the public-domain samples vs their original (same person) and vs the other
    people's originals (different people); also the scores per variant kind."""
    originals: dict[str, tuple[str, np.ndarray]] = {}
    variants: list[tuple[str, str, str, np.ndarray]] = []
    for name, identity in SAMPLE_IDENTITIES.items():
        path = SAMPLES / name
        if not path.exists():
            continue
        image = Image.fromarray(decode_image(path.read_bytes()))
        found = describer.raw(np.asarray(image), 1)
        if not found:
            continue
        originals[name] = (identity, _unit(found[0]))
        for kind, make in VARIANTS.items():
            vec = describer.raw(np.asarray(make(image).convert("RGB")), 1)
            if vec:
                variants.append((name, identity, kind, _unit(vec[0])))
    scored, by_kind = [], {}
    for source, identity, kind, vec in variants:
        by_kind.setdefault(kind, []).append(scoring.pair_score(vec, originals[source][1]))
        for other, (other_identity, ref) in originals.items():
            if other == source or other_identity == identity:
                continue
            scored.append((False, scoring.pair_score(vec, ref)))
        scored.append((True, by_kind[kind][-1]))
    return scored, by_kind


def available_models() -> list[str]:
    """dlib, plus sface when the faceflow[sface] extra is installed."""
    try:
        M.sface_model_dir()
    except M.ModelUnavailable:
        return ["dlib"]
    return ["dlib", "sface"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=M.MODELS,
                        help="model(s) to calibrate (default: every installed one)")
    args = parser.parse_args()
    fit_photos, dev = photo_set()
    report = {"models": {}}
    for model in args.model or available_models():
        with scoring.scoring_model(model):
            report["models"][model] = calibrate(model, fit_photos, dev)
    path = write_result("calibration", report)
    for model, figures in report["models"].items():
        _print(model, figures)
    print(f"written to {path.relative_to(ROOT)}")


def calibrate(model: str, fit_photos: list[LabelledPhoto], dev: list[LabelledPhoto]
              ) -> dict[str, Any]:
    """The fit, the shipped curve's anchors and the ROC points of one model."""
    describer = Describer(model)
    vecs = describe_faces(describer, fit_photos)
    shipped = scoring.CALIBRATIONS[model]
    report: dict[str, Any] = {"fit": fit_model(vecs, model)}
    report["anchors_shipped"] = {str(s): round(shipped.distance_at_far(f), 3)
                                 for s, f in scoring.SCORE_FAR}
    report["shipped_model"] = {"impostor_mean": shipped.impostor_mean,
                               "impostor_sd": shipped.impostor_sd}
    gen_scored, by_kind = generated(describer)
    roc = {"model (normal tail)": [{"score": s, "FAR": f} for s, f in scoring.SCORE_FAR[::-1]],
           "stated-licence faces": roc_points(scored_faces(vecs), THRESHOLDS),
           "generated variants": roc_points(gen_scored, THRESHOLDS)}
    if dev:
        roc["dev set, all distinct pairs (check)"] = roc_points(dev_distinct(describer, dev),
                                                                 THRESHOLDS)
    report["roc"] = roc
    report["generated_min_score_by_variant"] = {k: min(v) for k, v in by_kind.items()}
    return report


def _print(model: str, report: dict[str, Any]) -> None:
    fit = report["fit"]
    print(f"== {model}\nfit: {fit['faces']} faces of {fit['identities']} people, "
          f"{fit['impostor_pairs']} different-person pairs: unit distance mean "
          f"{fit['impostor_mean']}, sd {fit['impostor_sd']} (shipped: "
          f"{report['shipped_model']['impostor_mean']}, {report['shipped_model']['impostor_sd']})")
    print(f"  lowest different-person distances {fit['lowest_impostor']}, model at those "
          f"ranks {fit['model_at_lowest_ranks']}")
    print(f"  same-person distances {fit['genuine_distances']}")
    print(f"  raw/unit distance ratio {fit['raw_to_unit_ratio']}; {fit['published_point']} is "
          f"unit {fit['published_point_unit_distance']}, model FAR there "
          f"{fit['model_far_at_published_point']}")
    print("  anchors (score: unit distance) fitted", fit["anchors_fitted"],
          "shipped", report["anchors_shipped"])
    print(f"{'set':40} {'score':>5} {'same-person pass':>20} {'different-person accept':>26}")
    for name, points in report["roc"].items():
        for p in points:
            if "TAR" not in p:
                print(f"{name:40} {p['score']:5.0f} {'':>20} {p['FAR']:>26.0e}")
                continue
            tar = (f"{p['TAR']:.3f} ({p['true_accepts']}/{p['genuine_pairs']})"
                   if p["genuine_pairs"] else "-")
            far = f"{p['FAR']:.4f} ({p['false_accepts']}/{p['impostor_pairs']})"
            print(f"{name:40} {p['score']:5.0f} {tar:>20} {far:>26}")
    print("generated variants, lowest score vs the original:",
          {k: round(v, 1) for k, v in report["generated_min_score_by_variant"].items()})


if __name__ == "__main__":
    main()
