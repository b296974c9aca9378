"""The SAM-Veteran part of ``make smoke``: one episode of each training task and one multi-turn workflow, on a CPU.

Rows come from ``data_prep`` (grounding rows, then mask comprehension through the SAM2 engine and auxiliary
corruptions), load through verl's ``RLHFDataset`` and run through the recipe's verl agent loops, whose rewards call
the SAM2 pool (tiny random SAM2). Each task is answered once by the tiny Qwen2.5-VL and once by a scripted
near-oracle that reads the ground truth; the workflow runs box -> mask -> clicks -> stop with the same scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray

from data_prep.veteran import build_auxiliary, build_mask_comprehension
from recipe.common.smoke_policies import TransformersServer
from recipe.common.smoke_setup import build_smoke_inputs, compose_recipe, instantiate_agent_loop
from recipe.veteran.workflow import Episode, run_episodes
from reward_server.client import SamClient
from reward_server.config import load_preset, server_config
from reward_server.engine import SamEngine
from reward_server.images import to_rgb
from reward_server.masks import decode_rle, region_center
from reward_server.pool import shutdown_pool, start_pool
from reward_server.ray_setup import init_ray


def _answer(payload: dict) -> str:
    return f"<think>Comparing the mask with the question.</think>\n<answer>{json.dumps(payload)}</answer>"


def click_for(mask: np.ndarray, gt: np.ndarray) -> dict:
    """The larger error of ``mask`` against ``gt``, as a click on its centre; (null, null) when there is none."""
    missed, extra = gt & ~mask, mask & ~gt
    if not missed.any() and not extra.any():
        return {"pos_point": None, "neg_point": None}
    key, region = ("pos_point", missed) if missed.sum() >= extra.sum() else ("neg_point", extra)
    return {"pos_point": None, "neg_point": None, key: [round(v) for v in region_center(region)]}


def scripted_answer(task: str, truth: dict) -> str:
    if task == "grounding":
        return _answer({"bbox_2d": [round(v) for v in truth["box"]]})
    if task == "mask_comprehension":
        return _answer(click_for(decode_rle(truth["init_mask"]), decode_rle(truth["mask"])))
    regions = {"pos_point": truth["false_negative"], "neg_point": truth["false_positive"]}
    return _answer({key: None if region is None else region["center"] for key, region in regions.items()})


class ScriptedServer:
    """``generate`` returning a fixed text, as verl's server manager would return its tokens."""

    def __init__(self, tokenizer, text: str):
        self.tokenizer, self.text = tokenizer, text

    async def generate(self, request_id, *, prompt_ids, sampling_params, **_):
        from verl.workers.rollout.replica import TokenOutput

        return TokenOutput(
            token_ids=[*self.tokenizer.encode(self.text, add_special_tokens=False), self.tokenizer.eos_token_id]
        )


async def run_task_episodes(config, files: dict[str, Path], tokenizer, processor, model) -> list[tuple[str, str, dict]]:
    from verl.utils.dataset.rl_dataset import RLHFDataset

    results = []
    for task, path in files.items():
        row = RLHFDataset(str(path), tokenizer, config.data, processor=processor)[0]
        truth = row["reward_model"]["ground_truth"]
        for policy, server in (
            ("tiny", TransformersServer(model, processor, max_new_tokens=32)),
            ("scripted", ScriptedServer(tokenizer, scripted_answer(task, truth))),
        ):
            loop = instantiate_agent_loop(config, row["agent_name"], server, tokenizer, processor)
            output = await loop.run({"temperature": 1.0}, **dict(row))
            results.append((task, policy, output.extra_fields["reward_extra_info"]))
    return results


class WorkflowScript:
    """The near-oracle for the workflow: the GT box, then clicks on the largest remaining error, then stop."""

    def __init__(self, episode: Episode, truth: dict):
        self.episode, self.box, self.gt = episode, truth["box"], decode_rle(truth["mask"])

    async def generate(self, batch):
        if not self.episode.steps:
            return [_answer({"bbox_2d": [round(v) for v in self.box]})]
        if len(self.episode.steps) >= 2:
            return [_answer({"pos_point": None, "neg_point": None})]
        return [_answer(click_for(self.episode.final.mask_array(), self.gt))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/smoke/veteran")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    out_dir = Path(args.out).resolve()
    grounding, model_path = build_smoke_inputs(out_dir, "veteran", prompts=2, seed=args.seed)
    engine = SamEngine(load_preset("tiny_cpu").engine)
    files = {
        "grounding": grounding,
        "mask_comprehension": out_dir / "mask.parquet",
        "auxiliary": out_dir / "aux.parquet",
    }
    build_mask_comprehension(
        grounding, files["mask_comprehension"], engine, balanced=False
    )  # random SAM2: no Good Enough
    build_auxiliary(grounding, files["auxiliary"], seed=args.seed)
    config = compose_recipe(
        "veteran",
        [
            f"data.train_files=[{grounding}]",
            f"actor_rollout_ref.model.path={model_path}",
            "data.filter_overlong_prompts=false",
            "data.max_response_length=256",
            "reward_server=tiny_cpu",
            "reward_server.pool.name=veteran_smoke",
        ],
    )
    from transformers import AutoModelForImageTextToText
    from verl.utils import hf_processor, hf_tokenizer

    tokenizer, processor = hf_tokenizer(str(model_path)), hf_processor(str(model_path))
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    server = server_config(config.reward_server)
    init_ray(num_cpus=4, include_dashboard=False, namespace=server.pool.namespace)
    try:
        actors = start_pool(server)
        episodes = asyncio.run(run_task_episodes(config, files, tokenizer, processor, model))
        truth = pq.read_table(grounding).to_pylist()[0]
        workflow = Episode(
            truth["extra_info"]["question"],
            to_rgb(truth["images"][0]["bytes"]),
            truth["reward_model"]["ground_truth"]["mask"],
            max_steps=3,
        )
        asyncio.run(
            run_episodes([workflow], WorkflowScript(workflow, truth["reward_model"]["ground_truth"]), SamClient(actors))
        )
    finally:
        shutdown_pool(server.pool)
        ray.shutdown()
    for task in files:
        scores = {policy: info for t, policy, info in episodes if t == task}
        scripted = scores["scripted"]
        parts = ", ".join(
            f"{k} {scripted[k]:.2f}" for k in ("sam_iou", "box", "case", "decision", "point") if scripted[k]
        )
        tiny = scores["tiny"]
        print(
            f"smoke/veteran: {task}: tiny Qwen2.5-VL {tiny['score']:.2f} (failure {tiny['failure'] or 'none'}), "
            f"scripted {scripted['score']:.2f} ({parts or 'format only'})"
        )
    ious = ", ".join(f"{step.kind} {step.iou:.3f}" for step in workflow.steps if step.iou is not None)
    print(
        f"smoke/veteran: workflow {len(workflow.steps)} steps, termination {workflow.termination}; IoU per step: {ious}"
    )
    print(f"smoke/veteran: done in {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
