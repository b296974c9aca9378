"""The one place that turns ``engine.model`` into a segmenter behind the SAM2 engine's interface."""

from __future__ import annotations

from reward_server.box_engine import BoxEngine
from reward_server.config import BOX_MODEL, EngineConfig
from reward_server.engine import SamEngine
from reward_server.sam3_engine import SAM3_MODELS, Sam3Engine


def build_engine(config: EngineConfig) -> SamEngine:
    """The engine ``config.model`` names: the filled box for ``box`` (:mod:`reward_server.box_engine`), SAM 3's
    tracker for ``sam3`` and ``sam3_tiny`` (:mod:`reward_server.sam3_engine`), SAM2 for a SAM2 config name."""
    if config.model == BOX_MODEL:
        return BoxEngine(config)
    if config.model in SAM3_MODELS:
        return Sam3Engine(config)
    return SamEngine(config)
