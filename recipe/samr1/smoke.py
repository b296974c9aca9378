"""``make smoke``: the SAM-R1 pipeline on a CPU, through verl's own code wherever verl runs without a GPU.

verl's trainer needs CUDA (its FSDP engine, vLLM rollouts, GPU placement groups), so this drives the same pieces
by hand, on a synthetic RefCOCOg-format dataset with tiny random models:

1. data: ``python -m data_prep refer`` rows, loaded by verl's ``RLHFDataset`` with the tiny Qwen2.5-VL processor;
2. rollouts: verl's ``single_turn_agent`` loop, served by the tiny Qwen2.5-VL (one rollout per prompt) and by a
   scripted near-oracle (the rest, with growing box noise) so rewards span their range;
3. rewards: verl's reward-loop manager built from ``conf/samr1.yaml`` (``sam_image`` + ``compute_score``), scored by
   the SAM2 pool (tiny SAM2 on CPU);
4. advantages: verl's GRPO estimator; loss: the registered ``samr1`` loss and verl's k3 KL on real log-probs of
   the tiny model, one AdamW step, then the clipped objective again against the updated policy.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from pathlib import Path

import numpy as np
import ray
import torch
from omegaconf import OmegaConf

from recipe.common.logprob import pad_rows, response_log_probs
from recipe.common.smoke_policies import OracleServer, TransformersServer
from recipe.common.smoke_setup import build_smoke_inputs, compose_recipe, instantiate_agent_loop
from reward_server.config import server_config
from reward_server.pool import pool_health, shutdown_pool, start_pool
from reward_server.ray_setup import init_ray


def smoke_config(parquet: Path, model: Path, rollouts: int):
    """``conf/samr1.yaml`` with the smoke data, the tiny models and a pool of its own."""
    return compose_recipe(
        "samr1",
        [
            f"data.train_files={parquet}",
            f"actor_rollout_ref.model.path={model}",
            f"actor_rollout_ref.rollout.n={rollouts}",
            "data.max_response_length=96",
            "reward_server=tiny_cpu",
            "reward_server.pool.name=samr1_smoke",
        ],
    )


async def rollout_and_score(config, dataset, tokenizer, processor, model, rollouts: int, seed: int) -> list[dict]:
    """Runs verl's single-turn agent loop for every rollout and scores it with verl's reward-loop manager."""
    from verl import DataProto
    from verl.trainer.ppo.reward import load_reward_manager

    reward_manager = load_reward_manager(config, tokenizer)
    sampling = {"temperature": config.actor_rollout_ref.rollout.temperature, "logprobs": False}
    tiny_server = TransformersServer(model, processor, max_new_tokens=48, seed=seed)
    trajectories = []
    for index in range(len(dataset)):
        row = dataset[index]
        for rollout in range(rollouts):
            box = row["reward_model"]["ground_truth"]["box"]
            server = tiny_server if rollout == 0 else OracleServer(tokenizer, box, 15.0 * (rollout - 1), seed + rollout)
            loop = instantiate_agent_loop(config, row["agent_name"], server, tokenizer, processor)
            output = await loop.run(sampling, **row)
            prompt, response = torch.tensor([output.prompt_ids]), torch.tensor([output.response_ids])
            raw_prompt = np.empty(1, dtype=object)
            raw_prompt[0] = row["raw_prompt"]
            batch = {
                "prompts": prompt,
                "responses": response,
                "input_ids": torch.cat([prompt, response], 1),
                "attention_mask": torch.ones(1, prompt.shape[1] + response.shape[1], dtype=torch.long),
            }
            non_tensor = {
                key: np.array([row[key]], dtype=object) for key in ("data_source", "reward_model", "extra_info")
            }
            data = DataProto.from_dict(tensors=batch, non_tensors={**non_tensor, "raw_prompt": raw_prompt})
            scored = await reward_manager.run_single(data)
            trajectories.append(
                {
                    "uid": str(index),
                    "policy": "tiny" if rollout == 0 else "oracle",
                    "output": output,
                    "score": float(scored["reward_score"]),
                    "info": scored["reward_extra_info"],
                }
            )
    return trajectories


def policy_step(config, model, processor, trajectories: list[dict], lr: float) -> dict[str, float]:
    """GRPO advantages, the ``samr1`` loss plus k3 KL on real log-probs, one AdamW step, and the objective after it."""
    from verl.trainer.ppo.core_algos import agg_loss, get_adv_estimator_fn, get_policy_loss_fn, kl_penalty
    from verl.utils.config import omega_conf_to_dataclass

    actor = config.actor_rollout_ref.actor
    actor_config = omega_conf_to_dataclass(OmegaConf.merge(actor, {"rollout_n": len(trajectories)}))
    width = max(len(t["output"].response_ids) for t in trajectories)
    _, mask = pad_rows([torch.ones(len(t["output"].response_ids)) for t in trajectories], width)
    rewards = torch.zeros(len(trajectories), width)
    for row, trajectory in enumerate(trajectories):
        rewards[row, int(mask[row].sum()) - 1] = trajectory["score"]  # verl puts the score on the last token
    advantages, _ = get_adv_estimator_fn(config.algorithm.adv_estimator)(
        token_level_rewards=rewards, response_mask=mask, index=np.array([t["uid"] for t in trajectories])
    )
    actor_config.global_batch_info.update(
        dp_size=1, batch_num_tokens=int(mask.sum()), global_batch_size=len(trajectories), loss_scale_factor=None
    )

    def log_probs() -> torch.Tensor:
        rows = [
            response_log_probs(
                model,
                processor,
                t["output"].prompt_ids,
                t["output"].response_ids,
                t["output"].multi_modal_data.get("images"),
            )
            for t in trajectories
        ]
        return pad_rows(rows, width)[0]

    def objective(current: torch.Tensor, old: torch.Tensor, reference: torch.Tensor):
        pg_loss, metrics = get_policy_loss_fn(actor.policy_loss.loss_mode)(
            old_log_prob=old,
            log_prob=current,
            advantages=advantages,
            response_mask=mask,
            loss_agg_mode=actor.loss_agg_mode,
            config=actor_config,
        )
        kl = agg_loss(
            kl_penalty(current, reference, actor.kl_loss_type),
            mask,
            actor.loss_agg_mode,
            **actor_config.global_batch_info,
        )
        return pg_loss + actor.kl_loss_coef * kl, metrics

    model.train()
    current = log_probs()
    old = reference = current.detach()
    loss, _ = objective(current, old, reference)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=actor.optim.weight_decay)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        after, metrics = objective(log_probs(), old, reference)
    model.eval()
    return {
        "loss": loss.item(),
        "loss_after_step": after.item(),
        "advantage_abs_mean": advantages[mask].abs().mean().item(),
        **{key.removeprefix("actor/"): value for key, value in metrics.items()},
    }


def summarize(trajectories: list[dict], step: dict[str, float], health: list[dict], seconds: float) -> str:
    def mean(key: str, policy: str | None = None) -> float:
        values = [t["info"][key] for t in trajectories if policy is None or t["policy"] == policy]
        return float(np.mean(values))

    failures = Counter(t["info"]["failure"] or "none" for t in trajectories)
    prompts = len({t["uid"] for t in trajectories})
    requests, encodes, hits = (sum(h[key] for h in health) for key in ("requests", "encodes", "cache_hits"))
    return "\n".join(
        [
            f"smoke: {prompts} prompts x {len(trajectories) // prompts} rollouts in {seconds:.0f}s "
            "(rollout 0 by the tiny Qwen2.5-VL, the others by a near-oracle with growing box noise)",
            f"smoke: reward mean {mean('score'):.2f} (tiny {mean('score', 'tiny'):.2f}, "
            f"oracle {mean('score', 'oracle'):.2f}) | IoU mean {mean('iou'):.3f} (random SAM2 weights) "
            f"| reasoning format {mean('reasoning_format'):+.2f} | segmentation format "
            f"{mean('segmentation_format'):+.2f} | failures {dict(failures)}",
            f"smoke: SAM2 pool {requests} requests, {encodes} encodes, {hits} cache hits",
            f"smoke: GRPO |advantage| {step['advantage_abs_mean']:.3f} | samr1 loss {step['loss']:.4f} -> "
            f"{step['loss_after_step']:.4f} after one step | ppo_kl {step['ppo_kl']:.2e} "
            f"| clipfrac {step['pg_clipfrac']:.3f}",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/smoke/samr1", help="where data, the tiny model and logs go")
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--rollouts", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-4, help="a visible step for the tiny model (training: 1e-6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    started = time.monotonic()
    out_dir = Path(args.out).resolve()
    parquet, model_path = build_smoke_inputs(out_dir, "samr1", args.prompts, args.seed)
    config = smoke_config(parquet, model_path, args.rollouts)
    from transformers import AutoModelForImageTextToText
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tokenizer, processor = hf_tokenizer(str(model_path)), hf_processor(str(model_path))
    dataset = RLHFDataset(str(parquet), tokenizer, config.data, processor=processor)
    model = AutoModelForImageTextToText.from_pretrained(model_path).eval()
    server = server_config(config.reward_server)
    init_ray(num_cpus=4, include_dashboard=False, namespace=server.pool.namespace)
    try:
        actors = start_pool(server)
        trajectories = asyncio.run(
            rollout_and_score(config, dataset, tokenizer, processor, model, args.rollouts, args.seed)
        )
        step = policy_step(config, model, processor, trajectories, args.lr)
        print(summarize(trajectories, step, pool_health(actors), time.monotonic() - started), flush=True)
    finally:
        shutdown_pool(server.pool)
        ray.shutdown()


if __name__ == "__main__":
    main()
