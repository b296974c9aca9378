"""verl's naive reward manager, plus the image: ``compute_score`` finds the bytes of the image the model saw in
``extra_info["image"]``, so SAM2 segments exactly the pixels the policy was shown."""

from __future__ import annotations

import numpy as np
from verl import DataProto
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager

from recipe.common.prompts import first_image
from recipe.common.registration import reward_manager


@reward_manager("sam_image")
class SamImageRewardManager(NaiveRewardManager):
    """Scores like ``naive`` with the sample's image added to ``extra_info`` (None when the prompt has none)."""

    async def run_single(self, data: DataProto) -> dict:
        last = data[-1:]  # naive scores the last output of a multi-output trajectory
        batch = last.non_tensor_batch
        # The dataset's extra_info dict is shared by the n rollouts of a prompt: never mutate it.
        extra_info = dict(batch.get("extra_info", [{}])[0] or {})
        extra_info["image"] = first_image(batch["raw_prompt"][0]) if "raw_prompt" in batch else None
        batch["extra_info"] = np.array([extra_info], dtype=object)
        return await super().run_single(last)
