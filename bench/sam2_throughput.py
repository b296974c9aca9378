"""SAM2 engine throughput: encodes/s and masks/s per batch size, eager and compiled (``make gpu-check``'s table).

SAM2.1-Large with random weights (timing needs no checkpoint) through :class:`SamEngine`, bfloat16 autocast at
1024 px, eager and with ``compile_encoder``, at batch sizes 1, 4, 16 and 64:

- encodes/s: ``SamEngine.encode`` of that many 840x840 images per call (preprocessing and image encoder);
- masks/s: ``SamEngine.segment`` of that many prompts per call on cached images, SAM-R1-shaped (a box and a point,
  8 prompts per image): prompt encoder, mask decoder, upsampling to 840 px and RLE;
- warm-up: the first two encodes at that size, untimed in encodes/s: compilation (and cuDNN autotuning), and with
  ``compile_encoder`` a second compilation, because SAM2's position-encoding cache fills on the first call and fails
  the compiled graph's guard on the next.

The measurement runs in a child process that is killed at the deadline, so a long compilation cannot overrun the
budget; the table shows what was measured by then. The quick plan is the CPU dry run: the tiny SAM2
(``sam2.1_hiera_t``, 512 px, float32, batch size 1, ``torch.compile`` with its ``eager`` backend).

Needs only torch, numpy and sam2 (``make gpu-check``'s bare part).
"""

from __future__ import annotations

import gc
import math
import multiprocessing as mp
import os
import queue
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.queues import Queue
from typing import Any

import numpy as np
import torch

from bench.processes import stop_group
from bench.reward import _first_prompt, _images
from reward_server.config import EngineConfig
from reward_server.engine import SamEngine
from reward_server.protocol import SegRequest, content_key

ROLLOUTS = 8  # prompts per image in the masks/s figure, as in a SAM-R1 step
IMAGE_SIDE = 840  # the side of the images the policy sees, and so of every SAM2 request in training


@dataclass(frozen=True)
class Plan:
    """What the throughput measurement runs.

    Attributes:
        title: The table's heading: model, resolution, dtype, device.
        engine: ``EngineConfig`` fields shared by the eager and the compiled engine.
        batch_sizes: Images per encode call, and prompts per segment call.
        compile_backend: The ``torch.compile`` backend of the compiled rows.
        min_seconds: Each figure is timed over repeated calls lasting at least this long.
    """

    title: str
    engine: dict[str, Any]
    batch_sizes: tuple[int, ...]
    compile_backend: str
    min_seconds: float


def make_plan(quick: bool) -> Plan:
    """The GPU plan (SAM2.1-Large, bf16) or, with ``quick``, the CPU dry run with the tiny SAM2."""
    if quick:
        return Plan(
            title="CPU dry run (--quick): tiny SAM2 (sam2.1_hiera_t, random weights), 512 px, float32 on CPU; "
            "not GPU figures",
            engine={"model": "sam2.1_hiera_t", "image_size": 512, "device": "cpu", "dtype": "float32"},
            batch_sizes=(1,),
            compile_backend="eager",
            min_seconds=0.3,
        )
    return Plan(
        title=f"SAM2.1-Large (sam2.1_hiera_l, random weights), 1024 px, bfloat16 on {torch.cuda.get_device_name()}",
        engine={"model": "sam2.1_hiera_l", "device": "cuda", "dtype": "bfloat16"},
        batch_sizes=(1, 4, 16, 64),
        compile_backend="inductor",
        min_seconds=2.0,
    )


def compile_unavailable(backend: str) -> str | None:
    """Why ``torch.compile`` with ``backend`` cannot run on this machine's GPU, or None when it can.

    Inductor generates Triton kernels for CUDA, and Triton builds their launchers with the host C compiler, so both
    must be present; other backends (``eager``, ``aot_eager``) need neither.
    """
    if backend != "inductor":
        return None
    from torch.utils._triton import has_triton

    if not has_triton():
        return "inductor needs Triton and a CUDA device it supports; torch.utils._triton.has_triton() is False"
    # Triton's own lookup: $CC, else gcc, else clang.
    if not (os.environ.get("CC") or shutil.which("gcc") or shutil.which("clang")):
        return "Triton finds no C compiler to build its kernel launchers (set CC, or install gcc or clang)"
    return None


def _seconds_per_call(call: Callable[[], object], device: torch.device, min_seconds: float) -> float:
    """Mean wall time of repeated calls, each finished on the device before the clock is read."""
    calls, started = 0, time.perf_counter()
    while True:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return elapsed / calls


def measure_batch(engine: SamEngine, images: list[np.ndarray], min_seconds: float) -> dict[str, float]:
    """encodes/s, masks/s and the warm-up seconds with ``len(images)`` images, then prompts, per call.

    Raises:
        RuntimeError: When the engine answers a prompt with an error, which would make masks/s meaningless.
    """
    started = time.perf_counter()
    for _ in range(2):  # compiled: the second call compiles again (module docstring)
        engine.encode(images)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    warmup_s = time.perf_counter() - started
    encode_s = _seconds_per_call(lambda: engine.encode(images), engine.device, min_seconds)

    payloads = {content_key(image): image for image in images[: math.ceil(len(images) / ROLLOUTS)]}
    keys = list(payloads)
    rng = np.random.default_rng(len(images))
    requests = [SegRequest(keys[i // ROLLOUTS], _first_prompt(rng, IMAGE_SIDE)) for i in range(len(images))]
    # Encodes and caches the images, so the timed calls only prompt and decode, as later turns of a step do.
    failed = [result.error for result in engine.segment(requests, payloads) if not result.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} prompts failed: {failed[0]}")
    segment_s = _seconds_per_call(lambda: engine.segment(requests), engine.device, min_seconds)
    return {
        "encodes_per_s": len(images) / encode_s,
        "masks_per_s": len(images) / segment_s,
        "warmup_s": warmup_s,
    }


def measure(plan: Plan, results: Queue) -> None:
    """Child process: puts one row per (encoder, batch size) as soon as it is measured, then None.

    Every failure (compiler missing, out of memory at one size) becomes that row's ``error``, so the other rows are
    still measured.
    """
    os.setpgrp()  # leads a group with its compile workers, so the parent stops them all at the deadline
    images = _images(max(plan.batch_sizes), IMAGE_SIDE)
    for compiled in (False, True):
        rows = [{"compiled": compiled, "batch": batch} for batch in plan.batch_sizes]
        skip = compile_unavailable(plan.compile_backend) if compiled else None
        if skip:
            for row in rows:
                results.put({**row, "error": f"skipped: {skip}"})
            continue
        try:
            engine = SamEngine(
                EngineConfig(
                    **plan.engine,
                    allow_random_weights=True,
                    compile_encoder=compiled,
                    compile_backend=plan.compile_backend,
                    encoder_batch_sizes=list(plan.batch_sizes),
                    max_decode_batch=max(plan.batch_sizes),
                )
            )
        except Exception as err:  # report it in every row of this encoder rather than die without a table
            for row in rows:
                results.put({**row, "error": f"engine build failed: {err!r:.200}"})
            continue
        for row in rows:
            try:
                row.update(measure_batch(engine, images[: row["batch"]], plan.min_seconds))
            except Exception as err:  # one size failing (out of memory, a compile error) leaves the others
                row["error"] = f"{err!r:.200}"
                torch.cuda.empty_cache()
            results.put(row)
        # The compiled engine's model is a second copy: free the first before building it.
        del engine
        gc.collect()
        torch.cuda.empty_cache()
    results.put(None)


def collect(plan: Plan, deadline: float) -> tuple[dict[tuple[bool, int], dict[str, Any]], str | None]:
    """Runs :func:`measure` in a child process until it finishes or the deadline passes.

    Returns:
        The rows received, by (compiled, batch size), and why measuring stopped early (None when it finished).
    """
    # spawn: the parent has initialised CUDA (device info), and a forked child could not use it.
    context = mp.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=measure, args=(plan, results), name="gpu-check-measure")
    child.start()
    rows: dict[tuple[bool, int], dict[str, Any]] = {}
    stopped = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            stopped = "the time budget ran out"
            break
        try:
            row = results.get(timeout=min(1.0, remaining))
        except queue.Empty:
            if not child.is_alive():
                stopped = f"the measuring process exited with code {child.exitcode}"
                break
            continue
        if row is None:
            break
        rows[row["compiled"], row["batch"]] = row
    if child.is_alive():
        stop_group(child)
    child.join()
    return rows, stopped


def throughput_table(plan: Plan, rows: dict[tuple[bool, int], dict[str, Any]], stopped: str | None) -> list[str]:
    """The markdown table: a row per encoder and batch size."""
    lines = [
        f"SAM2 throughput: {plan.title}",
        "",
        "| encoder | batch | encodes/s | masks/s | warm-up (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for compiled in (False, True):
        encoder = f"compiled ({plan.compile_backend})" if compiled else "eager"
        for batch in plan.batch_sizes:
            row = rows.get((compiled, batch))
            if row is None:
                lines.append(f"| {encoder} | {batch} | not measured: {stopped or 'no result'} | | |")
            elif "error" in row:
                error = " ".join(row["error"].replace("|", "/").split())  # one line that keeps the table's columns
                lines.append(f"| {encoder} | {batch} | {error} | | |")
            else:
                lines.append(
                    f"| {encoder} | {batch} | {row['encodes_per_s']:.2f} | {row['masks_per_s']:.1f} | "
                    f"{row['warmup_s']:.1f} |"
                )
    return lines
