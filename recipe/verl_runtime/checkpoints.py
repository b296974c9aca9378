"""verl's checkpoint folder as a resume reads it: the tracker file and the step folders that are complete.

verl 0.9.1's trainer (``PPOTrainer._save_checkpoint``) writes ``global_step_<N>/actor``, then the critic, then
``global_step_<N>/data.pt`` (the dataloader's position), and last ``latest_checkpointed_iteration.txt``, opened for
writing (emptied) and then filled. A resume reads only that tracker (``find_latest_ckpt_path``). So a job killed at
the wrong moment cannot resume: an empty tracker fails every relaunch on ``int("")``, and a tracker naming a folder
that is gone makes verl log "Training from scratch" and write new checkpoints over the old ones. The rule here,
which the trainer applies before verl loads and preflight reads, resumes from the tracker's step when its folder is
complete, and otherwise from the newest complete folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"
"""verl's tracker file (``verl.utils.checkpoint.checkpoint_manager.get_checkpoint_tracker_filename``)."""

STEP_FOLDER = re.compile(r"global_step_(\d+)")
COMPLETE_MARKER = "data.pt"
"""The last file verl writes into a step folder: its actor (and critic) state was written before it."""


def step_folder(root: Path, step: int) -> Path:
    return root / f"global_step_{step}"


def step_folders(root: Path) -> list[tuple[int, Path]]:
    """The ``(step, folder)`` of every ``global_step_<N>`` under ``root``, complete or not, by step."""
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), path) for path in root.iterdir() if (m := STEP_FOLDER.fullmatch(path.name)))


def complete_steps(root: Path) -> list[int]:
    """The steps under ``root`` whose folder holds every part of the checkpoint, ascending."""
    return [step for step, folder in step_folders(root) if (folder / COMPLETE_MARKER).is_file()]


def tracked_step(root: Path) -> int | None:
    """The step the tracker names, or None when there is no tracker or it holds no step number."""
    try:
        text = (root / TRACKER).read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def resume_step(root: Path) -> int | None:
    """The step a run in ``root`` resumes from: the tracker's when its folder is complete, else the newest complete
    one; None when no checkpoint is complete."""
    complete = complete_steps(root)
    tracked = tracked_step(root)
    if tracked in complete:
        return tracked
    return complete[-1] if complete else None


def repair_tracker(root: Path) -> str | None:
    """Points a tracker that exists but cannot be resumed from at :func:`resume_step`'s step.

    Returns:
        What was wrong and what was done, for the log; None when the tracker is absent or already right.
    """
    tracker = root / TRACKER
    if not tracker.exists():
        return None
    tracked, step = tracked_step(root), resume_step(root)
    if tracked is not None and tracked == step:
        return None
    found = f"{tracker} names step {tracked}" if tracked is not None else f"{tracker} holds no step number"
    if step is None:
        tracker.unlink()
        return f"{found} and no checkpoint under {root} is complete: removed it, the run starts afresh"
    partial = root / f"{tracker.name}.partial"
    partial.write_text(str(step))
    os.replace(partial, tracker)  # a kill now leaves the old tracker or the new one, never an empty file
    return f"{found}, whose folder is missing or incomplete: resuming from {step_folder(root, step)} instead"
