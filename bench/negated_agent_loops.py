"""SAM-Veteran's loops with the score's sign flipped: the learning check's control whose advantages point the wrong way.

SAM-Veteran scores in its agent loops, where verl's reward-function hook (SAM-R1's control,
:mod:`bench.negated_reward`) never reaches. Its estimator, ``grpo_batch_std``, is linear in the scores (the group's
mean and the batch's standard deviation flip with them), so a negated score negates every advantage exactly, and a
run on it must unlearn what the real one teaches. The loops reach the run's Ray workers through verl's agent-loop
config file (``actor_rollout_ref.rollout.agent.agent_loop_config_path``), which :func:`write_negated_agent_loops`
writes: under each of the recipe's agent names, its loop with the score negated. Not part of the product.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput

from recipe.task.dataset_rows import AUXILIARY, GROUNDING, MASK_COMPREHENSION, TASK_AGENTS, WORKFLOW
from recipe.veteran.agent_loops import AuxiliaryLoop, GroundingLoop, MaskComprehensionLoop
from recipe.veteran.workflow_loop import WorkflowLoop


class NegatedScore:
    """Mixin for a SAM-Veteran loop: the trajectory's ``reward_score`` negated, its logged components as they were."""

    async def run(self, *args: Any, **kwargs: Any) -> AgentLoopOutput:
        output = await super().run(*args, **kwargs)
        output.reward_score = -output.reward_score
        return output


class NegatedGroundingLoop(NegatedScore, GroundingLoop):
    pass


class NegatedMaskComprehensionLoop(NegatedScore, MaskComprehensionLoop):
    pass


class NegatedAuxiliaryLoop(NegatedScore, AuxiliaryLoop):
    pass


class NegatedWorkflowLoop(NegatedScore, WorkflowLoop):
    pass


NEGATED_LOOPS = {
    GROUNDING: NegatedGroundingLoop,
    MASK_COMPREHENSION: NegatedMaskComprehensionLoop,
    AUXILIARY: NegatedAuxiliaryLoop,
    WORKFLOW: NegatedWorkflowLoop,
}


def write_negated_agent_loops(path: Path) -> Path:
    """Writes verl's agent-loop config file mapping each SAM-Veteran task's agent name to its negated loop."""
    entries = [
        {"name": TASK_AGENTS[task], "_target_": f"{loop.__module__}.{loop.__qualname__}"}
        for task, loop in NEGATED_LOOPS.items()
    ]
    OmegaConf.save(OmegaConf.create(entries), path)
    return path
