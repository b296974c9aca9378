"""One-to-one matching of answered objects to ground-truth objects, as the multi-object recipes match them.

A generalized answer lists several boxes; each is paired with at most one ground-truth object and each object with
at most one box, so that the pairs' total box IoU is the largest possible (the assignment problem, solved exactly by
the Hungarian method). Unpaired boxes and objects earn nothing; rewards divide by the larger count, so a missed
object and an extra box cost alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from reward_server.masks import box_iou


def assign(scores: np.ndarray) -> list[tuple[int, int]]:
    """The ``(row, column)`` pairs, each row and column at most once and ``min(rows, columns)`` pairs in all, of the
    largest total score (the Hungarian method with potentials, O(n^2 m)).

    Args:
        scores: ``(rows, columns)`` finite scores.

    Returns:
        The pairs, sorted by row.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or not np.isfinite(scores).all():
        raise ValueError(f"scores must be a finite 2-D array, got shape {scores.shape}")
    transposed = scores.shape[0] > scores.shape[1]
    cost = -(scores.T if transposed else scores)  # rows <= columns from here on
    rows, columns = cost.shape
    if rows == 0:
        return []
    # Potentials u (rows) and v (columns); owner[j] is the row holding column j (1-based, 0: free, column 0 virtual).
    u, v = np.zeros(rows + 1), np.zeros(columns + 1)
    owner = np.zeros(columns + 1, dtype=np.int64)
    for row in range(1, rows + 1):
        owner[0], column = row, 0
        slack = np.full(columns + 1, np.inf)
        previous = np.zeros(columns + 1, dtype=np.int64)
        used = np.zeros(columns + 1, dtype=bool)
        while owner[column] != 0:
            used[column] = True
            current = owner[column]
            reduced = cost[current - 1] - u[current] - v[1:]
            better = ~used[1:] & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            previous[1:][better] = column
            free = np.flatnonzero(~used[1:]) + 1
            nearest = free[np.argmin(slack[free])]
            delta = slack[nearest]
            u[owner[used]] += delta
            v[used] -= delta
            slack[free] -= delta
            column = nearest
        while column:  # flip the augmenting path back to its start
            owner[column] = owner[previous[column]]
            column = previous[column]
    pairs = [(int(owner[j]) - 1, j - 1) for j in range(1, columns + 1) if owner[j]]
    return sorted((c, r) for r, c in pairs) if transposed else sorted(pairs)


def match_boxes(predicted: Sequence[Sequence[float]], truth: Sequence[Sequence[float]]) -> list[tuple[int, int]]:
    """Answered boxes paired one to one with ground-truth boxes for the largest total box IoU: ``(answer index,
    truth index)`` pairs, ``min(len(predicted), len(truth))`` of them."""
    if not len(predicted) or not len(truth):
        return []
    return assign(box_iou(np.asarray(predicted, dtype=np.float64), np.asarray(truth, dtype=np.float64)))
