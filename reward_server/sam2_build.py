"""Builds SAM2 models from the configs packaged with ``sam2``, without Hydra's global state.

``sam2.build_sam.build_sam2`` composes its config through the process-wide Hydra instance that ``import sam2``
initialises, which clashes with our own Hydra apps (training entry points, evaluation). Here the packaged YAML is
loaded with OmegaConf and instantiated directly, so SAM2 builds the same way inside or outside a Hydra app.

``import sam2`` itself initialises that process-wide Hydra state as a side effect, which breaks any Hydra app (our
entry points) that starts afterwards. This module is the package's one way in to ``sam2``: it imports it once and
undoes that side effect, and every other module imports ``sam2`` only after importing this one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

_hydra_was_initialised = GlobalHydra.instance().is_initialized()
import sam2  # noqa: E402, F401

if not _hydra_was_initialised and GlobalHydra.instance().is_initialized():
    GlobalHydra.instance().clear()

from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES  # noqa: E402
from sam2.modeling.sam2_base import SAM2Base  # noqa: E402

# SAM2's own post-processing defaults (build_sam2's apply_postprocessing): fall back to the most stable of the
# multimask outputs when the single-mask output is unstable.
POSTPROCESSING_OVERRIDES = {
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
}


def packaged_configs() -> list[str]:
    """Names of the model configs shipped with ``sam2`` (e.g. ``sam2.1_hiera_l``)."""
    root = resources.files("sam2") / "configs"
    return sorted(
        entry.name.removesuffix(".yaml")
        for family in ("sam2", "sam2.1")
        for entry in (root / family).iterdir()
        if entry.name.endswith(".yaml")
    )


def resolve_config(config: str) -> Path:
    """Finds a SAM2 config by packaged name (``sam2.1_hiera_l``), packaged path, or YAML file path.

    Raises:
        FileNotFoundError: Naming the packaged configs when nothing matches.
    """
    candidates = [Path(config)]
    root = resources.files("sam2")
    name = Path(config).name.removesuffix(".yaml")
    family = "sam2.1" if name.startswith("sam2.1") else "sam2"
    candidates += [Path(str(root / config)), Path(str(root / "configs" / family / f"{name}.yaml"))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no SAM2 config {config!r}; packaged configs: {packaged_configs()}")


def load_config(config: str, apply_postprocessing: bool = True, overrides: dict[str, Any] | None = None) -> DictConfig:
    """The resolved model config.

    Args:
        config: Packaged config name, packaged path or YAML file.
        apply_postprocessing: Add SAM2's post-processing overrides, as its own builder does by default.
        overrides: Further dotted-key overrides, e.g. ``{"model.image_size": 512}``.
    """
    cfg = OmegaConf.load(resolve_config(config))
    updates = {**(POSTPROCESSING_OVERRIDES if apply_postprocessing else {}), **(overrides or {})}
    for key, value in updates.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg


def load_checkpoint(model: SAM2Base, ckpt_path: str | Path) -> None:
    """Loads a SAM2 checkpoint (``{"model": state_dict}``) strictly.

    Raises:
        FileNotFoundError: When the file does not exist.
        RuntimeError: When the file cannot be read, or keys or shapes do not match the config.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"SAM2 checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several unrelated types for unreadable files
        raise RuntimeError(f"cannot read SAM2 checkpoint {path}: {err}") from err
    state = state.get("model", state) if isinstance(state, dict) else state
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (RuntimeError, TypeError, AttributeError) as err:  # shape mismatches raise even when not strict
        first_lines = " ".join(line.strip() for line in str(err).splitlines()[:2])
        raise RuntimeError(f"checkpoint {path} does not match the config: {first_lines[:300]}") from err
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """A checkpoint file: a local path, or a Hugging Face id (``facebook/sam2.1-hiera-large``) downloaded to the
    local hub cache where the machine is online.

    Raises:
        FileNotFoundError: When it is neither an existing file nor a known SAM2 hub id.
    """
    path = Path(checkpoint)
    if path.is_file():
        return path
    if str(checkpoint) in HF_MODEL_ID_TO_FILENAMES:
        from huggingface_hub import hf_hub_download

        _, filename = HF_MODEL_ID_TO_FILENAMES[str(checkpoint)]
        return Path(hf_hub_download(repo_id=str(checkpoint), filename=filename))
    raise FileNotFoundError(
        f"SAM2 checkpoint {checkpoint!s} is neither a file nor a known hub id ({sorted(HF_MODEL_ID_TO_FILENAMES)})"
    )


def build_sam2_model(
    config: str,
    ckpt_path: str | Path | None = None,
    device: str | torch.device = "cpu",
    apply_postprocessing: bool = True,
    overrides: dict[str, Any] | None = None,
) -> SAM2Base:
    """Builds a SAM2 model in eval mode.

    Args:
        config: Packaged config name (``sam2.1_hiera_l``, ``sam2.1_hiera_t``), packaged path or YAML file.
        ckpt_path: Checkpoint file or hub id (see :func:`resolve_checkpoint`); None keeps the random initialisation
            (tests and smoke runs).
        device: Where to put the model.
        apply_postprocessing: Apply SAM2's dynamic multimask fallback, as ``build_sam2`` does by default.
        overrides: Dotted-key config overrides, e.g. ``{"model.image_size": 512}``.
    """
    cfg = load_config(config, apply_postprocessing, overrides)
    model = instantiate(cfg.model, _recursive_=True)
    if ckpt_path is not None:
        load_checkpoint(model, resolve_checkpoint(ckpt_path))
    return model.to(device).eval()
