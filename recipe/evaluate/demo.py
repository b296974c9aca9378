"""A web page that segments one image at a time: ``python -m recipe.evaluate.demo --model CKPT`` (``make demo``).

The page runs exactly what ``make infer`` runs (:class:`recipe.evaluate.infer.Inferencer`: the evaluator's config,
policy and SAM2 engine, loaded once): upload an image, type the question, press Submit. Each step appears as the
model takes it: the image with SAM2's mask (green), the box (yellow) and the clicks, and a log of the model's
reasoning, answer, SAM2 prompt and mask. An optional ground-truth mask (an image of the same size, nonzero pixels
are the object) adds its outline (magenta) and each step's IoU. The final mask is offered as ``mask.png`` and COCO
RLE ``mask.json``, written to a fresh directory under ``--out`` per request. Requests run one at a time.

The page serves 127.0.0.1 unless ``--host`` says otherwise, never opens a share link, sends no analytics and uses
system fonts only, so neither the server nor a browser showing the page contacts any other host. A bad model path or
SAM2 checkpoint ends the command with a one-line message and exit status 2; bad inputs on the page get a message
there.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import re
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recipe.evaluate.infer import (
    Inferencer,
    InferError,
    InferResult,
    add_model_arguments,
    check_model,
    check_question,
    config_from_args,
    load_image,
    one_line,
    write_outputs,
)
from recipe.task.panels import draw_step
from reward_server.masks import mask_iou

# Gradio reads this when it builds a page; set before the import so no code path phones home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr

LOGGER = logging.getLogger(__name__)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_OUT = "outputs/demo"
# The browser's own fonts: gradio's default theme would otherwise link Google Fonts.
THEME = gr.themes.Default(
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"],
)
LEGEND = (
    "Green: SAM2's mask; yellow: the box; blue +: a positive click; red -: a negative click; magenta: the outline of "
    "the ground-truth mask, when one is given."
)

Outputs = tuple[str, list[tuple[np.ndarray, str]], str, list[str] | None]
"""The handler's outputs: status Markdown, step gallery (image, caption), step log Markdown, download paths."""


def _uploaded_path(payload: dict[str, Any] | None) -> str | None:
    """The server-side path of an uploaded file (gradio has checked it is one of its uploads), or None."""
    return None if payload is None else payload.get("path")


def load_truth(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A bool ``(H, W)`` ground-truth mask from any image file: its nonzero pixels are the object.

    Alpha is ignored, so a mask drawn on a transparent background counts only its drawn pixels.

    Raises:
        InferError: When the file is no readable image or its size is not ``shape``.
    """
    try:
        with Image.open(path) as picture:
            bands = picture.getbands()
            array = np.asarray(picture)
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise InferError(f"unreadable ground-truth mask: {str(err).splitlines()[0]}") from err
    if array.ndim == 3:
        array = array[..., [i for i, band in enumerate(bands) if band != "A"]].any(axis=-1)
    if array.shape != tuple(shape):
        raise InferError(
            f"the ground-truth mask is {array.shape[1]}x{array.shape[0]} pixels but the image is "
            f"{shape[1]}x{shape[0]}: upload a mask of the image's size"
        )
    return array != 0


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _code_block(text: str, language: str = "") -> str:
    # A fence longer than any backtick run in the text, so a model's answer cannot close it early.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def step_log(result: InferResult, truth: np.ndarray | None = None) -> str:
    """Each step's kind, reasoning, answer, SAM2 prompt and mask (its IoU with ``truth`` when given), as Markdown."""
    parts = []
    for index, step in enumerate(result.steps):
        lines = [f"### Step {index}: {step.kind}"]
        reasoning = (step.reasoning or "(none)").replace("<", "&lt;")  # the model's text, never page markup
        lines.append("**Reasoning:**\n\n" + "\n".join(f"> {line}" for line in reasoning.splitlines()))
        if step.answer is not None:
            lines.append("**Answer:**\n\n" + _code_block(json.dumps(step.answer), "json"))
        else:  # the whole response shows what went wrong
            lines.append("**Answer:** (none); the response:\n\n" + _code_block(step.response))
        if step.prompt is not None:
            lines.append("**SAM2 prompt** (original pixels):\n\n" + _code_block(json.dumps(step.prompt), "json"))
        if step.objects:
            prompts = json.dumps([item["prompt"] for item in step.objects])
            lines.append(f"**SAM2 prompts**, {len(step.objects)} objects (original pixels):\n\n" + _code_block(prompts))
        if step.mask is not None:
            mask = f"**Mask:** {int(step.mask.sum())} pixels, SAM2 score {step.score:.3f}"
            if truth is not None:
                mask += f", IoU with the ground truth {_percent(mask_iou(step.mask, truth))}"
            lines.append(mask)
        elif step.error:
            lines.append(f"**No mask:** {step.error}")
        elif result.no_target and index == len(result.steps) - 1:
            lines.append("**No object:** the model answers that nothing in the image matches")
        else:
            lines.append("**Stop:** the model accepts the mask")
        parts.append("\n\n".join(lines))
    return "\n\n---\n\n".join(parts)


def _caption(result: InferResult, index: int, truth: np.ndarray | None) -> str:
    step = result.steps[index]
    if step.mask is not None:
        iou = "" if truth is None else f", IoU {_percent(mask_iou(step.mask, truth))}"
        return f"step {index}: {step.kind}{iou}"
    if result.no_target and index == len(result.steps) - 1:
        return f"step {index}: {step.kind}, no object"
    return f"step {index}: {step.kind}, {'no mask' if step.error else 'stop'}"


def _status(result: InferResult, truth: np.ndarray | None) -> str:
    if result.termination is None:
        return f"Running: {len(result.steps)} step(s) so far…"
    mask = result.mask
    if mask is None:
        return f"Ended ({result.termination}) without a mask"
    if result.no_target:
        return "Done: the model answers that no object in the image matches (an empty mask)"
    text = f"Done ({result.termination}): final mask of {int(mask.sum())} pixels"
    return text + (f", IoU with the ground truth {_percent(mask_iou(mask, truth))}" if truth is not None else "")


def _failure(message: str, gallery: list[tuple[np.ndarray, str]], log: str) -> Outputs:
    gr.Warning(message)
    return f"**Error:** {message}", gallery, log, None


def _read_inputs(
    image: dict[str, Any] | None, question: str | None, truth: dict[str, Any] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The uploaded image as RGB and the ground-truth mask (None when none was given).

    Raises:
        InferError: For a missing or unreadable image, an empty question, or an unusable ground-truth mask.
    """
    image_path = _uploaded_path(image)
    if image_path is None:
        raise InferError("upload an image first")
    check_question(question)
    original = load_image(image_path)
    truth_path = _uploaded_path(truth)
    return original, None if truth_path is None else load_truth(truth_path, original.shape[:2])


def build_demo(inferencer: Inferencer, out_root: Path) -> gr.Blocks:
    """The page, serving ``inferencer``; each request's ``mask.png`` and ``mask.json`` go to a new directory under
    ``out_root``. Launch it with :func:`launch`, which applies the local-fonts theme and lets it serve ``out_root``."""
    out_root = Path(out_root)

    def run(image: dict[str, Any] | None, question: str | None, truth: dict[str, Any] | None) -> Iterator[Outputs]:
        try:
            original, outline = _read_inputs(image, question, truth)
        except InferError as err:
            yield _failure(str(err), [], "")
            return
        drawn: list[tuple[np.ndarray, str]] = []

        def page(result: InferResult) -> tuple[list[tuple[np.ndarray, str]], str]:
            # Earlier steps never change: each is drawn once per request.
            for index, step in enumerate(result.steps[len(drawn) :], start=len(drawn)):
                drawn.append((draw_step(result.image, step.drawn(), outline), _caption(result, index, outline)))
            return list(drawn), step_log(result, outline)

        snapshots: queue.Queue[InferResult | None] = queue.Queue()
        shown: tuple[list[tuple[np.ndarray, str]], str] = ([], "")
        # The model runs in a worker so each step reaches the page while the next one is computed; leaving the
        # block waits for it, so an abandoned request still finishes before the next one uses the model.
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(inferencer.segment, original, question, snapshots.put)
            future.add_done_callback(lambda _: snapshots.put(None))
            yield "Running…", *shown, None
            while (snapshot := snapshots.get()) is not None:
                shown = page(snapshot)
                yield _status(snapshot, outline), *shown, None
        try:
            result = future.result()
        except Exception as err:  # a failing model must not take the page down; the log keeps the traceback
            LOGGER.exception("segmenting failed")
            yield _failure(f"segmenting failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}", *shown)
            return
        if result.mask is None:
            yield _failure(result.failure, *shown)
            return
        try:
            out_root.mkdir(parents=True, exist_ok=True)
            out_dir = Path(tempfile.mkdtemp(prefix="request-", dir=out_root))
            write_outputs(result, out_dir)
        except OSError as err:
            yield _failure(f"could not write the mask under {out_root}: {err}", *shown)
            return
        yield _status(result, outline), *shown, [str(out_dir / "mask.png"), str(out_dir / "mask.json")]

    cfg = inferencer.cfg
    with gr.Blocks(title="SAM-Veteran demo", analytics_enabled=False) as demo:
        gr.Markdown(f"## Segment one image\n\nMode **{cfg.mode}**, model `{cfg.model.path}`. {LEGEND}")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(label="Image", sources=["upload", "clipboard"], elem_id="image")
                question = gr.Textbox(label="Question", placeholder="the man in the red shirt", elem_id="question")
                truth = gr.Image(
                    label="Ground-truth mask (optional): nonzero pixels are the object, same size as the image",
                    sources=["upload"],
                    elem_id="truth",
                )
                submit = gr.Button("Submit", variant="primary", elem_id="submit")
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                gallery = gr.Gallery(
                    label="Steps", format="png", columns=3, height="auto", object_fit="contain", elem_id="steps"
                )
                log = gr.Markdown(elem_id="log")
                downloads = gr.File(label="Final mask", file_count="multiple", interactive=False, elem_id="downloads")
        # No preprocessing: the handler reads the uploads itself, so an unreadable file gets infer's message rather
        # than gradio's generic error (gradio still checks that the paths are its own uploads).
        submit.click(run, [image, question, truth], [status, gallery, log, downloads], preprocess=False)
    demo.queue(default_concurrency_limit=1)  # one model: requests wait their turn
    return demo


def launch(
    demo: gr.Blocks,
    out_root: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    prevent_thread_lock: bool = True,
) -> str:
    """Serves ``demo`` on ``host:port`` with the local-fonts theme and no share link; returns the page's URL.

    Args:
        demo: The page from :func:`build_demo`.
        out_root: Where the page writes its downloads (gradio serves only files under allowed paths).
        host: The address to bind; ``0.0.0.0`` exposes the page to every network the machine is on.
        port: The port.
        prevent_thread_lock: Return once serving (the caller keeps the process alive); False blocks until Ctrl+C.

    Raises:
        OSError: When the port is taken.
    """
    Path(out_root).mkdir(parents=True, exist_ok=True)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=prevent_thread_lock,
        quiet=True,
        theme=THEME,
        allowed_paths=[str(out_root)],
        footer_links=["api", "settings"],
        ssr_mode=False,
        mcp_server=False,
    )
    return url


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recipe.evaluate.demo",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to serve on (default {DEFAULT_HOST}: this machine only; 0.0.0.0 is your explicit choice to let "
        "anyone who reaches this machine use the model)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"directory of the per-request downloads ({DEFAULT_OUT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line: loads the model once and serves the page until Ctrl+C; returns the exit status (2 with a
    one-line message on stderr when the model, SAM2 or the port cannot be used)."""
    args = build_parser().parse_args(argv)
    try:
        check_model(args.model)
        inferencer = Inferencer(config_from_args(args))
        demo = build_demo(inferencer, Path(args.out))
        url = launch(demo, Path(args.out), args.host, args.port)
    except (ValueError, OSError) as err:  # InferError, SAM2 or model loading, a taken port: a message, no traceback
        print(f"demo: {one_line(err)}", file=sys.stderr, flush=True)
        return 2
    print(f"demo: {args.mode} with {args.model} at {url} (Ctrl+C stops it)", flush=True)
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main())
