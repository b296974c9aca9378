"""What both recipes' CPU smoke runs start from: synthetic data through data_prep, the tiny Qwen2.5-VL, a config."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from data_prep.synthetic import synthetic_refer_parquet
from recipe.common.tiny_vlm import build_tiny_qwen2_5_vl

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def build_smoke_inputs(out_dir: Path, recipe: str, prompts: int, seed: int) -> tuple[Path, Path]:
    """A synthetic RefCOCOg-format dataset converted by data_prep for ``recipe``, and the tiny Qwen2.5-VL."""
    # Images rotate through train, val and test; 3 per prompt leaves every prompt an image of its own to draw from.
    parquet = synthetic_refer_parquet(
        out_dir, out_dir / f"{recipe}_smoke.parquet", recipe, num_images=3 * prompts, limit=prompts, seed=seed
    )
    return parquet, build_tiny_qwen2_5_vl(out_dir / "tiny_qwen2_5_vl", seed=seed)


def compose_recipe(name: str, overrides: list[str]) -> DictConfig:
    """``conf/<name>.yaml`` with overrides, outside any Hydra app."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(name, overrides=overrides)


def instantiate_agent_loop(config: DictConfig, agent_name: str, server, tokenizer, processor):
    """A verl agent loop built the way verl's agent-loop worker builds one, around any ``server`` with ``generate``.

    Call it inside a running event loop: verl's loops capture it at construction.
    """
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    from verl.utils.dataset.rl_dataset import RLHFDataset

    return hydra.utils.instantiate(
        _agent_loop_registry[agent_name],
        trainer_config=DictConfigWrap(config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=processor,
        hf_model_type="qwen2_5_vl",
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
    )
