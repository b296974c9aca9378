"""verl agent loops of SAM-Veteran's three training tasks, chosen per row by ``agent_name``.

Each is verl's single-turn loop with two additions: the refinement tasks show the image with the row's mask
overlaid in green (SAM2's mask of the GT box for mask comprehension, the corrupted GT for the auxiliary task), and
the reward is computed in the loop (SAM2 is called there anyway), with every component in ``reward_extra_info``.
The loop parses the answer once; dynamic sampling reads that parse from ``extra_fields[PARSED_RESPONSE]``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from PIL import Image
from verl.experimental.agent_loop.agent_loop import AgentLoopOutput
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from recipe.task.answer import ParsedResponse
from recipe.task.coordinates import model_coordinates
from recipe.task.dataset_rows import AUXILIARY, GROUNDING, MASK_COMPREHENSION, TASK_AGENTS, Row
from recipe.task.overlay import overlay_mask
from recipe.task.prompts import build_prompt, first_image, template_opening
from recipe.verl_runtime.registration import agent_loop
from recipe.verl_runtime.sam_client import get_sam_client
from recipe.veteran.config import veteran_config
from recipe.veteran.task_scoring import parse_answer, score_auxiliary, score_grounding, score_mask_comprehension
from reward_server.masks import decode_rle
from reward_server.protocol import ImageRef

PARSED_RESPONSE = "__samrl_parsed_response__"
"""``extra_fields`` key of the loop's :class:`ParsedResponse`, private to this recipe: dynamic sampling
(:mod:`recipe.veteran.dynamic_sampling`) selects by it and removes it before verl stores or logs the output."""


def with_parts(
    messages: list[dict[str, Any]], image: Image.Image | None = None, text: str | None = None
) -> list[dict[str, Any]]:
    """The messages with their first image part and/or first text part replaced (the rest shared, not copied)."""
    replacements = {"image": None if image is None else {"type": "image", "image": image}}
    replacements["text"] = None if text is None else {"type": "text", "text": text}
    out = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for part in content:
                kind = part.get("type") if isinstance(part, dict) else None
                if replacements.get(kind) is not None:
                    part, replacements[kind] = replacements[kind], None
                parts.append(part)
            message = {**message, "content": parts}
        out.append(message)
    return out


class VeteranTaskLoop(SingleTurnAgentLoop):
    """A SAM-Veteran task: the row's prompt (with an overlay for refinement tasks), one answer, its reward."""

    task: ClassVar[str]
    shows_mask: ClassVar[bool] = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reward_config = veteran_config(self.config).reward
        self.coordinates = model_coordinates(self.config.actor_rollout_ref.model.path)
        self.opening = template_opening(self.processor or self.tokenizer)

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        row = Row.of(kwargs)
        truth = row.ground_truth
        image = ImageRef.of(first_image(kwargs["raw_prompt"]))
        overlay, text = None, None
        if self.shows_mask:
            overlay = Image.fromarray(overlay_mask(image.data, decode_rle(truth.init_mask)))
        if not self.reward_config.reasoning(self.task):  # rows hold the CoT prompt; the ablation swaps it
            text = build_prompt(self.task, row.extra_info.question, reasoning=False)
        kwargs["raw_prompt"] = with_parts(kwargs["raw_prompt"], image=overlay, text=text)
        output = await super().run(sampling_params, **kwargs)
        text = self.tokenizer.decode(output.response_ids, skip_special_tokens=True)
        # The one parse: the reward's and dynamic sampling's.
        parsed = parse_answer(self.task, self.opening + text, self.reward_config, self.coordinates)
        info = await self.score(parsed, truth, image)
        output.reward_score = info["score"]
        output.extra_fields["reward_extra_info"] = info  # V1 copies it to every output and logs it
        output.extra_fields[PARSED_RESPONSE] = parsed
        return output

    async def score(self, parsed: ParsedResponse, truth: dict[str, Any], image: ImageRef) -> dict[str, Any]:
        raise NotImplementedError


@agent_loop(TASK_AGENTS[GROUNDING])
class GroundingLoop(VeteranTaskLoop):
    task = GROUNDING

    async def score(self, parsed, truth, image):
        client = get_sam_client(self.config.reward_server)
        return await score_grounding(parsed, truth, image, client, self.reward_config)


@agent_loop(TASK_AGENTS[MASK_COMPREHENSION])
class MaskComprehensionLoop(VeteranTaskLoop):
    task = MASK_COMPREHENSION
    shows_mask = True

    async def score(self, parsed, truth, image):
        client = get_sam_client(self.config.reward_server)
        return await score_mask_comprehension(parsed, truth, image, client, self.reward_config)


@agent_loop(TASK_AGENTS[AUXILIARY])
class AuxiliaryLoop(VeteranTaskLoop):
    task = AUXILIARY
    shows_mask = True

    async def score(self, parsed, truth, image):
        return score_auxiliary(parsed, truth, self.reward_config)
