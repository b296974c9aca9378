"""Dynamic sampling in verl's V1 worker: only the selected rollouts reach the replay buffer (and so the loss).

The slow tests run the worker in-process against a real TransferQueue on CPU, with a scripted agent loop whose
reward is its session number, so the batch verl's ReplayBuffer samples shows exactly which generated rollouts were
kept. The fast ones drive the worker's own methods with verl's storage replaced by a recorder.
"""

import asyncio
import json
import logging

import numpy as np
import pytest
import ray
from omegaconf import OmegaConf, open_dict
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register

from recipe.task.answer import parse_response
from recipe.verl_runtime.compose import compose_recipe
from recipe.veteran import dynamic_sampling
from recipe.veteran.agent_loops import PARSED_RESPONSE
from recipe.veteran.config import DynamicSamplingConfig
from recipe.veteran.dynamic_sampling import DynamicSamplingWorker, rollout_answer

SCRIPT: dict[int, str] = {}


def answer(payload: dict) -> str:
    return f"<think>t</think><answer>{json.dumps(payload)}</answer>"


@register("ds_scripted_box")
@register("ds_scripted_point")
class Scripted(AgentLoopBase):
    """Answers session ``s`` with ``SCRIPT[s]``, parsed as SAM-Veteran's loops leave it; its reward is ``s``, so kept
    rollouts can be told apart."""

    async def run(self, sampling_params, **kwargs):
        session = kwargs["session_id"]
        await asyncio.sleep(0.01 * ((7 * session) % 5))  # sessions finish out of order
        ids = self.tokenizer.encode(SCRIPT[session], add_special_tokens=False)
        return AgentLoopOutput(
            prompt_ids=[1, 2, 3],
            response_ids=ids,
            response_mask=[1] * len(ids),
            reward_score=float(session),
            metrics=AgentLoopMetrics(),
            extra_fields={
                "reward_extra_info": {"score": float(session)},
                PARSED_RESPONSE: parse_response(SCRIPT[session]),
            },
        )


@pytest.fixture(scope="module")
def worker_and_queue(tiny_qwen_path):
    import transfer_queue as tq

    config = compose_recipe(
        "veteran",
        [
            f"actor_rollout_ref.model.path={tiny_qwen_path}",
            "actor_rollout_ref.rollout.n=4",
            "actor_rollout_ref.rollout.prompt_length=64",
            "actor_rollout_ref.rollout.response_length=64",
        ],
    )
    with open_dict(config):
        config.veteran.dynamic_sampling.tasks = {"ds_scripted_box": "box", "ds_scripted_point": "point"}
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}})
    yield DynamicSamplingWorker(config, llm_client=None), tq
    tq.close()
    ray.shutdown()


def run_group(worker_and_queue, uid: str, agent: str, step: int, script: dict[int, str]) -> tuple[list[float], list]:
    """Generates one prompt's group; returns the kept rollouts' session numbers and their reward_extra_info."""
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
    from verl.utils import tensordict_utils

    worker, tq = worker_and_queue
    SCRIPT.clear()
    SCRIPT.update(script)
    tq.kv_batch_put(
        keys=[uid], partition_id="train", tags=[{"is_prompt": True, "status": "pending", "global_steps": step}]
    )
    batch = tensordict_utils.get_tensordict(
        {
            "uid": np.array([uid], dtype=object),
            "agent_name": np.array([agent], dtype=object),
            "index": np.array([0], dtype=object),
            "raw_prompt": np.array([[{"role": "user", "content": "x"}]], dtype=object),
        }
    )
    tensordict_utils.assign_non_tensor_data(batch, "global_steps", step)

    async def generate():
        await worker.generate_sequences(batch)
        while worker.background_tasks:
            await asyncio.sleep(0.05)

    asyncio.run(generate())
    meta, _ = ReplayBuffer("sync", {}, None, "drop", {}, poll_interval=0.05).sample(step, "train", 1)
    data = tq.kv_batch_get(keys=meta.keys, partition_id="train", select_fields=["rm_scores", "extra_fields"])
    kept = sorted(float(scores.sum()) for scores in data["rm_scores"].unbind(0))
    stored = list(data["extra_fields"])
    assert not any(PARSED_RESPONSE in fields for fields in stored)  # the loop's parse stays in the worker
    infos = [fields["reward_extra_info"] for fields in stored]
    tq.kv_clear(keys=meta.keys, partition_id="train")
    assert tq.kv_list("train") in ({}, {"train": {}}) or not any(tq.kv_list("train").values())
    return kept, infos


BOXES = [[0, 0, 100, 100], [200, 200, 300, 300], [400, 400, 500, 500], [600, 600, 700, 700]]


@pytest.mark.slow
def test_distinct_boxes_complete_the_group_in_one_batch(worker_and_queue):
    kept, infos = run_group(
        worker_and_queue, "a", "ds_scripted_box", 1, {i: answer({"bbox_2d": b}) for i, b in enumerate(BOXES)}
    )
    assert kept == [0, 1, 2, 3] and {i["ds_generated"] for i in infos} == {4.0}


@pytest.mark.slow
def test_duplicates_are_dropped_and_the_group_is_filled_from_a_fresh_batch(worker_and_queue):
    same = {i: answer({"bbox_2d": [10, 10, 50, 50]}) for i in range(12)}
    kept, infos = run_group(worker_and_queue, "b", "ds_scripted_box", 2, same)
    # Batch 0 keeps one box, batch 1 only duplicates; the fresh batch generates just the 3 missing rollouts.
    assert kept == [0, 8, 9, 10] and {(i["ds_attempts"], i["ds_generated"]) for i in infos} == {(3.0, 11.0)}


@pytest.mark.slow
def test_malformed_rollouts_within_the_error_budget_are_kept(worker_and_queue):
    script = {0: "junk", 1: "junk", 2: "junk", 3: answer({"bbox_2d": BOXES[0]}), 4: answer({"bbox_2d": BOXES[0]}),
              5: answer({"bbox_2d": BOXES[1]}), 6: "junk", 7: answer({"bbox_2d": BOXES[2]})}  # fmt: skip
    kept, _ = run_group(worker_and_queue, "c", "ds_scripted_box", 3, script)
    assert kept == [0, 1, 3, 5]  # 2 malformed (the budget), then distinct boxes in arrival order


@pytest.mark.slow
def test_point_quotas_scale_to_the_group(worker_and_queue):
    stop = answer({"pos_point": None, "neg_point": None})
    pos = answer({"pos_point": [10, 10], "neg_point": None})
    neg = answer({"pos_point": None, "neg_point": [20, 20]})
    both = answer({"pos_point": [10, 10], "neg_point": [20, 20]})
    script = {0: stop, 1: stop, 2: pos, 3: pos, 4: both, 5: neg, 6: "junk", 7: both}
    kept, _ = run_group(worker_and_queue, "p", "ds_scripted_point", 4, script)
    # R = 4: error 1, terminate 1, positive 1, negative 1, both 0 (the paper's 8-rollout quotas would keep 3 and 4).
    assert kept == [0, 2, 5, 6]


@pytest.mark.slow
def test_switches_off_after_stop_iter(worker_and_queue):
    same = {i: answer({"bbox_2d": [10, 10, 50, 50]}) for i in range(12)}
    kept, infos = run_group(worker_and_queue, "d", "ds_scripted_box", 301, same)
    assert kept == [0, 1, 2, 3] and all("ds_generated" not in info for info in infos)  # verl's plain path


# Fast: the worker's own methods, with verl's agent loop and storage replaced.


def answer_only(payload: dict) -> str:
    return f"<answer>{json.dumps(payload)}</answer>"


@pytest.mark.parametrize("reasoning", [True, False])
@pytest.mark.parametrize("tags", [answer, answer_only], ids=["think", "answer_only"])
def test_the_algorithms_read_the_answer_whatever_tag_rule_parsed_it(tags, reasoning):
    """The loops parse under the task's tag rule (``reasoning`` off in the "w/o CoT" ablations); the box and the
    refinement case come from the JSON answer alone."""
    cases = {
        "terminate": {"pos_point": None, "neg_point": None},
        "positive": {"pos_point": [10, 10], "neg_point": None},
        "negative": {"pos_point": None, "neg_point": [20, 20]},
        "both": {"pos_point": [10, 10], "neg_point": [20, 20]},
        "error": {"pos_point": [900, 10], "neg_point": None},  # outside the 840 image
    }
    box, empty = ({"bbox_2d": coords} for coords in ([10, 20, 50, 60], [50, 20, 10, 60]))
    assert rollout_answer("box", parse_response(tags(box), reasoning=reasoning)) == [10, 20, 50, 60]
    assert rollout_answer("box", parse_response(tags(empty), reasoning=reasoning)) is None
    for case, payload in cases.items():
        assert rollout_answer("point", parse_response(tags(payload), reasoning=reasoning)) == case
    assert rollout_answer("point", parse_response("junk", reasoning=reasoning)) == "error"


class Recorder:
    """Stands in for TransferQueue's status tags; ``stored`` gets what verl's post-processing would store."""

    def __init__(self):
        self.statuses, self.stored = [], []

    async def async_kv_put(self, key, partition_id, tag):
        self.statuses.append(tag["status"])


@pytest.fixture
def recorded_worker(monkeypatch):
    """A worker (verl's constructor skipped) whose loop answers session ``s`` with ``SCRIPT[s]`` and leaves its parse
    unless ``SCRIPT`` says ``None``; what verl would store lands in the recorder."""
    recorder = Recorder()

    async def store(worker, output, validate, **kwargs):  # a function, so that super() binds it like verl's
        recorder.stored.append((kwargs["session_id"], output))

    monkeypatch.setattr(dynamic_sampling, "tq", recorder)
    monkeypatch.setattr(dynamic_sampling._WorkerBase, "_agent_loop_postprocess", store)
    worker = DynamicSamplingWorker.__new__(DynamicSamplingWorker)
    worker.config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"n": 4}}})
    worker.dynamic_sampling = DynamicSamplingConfig(tasks={"box_task": "box", "point_task": "point"})

    async def run_agent_loop(sampling_params, trajectory, trace, session_id, **kwargs):
        text = SCRIPT[session_id]
        extra = {"reward_extra_info": {"score": float(session_id)}}
        if text is not None:
            extra[PARSED_RESPONSE] = parse_response(text)
        output = AgentLoopOutput(
            prompt_ids=[1], response_ids=[2], response_mask=[1], reward_score=float(session_id),
            metrics=AgentLoopMetrics(), extra_fields=extra,
        )  # fmt: skip
        return await worker._agent_loop_postprocess(output, trajectory["validate"], session_id=session_id, **kwargs)

    worker._run_agent_loop = run_agent_loop
    return worker, recorder


def run_prompt(worker, agent: str, script: dict[int, str | None], validate: bool = False) -> None:
    SCRIPT.clear()
    SCRIPT.update(script)
    prompt = {"uid": "u", "agent_name": agent, "global_steps": 1}
    asyncio.run(worker._run_prompt(prompt, {}, {"validate": validate}))


def test_the_selected_rollouts_are_stored_without_the_loops_parse(recorded_worker):
    worker, recorder = recorded_worker
    # Algorithm 1: batch 0 keeps its first box, batch 1 only repeats it; the fresh batch fills the group.
    run_prompt(worker, "box_task", {i: answer({"bbox_2d": [10, 10, 50, 50]}) for i in range(12)})
    assert recorder.statuses == ["running", "finished"]
    assert [(session, output.reward_score) for session, output in recorder.stored] == [
        (0, 0.0),
        (1, 8.0),
        (2, 9.0),
        (3, 10.0),
    ]
    assert all(PARSED_RESPONSE not in output.extra_fields for _, output in recorder.stored)
    assert {output.extra_fields["reward_extra_info"]["ds_generated"] for _, output in recorder.stored} == {11.0}


def test_verls_own_path_stores_outputs_without_the_loops_parse(recorded_worker):
    worker, recorder = recorded_worker
    output = AgentLoopOutput(
        prompt_ids=[1], response_ids=[2], response_mask=[1], metrics=AgentLoopMetrics(),
        extra_fields={"reward_extra_info": {}, PARSED_RESPONSE: parse_response("junk")},
    )  # fmt: skip
    asyncio.run(worker._agent_loop_postprocess(output, True, uid="u", session_id=0))
    ((_, stored),) = recorder.stored
    assert stored is output and list(stored.extra_fields) == ["reward_extra_info"]


def test_a_task_whose_loop_leaves_no_parse_fails_its_group_with_the_reason(recorded_worker, caplog):
    worker, recorder = recorded_worker
    with caplog.at_level(logging.ERROR, logger=dynamic_sampling.__name__):
        run_prompt(worker, "point_task", dict.fromkeys(range(4)))
    assert recorder.statuses == ["running", "failure"] and recorder.stored == []
    assert "'point_task'" in caplog.text and "veteran.dynamic_sampling.tasks" in caplog.text
