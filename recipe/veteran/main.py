"""``python -m recipe.veteran.main [overrides]``: train SAM-Veteran (``--cfg job`` prints the composed config)."""

import hydra
from omegaconf import DictConfig

from recipe.verl_runtime.launcher import launch
from recipe.verl_runtime.run_config import register_schemas

register_schemas()  # before Hydra composes the recipe


@hydra.main(version_base=None, config_path="../../conf", config_name="veteran")
def main(config: DictConfig) -> None:
    launch(config)


if __name__ == "__main__":
    main()
