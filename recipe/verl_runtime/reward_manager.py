"""verl's naive reward manager, plus the image: ``compute_score`` finds the bytes of the image the model saw in
its ``extra_info`` (``recipe.task.dataset_rows.reward_image``), so SAM2 segments exactly the pixels the policy was
shown."""

from __future__ import annotations

import numpy as np
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

from recipe.task.dataset_rows import Row, with_reward_image
from recipe.task.prompts import first_image
from recipe.verl_runtime.registration import reward_manager


@reward_manager("sam_image")
class SamImageRewardManager(NaiveRewardManager):
    """Scores like ``naive`` with the sample's image added to ``extra_info`` (None when the prompt has none)."""

    async def run_single(self, data: DataProto) -> dict:
        last = data[-1:]  # naive scores the last output of a multi-output trajectory
        batch = last.non_tensor_batch
        # The dataset's extra_info dict is shared by the n rollouts of a prompt: never mutate it, copy it.
        column = Row.extra_info.name
        image = first_image(batch["raw_prompt"][0]) if "raw_prompt" in batch else None
        batch[column] = np.array([with_reward_image(batch.get(column, [{}])[0], image)], dtype=object)
        return await super().run_single(last)
