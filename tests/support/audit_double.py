"""A protocol double of the face service for audit tests and the audit benchmark.

It speaks the documented HTTP API (token, identify, match, user add, user delete)
on 127.0.0.1, port 0, in its own thread, but its "faces" are synthetic: a photo is
known by the sha256 of its bytes, which :meth:`FaceDouble.register` maps to a
unit descriptor (128 floats). Scores are ``100 * max(0, cosine)``; the same
identity is drawn as its base vector plus a little noise (cosine ~0.95), two
identities are near-orthogonal (cosine ~0 +- 0.1). Unknown bytes answer 216402.

With ``FaceDouble(buckets=True)`` identify scores only the faces that share the
probe's bucket (its identity key, given at :meth:`register` / :meth:`enroll`) plus
``top`` fixed background faces, so a call costs O(k) whatever the faceset size;
the benchmark uses it so that what grows with n is the audit, not the double's
brute-force search. Without buckets identify scans the whole group.

Why a double and not the dlib engine: the benchmark needs 10k faces seeded
without 10k adds and searched in microseconds, and the resume test needs a
quota error (17) on a chosen call, which the engine cannot produce on demand.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from aiohttp import web
from PIL import Image

from pipeline.api.errors import error_message
from pipeline.runs.outcomes import OUTCOME_SCHEMA, make_outcome
from pipeline.runs.rundir import ManifestRef, RunDir, RunInfo

DIM = 128
TOKEN = "double-token"


def descriptors(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors (rows), float32."""
    rng = np.random.default_rng(seed)
    vec = rng.standard_normal((n, DIM)).astype(np.float32)
    return vec / np.linalg.norm(vec, axis=1, keepdims=True)


def variant(base: np.ndarray, seed: int, noise: float = 0.3) -> np.ndarray:
    """Another photo of the same identity: ``base`` plus noise, renormalised (cosine ~0.95)."""
    rng = np.random.default_rng(seed)
    vec = base + noise * rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
    return (vec / np.linalg.norm(vec)).astype(np.float32)


@dataclass
class _Group:
    uids: list[str] = field(default_factory=list)  # one per face
    infos: dict[str, str] = field(default_factory=dict)
    vectors: list[np.ndarray] = field(default_factory=list)
    buckets: dict[int, list[int]] = field(default_factory=dict)  # bucket -> face indexes
    _matrix: np.ndarray | None = None

    def matrix(self) -> np.ndarray:
        if self._matrix is None:
            self._matrix = np.stack(self.vectors) if self.vectors else np.zeros((0, DIM))
        return self._matrix


class FaceDouble:
    """The double: ``with FaceDouble() as d: d.url``. ``calls`` counts requests per path
    tail (``identify``, ``match``, ``add``, ``delete``, ``token``). ``quota_after`` maps a
    path tail to the number of calls answered before every further one gets error 17."""

    def __init__(self, *, buckets: bool = False) -> None:
        self.use_buckets = buckets
        self.faces: dict[str, tuple[np.ndarray, int | None]] = {}
        self.groups: dict[str, _Group] = {}
        self.calls: Counter[str] = Counter()
        self.quota_after: dict[str, int] = {}
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- seeding ------------------------------------------------------------------------

    def register(self, image: bytes, vector: np.ndarray, bucket: int | None = None) -> None:
        """Make ``image`` a photo of the face ``vector`` (in ``bucket``, for buckets=True)."""
        self.faces[hashlib.sha256(image).hexdigest()] = (vector, bucket)

    def enroll(self, group: str, uid: str, vector: np.ndarray, user_info: str = "",
               bucket: int | None = None) -> None:
        """Put a face into the faceset directly (no call counted)."""
        g = self.groups.setdefault(group, _Group())
        if bucket is not None:
            g.buckets.setdefault(bucket, []).append(len(g.uids))
        g.uids.append(uid)
        g.vectors.append(vector)
        g.infos[uid] = user_info
        g._matrix = None

    # -- the server ------------------------------------------------------------------------

    def __enter__(self) -> FaceDouble:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._loop is not None and self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/oauth/2.0/token", self._token)
        app.router.add_post("/oauth/2.0/token", self._token)
        app.router.add_post("/rest/2.0/face/v2/{name:.+}", self._api)
        self._runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        self._loop.run_forever()

    async def _token(self, request: web.Request) -> web.Response:
        self.calls["token"] += 1
        return web.json_response({"access_token": TOKEN, "expires_in": 2592000,
                                  "scope": "brain_all_scope public"})

    async def _api(self, request: web.Request) -> web.Response:
        name = request.match_info["name"].rsplit("/", 1)[-1]
        self.calls[name] += 1
        log_id = sum(self.calls.values())
        limit = self.quota_after.get(name)
        if limit is not None and self.calls[name] > limit:
            return _error(17, log_id)
        form = await request.post()
        handler = {"identify": self._identify, "match": self._match, "add": self._add,
                   "delete": self._delete}.get(name)
        if handler is None:
            return _error(216102, log_id)
        try:
            body = handler({k: str(v) for k, v in form.items()})
        except _Fail as fail:
            return _error(fail.code, log_id)
        return web.json_response({**body, "log_id": log_id})

    def _face(self, b64: str) -> tuple[np.ndarray, int | None]:
        try:
            data = base64.b64decode(b64, validate=True)
        except ValueError:
            raise _Fail(216200) from None
        face = self.faces.get(hashlib.sha256(data).hexdigest())
        if face is None:
            raise _Fail(216402)
        return face

    def _identify(self, form: dict[str, str]) -> dict[str, Any]:
        probe, bucket = self._face(form["image"])
        top = int(form.get("user_top_num", "1"))
        best: dict[tuple[str, str], float] = {}
        for gid in form["group_id"].split(","):
            g = self.groups.get(gid)
            if g is None or not g.vectors:
                continue
            if self.use_buckets:
                rows = list(range(min(top, len(g.uids)))) + g.buckets.get(bucket, [])  # type: ignore[arg-type]
                scores = dict(zip(rows, 100.0 * np.maximum(
                    np.stack([g.vectors[i] for i in rows]) @ probe, 0.0), strict=True))
            else:
                all_scores = 100.0 * np.maximum(g.matrix() @ probe, 0.0)
                top_rows = np.argpartition(-all_scores, min(top * 4, len(all_scores) - 1))
                scores = {int(i): all_scores[i] for i in top_rows[: top * 4]}
            for i, score in scores.items():  # a uid may hold several faces: keep its best
                key = (gid, g.uids[i])
                best[key] = max(best.get(key, 0.0), float(score))
        if not best:
            raise _Fail(216618)
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top]
        result = [{"group_id": gid, "uid": uid, "user_info": self.groups[gid].infos[uid],
                   "scores": [round(score, 3)]} for (gid, uid), score in ranked]
        return {"result_num": len(result), "result": result}

    def _match(self, form: dict[str, str]) -> dict[str, Any]:
        faces = [self._face(part)[0] for part in form["images"].split(",")]
        if len(faces) < 2:
            raise _Fail(216614)
        result = [{"index_i": i, "index_j": j,
                   "score": round(100.0 * max(0.0, float(faces[i] @ faces[j])), 3)}
                  for i in range(len(faces)) for j in range(i + 1, len(faces))]
        return {"result_num": len(result), "result": result}

    def _add(self, form: dict[str, str]) -> dict[str, Any]:
        vector, bucket = self._face(form["image"])
        for gid in form["group_id"].split(","):
            self.enroll(gid, form["uid"], vector, form.get("user_info", ""), bucket)
        return {}

    def _delete(self, form: dict[str, str]) -> dict[str, Any]:
        uid, gids = form["uid"], form.get("group_id")
        found = False
        for gid, g in self.groups.items():
            if gids and gid not in gids.split(","):
                continue
            keep = [i for i, u in enumerate(g.uids) if u != uid]
            if len(keep) == len(g.uids):
                continue
            found = True
            renumber = {old: new for new, old in enumerate(keep)}
            g.uids = [g.uids[i] for i in keep]
            g.vectors = [g.vectors[i] for i in keep]
            g.buckets = {b: [renumber[i] for i in rows if i in renumber]
                         for b, rows in g.buckets.items()}
            g._matrix = None
        if not found:
            raise _Fail(216612)
        return {}


class _Fail(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _error(code: int, log_id: int) -> web.Response:
    return web.json_response({"error_code": code, "error_msg": error_message(code),
                              "log_id": log_id})


# -- building inputs -------------------------------------------------------------------------

#: One enrolled photo: (uid, photo bytes, descriptor, bucket = the person's number).
Row = tuple[str, bytes, np.ndarray, int]


def png(i: int, salt: int) -> bytes:
    """A unique 16x16 PNG for person ``i`` (``salt`` tells that person's photos apart)."""
    img = Image.new("RGB", (16, 16), (salt * 40, 90, 160))
    img.putpixel((0, 0), ((i >> 16) & 255, (i >> 8) & 255, i & 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def enroll_run(root: Path, group: str, rows: list[Row], double: FaceDouble, *,
               write_files: bool = False, name: str = "enroll") -> tuple[Path, dict[str, bytes]]:
    """The run directory an enrollment of ``rows`` into ``group`` leaves (run.json and one
    outcome part), with the double seeded (faceset and photos). Returns (run dir, path ->
    bytes). Photos are written under ``root/photos`` only with ``write_files``; otherwise
    serve them from the returned mapping (the benchmark's 10k small files would cost
    more to delete on this disk than the audit takes)."""
    now = datetime.now(UTC)
    outcomes, photos = [], {}
    if write_files:
        (root / "photos").mkdir(parents=True, exist_ok=True)
    for k, (uid, data, face, person) in enumerate(rows):
        image = f"photos/{name}_{k:06d}.png"
        photos[str(root / image)] = data
        if write_files:
            (root / image).write_bytes(data)
        outcomes.append(make_outcome(
            run_id=name, row=k, line=k + 2, uid=uid, group_id=group, image=image,
            image_sha256=hashlib.sha256(data).hexdigest(), status="enrolled",
            started_at=now, finished_at=now))
        double.register(data, face, person)
        double.enroll(group, uid, face, bucket=person)
    rundir = RunDir(root / name)
    rundir.write_info(RunInfo(run_id=name, job="enroll", created_at=now.isoformat(),
                              manifest=ManifestRef(str(root / "manifest.csv"), "-", len(rows))))
    rundir.outcomes_dir.mkdir()
    table = pa.Table.from_pylist([{f: getattr(o, f) for f in OUTCOME_SCHEMA.names}
                                  for o in outcomes], schema=OUTCOME_SCHEMA)
    pq.write_table(table, rundir.outcomes_dir / "part-00000.parquet")
    return rundir.path, photos
