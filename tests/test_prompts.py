"""Prompt constants against SAM-Veteran's Figure 5 text, and the builders."""

import pytest

from recipe.task.answer import parse_response
from recipe.task.prompts import (
    GROUNDING_PROMPT,
    REFINEMENT_PROMPT,
    build_messages,
    build_prompt,
)

from support.paper_prompts import (
    ANSWER_ONLY_GROUNDING,
    ANSWER_ONLY_REFINEMENT,
    FIGURE5_GROUNDING,
    FIGURE5_REFINEMENT,
)


def test_veteran_prompts_are_figure5_verbatim():
    assert GROUNDING_PROMPT == FIGURE5_GROUNDING
    assert REFINEMENT_PROMPT == FIGURE5_REFINEMENT


def test_samr1_prompt_asks_for_box_point_and_label_in_the_reasoning_format():
    prompt = build_prompt("samr1", "the cup")
    for key in ('"bbox_2d"', '"point_2d"', '"label"', "<think>", "</think>", "<answer>", "</answer>", '"the cup"'):
        assert key in prompt
    assert "{Question}" not in prompt


@pytest.mark.parametrize(
    ("task", "reasoning", "paper"),
    [
        ("grounding", True, FIGURE5_GROUNDING),  # Q^B
        ("mask_comprehension", True, FIGURE5_REFINEMENT),  # Q^P, both refinement tasks
        ("auxiliary", True, FIGURE5_REFINEMENT),
        ("grounding", False, ANSWER_ONLY_GROUNDING),  # Table 6's "w/o CoT"
        ("mask_comprehension", False, ANSWER_ONLY_REFINEMENT),
        ("auxiliary", False, ANSWER_ONLY_REFINEMENT),
    ],
)
def test_each_veteran_task_is_shown_its_papers_prompt(task, reasoning, paper):
    assert build_prompt(task, "the cup", reasoning=reasoning) == paper.replace("{Question}", "the cup")


@pytest.mark.parametrize("question", ["the man in {red}", 'a "quoted" cup', "{Question}", ""])
def test_build_prompt_substitutes_the_question_verbatim(question):
    prompt = build_prompt("grounding", question)
    assert prompt == FIGURE5_GROUNDING.replace("{Question}", question)
    assert prompt.startswith(f'Let\'s find out "{question}" with bbox')


def test_build_prompt_rejects_unknown_tasks():
    with pytest.raises(KeyError, match="known"):
        build_prompt("detection", "x")


def test_build_messages_put_the_image_first():
    messages = build_messages("samr1", "the dog")
    assert messages == [{"role": "user", "content": "<image>" + build_prompt("samr1", "the dog")}]


def test_the_example_answers_in_the_prompts_are_rejected_placeholders():
    """The templates' example answers hold placeholders (x1, x, null), not values a reward could accept."""
    example = GROUNDING_PROMPT[GROUNDING_PROMPT.index("<think> thinking") :]
    parsed = parse_response(example)
    assert parsed.format_ok and parsed.answer is None


def test_answer_only_prompts_for_the_no_cot_ablation():
    from recipe.task.prompts import ANSWER_ONLY_PROMPTS

    for task in ("grounding", "mask_comprehension", "auxiliary"):
        prompt = build_prompt(task, "the cup", reasoning=False)
        assert "<think>" not in prompt and "<answer>" in prompt and '"the cup"' in prompt
        assert prompt == ANSWER_ONLY_PROMPTS[task].replace("{Question}", "the cup")
    with pytest.raises(KeyError):
        build_prompt("samr1", "x", reasoning=False)
