"""Dataclass config of the evaluator, and the one place its defaults live.

``conf/evaluate.yaml`` composes over :class:`EvalConfig` (registered by ``recipe.verl_runtime.run_config``), so it and
the ``+eval`` presets hold only what they change; :func:`eval_config` converts the composed config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipe.task.episodes import WorkflowConfig
from recipe.task.metrics import check_convention
from recipe.veteran.reward_formulas import VeteranRewardConfig
from reward_server.config import EngineConfig, ServerConfig, to_dataclass
from reward_server.ray_setup import LocalRayConfig


@dataclass
class ModelConfig:
    """The policy checkpoint and how it is served.

    Attributes:
        path: Hugging Face checkpoint directory (or hub id where online); not needed for ``oracle_box``.
        backend: ``vllm`` (offline engine), ``transformers``, or ``auto`` (vLLM when CUDA is available).
        dtype: Weights dtype (``bfloat16`` on GPU; CPU runs use ``float32``).
        tensor_parallel_size: vLLM tensor parallelism (GPUs per worker).
        gpu_memory_utilization: vLLM's share of the GPU; SAM2 shares the same GPU in each worker.
        max_model_len: vLLM context (prompt of ~1,050 tokens per turn plus the answer).
        enforce_eager: Skip vLLM's CUDA graphs (faster start, slower decoding).
    """

    path: str | None = None
    backend: str = "auto"
    dtype: str = "bfloat16"
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.6
    max_model_len: int = 4096
    enforce_eager: bool = False


@dataclass
class GenerationConfig:
    """Decoding; greedy by default so a rerun gives the same numbers.

    Attributes:
        max_new_tokens: Answer budget per turn; None takes the mode's default (``Mode.max_new_tokens``: 1300 for
            ``veteran``, its training response length; else 1024, as Seg-Zero's evaluation), as
            ``Mode.decoding`` fills it in.
        temperature: 0 is greedy.
        top_p: Nucleus sampling (with ``temperature`` > 0).
        repetition_penalty: None takes the mode's default (1.1 for ``veteran``, as its paper evaluates; else 1.0).
        batch_size: Samples per batch: one policy call per turn and one SAM2 batch per step for all of them.
        seed: Sampling seed.
    """

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float | None = None
    batch_size: int = 64
    seed: int = 0


@dataclass
class VeteranConfig:
    """The iterative workflow of ``veteran`` mode (``baseline`` runs its grounding turn only).

    Attributes:
        max_steps: Refinement steps at most (3 in the paper's evaluation, 5 for its 32B model).
        resend_points: Send earlier clicks again at each step (docs/conventions.md; default off, paper-faithful).
        grounding_cot: Ask for ``<think>`` in the grounding turn (False: the answer-only prompt of the ablations).
        mask_cot: Likewise for refinement turns.
    """

    max_steps: int = WorkflowConfig.max_steps
    resend_points: bool = WorkflowConfig.resend_points
    grounding_cot: bool = VeteranRewardConfig.grounding_cot
    mask_cot: bool = VeteranRewardConfig.mask_cot


@dataclass
class DataConfig:
    """What is evaluated.

    Attributes:
        files: data_prep evaluation parquet files, or directories of them (every ``*.parquet`` inside); by default
            the directory ``make data`` writes them to.
        limit: Evaluate only the first ``limit`` rows of each file.
    """

    files: list[str] = field(default_factory=lambda: ["data/eval"])
    limit: int | None = None


@dataclass
class MetricsConfig:
    """How masks are scored (``recipe.task.metrics``; docs/conventions.md).

    Attributes:
        convention: ``lisa`` (ignore pixels excluded, an empty union scores 1) or ``seg_zero`` (Seg-Zero's released
            scripts: ignore pixels are target, an empty union drops the sample). ``+eval=seg_zero`` also sets
            SAM2 as Seg-Zero runs it.
    """

    convention: str = "lisa"

    def __post_init__(self) -> None:
        check_convention(self.convention)


@dataclass
class ReportConfig:
    """The visual report's panels.

    Attributes:
        random_samples: Panels of randomly drawn samples.
        worst_samples: Panels of the lowest-IoU samples (failure analysis).
        seed: Seed of the random draw.
        max_side: Longest side of each image in a panel, in pixels.
    """

    random_samples: int = 24
    worst_samples: int = 24
    seed: int = 0
    max_side: int = 448


@dataclass
class ParallelConfig:
    """Data parallelism: ``workers`` Ray tasks, each with its own policy and SAM2 on ``gpus_per_worker`` GPUs.

    Attributes:
        workers: 1 runs in this process without Ray; more shard the samples over Ray workers (the GPUs of a node,
            or of the cluster in ``ray.address``).
        gpus_per_worker: GPUs per worker (``model.tensor_parallel_size`` of them; 0 on CPU).
        cpus_per_worker: CPUs per worker.
        ray: The cluster to join (``RAY_ADDRESS`` by default), or the local Ray to start.
    """

    workers: int = 1
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 4.0
    ray: LocalRayConfig = field(default_factory=LocalRayConfig)


@dataclass
class EvalConfig:
    """One evaluation run.

    Filled through OmegaConf (:func:`eval_config`): defaults such as ``output_dir``'s interpolate other keys.

    Attributes:
        mode: ``samr1``, ``veteran``, ``baseline`` or ``oracle_box`` (``recipe.evaluate.modes``).
        output_dir: Where records, summary, table and report go; a rerun with the same config resumes there.
        name: The method's name in the table (default: mode and checkpoint name).
        report: Write the HTML visual report.
        metrics: The scoring convention.
        model: The policy checkpoint and how it is served.
        generation: Decoding.
        veteran: The iterative workflow of ``veteran`` mode.
        data: What is evaluated.
        visual: The visual report's panels.
        parallel: Data parallelism over Ray workers.
        reward_server: The ``reward_server`` group, as in training, so training and evaluation are pointed at a SAM2
            checkpoint the same way (``reward_server.engine.checkpoint=...``); the evaluator runs its ``engine`` in
            process (:attr:`sam`), and the pool and client settings do not apply.
        generalized: Ask every row for a list of objects, or none (a model trained with the generalized presets),
            not only the generalized rows (gRefCOCO's, which always are); a "none" on a papers' row is an empty
            prediction there.
    """

    mode: str = "samr1"
    output_dir: str = "outputs/eval/${mode}"
    name: str | None = None
    report: bool = True
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    veteran: VeteranConfig = field(default_factory=VeteranConfig)
    data: DataConfig = field(default_factory=DataConfig)
    visual: ReportConfig = field(default_factory=ReportConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    reward_server: ServerConfig = field(default_factory=ServerConfig)
    generalized: bool = False

    def __post_init__(self) -> None:
        tp, gpus = self.model.tensor_parallel_size, self.parallel.gpus_per_worker
        if self.parallel.workers > 1 and 0 < gpus < tp:
            # Ray gives each worker gpus_per_worker GPUs; vLLM then finds fewer than it shards the model over.
            raise ValueError(
                f"model.tensor_parallel_size={tp} needs {tp} GPUs per worker, parallel.gpus_per_worker={gpus:g} "
                f"gives each fewer: set parallel.gpus_per_worker={tp}"
            )

    @property
    def sam(self) -> EngineConfig:
        """The SAM2 engine the evaluator runs: ``reward_server.engine``."""
        return self.reward_server.engine

    @property
    def method_name(self) -> str:
        if self.name:
            return self.name
        model = Path(self.model.path.rstrip("/")).name if self.model.path else None
        return f"{self.mode} ({model})" if model and self.mode != "oracle_box" else self.mode

    def data_files(self) -> list[Path]:
        """``data.files`` with directories expanded to their parquet files.

        Raises:
            FileNotFoundError: When an entry does not exist or a directory holds no parquet file.
        """
        files: list[Path] = []
        for entry in self.data.files:
            path = Path(entry)
            if path.is_dir():
                found = sorted(path.glob("*.parquet"))
                if not found:
                    raise FileNotFoundError(f"no *.parquet in {path}")
                files += found
            elif path.is_file():
                files.append(path)
            else:
                raise FileNotFoundError(f"evaluation data {path} does not exist")
        if not files:
            raise FileNotFoundError("no evaluation data: set data.files=[...] (make eval DATA=...)")
        stems = [file.stem for file in files]
        if len(set(stems)) != len(stems):
            raise ValueError(f"evaluation files must have distinct names (sample ids use them): {stems}")
        return files


def eval_config(cfg: Any) -> EvalConfig:
    """A validated :class:`EvalConfig` from a DictConfig or dict (unknown keys and wrong types raise)."""
    return to_dataclass(cfg, EvalConfig)
