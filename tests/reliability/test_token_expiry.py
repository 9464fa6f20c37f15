"""Access tokens that expire every 2 seconds, mid-run: no row fails for 110/111.

The SDK renews a token 30 s before ``expires_in`` runs out; a token that lives 2 s must
still be used (renewed halfway, not before every call), and a call that waited in the
rate limiter longer than a token lives must not reach the service with an expired one.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support.reliability import member_manifest, read_parts

from jobs.exits import exit_code_of
from pipeline.client.config import Settings
from pipeline.client.faceclient import FaceClient
from pipeline.enroll.job import EnrollConfig, run_enroll

pytestmark = [pytest.mark.slow, pytest.mark.dlib]

TTL = 2


@pytest.fixture(scope="module")
def short_tokens(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """An engine whose tokens expire :data:`TTL` seconds after they are issued."""
    from pipeline.engine.server import EngineServer  # noqa: PLC0415

    with EngineServer(tmp_path_factory.mktemp("ttl-engine"), token_ttl=TTL) as server:
        yield server


def _issued_tokens(server: Any) -> int:
    """Tokens the engine has issued, read from its own database."""
    db = sqlite3.connect(f"file:{server.data_dir / 'faceset.sqlite3'}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0])
    finally:
        db.close()


def _enroll(server: Any, manifest: Path, run_dir: Path, group: str, qps: Any,
            concurrency: int) -> tuple[Any, list[FaceClient]]:
    settings = Settings(endpoint=server.url, api_key=server.api_key,
                        secret_key=server.secret_key)
    clients: list[FaceClient] = []

    def factory(s: Settings, q: Any) -> FaceClient:
        clients.append(FaceClient(s, qps=q))
        return clients[-1]

    config = EnrollConfig(manifest=manifest, settings=settings, group=group, qps=qps,
                          concurrency=concurrency, run_dir=run_dir)
    return asyncio.run(run_enroll(config, client_factory=factory)), clients


def _no_token_failures(run_dir: Path, rows: int) -> None:
    df = read_parts(run_dir)
    assert df["row"].tolist() == list(range(rows))
    assert set(df["status"]) == {"enrolled"}, df[["status", "error_code", "error_msg"]]
    assert not df["error_code"].isin(["110", "111"]).any()


def test_tokens_expiring_every_two_seconds_are_renewed_not_refused(
    short_tokens: Any, photos: list[Path], tmp_path: Path
) -> None:
    rows = 24
    manifest = member_manifest(tmp_path / "m.csv", photos[:rows], "ttl")
    issued = _issued_tokens(short_tokens)
    # 4 rows/s: the run lasts ~6 s, three token lifetimes.
    result, clients = _enroll(short_tokens, manifest, tmp_path / "run", "rel_ttl",
                              {"detect": 4, "add": 4}, 4)
    assert exit_code_of(result) == 0 and result.stop_reason is None, result.stop_message
    _no_token_failures(tmp_path / "run", rows)
    stats = clients[0].stats
    sends = sum(stats.calls.values())
    fetched = _issued_tokens(short_tokens) - issued
    assert fetched == stats.token_fetches >= 3  # tokens did expire mid-run
    assert stats.token_fetches < sends / 2, stats.as_dict()  # reused while valid
    print(f"\n{sends} sends, {stats.token_fetches} token fetches, "
          f"{stats.token_refreshes} refreshes after 110/111, {result.elapsed_s:.1f} s")


def test_a_call_queued_longer_than_a_token_lives_is_sent_with_a_fresh_one(
    short_tokens: Any, photos: list[Path], tmp_path: Path
) -> None:
    rows = 8
    manifest = member_manifest(tmp_path / "m.csv", photos[:rows], "ttlq")
    # 8 rows in flight at 1 call/s: the last waits ~8 s in the limiter, four lifetimes.
    result, clients = _enroll(short_tokens, manifest, tmp_path / "run", "rel_ttl_queue",
                              1, 8)
    assert exit_code_of(result) == 0 and result.stop_reason is None, result.stop_message
    _no_token_failures(tmp_path / "run", rows)
    print(f"\nqueued: {clients[0].stats.as_dict()}, {result.elapsed_s:.1f} s")
