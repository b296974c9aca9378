"""Our Hydra-free SAM2 builder against SAM2's own build_sam2, inside and outside a Hydra app."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from sam2.build_sam import build_sam2
from sam2.sam2_image_predictor import SAM2ImagePredictor

from reward_server.sam2_build import (
    build_sam2_model,
    load_config,
    packaged_configs,
    resolve_checkpoint,
    resolve_config,
)


def test_packaged_configs_include_the_recipes_models():
    names = packaged_configs()
    assert {"sam2.1_hiera_l", "sam2.1_hiera_t"} <= set(names)
    assert resolve_config("sam2.1_hiera_l").name == "sam2.1_hiera_l.yaml"
    assert resolve_config("configs/sam2.1/sam2.1_hiera_t.yaml") == resolve_config("sam2.1_hiera_t")
    with pytest.raises(FileNotFoundError, match="packaged configs"):
        resolve_config("sam3_hiera_xxl")


def test_same_model_as_sam2s_own_builder():
    GlobalHydra.instance().clear()
    with initialize_config_module("sam2", version_base="1.2"):
        torch.manual_seed(0)
        reference = build_sam2("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    torch.manual_seed(0)
    ours = build_sam2_model("sam2.1_hiera_t")
    reference_state, our_state = reference.state_dict(), ours.state_dict()
    assert reference_state.keys() == our_state.keys()
    for key, value in reference_state.items():
        assert torch.equal(value, our_state[key]), key
    assert ours.sam_mask_decoder.dynamic_multimask_via_stability
    assert not ours.training


def test_builds_inside_another_hydra_app(tmp_path: Path):
    (tmp_path / "app.yaml").write_text("x: 1\n")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(tmp_path), version_base=None):
        assert compose("app").x == 1
        model = build_sam2_model("sam2.1_hiera_t")
        assert compose("app").x == 1  # the app's Hydra is untouched
    assert model.image_size == 1024


def test_checkpoint_round_trip(tiny_sam2, tmp_path: Path):
    path = tmp_path / "tiny.pt"
    torch.save({"model": tiny_sam2.state_dict()}, path)
    torch.manual_seed(123)  # a different random init, overwritten by the checkpoint
    loaded = build_sam2_model("sam2.1_hiera_t", ckpt_path=path)
    for key, value in tiny_sam2.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with pytest.raises(FileNotFoundError):
        build_sam2_model("sam2.1_hiera_t", ckpt_path=tmp_path / "missing.pt")
    with pytest.raises(RuntimeError, match="does not match"):
        build_sam2_model("sam2.1_hiera_s", ckpt_path=path)


def test_postprocessing_is_optional():
    assert load_config("sam2.1_hiera_t").model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability
    assert "sam_mask_decoder_extra_args" not in load_config("sam2.1_hiera_t", apply_postprocessing=False).model


def test_tiny_sam2_predicts_a_mask_from_a_box(tiny_sam2):
    image = (np.random.default_rng(0).random((840, 840, 3)) * 255).astype(np.uint8)
    predictor = SAM2ImagePredictor(tiny_sam2)
    predictor.set_image(image)
    masks, scores, logits = predictor.predict(box=np.array([100.0, 120.0, 500.0, 600.0]), multimask_output=False)
    assert masks.shape == (1, 840, 840) and scores.shape == (1,) and logits.shape == (1, 256, 256)
    assert set(np.unique(masks)) <= {0.0, 1.0}
    # The mask is the upsampled logits thresholded at 0, so it covers pixels exactly when low-res logits do.
    assert masks[0].any() == bool((logits[0] > 0).any())


def test_unreadable_checkpoint_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read SAM2 checkpoint"):
        build_sam2_model("sam2.1_hiera_t", ckpt_path=path)


def test_hub_ids_resolve_to_their_checkpoint_file(tiny_sam2, tmp_path: Path, monkeypatch):
    """A known hub id downloads SAM2's own file name for it (here a local stand-in for the download)."""
    import huggingface_hub

    path = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": tiny_sam2.state_dict()}, path)
    asked = []
    monkeypatch.setattr(
        huggingface_hub, "hf_hub_download", lambda repo_id, filename: asked.append((repo_id, filename)) or str(path)
    )
    assert resolve_checkpoint("facebook/sam2.1-hiera-tiny") == path
    assert asked == [("facebook/sam2.1-hiera-tiny", "sam2.1_hiera_tiny.pt")]
    model = build_sam2_model("sam2.1_hiera_t", ckpt_path="facebook/sam2.1-hiera-tiny")
    assert torch.equal(model.state_dict()["no_mem_embed"], tiny_sam2.state_dict()["no_mem_embed"])
    with pytest.raises(FileNotFoundError, match="neither a file nor a known hub id"):
        resolve_checkpoint("someone/unknown-model")


def test_importing_the_engine_leaves_hydra_uninitialised():
    """``import sam2`` initialises Hydra; reward_server.sam2_build, the package's way in to sam2, undoes it."""
    code = """
import sys
from hydra.core.global_hydra import GlobalHydra
import reward_server.engine
print("sam2" in sys.modules, GlobalHydra.instance().is_initialized())
"""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "False"]
