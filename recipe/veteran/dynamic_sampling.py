"""SAM-Veteran's dynamic sampling in training: Algorithms 1 and 2 inside verl's V1 agent-loop worker.

verl's worker starts ``n`` sessions per prompt and stores each one in TransferQueue as it ends. This worker instead
generates a prompt's rollouts in batches of ``n``, holds them, selects with :mod:`recipe.veteran.sampling` after
each batch, stops generating as soon as the group is complete (the last, fresh batch generates only what is
missing), and stores just the selected rollouts as sessions ``0..n-1`` through verl's own post-processing, so the
replay buffer, advantages and loss see an ordinary group made of the selected rollouts. Validation, tasks without
an algorithm and every step after ``stop_iter`` (verl's global step, so a resumed run keeps the count) take
verl's unchanged path.

The algorithms look at each rollout's answer as its agent loop parsed it for the reward: a
:class:`recipe.veteran.agent_loops.VeteranTaskLoop` leaves that parse in ``extra_fields`` under
:data:`recipe.veteran.agent_loops.PARSED_RESPONSE`, so only tasks run by such a loop can have an algorithm. The
worker removes the entry from every output before verl's post-processing stores or logs it.

Enabled by ``actor_rollout_ref.rollout.agent.agent_loop_manager_class`` = :class:`DynamicSamplingManager` (the
default of ``conf/veteran.yaml``) and configured under ``veteran.dynamic_sampling``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
import transfer_queue as tq
from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopManagerTQ, AgentLoopWorkerTQ, apply_greedy_sampling_params

from recipe.task.answer import ParsedResponse
from recipe.task.dataset_rows import Row
from recipe.veteran.agent_loops import PARSED_RESPONSE
from recipe.veteran.config import veteran_config
from recipe.veteran.sampling import select_box_rollouts, select_point_rollouts

logger = logging.getLogger(__name__)

_WorkerBase = AgentLoopWorkerTQ.__ray_actor_class__  # Ray refuses to subclass the remote class itself
_HOLD = "__samrl_hold_output__"  # rides the loop's kwargs to our _agent_loop_postprocess
_POINT_CASES = {(False, False): "terminate", (True, False): "positive", (False, True): "negative", (True, True): "both"}


def rollout_answer(algorithm: str, parsed: ParsedResponse) -> Any:
    """What the algorithm looks at: the answer's box (None when malformed), or the refinement case of its clicks.

    Both come from the answer's JSON alone, so they do not depend on the tag rule ``parsed`` was checked against.
    """
    if algorithm == "box":
        box = parsed.bbox_2d()
        return list(box.value) if box.ok else None
    clicks = parsed.clicks()
    if clicks is None:
        return "error"
    return _POINT_CASES[(clicks[0] is not None, clicks[1] is not None)]


def _take_parsed(output) -> ParsedResponse | None:
    """Removes and returns the loop's parse from an agent-loop output (its last one, when a list), if it has one."""
    final = output[-1] if isinstance(output, list) else output
    return final.extra_fields.pop(PARSED_RESPONSE, None)


def _held_parse(output, prompt: dict) -> ParsedResponse:
    """The parse of a held rollout, removed from it so that a selected rollout is stored without it.

    Raises:
        ValueError: When the task's loop left none (it is not a :class:`recipe.veteran.agent_loops.VeteranTaskLoop`).
    """
    parsed = _take_parsed(output)
    if parsed is None:
        raise ValueError(
            f"dynamic sampling needs the parsed answer of each rollout, and agent loop {prompt.get('agent_name')!r} "
            f"leaves none in extra_fields[{PARSED_RESPONSE!r}]; remove it from veteran.dynamic_sampling.tasks"
        )
    return parsed


class DynamicSamplingWorker(_WorkerBase):
    """verl's TransferQueue agent-loop worker with dynamic sampling for the configured tasks."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = veteran_config(self.config).dynamic_sampling

    async def _agent_loop_postprocess(self, output, validate, **kwargs):
        if kwargs.pop(_HOLD, False):
            return output  # held: _run_prompt reads its answer and decides whether it is stored
        _take_parsed(output)  # verl's path (validation, tasks without an algorithm, after stop_iter) stores no parse
        return await super()._agent_loop_postprocess(output, validate, **kwargs)

    def _algorithm(self, prompt: dict, trajectory: dict) -> str | None:
        ds = self.dynamic_sampling
        if trajectory["validate"] or not ds.enable or int(prompt["global_steps"]) > ds.stop_iter:
            return None
        return ds.tasks.get(Row.of(prompt).agent_name)

    def _select(self, algorithm: str, answers: list[list[Any]], n: int) -> list[tuple[int, int]]:
        ds = self.dynamic_sampling
        if algorithm == "box":
            return select_box_rollouts(answers, n, ds.max_attempts, ds.max_errors, ds.box_iou_threshold)
        return select_point_rollouts(answers, n, ds.max_attempts, ds.point_quotas)

    async def _run_prompt(self, prompt: dict, sampling_params: dict, trajectory: dict, trace: bool = False) -> None:
        algorithm = self._algorithm(prompt, trajectory)
        if algorithm is None:
            return await super()._run_prompt(prompt, sampling_params, trajectory, trace)
        uid = prompt["uid"]
        await tq.async_kv_put(key=uid, partition_id="train", tag={"status": "running"})
        status = "failure"
        try:
            n = prompt.pop("__rollout_n__", self.config.actor_rollout_ref.rollout.n)
            params = dict(sampling_params)
            if not prompt.pop("__do_sample__", True):
                apply_greedy_sampling_params(params)
            held, answers, selection, generated = [], [], [], 0
            for attempt in range(self.dynamic_sampling.max_attempts):
                # The last batch only fills the group, from its first rollouts.
                size = n if attempt < self.dynamic_sampling.max_attempts - 1 else n - len(selection)
                runs = [
                    self._run_agent_loop(
                        params, trajectory=trajectory, trace=trace, session_id=generated + j, **prompt, **{_HOLD: True}
                    )
                    for j in range(size)
                ]
                outputs = await asyncio.gather(*runs)  # any failure fails the group, as in verl
                generated += size
                held.append(outputs)
                answers.append([rollout_answer(algorithm, _held_parse(output, prompt)) for output in outputs])
                selection = self._select(algorithm, answers, n)
                if len(selection) >= n:
                    break
            stored = {key: value for key, value in prompt.items() if key != "agent_name"}
            chosen = [held[batch][index] for batch, index in selection]
            for output in chosen:
                final = output[-1] if isinstance(output, list) else output
                final.extra_fields.setdefault("reward_extra_info", {}).update(
                    ds_attempts=float(len(held)), ds_generated=float(generated)
                )
            await asyncio.gather(
                *(
                    _WorkerBase._agent_loop_postprocess(self, output, False, session_id=session, **stored)
                    for session, output in enumerate(chosen)
                )
            )
            status = "finished"
        except Exception:
            logger.exception("dynamic sampling failed for uid=%s", uid)
        await tq.async_kv_put(key=uid, partition_id="train", tag={"status": status})


class DynamicSamplingManager(AgentLoopManagerTQ):
    """verl's TransferQueue agent-loop manager, running :class:`DynamicSamplingWorker` workers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.agent_loop_workers_class = ray.remote(DynamicSamplingWorker)
