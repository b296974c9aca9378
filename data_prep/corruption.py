"""SAM-Veteran's auxiliary data: ground-truth masks corrupted by a random polygon inclusion (a false-positive
region) and/or exclusion (a false-negative region), each with probability 0.5 (section A.4)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from recipe.task.dataset_rows import BOTH_ERRORS, FALSE_NEGATIVE, FALSE_POSITIVE, NO_ERROR

MIN_REGION_FRACTION = 0.03  # of the object's area, so an error is visible in the overlay
MIN_REGION_PIXELS = 64
MAX_EXCLUDED_FRACTION = 0.5  # never remove most of the object
ATTEMPTS = 20  # polygons per try
SEED_RETRIES = 3  # further tries, each with a new seed, for an error no polygon of the first try fits


def random_polygon(rng: np.random.Generator, center: tuple[float, float], radius: float, vertices: int) -> np.ndarray:
    """A star-shaped polygon around ``center``: ``(vertices, 2)`` float32 points in angular order."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.5, 1.0, vertices)
    points = np.stack([center[0] + radii * np.cos(angles), center[1] + radii * np.sin(angles)], axis=1)
    return points.astype(np.float32)


def fill_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    cv2.fillPoly(mask, [np.round(points).astype(np.int32)], 1)
    return mask.astype(bool)


@dataclass(frozen=True)
class Corruption:
    """A corrupted mask and the error regions that make it differ from the ground truth.

    Attributes:
        mask: The corrupted mask.
        false_positive: The included region, or None.
        false_negative: The excluded region, or None.
        retried: Drawn errors (``inclusion``, ``exclusion``) that needed a retry with another seed.
        not_placed: Drawn errors for which no polygon of a usable size was found in any try.
    """

    mask: np.ndarray
    false_positive: np.ndarray | None
    false_negative: np.ndarray | None
    retried: tuple[str, ...] = ()
    not_placed: tuple[str, ...] = ()

    @property
    def case(self) -> str:
        """The auxiliary case: ``none``, ``fp``, ``fn`` or ``both`` (``recipe.task.dataset_rows``)."""
        included, excluded = self.false_positive is not None, self.false_negative is not None
        if included and excluded:
            return BOTH_ERRORS
        return FALSE_POSITIVE if included else FALSE_NEGATIVE if excluded else NO_ERROR


def _random_region(
    rng: np.random.Generator, candidates: np.ndarray, allowed: np.ndarray, radius: float, min_area: int, max_area: int
) -> np.ndarray | None:
    """A random polygon centred on a candidate pixel, cut to ``allowed``, with an area in [min_area, max_area]."""
    ys, xs = np.nonzero(candidates)
    if xs.size == 0:
        return None
    for _ in range(ATTEMPTS):
        pick = int(rng.integers(xs.size))
        polygon = random_polygon(rng, (float(xs[pick]), float(ys[pick])), radius, int(rng.integers(5, 10)))
        region = fill_polygon(polygon, allowed.shape) & allowed
        if min_area <= np.count_nonzero(region) <= max_area:
            return region
    return None


def _error_region(gt: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray | None:
    """One try at an exclusion (a polygon centred inside the object, at most half of it) or an inclusion (a polygon
    centred just outside it), with a radius drawn from ``rng``."""
    area = int(np.count_nonzero(gt))
    radius = float(np.sqrt(area)) * float(rng.uniform(0.3, 0.6))
    min_area = max(MIN_REGION_PIXELS, int(MIN_REGION_FRACTION * area))
    if kind == "exclusion":
        return _random_region(rng, gt, gt, radius, min_area, int(MAX_EXCLUDED_FRACTION * area))
    band = max(3, int(radius))
    near = cv2.dilate(gt.astype(np.uint8), np.ones((2 * band + 1, 2 * band + 1), np.uint8)).astype(bool) & ~gt
    return _random_region(rng, near, ~gt, radius, min_area, max(min_area, area))


def corrupt_mask(
    gt: np.ndarray,
    rng: np.random.Generator,
    p_include: float = 0.5,
    p_exclude: float = 0.5,
    seed_retries: int = SEED_RETRIES,
) -> Corruption:
    """Corrupts a ground-truth mask.

    Whether to include and whether to exclude are drawn once, independently, with their probabilities. Each drawn
    error is then searched for (a few polygons per try); a try that finds none is repeated with a generator of a new
    seed spawned from ``rng``, at most ``seed_retries`` times, so the drawn rates hold except for objects no polygon
    fits (the result names those errors in ``not_placed``).

    Args:
        gt: Boolean ``(H, W)`` ground truth.
        rng: The sample's random generator.
        p_include: Probability of a false-positive region.
        p_exclude: Probability of a false-negative region.
        seed_retries: Further tries, each with a new seed, for an error the first try could not place.
    """
    gt = np.asarray(gt, bool)
    drawn = {"inclusion": rng.random() < p_include, "exclusion": rng.random() < p_exclude}
    regions: dict[str, np.ndarray | None] = {"inclusion": None, "exclusion": None}
    retried, not_placed = [], []
    for kind in (kind for kind, wanted in drawn.items() if wanted):
        generator, attempt = rng, 0
        while (region := _error_region(gt, generator, kind)) is None and attempt < seed_retries:
            generator, attempt = rng.spawn(1)[0], attempt + 1
        regions[kind] = region
        if attempt:
            retried.append(kind)
        if region is None:
            not_placed.append(kind)
    corrupted = gt.copy()
    if regions["inclusion"] is not None:
        corrupted |= regions["inclusion"]
    if regions["exclusion"] is not None:
        corrupted &= ~regions["exclusion"]
    return Corruption(corrupted, regions["inclusion"], regions["exclusion"], tuple(retried), tuple(not_placed))
