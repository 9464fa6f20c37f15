"""A slow service is not a hung call: the adaptive read timeout gives a call up only when
the service answers others and not it, or answers nothing at all.

The pure rule (:meth:`ReadTimeout.overdue`) first, then the real engine with one model
process: a burst of detect calls queues behind that process, so the last ones wait far
past the limit the fast answers before set, while the queue keeps moving. None of them
may be given up (a retry would queue the same work again behind itself)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from pipeline.client.config import Settings
from pipeline.client.faceclient import FaceClient
from pipeline.client.transport import TIMEOUT_CEILING, TIMEOUT_FLOOR, TIMEOUT_START, ReadTimeout


def _seen_fast(calls: int = 30) -> ReadTimeout:
    """A clock that saw ``calls`` answers of 10 ms, sent one a second from t=0."""
    clock = ReadTimeout(None)
    for k in range(calls):
        clock.observe(0.01, sent_at=float(k))
    return clock


def test_before_any_answer_the_start_limit_applies() -> None:
    clock = ReadTimeout(None)
    assert clock.seconds() == TIMEOUT_START
    assert not clock.overdue(0.0, TIMEOUT_START - 0.1)
    assert clock.overdue(0.0, TIMEOUT_START + 0.1)  # nothing answered since: given up


def test_a_few_answers_do_not_set_the_limit() -> None:
    clock = ReadTimeout(None)
    for _ in range(19):  # fast answers while the queue was short say nothing of the next call
        clock.observe(0.01, sent_at=0.0)
    assert clock.seconds() == TIMEOUT_START
    clock.observe(0.01, sent_at=0.0)
    assert clock.seconds() == TIMEOUT_FLOOR


def test_a_call_overtaken_by_a_later_one_is_given_up_past_the_limit() -> None:
    clock = _seen_fast()
    sent = 100.0
    clock.observe(0.01, sent_at=sent + 0.5)  # sent after it, already answered
    assert clock.seconds() == TIMEOUT_FLOOR
    assert not clock.overdue(sent, sent + TIMEOUT_FLOOR - 0.1)
    assert clock.overdue(sent, sent + TIMEOUT_FLOOR + 0.1)


def test_a_call_alone_with_no_answer_since_it_was_sent_is_given_up_past_the_limit() -> None:
    clock = _seen_fast()
    assert clock.overdue(100.0, 100.0 + TIMEOUT_FLOOR + 0.1)


def test_a_call_in_a_moving_queue_waits_up_to_the_ceiling() -> None:
    clock = _seen_fast()
    sent = 100.0
    for k in range(1, 40):  # calls sent before it keep being answered, none after it
        clock.observe(k * 0.5, sent_at=sent - 0.1)
    now = sent + 25.0
    assert not clock.overdue(sent, now)
    assert clock.overdue(sent, sent + TIMEOUT_CEILING)


def test_a_fixed_timeout_is_just_that() -> None:
    clock = ReadTimeout(0.7)
    assert not clock.overdue(0.0, 0.6)
    assert clock.overdue(0.0, 0.71)


@pytest.mark.dlib
async def test_a_burst_queued_behind_one_model_process_is_waited_for(engine: Any,
                                                                      samples_dir: Path) -> None:
    settings = Settings(endpoint=engine.url, api_key=engine.api_key,
                        secret_key=engine.secret_key)
    image = (samples_dir / "obama_01.jpg").read_bytes()
    async with FaceClient(settings, qps=10_000) as client:
        for _ in range(25):  # the latency it learns: one call at a time, well under the floor
            await client.detect(image)
        limit = client._transport.read_timeout.seconds()  # what the fast answers set
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(client.detect(image) for _ in range(120)))
        burst = asyncio.get_running_loop().time() - started
    if burst < 1.5 * limit:
        pytest.skip(f"the burst took {burst:.1f} s, not past the {limit:.1f} s limit: "
                    "this machine answers too fast to queue")
    assert all(r.faces for r in results)
    assert [r.attempts for r in results] == [1] * len(results)
    assert not client.stats.errors
