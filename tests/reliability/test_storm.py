"""An error storm: 30 % of calls answer 18, 5 % answer 4, 2 % time out, 1 % HTTP 500.

The engine injects the faults (seeded, drawn per admitted call); the job runs in-process
with a retry budget of 3 sends per call and short waits, so that some calls do run out
(0.38**3 = 5 % of them) and the run stays short. The run completes; a row fails only
after its failing call used the whole budget, and then it says so.

The last test pins a bug this suite found: random 18s made the AIMD limiter cut its rate
again and again, to min_rate. The limiter now undoes a cut that lowered what it sent but
not the share rejected (pipeline/client/ratelimit.py, ``_noise_check``).
"""

from __future__ import annotations

import asyncio
import math
import random
from pathlib import Path
from typing import Any

import pytest
from support.doubles import run_virtual
from support.reliability import faces_per_uid, member_manifest, read_parts

from pipeline.client.config import Settings
from pipeline.client.faceclient import FaceClient
from pipeline.client.ratelimit import Aimd, RateLimiter
from pipeline.client.retry import RetryPolicy
from pipeline.enroll.job import EnrollConfig, run_enroll
from pipeline.runs.outcomes import SUCCESS_STATUSES

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

ROWS = 80
GROUP = "rel_storm"
BUDGET = 3
#: 2 % "slow" replies come after 2 s, past the client's 1 s read timeout: a time-out.
FAULTS = {"18": 0.30, "4": 0.05, "slow": 0.02, "http500": 0.01}
STORM_CODES = {"18", "4", "SDK108", "HTTP500"}
#: The storm's 18s are random, not a rate signal. Before the limiter's fix the rate
#: spiralled to min_rate and these 80 rows took 215 s at 1.1 sends/s; with the default
#: limiter they now take ~17 s.
AIMD = Aimd()


@pytest.fixture(scope="module")
def storm(rel_engine: Any, photos: list[Path], tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("storm")
    manifest = member_manifest(folder / "m.csv", photos[:ROWS], "storm")
    settings = Settings(endpoint=rel_engine.url, api_key=rel_engine.api_key,
                        secret_key=rel_engine.secret_key, read_timeout=1.0)
    policy = RetryPolicy(max_attempts=BUDGET, initial_wait=0.05, max_wait=0.2, jitter=0.05)
    clients: list[FaceClient] = []

    def factory(s: Settings, qps: Any) -> FaceClient:
        clients.append(FaceClient(s, qps=qps, retry=policy, aimd=AIMD))
        return clients[-1]

    config = EnrollConfig(manifest=manifest, settings=settings, group=GROUP, concurrency=4,
                          run_dir=folder / "run")
    rel_engine.configure_emulation(faults=FAULTS, delay=2.0, seed=1234)
    try:
        result = asyncio.run(run_enroll(config, client_factory=factory))
    finally:
        rel_engine.configure_emulation(faults={}, delay=2.0)
    return {"result": result, "df": read_parts(folder / "run"), "stats": clients[0].stats,
            "faces": faces_per_uid(rel_engine.store, GROUP)}


def test_the_run_completes_with_one_outcome_per_row(storm: dict[str, Any]) -> None:
    result, df = storm["result"], storm["df"]
    assert result.stop_reason is None and result.remaining == 0
    assert df["row"].tolist() == list(range(ROWS))
    assert set(df["status"]) <= SUCCESS_STATUSES | {"failed"}
    errors = storm["stats"].errors
    assert {str(code) for code in errors} <= STORM_CODES  # the storm, and nothing else
    assert errors[18] > 0.2 * sum(storm["stats"].calls.values())
    print(f"\nstatuses {df['status'].value_counts().to_dict()}; client errors {dict(errors)}; "
          f"sends {dict(storm['stats'].calls)}; {result.elapsed_s:.1f} s")


def test_a_row_fails_only_after_its_call_used_the_whole_budget(storm: dict[str, Any]) -> None:
    failed = storm["df"][storm["df"]["status"] == "failed"]
    assert len(failed) >= 1  # P(no call runs out) over ~160 calls is below 1e-3
    for _, rec in failed.iterrows():
        assert rec["retryable"] and list(rec["reasons"]) == ["retries_exhausted"]
        assert rec["error_code"] in STORM_CODES and rec["error_msg"]
        # face_count is set once detect answered (an error reply sets detect_log_id too)
        if math.isnan(rec["face_count"]):  # detect ran out: its sends are all the row's
            assert rec["attempts"] == BUDGET, rec.to_dict()
        else:  # detect succeeded (1..BUDGET sends), then the write ran out
            assert BUDGET + 1 <= rec["attempts"] <= 2 * BUDGET, rec.to_dict()


def test_no_face_twice_and_every_success_is_in_the_library(storm: dict[str, Any]) -> None:
    df, faces = storm["df"], storm["faces"]
    assert max(faces.values()) == 1
    ok = df[df["status"].isin(SUCCESS_STATUSES)]
    assert all(faces.get(uid) == 1 for uid in ok["uid"])
    # A row whose add timed out may be in the library although it failed: the slow add
    # landed after the client gave up. Never more than once, and a rerun says
    # already_enrolled.
    failed_at_detect = df[(df["status"] == "failed") & df["face_count"].isna()]
    assert not any(faces.get(uid) for uid in failed_at_detect["uid"])


def test_random_18s_do_not_collapse_the_rate() -> None:
    """4 workers offer 80 calls/s for 60 virtual seconds; 30 % of calls draw an 18 at any
    rate, so slowing down never makes them stop. Before the fix the rate ended at 0.47 calls/s
    (440 calls sent instead of ~4,800); this asks that it stay above 10."""
    async def offer() -> float | None:
        limiter, rng = RateLimiter(None), random.Random(1)

        async def worker() -> None:
            loop = asyncio.get_running_loop()
            while loop.time() < 60:
                await limiter.acquire("detect")
                await asyncio.sleep(0.05)  # the service's answer time
                if rng.random() < 0.3:
                    limiter.on_limited("detect")

        await asyncio.gather(*[worker() for _ in range(4)])
        return limiter.rate("detect")

    rate = run_virtual(offer)
    assert rate is not None and rate > 10, f"rate fell to {rate:.2f} calls/s"
