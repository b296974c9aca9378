"""Batch and layout arithmetic: every split verl makes comes out even, and the workflow's response budget holds
its turns."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
from omegaconf import DictConfig, OmegaConf

from recipe.task.dataset_rows import TASK_AGENTS, WORKFLOW, Row
from recipe.verl_runtime.preflight.base import files_of, never_raises, replica_gpus, verl_gpus
from recipe.verl_runtime.preflight.files import HUB_ID, cached
from recipe.verl_runtime.run_config import schemas
from reward_server.masks import MODEL_SIZE

WORKFLOW_AGENT = TASK_AGENTS[WORKFLOW]


# under its own processor config (which keeps that image whole).
IMAGE_TOKENS = (MODEL_SIZE // 28) ** 2


# tokenizer, 148 for a 23-word one; 156 leaves room for long ReasonSeg-style questions.
OVERLAY_TEXT_TOKENS = 156


ANSWER_TOKENS = 512


@dataclass(frozen=True)
class Layout:
    """What verl's batch splitting depends on; a micro-batch size of None means dynamic batch size (no division).

    The update splits each mini-batch of ``ppo_mini_batch_size x n`` responses over the data-parallel ranks and each
    rank's share into micro-batches; log-probs split the whole ``train_batch_size x n`` the same way
    (verl/workers/engine_workers.py, verl/workers/engine/utils.py ``prepare_micro_batches``).
    """

    batch: int
    n: int
    world: int
    replica: int
    sp: int
    mini: int | None
    mini_follows_batch: bool
    update_micro: int | None
    infer_micros: tuple[tuple[str, int | None], ...]

    @classmethod
    def of(cls, config: DictConfig) -> Layout:
        actor_rollout_ref = config.actor_rollout_ref
        actor, rollout, ref = actor_rollout_ref.actor, actor_rollout_ref.rollout, actor_rollout_ref.ref
        dynamic = bool(actor.get("use_dynamic_bsz", False))
        raw_mini = OmegaConf.to_container(actor, resolve=False).get("ppo_mini_batch_size")
        infer = [("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", rollout, "log_prob_use_dynamic_bsz")]
        if actor.get("use_kl_loss", False) or config.algorithm.get("use_kl_in_reward", False):
            infer.append(("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", ref, "log_prob_use_dynamic_bsz"))
        return cls(
            batch=int(config.data.train_batch_size),
            n=int(rollout.n),
            world=verl_gpus(config),
            replica=replica_gpus(config),
            sp=int(actor.get("ulysses_sequence_parallel_size", 1) or 1),
            mini=None if dynamic else int(actor.ppo_mini_batch_size),
            mini_follows_batch=raw_mini == "${data.train_batch_size}",
            update_micro=None if dynamic else actor.get("ppo_micro_batch_size_per_gpu"),
            infer_micros=tuple(
                (key, None if node.get(flag, False) else node.get(key.rsplit(".", 1)[1])) for key, node, flag in infer
            ),
        )

    def with_batch(self, batch: int) -> Layout:
        follows = self.mini_follows_batch and self.mini is not None
        return replace(self, batch=batch, mini=batch if follows else self.mini)

    def errors(self, suggest: bool = True) -> list[str]:
        """One line per size verl would reject; ``suggest`` adds a value that works to each."""
        if self.world < 1:
            return [f"trainer.n_gpus_per_node x trainer.nnodes = {self.world}: verl needs at least one GPU"]
        if self.world % self.replica:
            return [
                f"{self.world} GPUs (trainer.n_gpus_per_node x trainer.nnodes) do not divide into rollout replicas of "
                f"{self.replica} (actor_rollout_ref.rollout's tensor x data x pipeline parallel sizes): verl would "
                f"build {self.world // self.replica} and leave {self.world % self.replica} idle"
            ]
        if self.world % self.sp:
            return [
                f"{self.world} GPUs (trainer.n_gpus_per_node x trainer.nnodes) do not divide by "
                f"actor_rollout_ref.actor.ulysses_sequence_parallel_size={self.sp}"
            ]
        dp, total = self.world // self.sp, self.batch * self.n
        if total % self.world:
            if self.mini is None:  # verl checks this only without dynamic batch size, which balances by tokens
                return []
            fix = self.nearest_batch() if suggest else None
            return [
                f"data.train_batch_size={self.batch} x actor_rollout_ref.rollout.n={self.n} = {total} responses do not "
                f"divide among {self.world} GPUs (trainer.n_gpus_per_node x trainer.nnodes): "
                + (f"set data.train_batch_size={fix}" if fix else "change data.train_batch_size")
            ]
        errors = []
        if self.mini is not None:
            errors += self._mini_errors(dp, suggest)
        for key, micro in self.infer_micros:
            if micro and (total // dp) % micro:
                errors.append(_micro_error(key, micro, total // dp, "data.train_batch_size x rollout.n", dp))
        return errors

    def _mini_errors(self, dp: int, suggest: bool) -> list[str]:
        key = "actor_rollout_ref.actor.ppo_mini_batch_size"
        if self.mini > self.batch:
            return [f"{key}={self.mini} exceeds data.train_batch_size={self.batch}: set {key}={self.batch}"]
        if (self.mini * self.n) % dp:
            fix = None
            if suggest:  # the candidates themselves are checked without suggestions, so the search ends
                fix = _nearest(self.mini, self.batch, lambda m: replace(self, mini=m).errors(suggest=False) == [])
            return [
                f"{key}={self.mini} x rollout.n={self.n} responses do not divide among {dp} data-parallel ranks: "
                + (f"set {key}={fix}" if fix else f"change {key}")
            ]
        per_rank = self.mini * self.n // dp
        if self.update_micro and per_rank % self.update_micro:
            key = "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"
            return [_micro_error(key, self.update_micro, per_rank, "ppo_mini_batch_size x rollout.n", dp)]
        return []

    def nearest_batch(self) -> int | None:
        """The ``train_batch_size`` nearest the current one (smaller on a tie) that every size here divides."""
        sizes = [self.update_micro or 1, *(micro or 1 for _, micro in self.infer_micros)]
        # With the mini-batch following the batch, world x lcm(micro sizes) works, so the search ends by there.
        limit = max(self.batch, self.mini or 0) + self.world * math.lcm(*sizes)
        return _nearest(self.batch, limit, lambda b: self.with_batch(b).errors(suggest=False) == [])


def _nearest(start: int, limit: int, ok: Callable[[int], bool]) -> int | None:
    """The value in ``1..limit`` nearest ``start`` (smaller first) for which ``ok`` holds."""
    for distance in range(max(start, limit)):
        for value in (start - distance, start + distance):
            if 1 <= value <= limit and ok(value):
                return value
    return None


def _micro_error(key: str, micro: int, per_rank: int, source: str, dp: int) -> str:
    works = max(d for d in range(1, micro + 1) if per_rank % d == 0)
    return (
        f"{key}={micro} does not divide the {per_rank} responses of each GPU ({source} / {dp} GPUs): set {key}={works}"
    )


@never_raises
def check_batch_sizes(config: DictConfig) -> list[str]:
    """Every batch split verl makes must come out even, or the first ``compute_log_prob`` or update fails."""
    return Layout.of(config).errors()


def _workflow_files(config: DictConfig) -> Iterator[str]:
    column = Row.agent_name.name
    for file in dict.fromkeys(files_of(config.data.train_files)):
        path = Path(file).expanduser()
        if path.is_file() and column in pq.read_schema(path).names:
            agents = pq.read_table(path, columns=[column]).column(column)
            if pc.any(pc.equal(agents, WORKFLOW_AGENT)).as_py():
                yield file


def image_tokens(model_path: str) -> int:
    """Tokens of one 840x840 model image under the checkpoint's own image processor (a directory, or a hub id in
    the local cache).

    A checkpoint whose processor bounds the pixels lower shrinks the image and spends fewer tokens, and Qwen3-VL's
    32-pixel tokens make it 676 where Qwen2.5-VL's 28-pixel ones make it 900; a hub id not cached yet is taken to be
    Qwen2.5-VL's (:data:`IMAGE_TOKENS`).
    """
    path = Path(model_path).expanduser()
    # Hub checkpoints carry preprocessor_config.json; transformers >= 5 saves processor_config.json.
    names = ("preprocessor_config.json", "processor_config.json")
    if not path.is_dir() and HUB_ID.match(model_path):
        snapshot = next((found for name in names if (found := cached(model_path, name)) is not None), None)
        path = path if snapshot is None else snapshot.parent
    if not any((path / name).is_file() for name in names):
        return IMAGE_TOKENS
    import numpy as np
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(path)
    grid = processor(images=[np.zeros((MODEL_SIZE, MODEL_SIZE, 3), np.uint8)], return_tensors="np")["image_grid_thw"]
    return int(np.prod(grid[0])) // int(processor.merge_size) ** 2


def workflow_response_tokens(steps: int, image: int = IMAGE_TOKENS) -> int:
    """The response budget of a workflow row: its grounding answer, then ``steps`` overlay turns with their answers."""
    return ANSWER_TOKENS + steps * (image + OVERLAY_TEXT_TOKENS + ANSWER_TOKENS)


@never_raises
def check_workflow_budget(config: DictConfig) -> list[str]:
    """The workflow loop spends one response budget on every answer and every overlay turn (image included)."""
    files = list(_workflow_files(config))
    if not files:
        return []
    steps = OmegaConf.select(config, "veteran.workflow.max_steps")
    if steps is None:  # a config composed without the veteran block: the loop runs with the schema's default
        steps = schemas()["veteran"]().workflow.max_steps
    steps = int(steps)
    budget = int(config.data.max_response_length)
    image = image_tokens(str(config.actor_rollout_ref.model.path))
    need = workflow_response_tokens(steps, image)
    if budget >= need:
        return []
    step = workflow_response_tokens(1, image) - ANSWER_TOKENS
    fits = max(0, (budget - ANSWER_TOKENS) // step)
    prompt = int(config.data.max_prompt_length)
    micros = _micro_batches_for(config, prompt + budget, prompt + need)
    memory = f" (micro-batches of no more tokens, down to one sequence: {prompt + budget} -> {prompt + need} each)"
    return [
        f"data.max_response_length={budget} cannot hold veteran.workflow.max_steps={steps} refinement steps of the "
        f"{WORKFLOW_AGENT} rows in {files[0]} (~{ANSWER_TOKENS} tokens for the grounding answer, then ~{step} per "
        f"step: {image} image + ~{OVERLAY_TEXT_TOKENS} prompt tokens + ~{ANSWER_TOKENS} for the answer): "
        f"set {' '.join([f'data.max_response_length={need}', *micros])}{memory if micros else ''}, "
        f"or veteran.workflow.max_steps={fits}"
    ]


def _micro_batches_for(config: DictConfig, length: int, longer: int) -> list[str]:
    """Micro-batch sizes that hold no more tokens at ``longer`` tokens a sequence than the config's at ``length``, or
    one sequence where even that holds more.

    Without remove-padding verl pads each micro-batch to its longest sequence, and the update's activations grow with
    its tokens, fp32 logits over the 152k vocabulary foremost (1.6 GB a 2,600-token sequence): the memory the
    layouts were sized for holds only while the tokens per micro-batch stay.
    """
    layout = Layout.of(config)
    sizes = [("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", layout.update_micro), *layout.infer_micros]
    overrides = []
    for key, micro in sizes:
        if not micro:  # None: dynamic batch size, which counts tokens itself
            continue
        smaller = max(1, micro * length // longer)
        if smaller < micro:
            overrides.append(f"{key}={smaller}")
    return overrides
