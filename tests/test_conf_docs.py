"""The configuration reference (``docs/configuration.md``) names every config and every preset, so a new file
cannot go undocumented.

Reference: the files under ``conf/`` themselves.
"""

from pathlib import Path

import pytest

CONF = Path(__file__).resolve().parents[1] / "conf"
DOC = (CONF.parent / "docs" / "configuration.md").read_text()
CONFIGS = sorted(path.relative_to(CONF) for path in CONF.rglob("*.yaml"))


def test_there_are_configs_to_check():
    assert len(CONFIGS) > 40 and Path("samr1.yaml") in CONFIGS


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_config_and_preset_is_listed(config):
    if config.parent == Path("."):
        assert f"`{config.name}`" in DOC
    else:
        # A group's entry names the group, then each preset by the name Hydra takes.
        entry = DOC[DOC.index(f"`{config.parent}/`") :].split("\n- ", 1)[0]
        assert f"`{config.stem}`" in entry, f"{config.stem} is missing from the `{config.parent}/` entry"
