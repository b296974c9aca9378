"""Dataclass configs of the SAM2 reward server, and the one place their defaults live.

The ``reward_server`` config group composes over :class:`ServerConfig` (``conf/reward_server/large.yaml`` names it
first in its defaults), so each preset holds only what it changes; ``python -m reward_server`` composes over
:class:`ServerAppConfig`. :func:`store_schemas` must put them in Hydra's ConfigStore before either is composed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from reward_server.masks import DEFAULT_IGNORE_EDGE
from reward_server.ray_setup import LocalRayConfig

GiB = 1 << 30
BOX_MODEL = "box"
"""``engine.model`` of the box-only segmenter (:mod:`reward_server.box_engine`), which needs no checkpoint."""

T = TypeVar("T")


@dataclass
class EngineConfig:
    """How one process loads and runs SAM2.

    Attributes:
        model: Packaged SAM2 config name (``sam2.1_hiera_l``) or a YAML path; ``box`` serves the filled box with no
            SAM2 (:mod:`reward_server.box_engine`).
        checkpoint: Checkpoint path, or a Hugging Face id such as ``facebook/sam2.1-hiera-large`` where online.
        allow_random_weights: Permit ``checkpoint=None`` (tests and smoke runs); otherwise a missing checkpoint is an
            error, so a training run never rewards against random SAM2 weights by accident.
        seed: Torch seed before building, so random-weight actors (and their restarts) are identical.
        image_size: Override the model's input resolution (the tiny CPU preset runs at 512); None keeps 1024.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``. ``auto`` follows Ray's assignment inside a Ray worker: the
            GPU Ray gave the actor, or the CPU (with a warning) when it was given none, so SAM2 never lands unasked on
            a GPU that verl holds; outside Ray it is CUDA when available. To share a GPU Ray does not account for,
            name it (``cuda:N``). See :func:`reward_server.engine.resolve_device`.
        dtype: Autocast dtype on CUDA (``bfloat16`` or ``float32``); CPU always runs float32.
        compile_encoder: ``torch.compile`` the image encoder; batches are padded to ``encoder_batch_sizes``.
        compile_backend: The torch.compile backend.
        encoder_batch_sizes: Fixed encoder batch sizes (ascending); the largest is the encode chunk size.
        max_decode_batch: Prompts per mask-decoder call.
        cache_bytes: Bound of the image-embedding LRU cache. SAM2-Large takes ~10 MiB per image on CUDA (the high-res
            levels in bf16, the embedding in fp32 after SAM2's ``no_mem_embed`` add) and 16 MiB on the CPU.
        gt_cache_bytes: Bound of the ground-truth cache (masks and their edge-ignore masks).
        multimask_output: Ask SAM2 for three masks and keep the one with the highest predicted IoU.
        apply_postprocessing: SAM2's dynamic multimask fallback for unstable single masks (its builder's default).
        ignore_edge: Kernel side of the edge-excluded IoU (:data:`reward_server.masks.DEFAULT_IGNORE_EDGE`).
        logits_dtype: dtype of returned low-res logits (``float16`` keeps results small; ``float32`` for parity).
    """

    model: str = "sam2.1_hiera_l"
    checkpoint: str | None = None
    allow_random_weights: bool = False
    seed: int = 0
    image_size: int | None = None
    device: str = "auto"
    dtype: str = "bfloat16"
    compile_encoder: bool = False
    compile_backend: str = "inductor"
    encoder_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    max_decode_batch: int = 64
    cache_bytes: int = 4 * GiB
    gt_cache_bytes: int = 1 * GiB
    multimask_output: bool = False
    apply_postprocessing: bool = True
    ignore_edge: int = DEFAULT_IGNORE_EDGE
    logits_dtype: str = "float16"


@dataclass
class ActorConfig:
    """Micro-batching of one actor.

    Attributes:
        batch_window_ms: How long the first request of a batch waits for others to join it.
        max_batch_prompts: Most prompts handed to the engine at once.
    """

    batch_window_ms: float = 2.0
    max_batch_prompts: int = 256


@dataclass
class PoolConfig:
    """The named actor pool every process reaches by name.

    Attributes:
        name: Pool name; actors are ``{name}-{i}``, the placement group ``{name}-pg``.
        namespace: Ray namespace of the actors.
        num_actors: Actors (one per SAM GPU).
        gpus_per_actor: GPUs reserved per actor (0 on CPU-only machines).
        cpus_per_actor: CPUs reserved per actor.
        strategy: Placement-group strategy for the actors' bundles (``PACK``, ``SPREAD``, ``STRICT_SPREAD``, ...);
            None picks :attr:`placement_strategy`'s default.
        detached: Keep the pool alive after the starting driver exits (a standalone server on a cluster).
        max_restarts: Actor restarts after a crash (-1: unlimited).
        max_task_retries: Ray-level retries of a call whose actor died.
    """

    name: str = "sam2_reward"
    namespace: str = "samrl"
    num_actors: int = 1
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 2.0
    strategy: str | None = None
    detached: bool = False
    max_restarts: int = -1
    max_task_retries: int = 3

    @property
    def placement_strategy(self) -> str:
        """``strategy``, or by default ``PACK`` for one actor and ``SPREAD`` for several.

        Several actors packed onto one node take several of its GPUs, and verl's per-node ``STRICT_PACK`` group of
        ``trainer.n_gpus_per_node`` GPUs can then never be placed there (Ray waits without a timeout); spread, each
        node keeps the same number of GPUs for verl.
        """
        if self.strategy is not None:
            return self.strategy
        return "SPREAD" if self.num_actors > 1 else "PACK"


@dataclass
class ClientConfig:
    """Backpressure and retries of a client.

    Attributes:
        max_in_flight: Calls a client process may have outstanding; further calls wait.
        max_attempts: Attempts per call across actor restarts before answering ``unavailable``.
        retry_backoff_s: First retry delay; doubles per attempt.
    """

    max_in_flight: int = 64
    max_attempts: int = 6
    retry_backoff_s: float = 0.5


@dataclass
class ServerConfig:
    """The ``reward_server`` config group."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    actor: ActorConfig = field(default_factory=ActorConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    client: ClientConfig = field(default_factory=ClientConfig)


@dataclass
class ServerAppConfig:
    """``python -m reward_server`` (``conf/reward_server_app.yaml``).

    Attributes:
        reward_server: The pool (the ``reward_server`` group).
        ray: The local Ray the pool starts on, or the cluster it joins.
        status_interval_s: Seconds between status lines.
        serve_seconds: Serve this long, then stop; null serves until interrupted.
    """

    reward_server: ServerConfig = field(default_factory=ServerConfig)
    ray: LocalRayConfig = field(default_factory=LocalRayConfig)
    status_interval_s: float = 30.0
    serve_seconds: float | None = None


SCHEMA_GROUP = "schema"
"""The ConfigStore group of every schema dataclass: a config composes over one with ``/schema/<name>``."""

SERVER_SCHEMAS: dict[str, type] = {"reward_server": ServerConfig, "reward_server_app": ServerAppConfig}
"""The SAM2 server's schemas by their name in :data:`SCHEMA_GROUP` (``recipe.verl_runtime.run_config`` adds the
recipes')."""

PRESET_SCHEMA = f"/{SCHEMA_GROUP}/reward_server@_here_"
"""The defaults entry of ``conf/reward_server/large.yaml`` that composes the group over :class:`ServerConfig`."""


def store_schemas(schemas: Mapping[str, type] = SERVER_SCHEMAS) -> None:
    """Stores each dataclass in Hydra's ConfigStore as ``schema/<name>`` (idempotent)."""
    store = ConfigStore.instance()
    for name, schema in schemas.items():
        store.store(group=SCHEMA_GROUP, name=name, node=schema)


def to_dataclass(cfg: Any, schema: type[T]) -> T:
    """``cfg`` (a DictConfig, a dict or None) as the dataclass ``schema``: unknown keys and wrong types raise.

    The one converter of the project's configs: the structured merge of verl's ``omega_conf_to_dataclass``, but over
    a plain resolved copy, because a composed config is already typed and a key added to it with ``+`` would
    otherwise be dropped without a word; and without importing verl, which would import torch into every process
    that reads these configs (data preparation, the SAM2 server).
    """
    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    merged = OmegaConf.structured(schema)
    if data is not None:
        merged = OmegaConf.merge(merged, data)
    return OmegaConf.to_object(merged)


def server_config(cfg: Any = None) -> ServerConfig:
    """A validated :class:`ServerConfig` from a DictConfig or dict (unknown keys and wrong types raise)."""
    return to_dataclass(cfg, ServerConfig)


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def load_preset(name: str = "large", overrides: dict[str, Any] | None = None) -> ServerConfig:
    """A ``conf/reward_server/<name>.yaml`` preset as a validated config, outside any Hydra app.

    Presets extend :class:`ServerConfig` (:data:`PRESET_SCHEMA`) or another preset through
    ``defaults: [<preset>, _self_]``, which is resolved here the way Hydra composes it.

    Args:
        name: Preset file name without ``.yaml``.
        overrides: Dotted keys relative to the preset, e.g. ``{"engine.checkpoint": "/ckpt/sam2.pt"}``.
    """
    path = CONF_DIR / "reward_server" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no reward_server preset {name!r}; known: {known}")
    cfg = OmegaConf.load(path)
    # The schema is what server_config merges over anyway; every other entry but _self_ is a parent preset.
    parents = [entry for entry in cfg.pop("defaults", []) if entry not in ("_self_", PRESET_SCHEMA)]
    merged = OmegaConf.merge(*(OmegaConf.structured(load_preset(parent)) for parent in parents), cfg)
    for key, value in (overrides or {}).items():
        OmegaConf.update(merged, key, value, force_add=False)
    return server_config(merged)
