"""SAM-Veteran's dynamic sampling (Algorithms 1 and 2) as pure functions over already generated batches.

Each function reads the batches the way the algorithm generates them: attempts 1..A-1 consume one batch each, and
when the group is still short after them, its rest comes from the first rollouts of one fresh batch (the A-th).
They return the selected ``(batch_index, rollout_index)`` pairs in selection order, never more than ``n_rollouts``;
batches after the point where the group completes are never looked at, so a caller can stop generating there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torchvision.ops import nms

Box = Sequence[float]
Selection = list[tuple[int, int]]

POINT_CASES = ("error", "terminate", "positive", "negative", "both")
DEFAULT_POINT_QUOTAS: Mapping[str, int] = {"error": 2, "terminate": 1, "positive": 2, "negative": 2, "both": 1}
"""Algorithm 2: at most 2 malformed answers, 1 (null, null), 2 (p+, null), 2 (null, p-), 1 (p+, p-)."""
PAPER_GROUP_SIZE = 8  # the rollout number the quotas were written for (SAM-Veteran section 4.1)


def scaled_point_quotas(n_rollouts: int) -> dict[str, int]:
    """Algorithm 2's quotas for a group of ``n_rollouts``: the paper's shares of 8, summing to ``n_rollouts``.

    The paper gives quotas only for its 8 rollouts; Table 10 also trains with 4 and 16. Each case keeps its share
    ``quota * n / 8``, rounded by largest remainder (the floors first, then one more to the largest fractions, ties
    to the case Algorithm 2 lists first), so 16 doubles every quota and 4 gives error 1, terminate 1, positive 1,
    negative 1, both 0.
    """
    if n_rollouts < 1:
        raise ValueError(f"n_rollouts must be positive, got {n_rollouts}")
    shares = {case: DEFAULT_POINT_QUOTAS[case] * n_rollouts / PAPER_GROUP_SIZE for case in POINT_CASES}
    quotas = {case: int(share) for case, share in shares.items()}
    by_remainder = sorted(POINT_CASES, key=lambda case: (-(shares[case] - quotas[case]), POINT_CASES.index(case)))
    for case in by_remainder[: n_rollouts - sum(quotas.values())]:
        quotas[case] += 1
    return quotas


def _fill_from_fresh_batch(batches: Sequence[Sequence], selected: Selection, n_rollouts: int, fresh: int) -> Selection:
    missing = n_rollouts - len(selected)
    if missing > 0 and fresh < len(batches):
        selected += [(fresh, j) for j in range(min(missing, len(batches[fresh])))]
    return selected


def _keep_order_nms(boxes: list[Box], iou_threshold: float) -> list[int]:
    """Indices NMS keeps when earlier boxes always win: scores decrease with the index."""
    if not boxes:
        return []
    scores = torch.arange(len(boxes), 0, -1, dtype=torch.float64)
    return nms(torch.tensor(boxes, dtype=torch.float64), scores, iou_threshold).tolist()


def select_box_rollouts(
    batches: Sequence[Sequence[Box | None]],
    n_rollouts: int = 8,
    max_attempts: int = 3,
    max_errors: int = 2,
    iou_threshold: float = 0.8,
) -> Selection:
    """Algorithm 1: distinct boxes (NMS at ``iou_threshold`` against the boxes already kept) and a few malformed ones.

    Args:
        batches: Generated batches; a rollout is its parsed box (xyxy) or None when malformed.
        n_rollouts: Group size ``R``.
        max_attempts: ``A``: batches 0..A-2 are attempts, batch A-1 is the fresh batch that fills the rest.
        max_errors: ``E``, malformed rollouts kept at most; later malformed ones are skipped.
        iou_threshold: ``tau``.
    """
    selected: Selection = []
    kept: list[Box] = []
    errors = 0
    for attempt in range(min(max_attempts - 1, len(batches))):
        candidates = list(kept)  # B' <- B
        previous = len(kept)  # n_p <- |B|
        rollout_of = [-1] * previous  # r_idx
        for j, box in enumerate(batches[attempt]):
            if len(selected) == n_rollouts:
                return selected
            if box is None:
                if errors < max_errors:
                    selected.append((attempt, j))
                    errors += 1
                continue  # beyond the error budget a malformed rollout is skipped: it has no box
            candidates.append(box)
            rollout_of.append(j)
        for k in _keep_order_nms(candidates, iou_threshold)[:n_rollouts]:
            if k >= previous and len(kept) < n_rollouts and len(selected) < n_rollouts:
                kept.append(candidates[k])
                selected.append((attempt, rollout_of[k]))
    return _fill_from_fresh_batch(batches, selected, n_rollouts, max_attempts - 1)


def select_point_rollouts(
    batches: Sequence[Sequence[str]],
    n_rollouts: int = 8,
    max_attempts: int = 3,
    quotas: Mapping[str, int] | None = None,
) -> Selection:
    """Algorithm 2: fill each refinement case up to its quota.

    Args:
        batches: Generated batches; a rollout is its case: ``error``, ``terminate``, ``positive``, ``negative``
            or ``both``.
        n_rollouts: Group size ``R``.
        max_attempts: ``A``, as in :func:`select_box_rollouts`.
        quotas: Rollouts wanted per case (default: :func:`scaled_point_quotas` of ``n_rollouts``, the paper's at 8).
    """
    remaining = dict(scaled_point_quotas(n_rollouts) if quotas is None else quotas)
    unknown = set(remaining) - set(POINT_CASES)
    if unknown:
        raise ValueError(f"unknown point cases {sorted(unknown)}; known: {POINT_CASES}")
    selected: Selection = []
    for attempt in range(min(max_attempts - 1, len(batches))):
        for j, case in enumerate(batches[attempt]):
            if len(selected) == n_rollouts:
                return selected
            if remaining.get(case, 0) > 0:
                selected.append((attempt, j))
                remaining[case] -= 1
    return _fill_from_fresh_batch(batches, selected, n_rollouts, max_attempts - 1)
