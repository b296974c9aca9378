"""Each default is defined once: in its schema dataclass, never again in a YAML file, a constant or another dataclass.

A knob is a leaf of a schema dataclass (``recipe.verl_runtime.run_config.schemas``: the recipes' ``samrl`` and
``veteran`` blocks, the ``reward_server`` group, the evaluator's and the SAM2 server's root configs) as an app composes
it. References: the dataclasses' own source (a default is either a literal, which makes its field the owner, or a name,
which reads another owner), the apps as composed without presets, and every YAML file under ``conf/``.
"""

import ast
import functools
import inspect
import typing
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf
from ray._private import ray_constants

from recipe.evaluate.config import EvalConfig, eval_config
from recipe.verl_runtime.compose import compose_recipe
from recipe.verl_runtime.run_config import schemas
from recipe.veteran.config import veteran_config
from reward_server.config import PRESET_SCHEMA, ServerAppConfig, ServerConfig, load_preset, server_config, to_dataclass

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RECIPES = ("samr1", "veteran")
APPS = (*RECIPES, "evaluate", "reward_server_app")
PRODUCT = ("recipe", "reward_server", "data_prep")

# Fields (and constants, by module path and name) that share a name and a default but are different knobs, with why.
INDEPENDENT = {
    frozenset({"recipe/evaluate/summary.py:BOX_IOU_THRESHOLD", "VeteranRewardConfig.box_iou_threshold"}): (
        "REC's fixed box accuracy (acc@0.5) and SAM-Veteran's box reward"
    ),
    frozenset({"EngineConfig.seed", "GenerationConfig.seed", "ReportConfig.seed"}): (
        "SAM2's random weights, the policy's sampling and the report's draw are seeded apart"
    ),
    frozenset({"EngineConfig.dtype", "ModelConfig.dtype"}): "SAM2's autocast and the policy's weights",
}


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [leaf for key, value in node.items() for leaf in leaves(value, f"{prefix}{key}.")]
    return [(prefix.rstrip("."), node)]


def value_at(node: Any, key: str) -> tuple[bool, Any]:
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


@functools.cache
def composed(app: str, *overrides: str) -> DictConfig:
    return compose_recipe(app, list(overrides))


@functools.cache
def unresolved(app: str, *overrides: str) -> dict:
    return OmegaConf.to_container(composed(app, *overrides), resolve=False)


def typed_blocks(node: DictConfig, prefix: str = "") -> dict[str, type]:
    """The outermost nodes composed over a schema dataclass, by their dotted path ("" for a typed root)."""
    schema = OmegaConf.get_type(node)
    if is_dataclass(schema):
        return {prefix: schema}
    return {
        block: found
        for key in node
        if isinstance(node._get_node(key), DictConfig)
        for block, found in typed_blocks(node[key], f"{prefix}{key}.").items()
    }


def owner(schema: type, name: str) -> type:
    """The dataclass whose own body defines field ``name`` of ``schema`` (a base class for an inherited field)."""
    return next(cls for cls in schema.__mro__ if name in vars(cls).get("__annotations__", {}))


def knobs(app: str) -> dict[str, str]:
    """Every knob of ``app``: its dotted key, and the field that owns its default as ``Class.field``."""
    found = {}

    def walk(schema: type, prefix: str) -> None:
        hints = typing.get_type_hints(schema)
        for item in fields(schema):
            if is_dataclass(hints[item.name]):
                walk(hints[item.name], f"{prefix}{item.name}.")
            else:
                found[f"{prefix}{item.name}"] = f"{owner(schema, item.name).__qualname__}.{item.name}"

    for block, schema in typed_blocks(composed(app)).items():
        walk(schema, block)
    return found


def schema_classes() -> list[type]:
    seen: dict[type, None] = {}

    def walk(schema: type) -> None:
        for cls in schema.__mro__:
            if is_dataclass(cls) and cls not in seen:
                seen[cls] = None
                for hint in typing.get_type_hints(cls).values():
                    if is_dataclass(hint):
                        walk(hint)

    for schema in schemas().values():
        walk(schema)
    return list(seen)


def literal_defaults() -> dict[str, Any]:
    """``Class.field`` -> default, for each field whose default is written out in its class (not a name of another
    owner such as ``WorkflowConfig.max_steps`` or ``DEFAULT_IGNORE_EDGE``, and not a nested dataclass)."""
    found = {}
    for cls in schema_classes():
        body = ast.parse(inspect.getsource(cls)).body[0].body
        values = {
            node.target.id: node.value
            for node in body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None
        }
        for item in fields(cls):
            value = values.get(item.name)
            if value is None or isinstance(value, ast.Name | ast.Attribute):
                continue
            default = item.default if item.default is not MISSING else item.default_factory()
            if not is_dataclass(default):
                found[f"{cls.__qualname__}.{item.name}"] = default
    return found


def constants() -> list[tuple[str, str, Any]]:
    """Module-level literal constants of the product code: (module path, name, value)."""
    found = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
                    continue
                for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(target, ast.Name) and target.id.isupper():
                        try:
                            value = ast.literal_eval(node.value)
                        except (ValueError, TypeError, SyntaxError):
                            continue  # computed, not a literal
                        found.append((str(path.relative_to(ROOT)), target.id, value))
    return found


def repeated_owners(defaults: dict[str, Any], named: list[tuple[str, str, Any]]) -> dict[str, set[str]]:
    """Knobs with two owners, each problem with the fields it involves: fields of different classes with one name
    and one literal default (unless :data:`INDEPENDENT`), and a constant named like a field (``DEFAULT_`` aside) that
    holds the field's literal default."""
    problems = {}
    by_value: dict[tuple[str, str], set[str]] = {}
    for qualified, default in defaults.items():
        by_value.setdefault((qualified.rpartition(".")[2], repr(default)), set()).add(qualified)
    for (name, default), owners in sorted(by_value.items()):
        if len(owners) > 1 and frozenset(owners) not in INDEPENDENT:
            problems[f"{' and '.join(sorted(owners))} each define {name}={default}"] = owners
    for where, constant, value in named:
        name = constant.lower().removeprefix("default_")
        for qualified, default in defaults.items():
            same = qualified.rpartition(".")[2] == name and default == value and type(default) is type(value)
            if same and frozenset({f"{where}:{constant}", qualified}) not in INDEPENDENT:
                problems[f"{where}: {constant}={value!r} repeats {qualified}'s default"] = {qualified}
    return problems


@pytest.mark.parametrize("app", APPS)
def test_every_knob_of_every_app_has_one_owner(app):
    owners = set(knobs(app).values())
    assert len(owners) > 5, f"{app} composes no schema"
    problems = repeated_owners(literal_defaults(), constants())
    assert [problem for problem, involved in problems.items() if involved & owners] == []


def test_the_owner_check_finds_a_repeated_default():
    defaults = {"RayConfig.dashboard_port": 8265, "RunConfig.dashboard_port": 8265, "EngineConfig.ignore_edge": 20}
    problems = list(repeated_owners(defaults, [("reward_server/masks.py", "DEFAULT_IGNORE_EDGE", 20)]))
    assert len(problems) == 2
    assert "dashboard_port" in problems[0] and "DEFAULT_IGNORE_EDGE" in problems[1]
    seeds = {"EngineConfig.seed": 0, "GenerationConfig.seed": 0, "ReportConfig.seed": 0}
    assert repeated_owners(seeds, []) == {}, "independent knobs"
    # A default that names its owner is no second owner; one written out is.
    assert "EngineConfig.ignore_edge" not in literal_defaults() and "RayConfig.dashboard_port" in literal_defaults()


def test_every_app_composes_over_its_schemas():
    for recipe in RECIPES:
        blocks = typed_blocks(composed(recipe))
        assert blocks["samrl."] is schemas()["samrl"] and blocks["reward_server."] is ServerConfig
    assert typed_blocks(composed("veteran"))["veteran."] is schemas()["veteran"]
    assert typed_blocks(composed("evaluate")) == {"": EvalConfig}
    assert typed_blocks(composed("reward_server_app")) == {"": ServerAppConfig}
    for preset in sorted(path.stem for path in (CONF / "reward_server").glob("*.yaml")):
        config = composed("reward_server_app", f"reward_server={preset}")
        assert OmegaConf.get_type(config.reward_server) is ServerConfig, f"reward_server/{preset}.yaml"
        assert load_preset(preset) == OmegaConf.to_object(config.reward_server), f"reward_server/{preset}.yaml"


def app_of(config: Path) -> tuple[tuple[str, ...], str, bool] | None:
    """The apps a YAML file writes into, the package it writes at, and whether it is a preset over a composition."""
    text = (CONF / config).read_text()
    if config.parent == Path("."):
        apps = {
            "common.yaml": RECIPES,
            "evaluate.yaml": ("evaluate",),
            "reward_server_app.yaml": ("reward_server_app",),
        }
        return apps.get(config.name, (config.stem,)), "", False
    if config.parent == Path("reward_server"):
        return ("reward_server_app",), "reward_server.", True
    if "# @package _global_" in text:
        return (("evaluate",) if config.parent == Path("eval") else RECIPES), "", True
    return None


def base_of(config: Path, apps: tuple[str, ...], preset: bool) -> list[dict]:
    """What the file's values are compared with: the dataclass defaults for an app's own file or the group's first
    preset; for any other preset, each app as composed without it (a reward_server preset: its parent preset)."""
    if config.parent == Path("reward_server"):
        entries = OmegaConf.load(CONF / config).get("defaults", [])
        parents = [entry for entry in entries if entry not in ("_self_", PRESET_SCHEMA)]
        return [{"reward_server": OmegaConf.to_container(OmegaConf.structured(load_preset(p)))} for p in parents] or [
            {"reward_server": OmegaConf.to_container(OmegaConf.structured(ServerConfig))}
        ]
    if preset:
        return [unresolved(app) for app in apps]
    # An app's own file: each knob against its dataclass default.
    defaults: dict = {}
    for app in apps:
        for block, schema in typed_blocks(composed(app)).items():
            tree = OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)
            if block:
                for part in reversed(block.rstrip(".").split(".")):
                    tree = {part: tree}
            defaults = OmegaConf.to_container(OmegaConf.merge(defaults, tree), resolve=False)
    return [defaults]


YAML_FILES = sorted(
    config for config in (path.relative_to(CONF) for path in CONF.rglob("*.yaml")) if app_of(config) is not None
)


def test_every_yaml_file_is_checked():
    assert sorted(path.relative_to(CONF) for path in CONF.rglob("*.yaml")) == YAML_FILES


@pytest.mark.parametrize("config", YAML_FILES, ids=str)
def test_no_yaml_repeats_a_default(config):
    apps, package, preset = app_of(config)
    data = OmegaConf.to_container(OmegaConf.load(CONF / config), resolve=False)
    data.pop("defaults", None)
    data.pop("hydra", None)
    app_knobs = {key for app in apps for key in knobs(app)}
    bases = base_of(config, apps, preset)
    for key, value in leaves(data, package):
        if key not in app_knobs:
            continue  # verl's own keys, which verl's dataclasses own
        present = [found for known, found in (value_at(base, key) for base in bases) if known]
        assert present, f"{config}: {key} is not a knob of {apps}"
        assert any(found != value for found in present), (
            f"{config}: {key}={value!r} repeats what the file is composed over"
        )


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_schema_field_composes_and_overrides_without_plus(recipe):
    overrides = ["samrl.gallery.rollouts=3", "samrl.ray.dashboard_port=9000", "reward_server.pool.num_actors=2"]
    config = compose_recipe(recipe, overrides)
    for block, schema in schemas().items():
        if block not in config:
            continue
        expected = dict(leaves(OmegaConf.to_container(OmegaConf.structured(schema), resolve=False)))
        assert set(dict(leaves(OmegaConf.to_container(config[block], resolve=False)))) == set(expected)
    assert config.samrl.gallery.rollouts == 3 and config.samrl.ray.dashboard_port == 9000
    assert config.reward_server.pool.num_actors == 2
    assert config.samrl.gallery.every_n_steps == 25, "conf/common.yaml's override of the dataclass default"


@pytest.mark.parametrize(
    ("app", "bad"),
    [
        ("samr1", "samrl.galery.rollouts=3"),
        ("samr1", "samrl.ray.dashboard_port=eighty"),
        ("samr1", "reward_server.engine.cache_bytes=lots"),
        ("veteran", "reward_server.pool.num_actor=2"),
        ("evaluate", "parallel.ray.adress=auto"),
        ("evaluate", "generation.batch_size=many"),
        ("evaluate", "reward_server.engine.modle=x"),
        ("reward_server_app", "ray.dashboard_port=eighty"),
        ("reward_server_app", "serve_second=1"),
    ],
)
def test_a_misspelt_or_mistyped_key_is_refused_when_composing(app, bad):
    with pytest.raises(Exception, match=bad.split("=")[0].rpartition(".")[2]):
        compose_recipe(app, [bad])


def test_the_ray_settings_have_one_name_in_every_app():
    env = "${oc.env:RAY_ADDRESS,null}"
    for app, block in (("samr1", "samrl.ray"), ("evaluate", "parallel.ray"), ("reward_server_app", "ray")):
        ray = OmegaConf.select(composed(app), block)
        assert ray._get_node("address")._value() == env
        # Loopback and Ray's own default port, the dashboard on.
        expected = ("127.0.0.1", ray_constants.DEFAULT_DASHBOARD_PORT, True)
        assert (ray.dashboard_host, ray.dashboard_port, ray.include_dashboard) == expected


@pytest.mark.parametrize(
    ("app", "added", "convert"),
    [
        ("evaluate", "+generation.tpyo=1", eval_config),
        ("evaluate", "+reward_server.engine.typo=1", eval_config),
        ("samr1", "+reward_server.engine.typo=1", lambda config: server_config(config.reward_server)),
        ("reward_server_app", "+ray.typo=1", lambda config: to_dataclass(config, ServerAppConfig)),
        ("veteran", "+veteran.workflow.tpyo=1", veteran_config),
        ("veteran", "+veteran.dynamic_sampling.stop_itr=3", veteran_config),
    ],
)
def test_a_key_added_with_plus_is_refused_when_converted(app, added, convert):
    """Hydra lets ``+`` add a key to a typed node; the converter must refuse it, not drop it."""
    with pytest.raises(Exception, match=added.partition("=")[0].rpartition(".")[2]):
        convert(compose_recipe(app, [added]))


def test_the_launcher_reads_the_ray_block(tmp_path):
    from recipe.verl_runtime.launcher import ray_init_kwargs

    local = ["samrl.ray.address=null", "samrl.ray.dashboard_port=9000", "samrl.ray.include_dashboard=false"]
    kwargs = ray_init_kwargs(compose_recipe("samr1", [f"samrl.output_dir={tmp_path}", *local]))
    assert kwargs["address"] is None and kwargs["dashboard_port"] == 9000 and kwargs["include_dashboard"] is False
    assert kwargs["dashboard_host"] == "127.0.0.1"
    kwargs = ray_init_kwargs(compose_recipe("samr1", [f"samrl.output_dir={tmp_path}", "samrl.ray.address=auto"]))
    assert kwargs["address"] == "auto" and "dashboard_port" not in kwargs
