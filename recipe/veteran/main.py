"""``python -m recipe.veteran.main [overrides]``: train SAM-Veteran (``--cfg job`` prints the composed config)."""

import hydra
from omegaconf import DictConfig

from recipe.common.launcher import launch


@hydra.main(version_base=None, config_path="../../conf", config_name="veteran")
def main(config: DictConfig) -> None:
    launch(config)


if __name__ == "__main__":
    main()
