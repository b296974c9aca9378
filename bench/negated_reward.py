"""SAM-R1's reward with its sign flipped: the learning check's control whose advantages point the wrong way.

With GRPO a negated score negates every advantage exactly (group mean and standard deviation flip with it), so a
run on this reward must unlearn what the real one teaches. Loaded by verl's reward loop from this file
(``reward.custom_reward_function.path``); not part of the product.
"""

from __future__ import annotations

from typing import Any

from recipe.samr1.reward import compute_score


async def negated_compute_score(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`recipe.samr1.reward.compute_score` with ``score`` negated; every component as it was."""
    scored = await compute_score(*args, **kwargs)
    return {**scored, "score": -scored["score"]}
