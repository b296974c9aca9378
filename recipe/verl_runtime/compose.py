"""The project's Hydra configs composed outside a Hydra app (for evaluation's smoke run and tests)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from recipe.verl_runtime.run_config import register_schemas

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_recipe(name: str, overrides: list[str]) -> DictConfig:
    """``conf/<name>.yaml`` with overrides, outside any Hydra app."""
    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(name, overrides=overrides)
