"""Prompt templates of both recipes, and the chat messages built from them.

SAM-Veteran's two prompts are verbatim from its Figure 5. SAM-R1 publishes no template; ours keeps the same
reasoning format and asks for what its section 3.3 rewards: a box, a reference point and a short label.
"""

from __future__ import annotations

import functools
from typing import Any

from recipe.task.dataset_rows import AUXILIARY, GROUNDING, MASK_COMPREHENSION, SAMR1

QUESTION_SLOT = "{Question}"

GROUNDING_PROMPT = (
    'Let\'s find out "{Question}" with bbox step by step. Output the thinking process in <think> </think> and '
    "final answer in <answer> </answer> tags. Output the bbox of the target object in JSON format. Here is an "
    'example: <think> thinking process here </think> <answer> {"bbox_2d": [x1, y1, x2, y2]} </answer>'
)
"""SAM-Veteran ``Q^B``: textual grounding."""

REFINEMENT_PROMPT = (
    'Please point out any errors in the green segmentation mask according to the question "{Question}". Output '
    "the thinking process in <think> </think> and final answer in <answer> </answer> tags. Output the center point "
    'of the error area in JSON format, with the key "pos_point" for the false negative and "neg_point" for the false '
    "positive. Set the point to null if there are no errors. i.e., <think> thinking process here </think> <answer> "
    '{"pos_point": null, "neg_point": [x,y]} </answer>'
)
"""SAM-Veteran ``Q^P``: mask comprehension and the auxiliary task."""

SAMR1_PROMPT = (
    'Let\'s find out "{Question}" with bbox and point step by step. Output the thinking process in <think> </think> '
    "and final answer in <answer> </answer> tags. Output the bbox of the target object, a point on the target "
    "object and a short label naming the target in JSON format. Here is an example: <think> thinking process here "
    '</think> <answer> {"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y], "label": "<few words naming the target>"} '
    "</answer>"
)
"""SAM-R1: box, positive reference point and descriptive flag in one answer."""

GROUNDING_ANSWER_ONLY_PROMPT = (
    'Find out "{Question}" with bbox. Output the final answer in <answer> </answer> tags, without any reasoning. '
    'Output the bbox of the target object in JSON format. Here is an example: <answer> {"bbox_2d": [x1, y1, x2, y2]} '
    "</answer>"
)
"""Ours, for SAM-Veteran's "w/o CoT" ablation (Table 6): ``Q^B`` without the thinking step."""

REFINEMENT_ANSWER_ONLY_PROMPT = (
    'Please point out any errors in the green segmentation mask according to the question "{Question}". Output the '
    "final answer in <answer> </answer> tags, without any reasoning. Output the center point of the error area in "
    'JSON format, with the key "pos_point" for the false negative and "neg_point" for the false positive. Set the '
    'point to null if there are no errors. i.e., <answer> {"pos_point": null, "neg_point": [x,y]} </answer>'
)
"""Ours, for the "w/o CoT" and "w/o Mask CoT" ablations: ``Q^P`` without the thinking step."""

SAMR1_OBJECTS_PROMPT = (
    'Let\'s find out "{Question}" with bboxes and points step by step. It may refer to several objects, or to none '
    "in the image. Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. "
    "Output a JSON list with one entry per target object: its bbox, a point on it and a short label naming it; output "
    "an empty list [] if no object matches. Here is an example: <think> thinking process here </think> <answer> "
    '[{"bbox_2d": [x1, y1, x2, y2], "point_2d": [x, y], "label": "<few words naming the object>"}] </answer>'
)
"""Ours, for generalized rows (several objects or none): SAM-R1's answer for each object, in a list."""

GROUNDING_OBJECTS_PROMPT = (
    'Let\'s find out "{Question}" with bboxes step by step. It may refer to several objects, or to none in the image. '
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags. Output the bbox of "
    "every target object in a JSON list, or an empty list [] if no object matches. Here is an example: <think> "
    'thinking process here </think> <answer> [{"bbox_2d": [x1, y1, x2, y2]}] </answer>'
)
"""Ours, for generalized rows: ``Q^B`` asking for every target's box, or none."""

GROUNDING_OBJECTS_ANSWER_ONLY_PROMPT = (
    'Find out "{Question}" with bboxes. It may refer to several objects, or to none in the image. Output the final '
    "answer in <answer> </answer> tags, without any reasoning. Output the bbox of every target object in a JSON list, "
    'or an empty list [] if no object matches. Here is an example: <answer> [{"bbox_2d": [x1, y1, x2, y2]}] </answer>'
)
"""Ours: :data:`GROUNDING_OBJECTS_PROMPT` for the "w/o CoT" ablation."""

OBJECTS_PROMPTS: dict[tuple[str, bool], str] = {
    (SAMR1, True): SAMR1_OBJECTS_PROMPT,
    (GROUNDING, True): GROUNDING_OBJECTS_PROMPT,
    (GROUNDING, False): GROUNDING_OBJECTS_ANSWER_ONLY_PROMPT,
}
"""The generalized prompt of each (task, reasoning): the tasks whose answer names the target. Refinement prompts
point at errors of the shown mask, whatever it covers, and stay as they are."""

ANSWER_ONLY_PROMPTS: dict[str, str] = {
    GROUNDING: GROUNDING_ANSWER_ONLY_PROMPT,
    MASK_COMPREHENSION: REFINEMENT_ANSWER_ONLY_PROMPT,
    AUXILIARY: REFINEMENT_ANSWER_ONLY_PROMPT,
}

PROMPTS: dict[str, str] = {
    SAMR1: SAMR1_PROMPT,
    GROUNDING: GROUNDING_PROMPT,
    MASK_COMPREHENSION: REFINEMENT_PROMPT,
    AUXILIARY: REFINEMENT_PROMPT,
}
"""Prompt template per task name (the ``task`` of a dataset row)."""

IMAGE_PLACEHOLDER = "<image>"


def build_prompt(task: str, question: str, reasoning: bool = True, objects: bool = False) -> str:
    """The prompt text of ``task`` with ``question`` substituted.

    Args:
        task: One of :data:`PROMPTS` (without ``reasoning``, one of :data:`ANSWER_ONLY_PROMPTS`).
        question: The referring expression or reasoning question, inserted as is.
        reasoning: Ask for ``<think>`` before the answer (False: the answer-only ablation prompts).
        objects: A generalized row's prompt (:data:`OBJECTS_PROMPTS`): a list of objects, or none. Tasks that do
            not name the target (the refinement tasks) keep their prompt.

    Raises:
        KeyError: For an unknown task, naming the known ones.
    """
    if objects and (task, reasoning) in OBJECTS_PROMPTS:
        return OBJECTS_PROMPTS[task, reasoning].replace(QUESTION_SLOT, question)
    if objects and task == SAMR1:
        raise KeyError("SAM-R1's generalized prompt has no answer-only variant")
    templates = PROMPTS if reasoning else ANSWER_ONLY_PROMPTS
    try:
        template = templates[task]
    except KeyError:
        raise KeyError(f"unknown prompt task {task!r}; known: {sorted(templates)}") from None
    # str.format would trip over the JSON braces of the examples.
    return template.replace(QUESTION_SLOT, question)


def asks_for_reasoning(task: str, grounding_cot: bool, mask_cot: bool) -> bool:
    """Whether a turn of ``task`` asks for ``<think>`` (in its prompt and its tag rule): ``grounding_cot`` for
    grounding, ``mask_cot`` for the tasks that show a mask (mask comprehension, auxiliary, the workflow's refinement
    turns); SAM-Veteran's "w/o CoT" ablations (Table 6) ask for the answer alone."""
    return grounding_cot if task == GROUNDING else mask_cot


def build_messages(task: str, question: str, objects: bool = False) -> list[dict[str, Any]]:
    """One user turn with the image placeholder first, as verl's ``RLHFDataset`` expects in its prompt column
    (``objects``: a generalized row's prompt)."""
    return [{"role": "user", "content": IMAGE_PLACEHOLDER + build_prompt(task, question, objects=objects)}]


def first_image(messages: Any) -> Any:
    """The first image part of chat messages in verl's ``raw_prompt`` form: its bytes, else its PIL image."""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image":
                return part.get("bytes") or part.get("image")
    return None


def as_the_model_sees(image: Any, processor: Any) -> Any:
    """``image`` (PIL) resized as verl's agent loops hand every image of a prompt to the rollout and the actor:
    qwen_vl_utils' ``fetch_image`` onto the checkpoint's patch grid. Qwen2.5-VL keeps the 840x840 model image (a
    multiple of its 28-pixel tokens); Qwen3-VL's 32-pixel tokens make it 832x832. The workflow loop's overlay turns
    and the evaluator resize the same way, so every turn of training and evaluation shows the model the same pixels.
    """
    from qwen_vl_utils import fetch_image

    patch_size = getattr(getattr(processor, "image_processor", None), "patch_size", 14)
    return fetch_image({"image": image}, image_patch_size=patch_size)


ASSISTANT_HEADER = "<|im_start|>assistant\n"
"""Where the Qwen chat templates open the model's turn."""


def template_opening(processor: Any) -> str:
    """What the checkpoint's chat template writes into the model's turn before the model's first token: ``""`` for
    Qwen2.5-VL and the Qwen3-VL Instruct models, ``"<think>\\n"`` for the Qwen3-VL Thinking models, whose generation
    prompt opens the thinking block. The model's decoded tokens start after it, so whatever parses an answer parses
    ``template_opening + response``: the tag rule then sees the ``<think>`` the model was given.

    Args:
        processor: The checkpoint's processor or tokenizer (either carries its chat template).
    """
    messages = [{"role": "user", "content": "x"}]
    prompted = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    _, found, opening = prompted.rpartition(ASSISTANT_HEADER)
    return opening if found else ""


@functools.cache
def checkpoint_opening(model_path: str) -> str:
    """:func:`template_opening` of the checkpoint at ``model_path`` (its tokenizer's chat template)."""
    from transformers import AutoProcessor

    return template_opening(AutoProcessor.from_pretrained(model_path))
