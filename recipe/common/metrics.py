"""gIoU and cIoU under LISA's conventions, the metrics of every reasoning-segmentation table.

- gIoU: mean over samples of I / U; a sample whose union is empty scores 1.0 (LISA), or 0.0 in the
  Seg-Zero-compatible mode.
- cIoU: total I over total U across the dataset.
- Ground-truth pixels labelled 255 (ReasonSeg's "ignore") count in neither I nor U.
- A failed answer (no mask) is an empty prediction: I = 0, U = |GT|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

IGNORE_LABEL = 255


@dataclass(frozen=True)
class SampleIoU:
    """One sample's intersection and union (ignored pixels excluded) and its IoU under the chosen convention."""

    intersection: int
    union: int
    iou: float


@dataclass
class SegMetrics:
    """Accumulates per-sample intersections and unions into gIoU / cIoU.

    Args:
        seg_zero_compatible: Score an empty union 0.0 instead of LISA's 1.0.
    """

    seg_zero_compatible: bool = False
    _ious: list[float] = field(default_factory=list, repr=False)
    _intersection: int = 0
    _union: int = 0
    _failed: int = 0

    @property
    def empty_union_iou(self) -> float:
        """The score of a sample whose prediction and target are both empty."""
        return 0.0 if self.seg_zero_compatible else 1.0

    @property
    def convention(self) -> str:
        return "seg-zero" if self.seg_zero_compatible else "lisa"

    def score(self, pred: np.ndarray | None, gt: np.ndarray) -> SampleIoU:
        """One sample's I, U and IoU, without accumulating it.

        Args:
            pred: Predicted ``(H, W)`` mask (non-zero is foreground), or None for a failed answer.
            gt: ``(H, W)`` uint8 ground truth: 0 background, 1 foreground, 255 ignored (bool also accepted).

        Raises:
            ValueError: When shapes differ or ``gt`` holds labels other than 0, 1 and 255 (e.g. a 0/255 PNG mask,
                which would otherwise be scored as all-ignored).
        """
        gt = np.asarray(gt)
        if gt.ndim != 2:
            raise ValueError(f"gt must be a 2-D (H, W) mask, got shape {gt.shape}")
        if gt.dtype != bool and np.any((gt != 0) & (gt != 1) & (gt != IGNORE_LABEL)):
            raise ValueError(f"gt labels must be 0, 1 or {IGNORE_LABEL}; got {np.unique(gt)[:8].tolist()}")
        valid = gt != IGNORE_LABEL
        target = (gt == 1) & valid
        if pred is None:
            intersection, union = 0, int(np.count_nonzero(target))
        else:
            pred = np.asarray(pred)
            if pred.shape != gt.shape:
                raise ValueError(f"pred shape {pred.shape} does not match gt {gt.shape}")
            predicted = pred.astype(bool) & valid
            intersection = int(np.count_nonzero(predicted & target))
            union = int(np.count_nonzero(predicted | target))
        return self.sample_iou(intersection, union)

    def sample_iou(self, intersection: int, union: int) -> SampleIoU:
        """A sample from its counts (e.g. stored in evaluation records), its IoU under this convention."""
        return SampleIoU(intersection, union, intersection / union if union else self.empty_union_iou)

    def update(self, pred: np.ndarray | None, gt: np.ndarray) -> SampleIoU:
        """Scores one sample (see :meth:`score`) and adds it to the totals."""
        sample = self.score(pred, gt)
        self.add(sample, failed=pred is None)
        return sample

    def add(self, sample: SampleIoU, failed: bool = False) -> None:
        """Adds an already scored sample, e.g. one read back from a resumed run's per-sample records."""
        self._ious.append(sample.iou)
        self._intersection += sample.intersection
        self._union += sample.union
        self._failed += int(failed)

    def merge(self, other: SegMetrics) -> None:
        """Adds another accumulator's samples (data-parallel shards); both must use the same convention."""
        if other.seg_zero_compatible != self.seg_zero_compatible:
            raise ValueError("cannot merge metrics computed under different conventions")
        self._ious.extend(other._ious)
        self._intersection += other._intersection
        self._union += other._union
        self._failed += other._failed

    def summary(self) -> dict[str, float | int | str]:
        """``gIoU``, ``cIoU`` (NaN before any sample), ``n``, ``n_failed`` and the ``convention`` used."""
        n = len(self._ious)
        return {
            "gIoU": math.fsum(self._ious) / n if n else math.nan,
            "cIoU": self._intersection / self._union if self._union else math.nan,
            "n": n,
            "n_failed": self._failed,
            "convention": self.convention,
        }
