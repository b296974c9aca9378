"""Random well-formed answers for the CPU smoke preset's scripted rollouts.

A random tiny model never writes the tags, so every reward of a group is equal and every GRPO advantage is 0. The
``hf_cpu`` rollout answers some requests with these instead: the answer format of the task the prompt asks for
(recognised by the project's own prompt templates), with random coordinates in the model's own convention, so IoU,
the format rewards and the refinement actions all vary. Nothing here reads the ground truth.
"""

from __future__ import annotations

import json

import numpy as np

from recipe.task.coordinates import Coordinates
from recipe.task.prompts import ANSWER_ONLY_PROMPTS, OBJECTS_PROMPTS, PROMPTS, QUESTION_SLOT
from reward_server.masks import MODEL_SIZE

_TASK_KIND = {"samr1": "samr1", "grounding": "box", "mask_comprehension": "points", "auxiliary": "points"}


_TEMPLATES = [
    *((task, True, False, template) for task, template in PROMPTS.items()),
    *((task, False, False, template) for task, template in ANSWER_ONLY_PROMPTS.items()),
    *((task, reasoning, True, template) for (task, reasoning), template in OBJECTS_PROMPTS.items()),
]


def last_task(prompt_text: str) -> tuple[str, bool, bool] | None:
    """The task of the last prompt template in ``prompt_text``, whether it asks for reasoning and whether it asks
    for a list of objects (a generalized row); None if none.

    Multi-turn prompts hold every earlier turn, so the last template is the one being answered.
    """
    best: tuple[int, str, bool, bool] | None = None
    for task, reasoning, objects, template in _TEMPLATES:
        position = prompt_text.rfind(template.split(QUESTION_SLOT)[1])
        if position >= 0 and (best is None or position > best[0]):
            best = (position, task, reasoning, objects)
    return None if best is None else best[1:]


def _box(rng: np.random.Generator) -> list[int]:
    x1, y1 = rng.integers(0, MODEL_SIZE - 120, size=2)
    width, height = rng.integers(60, MODEL_SIZE // 3, size=2)
    return [int(x1), int(y1), int(min(x1 + width, MODEL_SIZE)), int(min(y1 + height, MODEL_SIZE))]


def _point(rng: np.random.Generator) -> list[int]:
    return [int(v) for v in rng.integers(0, MODEL_SIZE, size=2)]


def random_answer(kind: str, rng: np.random.Generator, coordinates: Coordinates = Coordinates.PIXELS) -> dict:
    """A valid answer object of ``kind`` (``samr1``, ``box`` or ``points``) with random coordinates, written in
    ``coordinates`` (drawn in pixels of the 840x840 model image)."""

    def written(pixels: list[int] | None) -> list[int] | None:
        model_hw = (MODEL_SIZE, MODEL_SIZE)
        return None if pixels is None else [round(v) for v in coordinates.from_pixels(pixels, model_hw)]

    if kind == "points":
        positive, negative = rng.integers(0, 2, size=2)
        pos, neg = (_point(rng) if positive else None), (_point(rng) if negative else None)
        return {"pos_point": written(pos), "neg_point": written(neg)}
    box = _box(rng)
    if kind == "box":
        return {"bbox_2d": written(box)}
    point = [int(rng.integers(box[0], box[2])), int(rng.integers(box[1], box[3]))]
    return {"bbox_2d": written(box), "point_2d": written(point), "label": "the object"}


def scripted_answer(
    prompt_text: str, rng: np.random.Generator, coordinates: Coordinates = Coordinates.PIXELS
) -> str | None:
    """A response to the last prompt in ``prompt_text`` in its task's format, its coordinates in the model's
    convention; None for a prompt of no known task."""
    found = last_task(prompt_text)
    if found is None:
        return None
    task, reasoning, objects = found
    if objects:  # none, one or two objects, with no regard for the image: "none" is right only by chance
        answer = [random_answer(_TASK_KIND[task], rng, coordinates) for _ in range(int(rng.integers(0, 3)))]
    else:
        answer = random_answer(_TASK_KIND[task], rng, coordinates)
    answer = f"<answer>{json.dumps(answer)}</answer>"
    return f"<think>A scripted answer.</think>\n{answer}" if reasoning else answer
