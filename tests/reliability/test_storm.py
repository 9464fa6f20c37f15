"""An error storm: 30 % of calls answer 18, 5 % answer 4, 3 % hang, 2 % HTTP 500.

The engine injects the faults (seeded, drawn per admitted call); the job runs in-process
with short waits, the default retry budgets (rate limits 4/18 their own, larger budget:
they mean "not now"; faults 5 sends) and the adaptive read timeout (the "slow" replies
come after 8 s: hung calls, each costing its row one attempt and a few seconds). The run
completes with every row enrolled, each outcome
saying how many sends it took and why (``attempts_by_cause``).

The last test pins a bug this suite found: random 18s made the limiter cut its rate
again and again, to min_rate. The governor now tests a cut and undoes it when the share
rejected does not fall (pipeline/client/ratelimit.py, "Random rejections are not a quota").
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import pytest
from support.doubles import run_virtual
from support.reliability import faces_per_uid, member_manifest, read_parts

from pipeline.client.config import Settings
from pipeline.client.faceclient import FaceClient
from pipeline.client.ratelimit import RateLimiter
from pipeline.client.retry import RetryPolicy
from pipeline.enroll.job import EnrollConfig, run_enroll
from pipeline.runs.outcomes import SUCCESS_STATUSES

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

ROWS = 80
GROUP = "rel_storm"
#: 3 % "slow" replies come after 8 s: hung calls the adaptive read timeout ends first.
FAULTS = {"18": 0.30, "4": 0.05, "slow": 0.03, "http500": 0.02}
STORM_CODES = {"18", "4", "SDK108", "HTTP500"}


@pytest.fixture(scope="module")
def storm(rel_engine: Any, photos: list[Path], tmp_path_factory: pytest.TempPathFactory
          ) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("storm")
    manifest = member_manifest(folder / "m.csv", photos[:ROWS], "storm")
    settings = Settings(endpoint=rel_engine.url, api_key=rel_engine.api_key,
                        secret_key=rel_engine.secret_key)
    policy = RetryPolicy(initial_wait=0.05, max_wait=0.2, jitter=0.05)
    clients: list[FaceClient] = []

    def factory(s: Settings, qps: Any) -> FaceClient:
        clients.append(FaceClient(s, qps=qps, retry=policy))
        return clients[-1]

    config = EnrollConfig(manifest=manifest, settings=settings, group=GROUP, concurrency=4,
                          run_dir=folder / "run")
    rel_engine.configure_emulation(faults=FAULTS, delay=8.0, seed=1234)
    try:
        result = asyncio.run(run_enroll(config, client_factory=factory))
    finally:
        rel_engine.configure_emulation(faults={}, delay=2.0)
    return {"result": result, "df": read_parts(folder / "run"), "stats": clients[0].stats,
            "faces": faces_per_uid(rel_engine.store, GROUP)}


def test_the_run_completes_with_every_row_enrolled(storm: dict[str, Any]) -> None:
    result, df = storm["result"], storm["df"]
    assert result.stop_reason is None and result.remaining == 0
    assert df["row"].tolist() == list(range(ROWS))
    # a 1-in-10^5 chance per call of five faults in a row: no row runs out of budget (an
    # add that timed out but landed is already_enrolled when sent again: a success too)
    assert set(df["status"]) <= SUCCESS_STATUSES, df["status"].value_counts().to_dict()
    errors = storm["stats"].errors
    assert {str(code) for code in errors} <= STORM_CODES  # the storm, and nothing else
    assert errors[18] > 0.2 * sum(storm["stats"].calls.values())
    print(f"\nclient errors {dict(errors)}; sends {dict(storm['stats'].calls)}; "
          f"{result.elapsed_s:.1f} s")


def test_each_outcome_counts_its_sends_by_cause(storm: dict[str, Any]) -> None:
    df = storm["df"]
    causes = pd_causes(df)
    assert (df["attempts"] >= 2 + causes["rate_limit"] + causes["fault"]).all()
    assert causes["rate_limit"].sum() > 0 and causes["fault"].sum() > 0
    assert causes["outage"].sum() == 0  # the service never went away
    # the budgets: a rate limit may be waited out many times, a fault at most 4 per call
    assert causes["fault"].max() <= 8


def pd_causes(df: Any) -> dict[str, Any]:
    import pandas as pd

    rows = [c or {"rate_limit": 0, "fault": 0, "outage": 0} for c in df["attempts_by_cause"]]
    return {k: pd.Series([r[k] for r in rows]) for k in ("rate_limit", "fault", "outage")}


def test_no_face_twice_and_every_success_is_in_the_library(storm: dict[str, Any]) -> None:
    df, faces = storm["df"], storm["faces"]
    assert max(faces.values()) == 1
    assert all(faces.get(uid) == 1 for uid in df["uid"])


def test_random_18s_do_not_collapse_the_rate() -> None:
    """4 workers offer 80 calls/s for 60 virtual seconds; 30 % of calls draw an 18 at any
    rate, so slowing down never makes them stop. Before the fix the rate ended at 0.47
    calls/s (440 calls sent instead of ~4,800); this asks for most of what was offered."""
    async def offer() -> int:
        limiter, rng, sent = RateLimiter(None), random.Random(1), 0

        async def worker() -> None:
            nonlocal sent
            loop = asyncio.get_running_loop()
            while loop.time() < 60:
                ticket = await limiter.acquire("detect")
                sent += 1
                await asyncio.sleep(0.05)  # the service's answer time
                if rng.random() < 0.3:
                    limiter.on_limited("detect", ticket)
                else:
                    limiter.on_answered("detect", ticket)

        await asyncio.gather(*[worker() for _ in range(4)])
        return sent

    sent = run_virtual(offer)
    assert sent > 0.8 * 60 * 80, f"{sent} calls sent in 60 s"
