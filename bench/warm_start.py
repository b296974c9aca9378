"""A warm start for the learning check: a tiny Qwen2.5-VL that answers each training prompt with a chosen mixture.

A random model never writes a well-formed answer, so GRPO has nothing to reinforce. Fitted here (a plain fp32 torch
loop, no verl), the model answers every prompt of the run with a few whole answers at chosen probabilities (e.g. 15%
the right box, 35% a wrong box, 50% nothing), each answer's later tokens near-certain once its first differing token
is drawn: its own samples are then sometimes right and sometimes wrong, and how much a run moves those shares is what
the learning check measures.

The prompts are the ones the rollout is sent: verl's ``RLHFDataset`` reads the rows with the recipe's composed data
config, its ``process_vision_info`` gives the images and verl's Continuous Token builder (the agent loops' only
tokenisation path) the ids; the loss sees the positions verl's actor computes (``mm_token_type_ids``).

Weighted cross-entropy over whole answers: the likelihood of a set of sequences with weights w has its optimum where
every branch point splits in proportion to the weights of the answers behind it, so shared prefixes stay
near-certain and the answers' probabilities approach the weights. The end token alone as the "nothing" answer keeps
its first token apart from every other answer's (a multi-token wrong text would share near-certain tokens with the
right answer, which the first optimiser steps then break).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from recipe.cpu.rollout import token_types


@dataclass(frozen=True)
class Answer:
    """One answer the warm start fits, with the probability it should get."""

    text: str
    weight: float


@dataclass
class PromptInputs:
    """A prompt as the rollout receives it: its ids and images, the row it came from, and the answers to fit."""

    ids: list[int]
    images: list[Any]
    row: dict[str, Any]
    answers: list[Answer]


def rollout_prompts(
    recipe: str, model: Path, files: Sequence[Path], overrides: Sequence[str] = ()
) -> list[PromptInputs]:
    """Every row of ``files`` as verl's agent loops turn it into a rollout request (no answers yet).

    Args:
        recipe: ``samr1`` or ``veteran``: whose composed data config reads the rows.
        model: The checkpoint whose tokenizer and processor tokenise them.
        files: The parquet files, read in order.
        overrides: Hydra overrides of the run (``data.*`` ones change how rows are read).

    Returns:
        One entry per row, in file order; a multi-turn row gives its first turn.
    """
    from verl.utils import hf_processor, hf_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = _compose(recipe, model, overrides)
    tokenizer, processor = hf_tokenizer(str(model)), hf_processor(str(model))
    builder = _token_builder(model, config, tokenizer, processor)
    patch_size = getattr(processor.image_processor, "patch_size", 14)
    prompts = []
    for path in files:
        dataset = RLHFDataset(str(path), tokenizer, config.data, processor=processor)
        for index in range(len(dataset)):
            row = dataset[index]
            messages = list(row["raw_prompt"])
            images, _ = asyncio.run(RLHFDataset.process_vision_info(messages, patch_size, config.data))
            ids = builder.build_initial_tokens(messages, images=images)
            prompts.append(PromptInputs(list(ids), list(images or []), row, []))
    return prompts


def workflow_second_turn(
    model: Path, first: PromptInputs, answer: str, overrides: Sequence[str] = ()
) -> PromptInputs | None:
    """The SAM-Veteran workflow's second prompt after ``answer`` to its first (``first``), as its loop builds it.

    ``recipe.veteran.workflow_loop.WorkflowLoop``'s steps: the episode parses the answer, the run's segmenter
    (``reward_server`` of the composed config) masks its box, and verl's Continuous Token builder appends the answer's
    tokens and then the overlay turn (the mask drawn on the image, the refinement question).

    Returns:
        The prompt with both images, or None when the answer ends the episode (no box, or no refinement turn).
    """
    from verl.utils import hf_processor, hf_tokenizer

    from recipe.task.dataset_rows import Row
    from recipe.task.episodes import Episode
    from recipe.task.prompts import first_image
    from recipe.veteran.config import veteran_config
    from reward_server.config import server_config
    from reward_server.images import to_rgb
    from reward_server.protocol import GroundTruthRef, ImageRef, SegRequest
    from reward_server.segmenters import build_engine

    config = _compose("veteran", model, overrides)
    tokenizer, processor = hf_tokenizer(str(model)), hf_processor(str(model))
    builder = _token_builder(model, config, tokenizer, processor)
    veteran = veteran_config(config)
    row = Row.of(first.row)
    image, truth = ImageRef.of(first_image(first.row["raw_prompt"])), GroundTruthRef.of(dict(row.ground_truth.mask))
    episode = Episode(
        row.extra_info.question,
        to_rgb(image.data),
        truth.rle,
        max_steps=veteran.workflow.max_steps,
        resend_points=veteran.workflow.resend_points,
        grounding_cot=veteran.reward.grounding_cot,
        mask_cot=veteran.reward.mask_cot,
    )
    messages = episode.next_messages()
    answer_ids = _answer_ids(tokenizer, answer, tokenizer.eos_token_id)
    text = tokenizer.decode(answer_ids, skip_special_tokens=True)
    prompts = episode.observe_response(text)
    if not prompts:
        return None
    engine = build_engine(server_config(config.reward_server).engine)
    requests = [SegRequest(image.key, p, gt_key=truth.key, return_logits=True, return_edge_iou=True) for p in prompts]
    episode.observe_mask(engine.segment(requests, {image.key: image.data}, {truth.key: truth.rle}))
    if episode.done:
        return None
    answered = [*messages, {"role": "assistant", "content": text}]
    turn = episode.next_messages()
    merged = builder.merge_assistant_tokens(first.ids, answer_ids)
    merged = builder.merge_context_tokens(answered, answered + turn, merged.token_ids)
    return PromptInputs(list(merged.token_ids), [*first.images, turn[0]["content"][0]["image"]], first.row, [])


def _compose(recipe: str, model: Path, overrides: Sequence[str]) -> Any:
    from recipe.verl_runtime.compose import compose_recipe

    # No length filter: the trainer applies its own, and datasets' filter forks a worker, which deadlocks in a
    # process whose torch threads already ran (data_prep's SAM2 pass before a SAM-Veteran warm start).
    settings = [f"actor_rollout_ref.model.path={model}", "+smoke=cpu", "data.filter_overlong_prompts=false"]
    return compose_recipe(recipe, [*settings, *overrides])


def _token_builder(model: Path, config: Any, tokenizer: Any, processor: Any) -> Any:
    """verl's Continuous Token builder as the agent loops create it (their only tokenisation path)."""
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    return create_continuous_token_builder(
        tokenizer,
        hf_model_type=_model_type(model),
        chat_template_kwargs=config.data.get("apply_chat_template_kwargs", {}),
        mm_processor_kwargs=config.data.get("mm_processor_kwargs", {}),
        processor=processor,
    )


def _model_type(model: Path) -> str:
    return json.loads((Path(model) / "config.json").read_text())["model_type"]


@dataclass
class FitReport:
    """What the warm start reached: each prompt's probability of each answer, and the least likely later token."""

    probabilities: list[list[float]]
    min_later_token: float
    steps: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


class _Sequence:
    """One (prompt, answer) pair as model inputs, with the answer's token positions."""

    def __init__(self, processor: Any, model: Any, prompt: PromptInputs, answer_ids: list[int]):
        ids = torch.tensor([prompt.ids + answer_ids])
        self.inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if prompt.images:
            self.inputs.update(processor.image_processor(images=prompt.images, return_tensors="pt"))
            self.inputs.update(token_types(ids, processor, model.config))  # the actor's 3D M-RoPE positions
        self.answer = torch.tensor(answer_ids)

    def log_probs(self, model: Any) -> torch.Tensor:
        """Log-probability of each answer token given everything before it."""
        # Only the logits that predict the answer: the full vocabulary at every prompt position costs 10x more.
        logits = model(**self.inputs, logits_to_keep=len(self.answer) + 1).logits[0, :-1].float()
        return logits.log_softmax(-1).gather(-1, self.answer[:, None])[:, 0]


def fit_answers(
    model_dir: Path,
    prompts: Sequence[PromptInputs],
    out_dir: Path,
    *,
    max_steps: int = 600,
    lr: float = 1e-2,
    tolerance: float = 0.04,
    seed: int = 0,
) -> FitReport:
    """Fits ``model_dir`` so that each prompt's answers get their weights; saves the model to ``out_dir``.

    Args:
        model_dir: The starting checkpoint (the tiny random model).
        prompts: The run's prompts, each with its answers (weights summing to at most 1 per prompt).
        out_dir: Where the fitted checkpoint goes (processor and generation config beside it, and
            ``warm_start.json`` with the :class:`FitReport`).
        max_steps: Adam steps at most.
        lr: Adam's learning rate.
        tolerance: Stop once every answer's probability is within this of its weight and every later token of every
            answer is at least 0.99 likely.
        seed: Torch seed of the optimisation.

    Returns:
        The report, also written to ``out_dir / "warm_start.json"``.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    started = time.monotonic()
    torch.manual_seed(seed)
    processor = AutoProcessor.from_pretrained(model_dir)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    eos = processor.tokenizer.eos_token_id
    groups = [
        [
            _Sequence(processor, model, prompt, _answer_ids(processor.tokenizer, answer.text, eos))
            for answer in prompt.answers
        ]
        for prompt in prompts
    ]
    weights = [[answer.weight for answer in prompt.answers] for prompt in prompts]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    report = None
    for step in range(1, max_steps + 1):
        model.train()
        optimizer.zero_grad()
        for group, targets in zip(groups, weights, strict=True):
            for sequence, weight in zip(group, targets, strict=True):
                (-weight * sequence.log_probs(model).sum() / len(prompts)).backward()
        optimizer.step()
        if step % 10 == 0 or step == max_steps:
            report = _measure(model, groups, step, time.monotonic() - started)
            print(f"warm start: step {step} {_describe(report)}", flush=True)
            close = all(
                abs(p - w) <= tolerance
                for row, targets in zip(report.probabilities, weights, strict=True)
                for p, w in zip(row, targets, strict=True)
            )
            if close and report.min_later_token >= 0.99:
                break
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(model_dir, out_dir)  # tokenizer, chat template and generation config come along
    model.save_pretrained(out_dir)
    (out_dir / "warm_start.json").write_text(json.dumps(report.as_dict(), indent=1))
    return report


def _answer_ids(tokenizer: Any, text: str, eos: int) -> list[int]:
    """The answer's tokens and the end token; an empty answer is the end token alone."""
    return [*tokenizer.encode(text, add_special_tokens=False), eos] if text else [eos]


@torch.no_grad()
def _measure(model: Any, groups: list[list[_Sequence]], step: int, seconds: float) -> FitReport:
    """Each answer's probability, and the least likely token after the point where an answer leaves the others."""
    model.eval()
    probabilities, later = [], 1.0
    for group in groups:
        row = []
        for sequence in group:
            log_probs = sequence.log_probs(model)
            row.append(float(log_probs.sum().exp()))
            own = _branch_point(sequence, group) + 1
            if own < len(log_probs):
                later = min(later, float(log_probs[own:].exp().min()))
        probabilities.append(row)
    return FitReport(probabilities, later, step, seconds)


def _branch_point(sequence: _Sequence, group: list[_Sequence]) -> int:
    """Index of the token where ``sequence``'s answer leaves the last of the other answers of its prompt."""
    own = sequence.answer.tolist()
    branch = 0
    for other in group:
        if other is sequence:
            continue
        theirs = other.answer.tolist()
        shared = next((i for i, (a, b) in enumerate(zip(own, theirs, strict=False)) if a != b), len(own) - 1)
        branch = max(branch, shared)
    return branch


def _describe(report: FitReport) -> str:
    rows = " | ".join(" ".join(f"{p:.2f}" for p in row) for row in report.probabilities)
    return f"p(answers) per prompt: {rows}; least likely later token {report.min_later_token:.3f}"
