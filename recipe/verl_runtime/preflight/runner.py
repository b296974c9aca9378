"""The runner: every check of the config, then those of the machine the work runs on."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recipe.verl_runtime.gallery import GalleryConfig
from recipe.verl_runtime.preflight.base import never_raises, on_gpu
from recipe.verl_runtime.preflight.files import check_datasets, check_model, check_sam_checkpoint
from recipe.verl_runtime.preflight.layout import check_batch_sizes, check_workflow_budget
from recipe.verl_runtime.preflight.machine import (
    check_attention,
    check_compiler,
    check_cpus,
    check_driver,
    check_gpus,
    check_locked_memory,
    check_sam_placement,
    check_scripted_answers,
    check_shared_memory,
)
from recipe.verl_runtime.preflight.resume import check_resume
from reward_server.config import to_dataclass


@never_raises
def check_gallery(config: DictConfig) -> list[str]:
    """``samrl.gallery`` converts to :class:`recipe.verl_runtime.gallery.GalleryConfig` (known keys, sane values)."""
    try:
        to_dataclass(OmegaConf.select(config, "samrl.gallery", default=None), GalleryConfig)
    except (ValueError, OmegaConfBaseException) as err:
        return [f"samrl.gallery: {str(err).splitlines()[0]}"]
    return []


HOST_CHECKS: list[Callable[[DictConfig], list[str]]] = [
    check_attention,
    check_driver,
    check_compiler,
    check_shared_memory,
    check_locked_memory,
]
"""Checks of the machine the work runs on: this one when the run starts its own Ray, each GPU node of a cluster it
joins otherwise (``recipe.verl_runtime.launcher.check_gpu_nodes``)."""


CHECKS: list[Callable[[DictConfig], list[str]]] = [
    check_model,
    check_sam_checkpoint,
    check_datasets,
    check_batch_sizes,
    check_workflow_budget,
    check_resume,
    check_sam_placement,
    check_scripted_answers,
    check_gallery,
]


def host_checks(config: DictConfig) -> list[str]:
    """The problems :data:`HOST_CHECKS` find on the machine that calls this."""
    return [error for check in HOST_CHECKS for error in check(config)]


def preflight(config: DictConfig, available_gpus: int | None = None, host: bool = True) -> list[str]:
    """All problems found, one line each.

    Args:
        config: The composed training config.
        available_gpus: GPUs of the machine when the run starts its own Ray there; None when it joins a cluster,
            whose resources :func:`check_gpus` checks once connected. A CPU run (``trainer.device=cpu``) skips the
            GPU and CPU counts: its GPUs are Ray's virtual ones.
        host: Whether the work runs on this machine, so that :data:`HOST_CHECKS` apply to it; False when the run
            joins a cluster, whose GPU nodes run them once connected.
    """
    errors = [error for check in CHECKS for error in check(config)]
    if host:
        errors += host_checks(config)
    if available_gpus is not None and on_gpu(config):
        errors += check_gpus(config, available_gpus) + check_cpus(config)
    return errors
