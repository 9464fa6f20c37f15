"""pipeline.frame: the runner every job shares, stop reasons, the FaceApi protocol."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator

import pytest

from pipeline.api.errors import (
    AuthError,
    FaceflowError,
    QuotaError,
    TransientError,
    UserNotFoundError,
)
from pipeline.client.config import Secret, Settings
from pipeline.client.faceclient import FaceClient
from pipeline.frame import FaceApi, Runner, Stopped, StopReason, StopRun, stop_for


class _Work:
    """Records what started and finished; stops the run or fails on the item asked."""

    def __init__(self, stop_on: int | None = None, fail_on: int | None = None) -> None:
        self.started: list[int] = []
        self.finished: list[int] = []
        self.stop_on, self.fail_on = stop_on, fail_on

    async def __call__(self, item: int) -> None:
        self.started.append(item)
        if item == self.stop_on:
            raise StopRun(StopReason.QUOTA, "[17] daily limit reached")
        if item == self.fail_on:
            raise RuntimeError("a bug")
        await asyncio.sleep(0)
        self.finished.append(item)


async def test_every_item_runs_with_at_most_concurrency_in_flight() -> None:
    active, peak, done = 0, 0, []
    full = asyncio.Event()

    async def work(item: int) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        if active == 3:
            full.set()
        await full.wait()  # the first items wait until three are in flight together
        active -= 1
        done.append(item)

    assert await Runner[int](3).run(range(20), work) is None
    assert sorted(done) == list(range(20)) and peak == 3


async def test_async_items_are_read_lazily() -> None:
    async def items() -> AsyncIterator[int]:
        for i in range(5):
            yield i

    work = _Work()
    assert await Runner[int](2).run(items(), work) is None
    assert sorted(work.finished) == list(range(5))


async def test_stop_run_starts_no_new_item_and_reports_the_first_reason() -> None:
    seen: list[Stopped] = []
    work = _Work(stop_on=4)
    runner = Runner[int](2, on_stop=seen.append)
    stopped = await runner.run(range(100), work)
    assert stopped == Stopped(StopReason.QUOTA, "[17] daily limit reached")
    assert seen == [stopped]  # told once, when stopping began
    assert max(work.started) <= 4 + 2 and len(work.started) < 100
    assert runner.halted.is_set()


async def test_the_stop_event_cancels_items_in_flight() -> None:
    stop = asyncio.Event()
    entered: list[int] = []

    async def work(item: int) -> None:
        entered.append(item)
        if len(entered) == 2:
            stop.set()
        await asyncio.Event().wait()  # never finishes by itself

    stopped = await Runner[int](2, stop, noun="rows").run(range(10), work)
    assert stopped == Stopped(StopReason.INTERRUPTED,
                              "rows in flight are left for resume")
    assert entered == [0, 1]


async def test_a_bug_in_work_is_raised_after_items_in_flight() -> None:
    work = _Work(fail_on=1)
    with pytest.raises(RuntimeError, match="a bug"):
        await Runner[int](1).run(range(10), work)
    assert work.finished == [0]


def test_concurrency_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Runner[int](0)


@pytest.mark.parametrize(
    ("error", "reason"),
    [(QuotaError(17, "Open api daily request limit reached"), StopReason.QUOTA),
     (AuthError(110, "Access token invalid or no longer valid"), StopReason.AUTH),
     (TransientError(216500, "unknown error"), None),
     (UserNotFoundError(216612, "user not exist"), None)],
    ids=["quota", "auth", "transient", "user-not-found"],
)
def test_stop_for_maps_errors_to_reasons(error: FaceflowError, reason: StopReason | None
                                         ) -> None:
    stop = stop_for(error)
    assert (stop.reason if stop else None) == reason
    if stop is not None:
        assert stop.error is error and str(error) in stop.message


def test_stop_reasons_are_the_run_json_strings() -> None:
    assert [str(r) for r in StopReason][:3] == ["quota", "auth", "interrupted"]
    assert StopReason("budget") is StopReason.BUDGET


def test_faceclient_implements_faceapi() -> None:
    client = FaceClient(Settings(api_key=Secret("k"), secret_key=Secret("s")))
    assert isinstance(client, FaceApi)
    for name, member in inspect.getmembers(FaceApi, inspect.iscoroutinefunction):
        ours = inspect.signature(getattr(FaceClient, name))
        assert list(ours.parameters) == list(inspect.signature(member).parameters), name
