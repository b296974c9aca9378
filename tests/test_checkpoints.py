"""A killed job's checkpoint folder resumes: the tracker repair, judged by verl's own resume lookup.

verl 0.9.1 writes a step folder's ``data.pt`` after its actor and critic, and the tracker last (emptied, then
filled); a resume reads only the tracker. The first tests pin that behaviour of verl (they fail when an upgrade
changes it, and the repair is then re-examined); the others build the folders a kill leaves and ask verl's
``find_latest_ckpt_path`` where it would resume after :func:`repair_tracker`.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path, get_checkpoint_tracker_filename

from recipe.verl_runtime.checkpoints import COMPLETE_MARKER, TRACKER, repair_tracker, resume_step


def checkpoint(root: Path, step: int, complete: bool = True) -> Path:
    folder = root / f"global_step_{step}"
    (folder / "actor").mkdir(parents=True)
    (folder / "actor" / "model_world_size_1_rank_0.pt").write_bytes(b"weights")
    if complete:
        (folder / COMPLETE_MARKER).write_bytes(b"dataloader")
    return folder


def verl_resumes_from(root: Path) -> str | None:
    return find_latest_ckpt_path(str(root))


def test_verl_writes_the_dataloader_state_after_the_actor_and_the_tracker_last():
    source = inspect.getsource(PPOTrainer._save_checkpoint)
    actor, data, tracker = (source.index(s) for s in ("actor_rollout_wg.save_checkpoint", '"data.pt"', "f.write("))
    assert actor < data < tracker
    assert Path(get_checkpoint_tracker_filename("/run")).name == TRACKER


def test_verl_cannot_resume_from_an_empty_tracker_and_forgets_a_missing_folder(tmp_path):
    checkpoint(tmp_path, 1)
    (tmp_path / TRACKER).write_text("")
    with pytest.raises(ValueError):
        verl_resumes_from(tmp_path)
    (tmp_path / TRACKER).write_text("2")
    assert verl_resumes_from(tmp_path) is None  # verl then trains from scratch over the old checkpoints


def test_an_empty_tracker_resumes_from_the_newest_complete_checkpoint(tmp_path):
    checkpoint(tmp_path, 1)
    checkpoint(tmp_path, 2)
    checkpoint(tmp_path, 3, complete=False)  # killed while its actor was written
    (tmp_path / TRACKER).write_text("")
    message = repair_tracker(tmp_path)
    assert "holds no step number" in message and "global_step_2" in message
    assert verl_resumes_from(tmp_path) == str(tmp_path / "global_step_2")
    assert not (tmp_path / f"{TRACKER}.partial").exists()


def test_a_tracker_naming_a_missing_folder_resumes_from_the_newest_complete_one(tmp_path):
    checkpoint(tmp_path, 1)
    checkpoint(tmp_path, 2)
    (tmp_path / TRACKER).write_text("4\n")
    assert "names step 4" in repair_tracker(tmp_path)
    assert verl_resumes_from(tmp_path) == str(tmp_path / "global_step_2")


def test_a_sound_tracker_is_left_alone(tmp_path):
    checkpoint(tmp_path, 1)
    checkpoint(tmp_path, 2, complete=False)  # the kill came while step 2 was written: verl still names step 1
    (tmp_path / TRACKER).write_text("1")
    assert repair_tracker(tmp_path) is None
    assert (tmp_path / TRACKER).read_text() == "1"
    assert resume_step(tmp_path) == 1
    assert verl_resumes_from(tmp_path) == str(tmp_path / "global_step_1")


def test_without_a_complete_checkpoint_the_bad_tracker_goes_and_the_run_starts_afresh(tmp_path):
    checkpoint(tmp_path, 1, complete=False)
    (tmp_path / TRACKER).write_text("")
    assert "starts afresh" in repair_tracker(tmp_path)
    assert verl_resumes_from(tmp_path) is None and resume_step(tmp_path) is None


def test_no_tracker_no_change(tmp_path):
    checkpoint(tmp_path, 1)
    assert repair_tracker(tmp_path) is None and not (tmp_path / TRACKER).exists()
    assert repair_tracker(tmp_path / "never_created") is None
