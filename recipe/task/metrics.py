"""gIoU and cIoU, the metrics of every reasoning-segmentation table, under the two published conventions.

In both, gIoU is the mean over the scored samples of I / U and cIoU is total I over total U (0 when that union is 0,
as both published scripts compute it). They differ in which pixels count and which samples are scored
(docs/conventions.md):

- ``lisa`` (LISA's ``intersectionAndUnionGPU`` with ``ignore_index=255``): GT pixels labelled 255 (ReasonSeg's
  "ignore") count in neither I nor U; a sample whose union is empty scores 1.0 (``acc_iou[union == 0] += 1.0``);
  a failed answer (no mask) is an empty prediction: I = 0, U = |GT|.
- ``seg_zero`` (Seg-Zero's released ``evaluation.py`` and ``calculate_iou.py``, which SAM-R1 and SAM-Veteran
  follow): the GT mask is cast to bool, so ignored pixels count as target; a predicted mask whose union with the GT
  is empty drops the sample (its ``compute_iou`` returns a bare 0 whose unpacking raises, and the sample is skipped:
  neither scored nor counted); a failed answer is recorded as I = 0, U = |GT| and scores 0 even when that union is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from recipe.task.dataset_rows import IGNORE_LABEL

CONVENTIONS = ("lisa", "seg_zero")


def check_convention(convention: str) -> None:
    """Raises ValueError for a name that is not one of :data:`CONVENTIONS`."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown metrics convention {convention!r}; choose one of {list(CONVENTIONS)}")


@dataclass(frozen=True)
class SampleIoU:
    """One sample's intersection, union and IoU under a convention.

    Attributes:
        intersection: Target pixels predicted.
        union: Pixels predicted or target.
        iou: The sample's score, or None when the convention does not score it (Seg-Zero's empty union).
        failed: The answer gave no mask.
    """

    intersection: int
    union: int
    iou: float | None
    failed: bool = False


@dataclass
class SegMetrics:
    """Accumulates per-sample intersections and unions into gIoU / cIoU.

    Args:
        convention: ``lisa`` or ``seg_zero`` (module docstring).

    Raises:
        ValueError: For an unknown convention.
    """

    convention: str = "lisa"
    _ious: list[float] = field(default_factory=list, repr=False)
    _intersection: int = 0
    _union: int = 0
    _failed: int = 0
    _dropped: int = 0

    def __post_init__(self) -> None:
        check_convention(self.convention)

    def _target(self, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The pixels the convention counts as target, and those it counts at all (None: every pixel)."""
        gt = np.asarray(gt)
        if gt.ndim != 2:
            raise ValueError(f"gt must be a 2-D (H, W) mask, got shape {gt.shape}")
        if gt.dtype != bool and np.any((gt != 0) & (gt != 1) & (gt != IGNORE_LABEL)):
            raise ValueError(f"gt labels must be 0, 1 or {IGNORE_LABEL}; got {np.unique(gt)[:8].tolist()}")
        if self.convention == "seg_zero":
            return gt.astype(bool), None
        valid = gt != IGNORE_LABEL
        return (gt == 1) & valid, valid

    def target_area(self, gt: np.ndarray) -> int:
        """The target's pixel count under this convention: the union of a failed answer."""
        return int(np.count_nonzero(self._target(gt)[0]))

    def score(self, pred: np.ndarray | None, gt: np.ndarray) -> SampleIoU:
        """One sample's I, U and IoU, without accumulating it.

        Args:
            pred: Predicted ``(H, W)`` mask (non-zero is foreground), or None for a failed answer.
            gt: ``(H, W)`` uint8 ground truth: 0 background, 1 foreground, 255 ignored (bool also accepted).

        Raises:
            ValueError: When shapes differ or ``gt`` holds labels other than 0, 1 and 255 (e.g. a 0/255 PNG mask,
                which would otherwise be scored as all-ignored).
        """
        target, valid = self._target(gt)
        if pred is None:
            return self.sample_iou(0, int(np.count_nonzero(target)), failed=True)
        pred = np.asarray(pred)
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {pred.shape} does not match gt {target.shape}")
        predicted = pred.astype(bool) if valid is None else pred.astype(bool) & valid
        return self.sample_iou(int(np.count_nonzero(predicted & target)), int(np.count_nonzero(predicted | target)))

    def sample_iou(self, intersection: int, union: int, failed: bool = False) -> SampleIoU:
        """A sample from its counts (e.g. stored in evaluation records), with its IoU under this convention."""
        if union:
            iou = intersection / union
        elif self.convention == "lisa":
            iou = 1.0
        else:
            iou = 0.0 if failed else None
        return SampleIoU(intersection, union, iou, failed)

    def update(self, pred: np.ndarray | None, gt: np.ndarray) -> SampleIoU:
        """Scores one sample (see :meth:`score`) and adds it to the totals."""
        sample = self.score(pred, gt)
        self.add(sample)
        return sample

    def add(self, sample: SampleIoU) -> None:
        """Adds an already scored sample, e.g. one read back from a resumed run's per-sample records."""
        if sample.iou is None:
            self._dropped += 1
            return
        self._ious.append(sample.iou)
        self._intersection += sample.intersection
        self._union += sample.union
        self._failed += int(sample.failed)

    def summary(self) -> dict[str, float | int | str]:
        """``gIoU``, ``cIoU`` (both NaN before any scored sample), ``n`` (the samples scored), ``n_failed``,
        ``n_dropped`` (samples the convention does not score) and the ``convention``."""
        n = len(self._ious)
        ciou = self._intersection / self._union if self._union else 0.0
        return {
            "gIoU": math.fsum(self._ious) / n if n else math.nan,
            "cIoU": ciou if n else math.nan,
            "n": n,
            "n_failed": self._failed,
            "n_dropped": self._dropped,
            "convention": self.convention,
        }


@dataclass
class GeneralizedMetrics:
    """gRefCOCO's metrics, as its authors' evaluation computes them (ReLA's ``ReferEvaluator``, "fix eval metrics",
    2023-08): gIoU and cIoU over every sample, no-target ones included, and the no-target decision's accuracies.

    A sample is its prediction's I and U against the target (the union of its objects) and two decisions: whether the
    target is empty, and whether the answer said "none". ReLA's four cases:

    - no target, "none" (its TP): IoU 1, nothing added to cIoU;
    - no target, objects answered (FN): IoU 0, the predicted area added to cIoU's union;
    - a target, "none" (FP): IoU 0, I = 0 and the union added;
    - a target, objects answered (TN): I / U (0 for an empty union) and both added.

    ``N_acc = TP / (TP + FN)`` over the no-target samples, ``T_acc = TN / (TN + FP)`` over the others. An answer that
    gave no usable list (``said_none`` None) is counted as the wrong decision either way: it never earns a correct
    "none". Two departures from ReLA's code, where it has no answer: with no no-target sample ReLA reports T_acc
    and N_acc as 0, here N_acc is NaN and T_acc is computed; an empty total union gives cIoU 0 instead of a
    division by zero.
    """

    _ious: list[float] = field(default_factory=list, repr=False)
    _intersection: int = 0
    _union: int = 0
    _counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("TP", "FN", "FP", "TN"), 0))

    def sample(self, intersection: int, union: int, no_target: bool, said_none: bool | None) -> SampleIoU:
        """One sample's case, scored (without accumulating it).

        Args:
            intersection: Predicted target pixels.
            union: Pixels predicted or target.
            no_target: The target is empty.
            said_none: The answer said "none" (an empty list); None for an answer without a usable list.
        """
        said_none = (not no_target) if said_none is None else said_none
        if no_target:
            return SampleIoU(0, 0, 1.0) if said_none else SampleIoU(0, union, 0.0)
        if said_none:
            return SampleIoU(0, union, 0.0)
        return SampleIoU(intersection, union, intersection / union if union else 0.0)

    def add(self, intersection: int, union: int, no_target: bool, said_none: bool | None) -> SampleIoU:
        """Scores one sample (see :meth:`sample`) and adds it to the totals."""
        scored = self.sample(intersection, union, no_target, said_none)
        decided_none = (not no_target) if said_none is None else said_none
        case = ("TP" if decided_none else "FN") if no_target else ("FP" if decided_none else "TN")
        self._counts[case] += 1
        self._ious.append(scored.iou)
        self._intersection += scored.intersection
        self._union += scored.union
        return scored

    def summary(self) -> dict[str, float | int]:
        """``gIoU``, ``cIoU``, ``N_acc``, ``T_acc`` (fractions; NaN where undefined), ``n`` and ``n_no_target``."""
        counts, n = self._counts, len(self._ious)
        empty, targeted = counts["TP"] + counts["FN"], counts["TN"] + counts["FP"]
        return {
            "gIoU": math.fsum(self._ious) / n if n else math.nan,
            "cIoU": (self._intersection / self._union if self._union else 0.0) if n else math.nan,
            "N_acc": counts["TP"] / empty if empty else math.nan,
            "T_acc": counts["TN"] / targeted if targeted else math.nan,
            "n": n,
            "n_no_target": empty,
        }
