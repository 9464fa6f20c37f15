"""Enroll on ``--api v3`` against the real engine: the demo's manifest gives the same
statuses and reasons as on v2, writes go up as FACE_TOKEN, run.json records the
protocol, resume refuses a switch, the 20-face limit and --server-quality name their
reasons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from jobs.cli import main
from jobs.demo import build_manifest
from jobs.exits import exit_code_of
from pipeline import variants as v
from pipeline.api.errors import ConfigError
from pipeline.client.config import Secret, Settings
from pipeline.enroll.job import EnrollConfig, default_client_factory, run_enroll

pytestmark = pytest.mark.dlib


def _settings(srv: Any) -> Settings:
    return Settings(endpoint=srv.url, api_key=Secret(srv.api_key),
                    secret_key=Secret(srv.secret_key))


def _rows(run_dir: Path) -> dict[int, tuple[str, tuple[str, ...]]]:
    frame = pd.read_parquet(run_dir / "outcomes")
    return {int(r.row): (r.status, tuple(r.reasons)) for r in frame.itertuples()}


class _Capture:
    """A client factory that keeps the clients it made (to read their counters)."""

    def __init__(self) -> None:
        self.clients: list[Any] = []

    def __call__(self, settings: Settings, qps: Any, **options: Any) -> Any:
        client = default_client_factory(settings, qps, **options)
        self.clients.append(client)
        return client


async def _enroll(engine: Any, manifest: Path, run_dir: Path, group: str, api: str,
                  **options: Any) -> tuple[Any, _Capture]:
    capture = _Capture()
    options.setdefault("concurrency", 4)
    config = EnrollConfig(manifest=manifest, settings=_settings(engine), group=group,
                          run_dir=run_dir, api=api, **options)
    return await run_enroll(config, client_factory=capture), capture


@pytest.fixture(scope="module")
def demo_manifest(engine: Any, tmp_path_factory: pytest.TempPathFactory,
                  samples_dir: Path) -> Path:
    from jobs.demo import _face_box  # noqa: PLC0415

    folder = tmp_path_factory.mktemp("demo3")
    return build_manifest(folder, _face_box(_settings(engine), samples_dir / "obama_01.jpg"))


async def test_demo_manifest_same_statuses_as_v2(engine, demo_manifest, tmp_path):
    v2, _ = await _enroll(engine, demo_manifest, tmp_path / "v2", "demo_v2", "v2")
    v3, capture = await _enroll(engine, demo_manifest, tmp_path / "v3", "demo_v3", "v3")
    assert _rows(tmp_path / "v3") == _rows(tmp_path / "v2")
    assert v3.counts == v2.counts and v3.counts.get("enrolled", 0) >= 2
    api = capture.clients[0]
    assert api.token_writes == v3.counts["enrolled"] and api.base64_writes == 0
    assert api.stats.calls["add"] == v3.counts["enrolled"]
    info = json.loads((tmp_path / "v3" / "run.json").read_text())
    assert info["options"]["api"] == "v3"
    shown = CliRunner().invoke(main, ["report", str(tmp_path / "v3"), "--json"])
    assert json.loads(shown.output)["api"] == "v3", shown.output
    # resume keeps the protocol: a switch is refused before any call
    with pytest.raises(ConfigError, match="--api v3"):
        await _enroll(engine, demo_manifest, tmp_path / "v3", "demo_v3", "v2")
    again, capture = await _enroll(engine, demo_manifest, tmp_path / "v3", "demo_v3", "v3")
    assert again.resumed and sum(again.session_counts.values()) == 0


async def test_face_limit_and_one_face_per_group(engine, samples_dir, tmp_path):
    group = "limit_v3"
    rng = np.random.default_rng(3)
    vecs = rng.normal(size=(20, 128)).astype(np.float32)
    engine.seed_faces(group, ["full"] * 20, vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    manifest = tmp_path / "m.csv"
    obama = samples_dir / "obama_01.jpg"
    manifest.write_text(f"uid,image\nfull,{obama}\nfresh,{obama}\nother,{obama}\n")
    result, _ = await _enroll(engine, manifest, tmp_path / "run", group, "v3", concurrency=1)
    rows = _rows(tmp_path / "run")
    assert rows[0] == ("failed", ("face_limit",))
    assert rows[1] == ("enrolled", ())
    # v3: a picture's face_token is unique in its group, whoever holds it (223105)
    assert rows[2] == ("already_enrolled", ())
    assert exit_code_of(result) == 1


async def test_expired_token_falls_back_to_base64(engine, samples_dir):
    from pipeline.client.v3jobs import V3JobApi  # noqa: PLC0415

    # a picture registered nowhere: a registered picture's token never expires
    mirrored = Image.open(samples_dir / "obama_01.jpg").convert("RGB").transpose(
        Image.Transpose.FLIP_LEFT_RIGHT)
    mirrored.putpixel((0, 0), tuple(np.random.default_rng().integers(0, 255, 3).tolist()))
    image = v.to_bytes(mirrored)  # bytes of its own: a registered picture's token lasts
    async with V3JobApi(_settings(engine)) as api:
        found = await api.detect(image, face_fields=("qualities",))
        assert found.faces[0].qualities is not None
        engine.advance_clock(3601)
        try:
            written = await api.add_user("late", "info", "expiry_v3", image)
        finally:
            engine.advance_clock(-3601)
    assert (api.token_fallbacks, api.base64_writes, api.token_writes) == (1, 1, 0)
    assert written.attempts == 2
    assert [f.uid for f in engine.store.group_users("expiry_v3")] == ["late"]


async def test_server_quality_is_checked_after_the_local_gate(engine, samples_dir, tmp_path):
    obama = Image.open(samples_dir / "obama_01.jpg").convert("RGB")
    dim = tmp_path / "dim.jpg"
    dim.write_bytes(v.to_bytes(v.darkened(obama, 0.45)))  # passes the local gate (> 40)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uid,image\ndim,{dim}\n")
    plain, _ = await _enroll(engine, manifest, tmp_path / "plain", "sq_plain", "v3")
    strict, _ = await _enroll(engine, manifest, tmp_path / "strict", "sq_strict", "v3",
                              server_quality="HIGH")
    assert _rows(tmp_path / "plain")[0] == ("enrolled", ())
    status, reasons = _rows(tmp_path / "strict")[0]
    assert (status, reasons) == ("rejected_quality", ("server_quality",))


def test_cli_api_flag_env_and_bad_combinations(engine, demo_manifest, tmp_path):
    env = {"FACEFLOW_ENDPOINT": engine.url, "FACEFLOW_API_KEY": engine.api_key,
           "FACEFLOW_SECRET_KEY": engine.secret_key, "FACEFLOW_API": "v3"}
    manifest = tmp_path / "m.csv"
    long_uid = "u" * 49
    manifest.write_text(f"uid,image,group_id\n{long_uid},{demo_manifest},g\n"
                        f"two_groups,{demo_manifest},a,b\n".replace(",a,b", ",\"a,b\""))
    result = CliRunner().invoke(main, ["enroll", str(manifest), "--run-dir",
                                       str(tmp_path / "run")], env=env)
    rows = _rows(tmp_path / "run")
    assert rows[0] == ("invalid_input", ("uid_too_long_v3",)), result.output
    assert rows[1] == ("invalid_input", ("group_id_multiple",))
    bad = CliRunner().invoke(main, ["enroll", str(manifest), "--group", "g", "--api", "v2",
                                    "--server-quality", "HIGH"], env=env)
    assert bad.exit_code == 2 and "--server-quality" in bad.output


async def test_update_and_upsert_map_to_user_update(engine, samples_dir, tmp_path):
    obama, obama2 = samples_dir / "obama_01.jpg", samples_dir / "obama_02.jpg"
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"uid,image\nnew_uid,{obama}\n")
    _, capture = await _enroll(engine, manifest, tmp_path / "update", "upd_v3", "v3",
                               mode="update")
    assert _rows(tmp_path / "update")[0] == ("failed", ("user_not_found",))  # UPDATE: 223103
    await _enroll(engine, manifest, tmp_path / "upsert", "upd_v3", "v3", mode="upsert")
    assert _rows(tmp_path / "upsert")[0] == ("updated", ())  # REPLACE registers it
    again = tmp_path / "again.csv"
    again.write_text(f"uid,image\nnew_uid,{obama2}\n")
    await _enroll(engine, again, tmp_path / "update2", "upd_v3", "v3", mode="update",
                  threshold_overrides={"yaw": "45"})
    assert _rows(tmp_path / "update2")[0] == ("updated", ())
    faces = engine.store.faces_of("upd_v3", "new_uid")
    assert len(faces) == 1  # user/update replaced the face
