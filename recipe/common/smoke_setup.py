"""What both recipes' CPU smoke runs start from: synthetic data through data_prep, the tiny Qwen2.5-VL, a config."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from data_prep import __main__ as data_prep_cli
from data_prep.synthetic import write_refer_dataset
from recipe.common.tiny_vlm import build_tiny_qwen2_5_vl

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def build_smoke_inputs(out_dir: Path, recipe: str, prompts: int, seed: int) -> tuple[Path, Path]:
    """A synthetic RefCOCOg-format dataset converted by data_prep for ``recipe``, and the tiny Qwen2.5-VL."""
    # Images rotate through train, val and test; 3 per prompt leaves every prompt an image of its own to draw from.
    refer = write_refer_dataset(out_dir / "downloads", "refcocog", num_images=3 * prompts, seed=seed)
    parquet = out_dir / f"{recipe}_smoke.parquet"
    args = ["refer", "--dataset", "refcocog", "--split", "train", "--workers", "1", "--limit", str(prompts)]
    args += ["--recipe", recipe, "--seed", str(seed)]
    args += ["--refer-root", str(refer.refer_root), "--image-root", str(refer.image_root), "--out", str(parquet)]
    if data_prep_cli.main(args) != 0:
        raise RuntimeError("data preparation failed")
    return parquet, build_tiny_qwen2_5_vl(out_dir / "tiny_qwen2_5_vl", seed=seed)


def compose_recipe(name: str, overrides: list[str]) -> DictConfig:
    """``conf/<name>.yaml`` with overrides, outside any Hydra app."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(name, overrides=overrides)
