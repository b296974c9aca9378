"""Checks a training config before Ray starts or any GPU is taken; each problem is one line saying what to fix.

:func:`preflight` (``runner``) runs every check of the config, then, when the run starts its own Ray on this
machine, the checks of its GPUs and CPUs. A check that cannot read an odd config answers with a line as well, never
an exception (``base.never_raises``). The checks live by concern: ``files`` (the model, the segmenter's checkpoint,
the datasets; :func:`absolute_paths`), ``machine`` (hardware and environment; :func:`check_pool_devices` once the
SAM2 pool started), ``layout`` (batch and layout arithmetic, the workflow's token budget) and ``resume``.
"""

from recipe.verl_runtime.preflight.files import (
    REQUIRED_COLUMNS,
    absolute_paths,
    check_datasets,
    check_model,
    check_sam_checkpoint,
)
from recipe.verl_runtime.preflight.layout import (
    ANSWER_TOKENS,
    IMAGE_TOKENS,
    OVERLAY_TEXT_TOKENS,
    check_batch_sizes,
    check_workflow_budget,
    image_tokens,
    workflow_response_tokens,
)
from recipe.verl_runtime.preflight.machine import (
    check_attention,
    check_compiler,
    check_cpus,
    check_driver,
    check_gpus,
    check_locked_memory,
    check_pool_devices,
    check_sam_placement,
    check_shared_memory,
)
from recipe.verl_runtime.preflight.resume import check_resume
from recipe.verl_runtime.preflight.runner import check_gallery, host_checks, preflight

__all__ = [
    "ANSWER_TOKENS",
    "IMAGE_TOKENS",
    "OVERLAY_TEXT_TOKENS",
    "REQUIRED_COLUMNS",
    "absolute_paths",
    "check_attention",
    "check_batch_sizes",
    "check_compiler",
    "check_cpus",
    "check_datasets",
    "check_driver",
    "check_gallery",
    "check_gpus",
    "check_locked_memory",
    "check_model",
    "check_pool_devices",
    "check_resume",
    "check_sam_checkpoint",
    "check_sam_placement",
    "check_shared_memory",
    "check_workflow_budget",
    "host_checks",
    "image_tokens",
    "preflight",
    "workflow_response_tokens",
]
