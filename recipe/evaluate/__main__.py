"""``python -m recipe.evaluate [key=value ...]``: evaluate a checkpoint with ``conf/evaluate.yaml``
(docs/evaluation.md).

``--cfg job`` prints the composed config.
"""

import sys

import hydra
from omegaconf import DictConfig

from recipe.evaluate.config import eval_config
from recipe.evaluate.runner import evaluate
from recipe.verl_runtime.run_config import register_schemas

register_schemas()  # before Hydra composes the config


@hydra.main(version_base=None, config_path="../../conf", config_name="evaluate")
def main(config: DictConfig) -> None:
    try:
        evaluate(eval_config(config))
    except (ValueError, FileNotFoundError) as err:
        print(f"evaluate: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
