"""Runs an evaluation: resumable, batched, data-parallel over Ray workers, then the summary, table and report.

Each worker owns every ``workers``-th sample, holds one policy and one SAM2 engine (on its own GPU), evaluates its
unfinished samples in batches of ``generation.batch_size`` through the shared workflow driver, and appends their
records to its own file. The driver only counts records for the progress bar and summarises at the end.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recipe.evaluate.config import EvalConfig
from recipe.evaluate.modes import get_mode
from recipe.evaluate.records import RECORDS_DIR, RecordWriter, bad_sample_record, read_records, sample_record
from recipe.evaluate.samples import BadSample, EvalSample, all_uids, iter_samples
from recipe.evaluate.segmenter import BatchedSegmenter
from recipe.evaluate.summary import markdown_table, steps_table, summarize
from recipe.task.episodes import run_episodes
from recipe.task.metrics import SegMetrics

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"


def run_fingerprint(cfg: EvalConfig, files: list[Path]) -> dict[str, Any]:
    """What makes records comparable: a resumed run must match it (the method's name and the report may change)."""
    mode = get_mode(cfg.mode)
    return {
        "mode": cfg.mode,
        "model": cfg.model.path,
        "generation": {k: v for k, v in asdict(mode.decoding(cfg.generation)).items() if k != "batch_size"},
        "veteran": asdict(cfg.veteran) if mode.iterative or cfg.mode == "baseline" else None,
        "data": [{"file": str(path.resolve()), "bytes": path.stat().st_size} for path in files],
        "limit": cfg.data.limit,
        "sam": {
            "model": cfg.sam.model,
            "checkpoint": cfg.sam.checkpoint,
            "image_size": cfg.sam.image_size,
            "multimask_output": cfg.sam.multimask_output,
        },
        "metrics": asdict(cfg.metrics),
    }


def check_resumable(output_dir: Path, fingerprint: dict[str, Any]) -> None:
    """Writes the run's fingerprint, or checks it against the one a previous run left in ``output_dir``.

    Raises:
        ValueError: When ``output_dir`` holds records of a different run.
    """
    path = output_dir / RUN_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(
            key for key in fingerprint.keys() | previous.keys() if fingerprint.get(key) != previous.get(key)
        )
        if changed:
            raise ValueError(
                f"{output_dir} holds records of a different run (changed: {', '.join(changed)}); "
                "choose another output_dir, or delete it to start over"
            )
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, indent=2) + "\n")


def _batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


async def evaluate_batch(
    samples: list[EvalSample], cfg: EvalConfig, policy: Any, segmenter: BatchedSegmenter
) -> list[dict[str, Any]]:
    """Runs one batch of samples to the end of their episodes and returns their records.

    Each record's timing is its equal share of the batch's wall time, generation time and SAM2 time.
    """
    mode = get_mode(cfg.mode)
    episodes = [mode.build(sample, cfg) for sample in samples]
    started, generate0, sam0 = time.perf_counter(), policy.seconds, segmenter.seconds
    await run_episodes(episodes, policy, segmenter)
    share = len(samples) or 1
    timing = {
        "total_s": (time.perf_counter() - started) / share,
        "generate_s": (policy.seconds - generate0) / share,
        "sam_s": (segmenter.seconds - sam0) / share,
        "batch": len(samples),
    }
    metrics = SegMetrics(cfg.metrics.convention)
    return [sample_record(s, e, cfg.mode, metrics, timing) for s, e in zip(samples, episodes, strict=True)]


def run_worker(
    cfg: EvalConfig,
    worker: int = 0,
    workers: int = 1,
    progress: Callable[[int], Any] | None = None,
    policy: Any = None,
    engine: Any = None,
) -> int:
    """Evaluates this worker's unfinished samples; returns how many it evaluated.

    Args:
        cfg: The run's config.
        worker: This worker's index; it owns samples ``worker, worker + workers, ...`` of the data.
        workers: Number of workers.
        progress: Called with the number of samples of each finished batch.
        policy: A policy to use instead of building ``cfg.model`` (tests).
        engine: A SAM2 engine (or fake) to use instead of building ``cfg.sam`` (tests).
    """
    files = cfg.data_files()
    output_dir = Path(cfg.output_dir)
    owned = set(all_uids(files, cfg.data.limit)[worker::workers])
    todo = owned - read_records(output_dir, owned).keys()
    if not todo:
        return 0
    from recipe.evaluate.policies import build_policy
    from reward_server.segmenters import build_engine

    policy = policy if policy is not None else build_policy(cfg, get_mode(cfg.mode))
    segmenter = BatchedSegmenter(engine if engine is not None else build_engine(cfg.sam))
    done = 0
    with RecordWriter(output_dir / RECORDS_DIR / f"worker-{worker:03d}.jsonl") as writer:
        for batch in _batches(iter_samples(files, todo.__contains__, cfg.data.limit), cfg.generation.batch_size):
            samples = [sample for sample in batch if isinstance(sample, EvalSample)]
            records = asyncio.run(evaluate_batch(samples, cfg, policy, segmenter)) if samples else []
            records += [bad_sample_record(sample, cfg.mode) for sample in batch if isinstance(sample, BadSample)]
            writer.write(records)
            done += len(batch)
            if progress is not None:
                progress(len(batch))
    return done


class _RecordCounter:
    """Counts record lines as workers append them, reading only what is new since the last look."""

    def __init__(self, directory: Path):
        self.directory, self.offsets, self.lines = directory, {}, 0

    def count(self) -> int:
        for path in self.directory.glob("*.jsonl"):
            offset = self.offsets.get(path, 0)
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
            self.offsets[path] = offset + len(chunk)
            self.lines += chunk.count(b"\n")
        return self.lines


def run_parallel(cfg: EvalConfig, pending: int) -> None:
    """Shards the samples over ``parallel.workers`` Ray tasks (one GPU each by default) and shows their progress.

    Raises:
        RuntimeError: When a worker failed; the others' records are kept, and a rerun resumes the rest.
    """
    import ray

    from reward_server.ray_setup import init_ray

    dashboard = init_ray(cfg.parallel.ray)
    print(f"Ray dashboard: {dashboard or 'disabled'}", flush=True)
    task = ray.remote(num_gpus=cfg.parallel.gpus_per_worker, num_cpus=cfg.parallel.cpus_per_worker)(run_worker)
    refs = [task.remote(cfg, worker, cfg.parallel.workers) for worker in range(cfg.parallel.workers)]
    counter = _RecordCounter(Path(cfg.output_dir) / RECORDS_DIR)
    start = counter.count()
    failures = []
    with tqdm(total=pending, desc=f"eval {cfg.mode}", unit="sample") as bar:
        while refs:
            ready, refs = ray.wait(refs, timeout=2.0)
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as err:  # keep the other workers going; report every failure at the end
                    failures.append(f"{type(err).__name__}: {str(err).splitlines()[0][:300]}")
            bar.update(counter.count() - start - bar.n)
    if failures:
        raise RuntimeError(f"{len(failures)} evaluation worker(s) failed (rerun to resume): " + "; ".join(failures))


def timing_line(summary: dict[str, Any]) -> str:
    """Seconds per sample (batched: each sample's share of its batch) and this run's throughput."""
    seconds = summary["s_per_sample"]
    line = (
        f"Time per sample: {seconds:.3f} s, of which SAM2 {summary['sam_s_per_sample']:.3f} s and generation "
        f"{summary['generate_s_per_sample']:.3f} s ({1 / max(seconds, 1e-9):.2f} samples/s per worker)."
        if summary["n"]
        else "No sample was evaluated."
    )
    if summary["run_samples"]:
        line += (
            f" This run: {summary['run_samples']} samples in {summary['run_wall_s']:.1f} s, "
            f"{summary['run_samples_per_s']:.2f} samples/s including model loading."
        )
    return line


def evaluate(cfg: EvalConfig, policy: Any = None, engine: Any = None) -> dict[str, Any]:
    """The whole run: evaluate what is unfinished, then write ``summary.json``, ``table.md`` and the report.

    Args:
        cfg: The run's config.
        policy: A policy to use instead of ``cfg.model`` (tests; in-process runs only).
        engine: A SAM2 engine or fake to use instead of ``cfg.sam`` (tests; in-process runs only).

    Returns:
        The summary (also written to ``<output_dir>/summary.json``).
    """
    files = cfg.data_files()
    output_dir = Path(cfg.output_dir)
    check_resumable(output_dir, run_fingerprint(cfg, files))
    uids = all_uids(files, cfg.data.limit)
    pending = len(uids) - len(read_records(output_dir, uids))
    print(f"{cfg.method_name}: {len(uids)} samples, {len(uids) - pending} done earlier, {pending} to go", flush=True)
    started = time.perf_counter()
    if pending and cfg.parallel.workers > 1:
        run_parallel(cfg, pending)
    elif pending:
        with tqdm(total=pending, desc=f"eval {cfg.mode}", unit="sample") as bar:
            run_worker(cfg, progress=bar.update, policy=policy, engine=engine)
    wall = time.perf_counter() - started
    records = read_records(output_dir, uids)
    mode = get_mode(cfg.mode)
    summary = summarize(
        [records[uid] for uid in uids if uid in records],
        cfg.method_name,
        cfg.mode,
        max_steps=cfg.veteran.max_steps if mode.iterative else None,
        convention=cfg.metrics.convention,
    )
    summary.update(run_samples=pending, run_wall_s=wall, run_samples_per_s=pending / wall if pending else None)
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = markdown_table([summary]) + ("\n" + steps_table(summary) if mode.iterative else "")
    table += "\n" + timing_line(summary) + "\n"
    (output_dir / "table.md").write_text(table)
    print(table, flush=True)
    if cfg.report:
        from recipe.evaluate.visual import write_report

        index = write_report(cfg, files, [records[uid] for uid in uids if uid in records], summary, table)
        print(f"visual report: {index}", flush=True)
    return summary
