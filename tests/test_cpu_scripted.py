"""The CPU smoke preset's scripted answers: the task each prompt asks for, and answers the project's parser accepts."""

import numpy as np
import pytest

from recipe.cpu.scripted import last_task, scripted_answer
from recipe.task.answer import parse_response
from recipe.task.prompts import build_prompt

QUESTION = 'the man in the "red" {shirt}'
TASKS = ["samr1", "grounding", "mask_comprehension", "auxiliary"]


def _chat(*prompts: str) -> str:
    """A decoded multi-turn Qwen chat prompt, image pads included, as the rollout server sees it."""
    turns = "".join(
        f"<|im_start|>user\n<|vision_start|>{'<|image_pad|>' * 9}<|vision_end|>{p}<|im_end|>\n"
        f"<|im_start|>assistant\n<think>x</think><answer>{{}}</answer><|im_end|>\n"
        for p in prompts
    )
    return turns.rsplit("<|im_start|>assistant\n", 1)[0] + "<|im_start|>assistant\n"


@pytest.mark.parametrize("reasoning", [True, False])
@pytest.mark.parametrize("task", TASKS)
def test_each_prompt_is_recognised(task, reasoning):
    if task == "samr1" and not reasoning:
        pytest.skip("SAM-R1 has no answer-only prompt")
    found_task, found_reasoning, objects = last_task(_chat(build_prompt(task, QUESTION, reasoning)))
    # Mask comprehension and auxiliary share Q^P; either name means the same answer format.
    same_template = {"mask_comprehension", "auxiliary"}
    assert found_task == task or {found_task, task} <= same_template
    assert found_reasoning is reasoning and objects is False


def test_the_last_turn_decides():
    text = _chat(build_prompt("grounding", QUESTION), build_prompt("mask_comprehension", QUESTION))
    assert last_task(text)[0] in {"mask_comprehension", "auxiliary"}
    assert last_task(_chat(build_prompt("mask_comprehension", QUESTION), build_prompt("grounding", QUESTION))) == (
        "grounding",
        True,
        False,
    )


def test_unknown_prompt_gets_no_script():
    assert last_task(_chat("Describe the image.")) is None
    assert scripted_answer(_chat("Describe the image."), np.random.default_rng(0)) is None


@pytest.mark.parametrize("seed", range(20))
def test_answers_parse_as_their_task_requires(seed):
    rng = np.random.default_rng(seed)
    samr1 = parse_response(scripted_answer(_chat(build_prompt("samr1", QUESTION)), rng))
    assert samr1.format_ok and samr1.bbox_2d().ok and samr1.point_2d().ok and samr1.label().ok
    box, point = samr1.bbox_2d().value, samr1.point_2d().value
    assert box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]  # SAM-R1's click lies in its box
    grounding = parse_response(scripted_answer(_chat(build_prompt("grounding", QUESTION)), rng))
    assert grounding.format_ok and grounding.bbox_2d().ok and set(grounding.answer) == {"bbox_2d"}
    refinement = parse_response(scripted_answer(_chat(build_prompt("auxiliary", QUESTION)), rng))
    assert refinement.format_ok and refinement.clicks() is not None
    answer_only = scripted_answer(_chat(build_prompt("grounding", QUESTION, reasoning=False)), rng)
    parsed = parse_response(answer_only, reasoning=False)
    assert parsed.format_ok and parsed.bbox_2d().ok and "<think>" not in answer_only


def test_refinement_answers_cover_every_action():
    rng = np.random.default_rng(0)
    text = _chat(build_prompt("mask_comprehension", QUESTION))
    actions = {tuple(v is not None for v in parse_response(scripted_answer(text, rng)).clicks()) for _ in range(64)}
    assert actions == {(False, False), (True, False), (False, True), (True, True)}  # dynamic sampling's 4 quotas


@pytest.mark.parametrize(("task", "reasoning"), [("samr1", True), ("grounding", True), ("grounding", False)])
def test_generalized_prompts_get_lists_of_none_one_or_two_objects(task, reasoning):
    rng = np.random.default_rng(0)
    text = _chat(build_prompt(task, QUESTION, reasoning, objects=True))
    assert last_task(text) == (task, reasoning, True)
    counts = set()
    for _ in range(32):
        parsed = parse_response(scripted_answer(text, rng), reasoning=reasoning)
        objects = parsed.objects(with_point=task == "samr1", with_label=task == "samr1")
        assert parsed.format_ok and objects.ok, objects.error
        counts.add(len(objects.value))
    assert counts == {0, 1, 2}
