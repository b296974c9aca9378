"""The SAM-Veteran workflow: what the policy is shown, what SAM2 is asked, when it stops."""

import asyncio
import json

import numpy as np
import pytest

from recipe.task.episodes import Episode, run_episodes
from recipe.task.overlay import overlay_mask
from recipe.veteran.reward_formulas import PAPER
from reward_server.config import EngineConfig
from reward_server.engine import SamEngine
from reward_server.masks import encode_rle

from support.fake_sam import EngineClient, FakeSam
from support.paper_prompts import (
    ANSWER_ONLY_GROUNDING,
    ANSWER_ONLY_REFINEMENT,
    FIGURE5_GROUNDING,
    FIGURE5_REFINEMENT,
)

IMAGE = (np.random.default_rng(0).random((840, 840, 3)) * 255).astype(np.uint8)
GT = np.zeros((840, 840), bool)
GT[200:600, 300:700] = True

PAPER_COT = {"grounding_cot": PAPER.grounding_cot, "mask_cot": PAPER.mask_cot}  # the paper trains with both


def answer(payload: dict) -> str:
    return f"<think>looking</think><answer>{json.dumps(payload)}</answer>"


class Policy:
    """Per-episode scripts; the driver calls generate with the active episodes' messages in order."""

    def __init__(self, episodes, scripts):
        self.episodes, self.scripts, self.turn, self.shown = episodes, scripts, {}, []

    async def generate(self, batch):
        active = [e for e in self.episodes if not e.done]
        texts = []
        for episode, messages in zip(active, batch, strict=True):
            self.shown.append((id(episode), messages))
            step = self.turn.get(id(episode), 0)
            self.turn[id(episode)] = step + 1
            script = self.scripts[self.episodes.index(episode)]
            texts.append(script[min(step, len(script) - 1)])
        return texts


def recording_sam() -> FakeSam:
    """A fake SAM2 whose mask grows towards the GT with each call; it records every prompt."""

    def mask(n: int) -> np.ndarray:
        grown = np.zeros((840, 840), bool)
        grown[200 : 200 + 400 - 100 // n, 300:700] = True
        return grown

    return FakeSam(mask, truth=GT, score=0.9)


def run(episodes, scripts, sam):
    policy = Policy(episodes, scripts)
    asyncio.run(run_episodes(episodes, policy, sam))
    return policy


def test_grounding_then_refinement_then_stop():
    episode = Episode("the square", IMAGE, encode_rle(GT), **PAPER_COT)
    sam = recording_sam()
    scripts = [
        [
            answer({"bbox_2d": [290, 190, 710, 610]}),
            answer({"pos_point": [500, 580], "neg_point": None}),
            answer({"pos_point": None, "neg_point": [100, 100]}),
            answer({"pos_point": None, "neg_point": None}),
        ]
    ]
    policy = run([episode], scripts, sam)
    assert episode.termination == "stop"
    assert [s.kind for s in episode.steps] == ["grounding", "refinement", "refinement", "refinement"]
    first, second, third = sam.prompts
    assert sam.edge_iou_asked == [True, True, True]  # score_workflow reads each step's edge-excluded IoU
    assert first.box == (290.0, 190.0, 710.0, 610.0) and first.points == () and first.mask_input is None
    # Refinements: the initial box, the previous logits, only the new click.
    assert second.box == first.box and second.points == ((500.0, 580.0),) and second.labels == (1,)
    assert float(second.mask_input[0, 0]) == 1.0
    assert third.points == ((100.0, 100.0),) and third.labels == (0,) and float(third.mask_input[0, 0]) == 2.0
    ious = [step.iou for step in episode.steps if step.result is not None]
    assert ious == sorted(ious) and episode.final.iou == ious[-1]
    # What the policy saw: the plain image with Q^B, then the overlay of the latest mask with Q^P.
    shown = [messages for _, messages in policy.shown]
    assert "with bbox step by step" in shown[0][0]["content"][1]["text"]
    assert "green segmentation mask" in shown[1][0]["content"][1]["text"]
    expected_overlay = overlay_mask(IMAGE, episode.steps[1].result.mask_array())
    assert np.array_equal(np.asarray(shown[2][0]["content"][0]["image"]), expected_overlay)


@pytest.mark.parametrize(
    ("grounding_cot", "mask_cot", "grounding_prompt", "refinement_prompt"),
    [
        (True, True, FIGURE5_GROUNDING, FIGURE5_REFINEMENT),
        (False, False, ANSWER_ONLY_GROUNDING, ANSWER_ONLY_REFINEMENT),  # Table 6, w/o CoT
        (True, False, FIGURE5_GROUNDING, ANSWER_ONLY_REFINEMENT),  # Table 6, w/o Mask CoT
    ],
)
def test_cot_settings_choose_each_turns_prompt_and_tag_rule(
    grounding_cot, mask_cot, grounding_prompt, refinement_prompt
):
    """The first turn follows ``grounding_cot`` and refinements ``mask_cot``, in the prompt shown and in the tag rule
    its answer is held to; an answer in the other format still acts (the format is a separate reward)."""

    def tagged(payload: dict, reasoning: bool) -> str:
        return answer(payload) if reasoning else f"<answer>{json.dumps(payload)}</answer>"

    payloads = ({"bbox_2d": [290, 190, 710, 610]}, {"pos_point": None, "neg_point": None})
    cot = (grounding_cot, mask_cot)
    # Answers in the format each turn asks for, then in the other one.
    asked = [tagged(payload, reasoning) for payload, reasoning in zip(payloads, cot, strict=True)]
    other = [tagged(payload, not reasoning) for payload, reasoning in zip(payloads, cot, strict=True)]
    expected = [prompt.replace("{Question}", "the square") for prompt in (grounding_prompt, refinement_prompt)]
    for script, format_ok in ((asked, True), (other, False)):
        episode = Episode("the square", IMAGE, grounding_cot=grounding_cot, mask_cot=mask_cot)
        policy = run([episode], [script], recording_sam())
        assert [messages[0]["content"][1]["text"] for _, messages in policy.shown] == expected
        assert episode.termination == "stop" and [s.kind for s in episode.steps] == ["grounding", "refinement"]
        assert [step.parsed.format_ok for step in episode.steps] == [format_ok, format_ok]


def test_stops_at_max_steps_and_can_resend_points():
    episode = Episode("the square", IMAGE, max_steps=2, resend_points=True, **PAPER_COT)
    sam = recording_sam()
    click = answer({"pos_point": [500, 500], "neg_point": None})
    run([episode], [[answer({"bbox_2d": [10, 10, 400, 400]}), click]], sam)
    assert episode.termination == "max_steps" and len(sam.prompts) == 3
    assert sam.prompts[2].points == ((500.0, 500.0), (500.0, 500.0)) and sam.prompts[2].labels == (1, 1)


def test_resent_clicks_keep_their_labels_and_come_first():
    """Positive clicks are labelled 1 and negative ones 0 (docs/conventions.md, SAM2 prompts), earlier ones first."""
    episode = Episode("the square", IMAGE, max_steps=2, resend_points=True, **PAPER_COT)
    sam = recording_sam()
    clicks = [
        answer({"pos_point": None, "neg_point": [100, 100]}),
        answer({"pos_point": [500, 500], "neg_point": [120, 140]}),
    ]
    run([episode], [[answer({"bbox_2d": [10, 10, 400, 400]}), *clicks]], sam)
    assert [(prompt.points, prompt.labels) for prompt in sam.prompts[1:]] == [
        (((100.0, 100.0),), (0,)),
        (((100.0, 100.0), (500.0, 500.0), (120.0, 140.0)), (0, 1, 0)),
    ]
    assert all(prompt.box == (10.0, 10.0, 400.0, 400.0) for prompt in sam.prompts)


@pytest.mark.parametrize(
    ("scripts", "termination", "sam_calls"),
    [
        (["no answer"], "invalid_grounding", 0),
        ([answer({"bbox_2d": [50, 50, 10, 10]})], "invalid_grounding", 0),
        (
            [answer({"bbox_2d": [10, 10, 400, 400]}), answer({"pos_point": [900, 5], "neg_point": None})],
            "invalid_refinement",
            1,
        ),
    ],
)
def test_invalid_answers_end_the_episode_without_calling_sam(scripts, termination, sam_calls):
    episode = Episode("q", IMAGE, **PAPER_COT)
    sam = recording_sam()
    run([episode], [scripts], sam)
    assert episode.termination == termination and len(sam.prompts) == sam_calls
    assert (episode.final is None) == (sam_calls == 0)


def test_episodes_advance_in_lockstep():
    episodes = [Episode("a", IMAGE, **PAPER_COT), Episode("b", IMAGE, **PAPER_COT), Episode("c", IMAGE, **PAPER_COT)]
    box = answer({"bbox_2d": [10, 10, 400, 400]})
    stop = answer({"pos_point": None, "neg_point": None})
    click = answer({"pos_point": [100, 100], "neg_point": None})
    policy = run(episodes, [["junk"], [box, stop], [box, click, stop]], recording_sam())
    assert [e.termination for e in episodes] == ["invalid_grounding", "stop", "stop"]
    assert len(policy.shown) == 3 + 2 + 1  # one batched call per step, for the episodes still running


@pytest.mark.slow
def test_with_the_tiny_sam2_engine_logits_flow_back_as_mask_input():
    engine = SamEngine(EngineConfig(model="sam2.1_hiera_t", allow_random_weights=True, device="cpu", image_size=256))
    episode = Episode("the square", IMAGE, encode_rle(GT), max_steps=2, **PAPER_COT)
    click = answer({"pos_point": [500, 400], "neg_point": [250, 250]})
    run([episode], [[answer({"bbox_2d": [300, 200, 700, 600]}), click]], EngineClient(engine))
    assert episode.termination == "max_steps" and all(step.result.ok for step in episode.steps)
    assert episode.steps[1].prompt.mask_input.shape == (64, 64)  # SAM2 at 256 px takes 64 x 64 logits
    assert all(0.0 <= step.iou <= 1.0 for step in episode.steps)
