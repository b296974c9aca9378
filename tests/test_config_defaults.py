"""Each default is defined once: in its schema dataclass, never again in a YAML file.

References: the schema dataclasses' own defaults (``recipe.common.run_config.SCHEMAS``), the recipes as composed
without presets, and every YAML file under ``conf/`` that writes at the top level of a composed recipe (the recipes
and ``common.yaml``, which may only change a default, and the ``@package _global_`` presets, which may only change
what the recipes compose to).
"""

import functools
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from recipe.common.compose import compose_recipe
from recipe.common.run_config import schemas

CONF = Path(__file__).resolve().parents[1] / "conf"
RECIPES = ("samr1", "veteran")
# The other apps' configs (the evaluator and its presets, the standalone SAM2 server) have blocks of their own.
OTHER_APPS = {Path("evaluate.yaml"), Path("reward_server_app.yaml"), Path("eval")}
TOP_LEVEL = sorted(
    config
    for config in (path.relative_to(CONF) for path in CONF.rglob("*.yaml"))
    if (config.parent == Path(".") or "# @package _global_" in (CONF / config).read_text())
    and config not in OTHER_APPS
    and config.parent not in OTHER_APPS
)


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), node)]


@functools.cache
def composed(recipe: str, block: str) -> Any:
    config = compose_recipe(recipe, [])
    return OmegaConf.to_container(config[block], resolve=False) if block in config else None


def value_at(node: Any, key: str) -> tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


@pytest.mark.parametrize("config", TOP_LEVEL, ids=str)
def test_no_yaml_repeats_a_schema_default(config):
    data = OmegaConf.to_container(OmegaConf.load(CONF / config), resolve=False)
    preset = config.parent != Path(".")
    for block, schema in schemas().items():
        defaults = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
        recipes = [tree for name in RECIPES if (tree := composed(name, block)) is not None]
        for key, value in leaves(data.get(block) or {}):
            known, default = value_at(defaults, key)
            assert known, f"{config}: {block}.{key} is not a field of {schema.__name__}"
            if preset:
                assert any(value_at(recipe, key)[1] != value for recipe in recipes), (
                    f"{config}: {block}.{key}={value!r} is what every recipe already composes to"
                )
            else:
                assert value != default, f"{config}: {block}.{key}={value!r} repeats the default of {schema.__name__}"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_schema_field_composes_and_overrides_without_plus(recipe):
    overrides = ["samrl.gallery.rollouts=3", "samrl.dashboard_port=9000"]
    config = compose_recipe(recipe, overrides)
    for block, schema in schemas().items():
        if block not in config:
            continue
        expected = dict(leaves(OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)))
        assert set(dict(leaves(OmegaConf.to_container(config[block], resolve=False)))) == set(expected)
    assert config.samrl.gallery.rollouts == 3 and config.samrl.dashboard_port == 9000
    assert config.samrl.gallery.every_n_steps == 25, "conf/common.yaml's override of the dataclass default"


def test_a_misspelt_or_mistyped_key_is_refused_when_composing():
    for bad in ("samrl.galery.rollouts=3", "samrl.dashboard_port=eighty"):
        with pytest.raises(Exception, match="samrl"):
            compose_recipe("samr1", [bad])
