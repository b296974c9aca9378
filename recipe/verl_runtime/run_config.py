"""The ``samrl`` block of both recipes, and the register of every schema dataclass.

Hydra composes each config over the structured configs registered here (``conf/common.yaml`` lists ``samrl``'s
first in its defaults), so every field exists with its type and default before any YAML sets it: YAML holds only what
a recipe or preset changes, a command-line override needs no ``+``, and a misspelt or mistyped key is refused at
composition. :func:`register_schemas` must run before a config is composed; the entry points and
:func:`recipe.verl_runtime.compose.compose_recipe` call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recipe.verl_runtime.gallery import GalleryConfig
from recipe.verl_runtime.rollout_check import RolloutCheckConfig
from reward_server.config import SERVER_SCHEMAS, store_schemas
from reward_server.ray_setup import RayConfig


@dataclass
class RunConfig:
    """``samrl``: where a training run writes and how it reaches Ray.

    Attributes:
        output_dir: The run's directory (checkpoints, TensorBoard, gallery, Hydra's record of the config).
        ray: The cluster to join, or the local Ray's dashboard (:class:`reward_server.ray_setup.RayConfig`); verl
            starts the local Ray, with the resources in ``ray_kwargs.ray_init``.
        gallery: Pictures of training (:class:`recipe.verl_runtime.gallery.GalleryConfig`).
        rollout_check: When a step warns that the rollout and the actor disagree
            (:class:`recipe.verl_runtime.rollout_check.RolloutCheckConfig`).
    """

    output_dir: str = "outputs/${trainer.project_name}/${trainer.experiment_name}"
    ray: RayConfig = field(default_factory=RayConfig)
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    rollout_check: RolloutCheckConfig = field(default_factory=RolloutCheckConfig)


SCHEMAS: dict[str, str] = {
    "samrl": "recipe.verl_runtime.run_config.RunConfig",
    "veteran": "recipe.veteran.config.VeteranConfig",
    "evaluate": "recipe.evaluate.config.EvalConfig",
}
"""The recipes' schemas by their name in ConfigStore's ``schema`` group (a block's name where it sits in a composed
recipe; an app's root config by the app's config name): each dataclass by its path, as verl names classes in configs,
so this layer does not import the recipes above it."""


def schemas() -> dict[str, type]:
    """Every schema by its name: the SAM2 server's (``reward_server.config.SERVER_SCHEMAS``) and :data:`SCHEMAS`."""
    from hydra.utils import get_class

    return {**SERVER_SCHEMAS, **{name: get_class(path) for name, path in SCHEMAS.items()}}


def register_schemas() -> None:
    """Stores every schema in Hydra's ConfigStore as ``schema/<name>`` (idempotent)."""
    store_schemas(schemas())
