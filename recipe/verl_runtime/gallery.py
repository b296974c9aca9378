"""Pictures of training: a gallery of a few rollouts every ``samrl.gallery.every_n_steps`` steps.

Each rollout is drawn from what its step already holds: the model's image and the ground truth from the row, the
response, the reward components and the SAM2 calls the reward path recorded (:mod:`recipe.task.sam_steps`), so
drawing never calls SAM2. One panel per rollout (the ground truth, the mask the prompt showed for SAM-Veteran's
refinement tasks, then each SAM2 step with its box, clicks, mask and IoU, and the reward components underneath) goes
to TensorBoard and to ``<samrl.output_dir>/gallery/step_<N>/index.html``, listed in ``gallery/index.html``.
"""

from __future__ import annotations

import html
import json
import numbers
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from recipe.task.dataset_rows import ExtraInfo, RewardModel
from recipe.task.overlay import draw_mask_outline, overlay_mask
from recipe.task.panels import GT_COLOR, LEGEND, draw_step, draw_truth, fit, tile_row, titled
from recipe.task.sam_steps import SAM_STEPS, decode_steps
from reward_server.images import to_rgb
from reward_server.masks import decode_rle, encode_rle, resize_mask

GALLERY_DIR = "gallery"
TEXT_SIZE = 13
LINE_HEIGHT = 16

STYLE = (
    "body{font-family:sans-serif;margin:24px;color:#222}.rollout{margin:18px 0;border-top:1px solid #ddd}"
    "img{max-width:100%}pre{white-space:pre-wrap;background:#f6f6f6;padding:6px}"
    "td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}table{border-collapse:collapse}"
)


@dataclass
class GalleryConfig:
    """``samrl.gallery``: which steps get a gallery and what it shows.

    Attributes:
        every_n_steps: A gallery every N training steps; 0 turns it off.
        rollouts: Rollouts drawn per gallery, spread evenly over the step's batch.
        max_side: Longest side of each tile in pixels.
    """

    every_n_steps: int = 0
    rollouts: int = 6
    max_side: int = 336

    def __post_init__(self):
        if self.every_n_steps < 0:
            raise ValueError(f"samrl.gallery.every_n_steps must be >= 0 (0: off), got {self.every_n_steps}")
        if self.rollouts < 1:
            raise ValueError(f"samrl.gallery.rollouts must be >= 1, got {self.rollouts}")
        if self.max_side < 32:
            raise ValueError(f"samrl.gallery.max_side must be >= 32 pixels, got {self.max_side}")

    def due(self, step: int) -> bool:
        """Whether training step ``step`` gets a gallery."""
        return self.every_n_steps > 0 and step % self.every_n_steps == 0


@dataclass(frozen=True)
class Rollout:
    """One rollout as the gallery shows it.

    Attributes:
        key: The rollout's TransferQueue key (``<uid>_<sample>_<output>``).
        question: The row's question.
        response: The decoded response (every turn of a multi-turn rollout).
        image: The RGB image the model saw.
        truth: The ground-truth mask at the image's size.
        shown: The mask the prompt showed (SAM-Veteran's refinement tasks), or None.
        steps: The SAM2 records of the reward path.
        reward: The total ``score`` and every numeric reward component.
        labels: The string components (task, failure category).
    """

    key: str
    question: str
    response: str
    image: np.ndarray
    truth: np.ndarray
    shown: np.ndarray | None
    steps: list[dict[str, Any]]
    reward: dict[str, float]
    labels: dict[str, str]


def choose_keys(keys: Sequence[str], count: int) -> list[str]:
    """``count`` keys spread evenly over the sorted keys (all of them when there are fewer)."""
    ordered = sorted(keys)
    if len(ordered) <= count:
        return ordered
    picks = sorted({round(i * (len(ordered) - 1) / max(count - 1, 1)) for i in range(count)})
    return [ordered[i] for i in picks]


def _mask_at(rle: Mapping[str, Any], shape: tuple[int, int]) -> np.ndarray:
    mask = decode_rle(rle)
    return mask if mask.shape == shape else resize_mask(mask, shape)


def rollout_from_fields(
    key: str, picture: Any, reward_model: Mapping[str, Any], extra_info: Mapping[str, Any], response: str, info: Any
) -> Rollout:
    """A rollout from the fields verl stores for it and its ``reward_extra_info``.

    Args:
        key: The rollout's key.
        picture: The prompt's image (bytes or PIL), as ``recipe.task.prompts.first_image`` finds it.
        reward_model: The row's ``reward_model`` (``ground_truth.mask`` at least).
        extra_info: The row's ``extra_info`` (``question``).
        response: The decoded response.
        info: The rollout's ``reward_extra_info``.

    Raises:
        ValueError: When the prompt has no image, the row no ground-truth mask, or the reward no ``sam_steps``.
    """
    if picture is None:
        raise ValueError("the prompt has no image")
    image = to_rgb(picture)
    truth = RewardModel.of(reward_model or {}).ground_truth
    if truth is None or truth.mask is None:
        raise ValueError("the row's ground truth has no mask")
    if not isinstance(info, Mapping):
        raise ValueError("the rollout has no reward_extra_info")
    shape = image.shape[:2]
    reward = {k: float(v) for k, v in info.items() if isinstance(v, numbers.Real)}
    labels = {k: v for k, v in info.items() if isinstance(v, str) and k != SAM_STEPS and v}
    question = ExtraInfo.of(extra_info or {}).question
    return Rollout(
        key=key,
        question="" if question is None else str(question),
        response=response,
        image=image,
        truth=_mask_at(truth.mask, shape),
        shown=_mask_at(truth.init_mask, shape) if truth.init_mask is not None else None,
        steps=decode_steps(info.get(SAM_STEPS)),
        reward=reward,
        labels=labels,
    )


def step_title(index: int, step: Mapping[str, Any]) -> str:
    """A SAM2 step's tile title: its IoU, SAM2's error, or the clicks a reward scored without SAM2."""
    name = f"step {index}"
    if step.get("mask") is not None:
        return f"{name}: IoU {step['iou']:.3f}" if step.get("iou") is not None else name
    if step.get("error"):
        return f"{name}: SAM2 {step['error']}"
    return f"{name}: clicks" if step.get("prompt") else f"{name}: no SAM2 call"


def reward_lines(rollout: Rollout, width: int) -> list[str]:
    """The caption under a panel: key, labels, total reward, each component, the question."""
    score = rollout.reward.get("score")
    head = [rollout.key, *(f"{k}={v}" for k, v in sorted(rollout.labels.items()) if k != "failure_detail")]
    if score is not None:
        head.append(f"reward {score:.3f}")
    parts = " · ".join(f"{k} {v:.3g}" for k, v in sorted(rollout.reward.items()) if k != "score")
    lines = textwrap.wrap(" · ".join(head), width) + textwrap.wrap(parts, width)
    return lines + textwrap.wrap(f"Q: {rollout.question}", width)


def render_rollout(rollout: Rollout, max_side: int = 336) -> Image.Image:
    """The rollout's panel: ground truth, the mask shown (if any), each SAM2 step, and the rewards underneath."""
    tiles = [titled(fit(draw_truth(rollout.image, rollout.truth), max_side), "ground truth")]
    if rollout.shown is not None:
        shown = draw_mask_outline(overlay_mask(rollout.image, rollout.shown), rollout.truth, GT_COLOR)
        tiles.append(titled(fit(shown, max_side), "mask shown"))
    for index, step in enumerate(rollout.steps):
        picture = draw_step(rollout.image, step, outline=rollout.truth)
        tiles.append(titled(fit(picture, max_side), step_title(index, step)))
    row = tile_row(tiles)
    font = ImageFont.load_default(size=TEXT_SIZE)
    lines = reward_lines(rollout, width=max(40, row.width // 7))
    panel = Image.new("RGB", (row.width, row.height + LINE_HEIGHT * len(lines) + 6), "white")
    panel.paste(row, (0, 0))
    draw = ImageDraw.Draw(panel)
    for index, line in enumerate(lines):
        draw.text((4, row.height + 3 + LINE_HEIGHT * index), line, fill=(0, 0, 0), font=font)
    return panel


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", key) + ".png"


def _rollout_html(rollout: Rollout, picture: str) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" for k, v in sorted(rollout.reward.items()))
    labels = " · ".join(html.escape(f"{k}: {v}") for k, v in sorted(rollout.labels.items()))
    return (
        f'<div class="rollout"><h3>{html.escape(rollout.key)}</h3><p><i>{html.escape(rollout.question)}</i></p>'
        f'<p>{labels}</p><img src="{picture}" alt="{html.escape(rollout.key)}"><table>{rows}</table>'
        f"<details><summary>response</summary><pre>{html.escape(rollout.response)}</pre></details></div>"
    )


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def write_gallery(
    out_dir: str | Path, step: int, rollouts: Sequence[Rollout], panels: Sequence[Image.Image], failed: int = 0
) -> Path:
    """Writes ``<out_dir>/gallery/step_<N>/`` (the panels, an ``index.html`` and ``rollouts.jsonl``: each rollout's
    key, question, labels, rewards, SAM2 records and ground truth as COCO RLE) and refreshes
    ``<out_dir>/gallery/index.html``, which links every step's page; returns the step's page."""
    root = Path(out_dir) / GALLERY_DIR
    page_dir = root / f"step_{step:06d}"
    page_dir.mkdir(parents=True, exist_ok=True)
    body = [f"<h1>Training step {step}</h1>", f"<p>{html.escape(LEGEND)}</p>"]
    if failed:
        body.append(f"<p>{failed} rollout(s) could not be drawn (see the trainer's log).</p>")
    records = []
    for rollout, panel in zip(rollouts, panels, strict=True):
        name = _file_name(rollout.key)
        panel.save(page_dir / name)
        body.append(_rollout_html(rollout, name))
        record = {k: getattr(rollout, k) for k in ("key", "question", "response", "labels", "reward", "steps")}
        records.append(json.dumps({**record, "truth": encode_rle(rollout.truth)}))
    (page_dir / "rollouts.jsonl").write_text("".join(f"{line}\n" for line in records), encoding="utf-8")
    page = page_dir / "index.html"
    page.write_text(_page(f"step {step}", "".join(body)), encoding="utf-8")
    steps = sorted(path.parent.name for path in root.glob("step_*/index.html"))
    links = "".join(f'<li><a href="{name}/index.html">{name}</a></li>' for name in steps)
    (root / "index.html").write_text(_page("training gallery", f"<h1>Training gallery</h1><ul>{links}</ul>"))
    return page
