"""``veteran_workflow``: the whole box -> mask -> clicks workflow as one on-policy training trajectory.

The grounding answer and every refinement answer are model tokens (loss mask 1); each overlay turn SAM2 produces
is appended as a user message with the new image through verl's continuous-token merge (loss mask 0). Each turn may
generate at most the response budget left, and a turn that would not fit ends the episode. The steps themselves
are :class:`recipe.task.episodes.Episode`'s, shared with evaluation, and so is every turn's prompt, the first
included: the row's prompt only supplies the image, and ``veteran.reward.grounding_cot`` / ``mask_cot`` choose each
turn's prompt and tag rule together.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput

from recipe.task.coordinates import model_coordinates
from recipe.task.dataset_rows import TASK_AGENTS, WORKFLOW, Row
from recipe.task.episodes import Episode
from recipe.task.prompts import as_the_model_sees, first_image, template_opening
from recipe.verl_runtime.registration import agent_loop
from recipe.verl_runtime.sam_client import get_sam_client
from recipe.veteran.config import veteran_config
from recipe.veteran.task_scoring import score_workflow
from reward_server.images import to_rgb
from reward_server.protocol import ImageRef


@agent_loop(TASK_AGENTS[WORKFLOW])
class WorkflowLoop(AgentLoopBase):
    """The multi-turn workflow on-policy: ``veteran.workflow.max_steps`` refinement turns at most, earlier clicks
    re-sent with each refinement when ``veteran.workflow.resend_points``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.response_length = self.rollout_config.response_length
        veteran = veteran_config(self.config)
        self.max_steps = veteran.workflow.max_steps
        self.resend_points = veteran.workflow.resend_points
        self.reward_config = veteran.reward
        self.coordinates = model_coordinates(self.config.actor_rollout_ref.model.path)
        self.opening = template_opening(self.processor or self.tokenizer)

    def _request_id(self, priority: int, turn: int) -> str:
        """A fresh id per request; under ``full_determinism`` one fixed by the sample and the turn, as verl's
        single-turn loop fixes it by the sample (``det-<priority>``), so the rollout's sampling seed repeats."""
        if getattr(self.rollout_config, "full_determinism", False):
            return f"det-{priority}-{turn}"
        return uuid4().hex

    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        row = Row.of(kwargs)
        truth = row.ground_truth
        image = ImageRef.of(first_image(kwargs["raw_prompt"]))
        # The SAM2 cache keys on the row's image bytes (image); the episode draws overlays on the decoded pixels.
        question = row.extra_info.question
        episode = Episode(
            question,
            to_rgb(image.data),
            dict(truth.mask),
            max_steps=self.max_steps,
            resend_points=self.resend_points,
            grounding_cot=self.reward_config.grounding_cot,
            mask_cot=self.reward_config.mask_cot,
            coordinates=self.coordinates,
            objects=truth.generalized,
            max_objects=self.reward_config.max_objects,
        )
        messages = episode.next_messages()  # the row holds the CoT prompt; the episode follows the ablation
        images = list((await self.process_multi_modal_info(messages)).get("images") or [])
        runtime_ids = await self.ct_build_initial_tokens(messages, images=images)
        response_mask: list[int] = []
        # The rollout's log-probs, aligned with the response like its mask, when verl asks for them.
        response_logprobs: list[float] | None = [] if sampling_params.get("logprobs") else None
        # The server's fields (the weights' global steps): the first turn's, then the latest max_global_steps,
        # as verl's tool loop keeps them; verl's trainer reads min/max_global_steps of every trajectory.
        server_fields: dict[str, Any] = {}
        sam = get_sam_client(self.config.reward_server)
        while not episode.done:
            budget = self.response_length - len(response_mask)
            if budget <= 0:
                episode.termination = "length"
                break
            output = await self.server_manager.generate(
                request_id=self._request_id(int(priority), len(episode.steps)),
                prompt_ids=runtime_ids,
                sampling_params={**sampling_params, "max_tokens": budget},
                image_data=images,
            )
            if not server_fields:
                server_fields.update(output.extra_fields)
            elif output.extra_fields.get("max_global_steps") is not None:
                server_fields["max_global_steps"] = output.extra_fields["max_global_steps"]
            merged, response_mask, response_logprobs = await self.ct_merge_assistant_token(
                runtime_ids,
                output.token_ids,
                response_mask,
                response_logprobs,
                assistant_logprobs=output.log_probs if response_logprobs is not None else None,
            )
            runtime_ids = merged.token_ids
            text = self.tokenizer.decode(output.token_ids, skip_special_tokens=True)
            sam_prompts = episode.observe_response(self.opening + text)
            if not sam_prompts:
                break
            results = await sam.segment(
                image, sam_prompts, ground_truth=episode.gt_ref, return_logits=True, return_edge_iou=True
            )
            episode.observe_mask(results)
            if episode.done:
                break
            answered = [*messages, {"role": "assistant", "content": text}]
            turn = episode.next_messages()
            merged, merged_mask, merged_logprobs = await self.ct_merge_context_msg(
                answered, answered + turn, runtime_ids, response_mask, response_logprobs
            )
            if len(merged_mask) >= self.response_length:  # never cut an image's placeholder run
                episode.termination = "length"
                break
            messages, runtime_ids, response_mask = answered + turn, merged.token_ids, merged_mask
            response_logprobs = merged_logprobs
            images.append(as_the_model_sees(turn[0]["content"][0]["image"], self.processor))
        info = score_workflow(episode.steps, truth, episode.termination or "length", self.reward_config)
        return AgentLoopOutput(
            prompt_ids=runtime_ids[: len(runtime_ids) - len(response_mask)],
            response_ids=runtime_ids[len(runtime_ids) - len(response_mask) :],
            response_mask=response_mask,
            response_logprobs=response_logprobs,
            multi_modal_data={"images": images},
            reward_score=info["score"],
            num_turns=2 * len(episode.steps),
            metrics=AgentLoopMetrics(),
            extra_fields={**server_fields, "reward_extra_info": info},
        )
