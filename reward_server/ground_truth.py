"""A registered ground-truth mask and its edge-ignore mask, computed at most once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reward_server.masks import decode_rle, edge_ignore_mask


@dataclass
class GroundTruth:
    """A ground-truth mask; the edge-ignore mask of the edge-excluded IoU is computed on first use and kept, so a
    ground truth no request asks an edge-excluded IoU of (SAM-R1's) never pays for its Canny edges."""

    mask: np.ndarray
    ignore_edge: int
    _ignore: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_rle(cls, rle: dict[str, Any], ignore_edge: int) -> GroundTruth:
        """Decodes COCO RLE; raises ValueError for malformed RLE."""
        return cls(decode_rle(rle), ignore_edge)

    @property
    def ignore(self) -> np.ndarray:
        if self._ignore is None:
            self._ignore = edge_ignore_mask(self.mask, self.ignore_edge)
        return self._ignore

    @property
    def nbytes(self) -> int:
        # Budget the ignore mask too, since it is filled in after the entry is cached.
        return 2 * self.mask.nbytes
