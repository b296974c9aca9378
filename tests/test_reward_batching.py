"""The micro-batcher every SAM2 caller shares, and the actor around it, against batches written out by hand.

Requests are numbered by their box's x1 and a fake engine answers each with that number as its score, so a test
reads which requests reached the engine together, in which order, and which results came back to which caller.
"""

import asyncio
import threading
import time
import types

import pytest

from reward_server import actor as actor_module
from reward_server.actor import SamActor
from reward_server.batching import Batch, MicroBatcher
from reward_server.config import ActorConfig, EngineConfig
from reward_server.engine import EngineStats
from reward_server.protocol import ErrorCode, Prompt, SegRequest, SegResult


def numbered(*ids: int) -> list[SegRequest]:
    """One request per id, on one image; the id is the prompt's x1."""
    return [SegRequest("image", Prompt(box=(i, 0, i + 1, 1))) for i in ids]


def ids_of(results: list[SegResult]) -> list[int]:
    return [int(result.score) for result in results]


class FakeRun:
    """The batcher's ``run``: records each batch's request ids and answers request ``i`` with score ``i``.

    Args:
        gate: When set, each batch waits for it (a batch still running while calls arrive).
        fail: Raised for the batches whose index (0-based) is in ``failing``.
        failing: Indices of the batches that raise ``fail``.
    """

    def __init__(
        self, gate: asyncio.Event | None = None, fail: Exception | None = None, failing: frozenset[int] = frozenset()
    ):
        self.gate, self.fail, self.failing = gate, fail, failing
        self.batches: list[list[int]] = []
        self.seen: list[Batch] = []
        self.running = self.peak = 0

    async def __call__(self, batch: Batch) -> list[SegResult]:
        index = len(self.batches)
        self.batches.append([int(request.prompt.box[0]) for request in batch.requests])
        self.seen.append(batch)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if index in self.failing:
                raise self.fail
            return [SegResult(score=float(request.prompt.box[0])) for request in batch.requests]
        finally:
            self.running -= 1


async def turns(count: int) -> None:
    """Lets the event loop run ``count`` turns."""
    for _ in range(count):
        await asyncio.sleep(0)


# ------------------------------------------------------------------ which calls form a batch


def test_the_calls_of_one_turn_are_one_engine_call_in_call_order():
    run = FakeRun()
    batcher = MicroBatcher(run)
    calls = [[0], [1, 2, 3], [4, 5], [6]]

    async def together():
        return await asyncio.gather(
            *(batcher.segment(numbered(*ids), {f"img{n}": b"x"}, {f"gt{n}": {}}) for n, ids in enumerate(calls))
        )

    answers = asyncio.run(together())
    assert run.batches == [[0, 1, 2, 3, 4, 5, 6]]
    assert [ids_of(answer) for answer in answers] == calls
    (batch,) = run.seen
    assert list(batch.images) == ["img0", "img1", "img2", "img3"]
    assert list(batch.ground_truths) == ["gt0", "gt1", "gt2", "gt3"]
    assert len(batch.enqueued) == 4 and batch.enqueued == sorted(batch.enqueued)


def test_a_call_made_in_a_later_turn_starts_the_next_batch():
    run = FakeRun()
    batcher = MicroBatcher(run)

    async def later(ids):
        await asyncio.sleep(0)
        return await batcher.segment(numbered(*ids))

    async def two_turns():
        return await asyncio.gather(batcher.segment(numbered(0)), later([1]), batcher.segment(numbered(2)))

    answers = asyncio.run(two_turns())
    assert run.batches == [[0, 2], [1]]
    assert [ids_of(answer) for answer in answers] == [[0], [1], [2]]


def test_the_prompt_cap_splits_batches_into_whole_calls():
    run = FakeRun()
    batcher = MicroBatcher(run, max_prompts=4)
    calls = [[0, 1], [2, 3], [4, 5, 6], [7], [8, 9, 10, 11, 12], [13]]

    async def together():
        return await asyncio.gather(*(batcher.segment(numbered(*ids)) for ids in calls))

    answers = asyncio.run(together())
    # Whole calls from the head while they fit; a call larger than the cap goes alone.
    assert run.batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11, 12], [13]]
    assert [ids_of(answer) for answer in answers] == calls


def test_calls_arriving_during_a_batch_form_the_next_one_and_batches_never_overlap():
    async def scenario():
        run = FakeRun(gate=asyncio.Event())
        batcher = MicroBatcher(run)
        first = asyncio.ensure_future(batcher.segment(numbered(0)))
        await turns(3)
        assert run.batches == [[0]] and run.running == 1
        rest = [asyncio.ensure_future(batcher.segment(numbered(i, i + 10))) for i in (1, 2, 3)]
        await turns(3)
        assert batcher.queued_calls == 3 and run.batches == [[0]]
        run.gate.set()
        answers = await asyncio.gather(first, *rest)
        return run, answers

    run, answers = asyncio.run(scenario())
    assert run.batches == [[0], [1, 11, 2, 12, 3, 13]] and run.peak == 1
    assert [ids_of(answer) for answer in answers] == [[0], [1, 11], [2, 12], [3, 13]]


def test_a_window_gathers_calls_over_time():
    run = FakeRun()
    batcher = MicroBatcher(run, window_ms=300)

    async def after(seconds, ids):
        await asyncio.sleep(seconds)
        return await batcher.segment(numbered(*ids))

    async def spread():
        started = time.perf_counter()
        answers = await asyncio.gather(after(0, [0]), after(0.02, [1]), after(0.05, [2]))
        return answers, time.perf_counter() - started

    answers, elapsed = asyncio.run(spread())
    assert run.batches == [[0, 1, 2]] and elapsed >= 0.3
    assert [ids_of(answer) for answer in answers] == [[0], [1], [2]]


# ------------------------------------------------------------------ failures and cancellation


def test_an_engine_exception_answers_every_caller_of_its_batch_and_the_next_batch_is_served():
    run = FakeRun(fail=RuntimeError("CUDA error"), failing={0})
    batcher = MicroBatcher(run)

    async def scenario():
        failed = await asyncio.gather(batcher.segment(numbered(0, 1)), batcher.segment(numbered(2)))
        served = await batcher.segment(numbered(3))
        return failed, served

    failed, served = asyncio.run(scenario())
    assert [len(answer) for answer in failed] == [2, 1]
    for result in (result for answer in failed for result in answer):
        assert result.code == ErrorCode.INTERNAL and "CUDA error" in result.error and result.mask is None
    assert ids_of(served) == [3]


def test_a_wrong_number_of_results_is_an_error_for_every_caller():
    async def short(batch):
        return [SegResult(score=1.0)]

    batcher = MicroBatcher(short)

    async def together():
        return await asyncio.gather(batcher.segment(numbered(0)), batcher.segment(numbered(1, 2)))

    answers = asyncio.run(together())
    assert [[r.code for r in answer] for answer in answers] == [[ErrorCode.INTERNAL], [ErrorCode.INTERNAL] * 2]
    assert "1 results for 3 requests" in answers[0][0].error


@pytest.mark.parametrize("cancel_at", ["queued", "running"])
def test_a_cancelled_caller_leaves_the_others_their_answers(cancel_at):
    async def scenario():
        run = FakeRun(gate=asyncio.Event())
        batcher = MicroBatcher(run)
        if cancel_at == "queued":  # a first batch holds the engine, so the next calls wait in the queue
            first = asyncio.ensure_future(batcher.segment(numbered(0)))
            await turns(3)
        calls = [asyncio.ensure_future(batcher.segment(numbered(i))) for i in (1, 2, 3)]
        await turns(3)
        assert run.batches[-1] == ([0] if cancel_at == "queued" else [1, 2, 3])
        calls[1].cancel()
        await turns(1)
        run.gate.set()
        if cancel_at == "queued":
            await first
        answers = await asyncio.gather(*calls, return_exceptions=True)
        later = await batcher.segment(numbered(4))
        return run, answers, later

    run, answers, later = asyncio.run(scenario())
    assert ids_of(answers[0]) == [1] and ids_of(answers[2]) == [3]
    assert isinstance(answers[1], asyncio.CancelledError)
    # The cancelled call's prompts still run (its batch was formed, or it was queued, before the cancellation).
    assert run.batches[-2:] == [[1, 2, 3], [4]] and ids_of(later) == [4]


def test_one_batcher_serves_one_event_loop_after_another_even_after_one_closed_mid_batch():
    """The evaluator runs each batch of samples in its own ``asyncio.run`` with the same segmenter."""
    run = FakeRun()
    batcher = MicroBatcher(run)

    async def abandoned():
        run.gate = asyncio.Event()  # never set: asyncio.run cancels the batch and every caller when main returns
        callers = [asyncio.ensure_future(batcher.segment(numbered(i))) for i in (0, 1)]
        await turns(3)
        callers.append(asyncio.ensure_future(batcher.segment(numbered(9))))  # queued behind the running batch
        await turns(3)
        assert batcher.queued_calls == 1
        return callers

    callers = asyncio.run(abandoned())
    assert run.batches == [[0, 1]] and all(caller.cancelled() for caller in callers)
    assert batcher.queued_calls == 0  # the abandoned loop's queued call is not run in the next loop
    run.gate = None
    for ids in ([2], [3]):
        assert ids_of(asyncio.run(batcher.segment(numbered(*ids)))) == ids
    assert run.batches == [[0, 1], [2], [3]]


# ------------------------------------------------------------------ the actor around the batcher


class DeviceEngine:
    """A fake engine for the actor (what build_engine returns): blocks on ``release``, records threads and batches."""

    def __init__(self, config: EngineConfig):
        self.stats = EngineStats()
        self.batches: list[list[int]] = []
        self.threads: set[str] = set()
        self.release = threading.Event()
        self.release.set()
        self.fail: Exception | None = None

    def info(self) -> dict:
        return {"cache_bytes": 0, "cached_images": 0}

    def segment(self, requests, images=None, ground_truths=None) -> list[SegResult]:
        self.threads.add(threading.current_thread().name)
        self.batches.append([int(request.prompt.box[0]) for request in requests])
        self.release.wait(timeout=10)
        if self.fail is not None:
            raise self.fail
        self.stats.requests += len(requests)
        return [SegResult(score=float(request.prompt.box[0])) for request in requests]


@pytest.fixture
def actor(monkeypatch):
    monkeypatch.setattr(actor_module, "build_engine", DeviceEngine)
    monkeypatch.setattr(
        actor_module.ray, "get_runtime_context", lambda: types.SimpleNamespace(get_node_id=lambda: "node")
    )
    return SamActor(EngineConfig(), ActorConfig(batch_window_ms=20, max_batch_prompts=3), "sam-0")


def test_the_actor_batches_by_its_window_and_cap_on_its_device_thread(actor):
    calls = [[0], [1, 2], [3, 4], [5]]

    async def together():
        return await asyncio.gather(*(actor.segment(numbered(*ids)) for ids in calls))

    answers = asyncio.run(together())
    assert actor.engine.batches == [[0, 1, 2], [3, 4, 5]]
    assert [ids_of(answer) for answer in answers] == calls
    assert {result.served_by for answer in answers for result in answer} == {"sam-0"}
    assert len(actor.engine.threads) == 1 and next(iter(actor.engine.threads)).startswith("sam2-device")


def test_the_actors_loop_answers_health_while_the_engine_runs(actor):
    async def scenario():
        actor.engine.release.clear()
        work = asyncio.gather(actor.segment(numbered(0)), actor.segment(numbered(1, 2, 3)))
        await asyncio.sleep(0.2)  # the first batch is on the device thread, the second call waits for it
        health = await actor.health()
        actor.engine.release.set()
        return health, await work

    health, answers = asyncio.run(scenario())
    assert health["busy_s"] > 0 and health["queued_calls"] == 1
    assert [ids_of(answer) for answer in answers] == [[0], [1, 2, 3]]
    assert actor.engine.batches == [[0], [1, 2, 3]]


def test_an_engine_exception_in_the_actor_is_an_internal_error_per_caller_and_counted(actor):
    actor.engine.fail = RuntimeError("device lost")

    async def together():
        return await asyncio.gather(actor.segment(numbered(0, 1)), actor.segment(numbered(2)))

    answers = asyncio.run(together())
    results = [result for answer in answers for result in answer]
    assert [len(answer) for answer in answers] == [2, 1]
    assert all(r.code == ErrorCode.INTERNAL and "device lost" in r.error and r.served_by == "sam-0" for r in results)
    assert actor.engine.stats.errors[ErrorCode.INTERNAL] == 3
    actor.engine.fail = None
    assert ids_of(asyncio.run(actor.segment(numbered(4)))) == [4]
