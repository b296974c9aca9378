"""The ``samrl`` block of both recipes, and the one place its defaults live.

Hydra composes a recipe over the structured config registered here (``conf/common.yaml`` lists it first in its
defaults), so every field exists with its type and default before any YAML sets it: YAML holds only what a recipe or
preset changes, a command-line override needs no ``+``, and a misspelt or mistyped key is refused at composition.
:func:`register_schemas` must run before a recipe is composed; the entry points and
:func:`recipe.common.compose.compose_recipe` call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from recipe.common.gallery import GalleryConfig
from reward_server.ray_setup import DASHBOARD_HOST, DASHBOARD_PORT

SCHEMA_GROUP = "schema"


@dataclass
class RunConfig:
    """``samrl``: where a training run writes and how it reaches Ray.

    Attributes:
        output_dir: The run's directory (checkpoints, TensorBoard, gallery, Hydra's record of the config).
        ray_address: A running Ray cluster to join (``RAY_ADDRESS`` by default); null starts a local Ray bound to
            127.0.0.1.
        dashboard_host: Where a local Ray's dashboard listens.
        dashboard_port: The dashboard's port.
        gallery: Pictures of training (:class:`recipe.common.gallery.GalleryConfig`).
    """

    output_dir: str = "outputs/${trainer.project_name}/${trainer.experiment_name}"
    ray_address: str | None = "${oc.env:RAY_ADDRESS,null}"
    dashboard_host: str = DASHBOARD_HOST
    dashboard_port: int = DASHBOARD_PORT
    gallery: GalleryConfig = field(default_factory=GalleryConfig)


SCHEMAS: dict[str, str] = {
    "samrl": "recipe.common.run_config.RunConfig",
    "veteran": "recipe.veteran.config.VeteranConfig",
}
"""Each config block with a structured schema, by where it sits in a composed recipe: the dataclass by its path, as
verl names classes in configs, so this layer does not import the recipes above it."""


def schemas() -> dict[str, type]:
    """:data:`SCHEMAS` with each dataclass imported."""
    from hydra.utils import get_class

    return {block: get_class(path) for block, path in SCHEMAS.items()}


def register_schemas() -> None:
    """Stores every schema in Hydra's ConfigStore as ``schema/<block>`` (idempotent)."""
    store = ConfigStore.instance()
    for block, schema in schemas().items():
        store.store(group=SCHEMA_GROUP, name=block, node=schema)
