"""A SAM2 actor that dies during a step of verl's real trainer: the step completes and no reward is lost."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import ray

from data_prep.smoke import build_smoke_inputs
from recipe.smoke import PROMPTS, command

# One SAM-R1 step of the smoke run (its inputs, its command) with a crash in it: a few minutes on CI's 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[1]


def test_a_sam2_actor_killed_during_a_step_restarts_and_every_reward_is_scored(tmp_path):
    inputs = build_smoke_inputs(tmp_path / "inputs", "samr1", PROMPTS["samr1"])
    run_dir = tmp_path / "run"
    argv = command("samr1", inputs.train_files, inputs.model, run_dir, 1, ["trainer.save_freq=-1"])
    env = {**os.environ, "VERL_PLATFORM": "cpu"}
    env.pop("RAY_ADDRESS", None)
    output, killed = [], None
    # The trainer starts its own local Ray, as `make smoke` does; this process joins it once the step has begun.
    with subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as trainer:
        try:
            for line in trainer.stdout:
                output.append(line)
                if killed is None and "Training Progress" in line:  # step 1 has started; no reward scored yet
                    ray.init(address="auto", log_to_driver=False)
                    actor = ray.get_actor("sam2_reward-0", namespace="samrl")
                    killed = ray.get(actor.health.remote())["pid"]
                    ray.kill(actor, no_restart=False)  # a crash: Ray restarts the actor
        finally:
            ray.shutdown()
    assert trainer.returncode == 0, "".join(output)[-6000:]
    assert killed is not None, "the step never started"
    (metrics_file,) = (run_dir / "metrics").glob("*.jsonl")
    (record,) = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    step = record["data"]
    assert record["step"] == 1 and step["sam/restarts"] == 1.0
    # Half the rollouts are scripted well-formed answers: every one of them reached SAM2 and was scored.
    assert step["reward/sam_called/mean"] == 0.5 and step["reward/failure/none"] == 0.5
    assert not [key for key in step if key.startswith("reward/failure/sam_")]
    assert step["sam/requests"] >= 2
