"""ReasonSeg in LISA's layout: ``<root>/<split>/<name>.jpg`` with ``<name>.json`` (texts and labelled polygons)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_prep.samples import Skipped, SourceSample
from data_prep.shards import Report
from recipe.task.dataset_rows import SOURCE_IDS, ExtraInfo

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Images per split of the ReasonSeg release (LISA, Lai et al. 2024); published results use all of val and test.
PUBLISHED_SIZES = {"train": 239, "val": 200, "test": 779}
# Samples named in the closing report line; report.json lists every one.
NAMED_IN_SUMMARY = 20


def read_lisa_json(path: Path) -> Any:
    """A LISA json as LISA's ``get_mask_from_json`` reads it: as UTF-8, or else as cp1252 (LISA's fallback).

    Raises:
        OSError: When the file cannot be read.
        UnicodeDecodeError: When the bytes are neither UTF-8 nor cp1252.
        json.JSONDecodeError: When the text is not JSON.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")  # LISA's plain open() on its UTF-8 locale
    except UnicodeDecodeError:
        text = raw.decode("cp1252")
    return json.loads(text)


def read_reasonseg(root: str | Path, split: str, all_texts: bool = False) -> tuple[list[SourceSample], list[Skipped]]:
    """Samples of one split, in file-name order, and every image or json that cannot be one, with its reason.

    Args:
        root: The ReasonSeg directory holding ``train``, ``val`` and ``test``.
        split: The split directory.
        all_texts: One sample per text (training); otherwise the first text only, as LISA evaluates val and test.
    """
    directory = Path(root) / split
    if not directory.is_dir():
        raise ValueError(f"missing {directory}: expected <reasonseg-root>/{split}/*.json with their images")
    json_stems = {path.stem for path in directory.glob("*.json")}
    image_stems = {path.stem for suffix in IMAGE_SUFFIXES for path in directory.glob(f"*{suffix}")}
    samples, skipped = [], []
    for stem in sorted(json_stems | image_stems):
        key = f"reasonseg/{split}/{stem}"
        json_path = directory / f"{stem}.json"
        if stem not in json_stems:
            skipped.append(Skipped(key, f"no json next to the image: {json_path.name} is missing"))
            continue
        image_path = next((p for s in IMAGE_SUFFIXES if (p := json_path.with_suffix(s)).is_file()), None)
        if image_path is None:
            skipped.append(Skipped(key, f"no image next to the json: no {stem}{'/'.join(IMAGE_SUFFIXES)}"))
            continue
        try:
            annotation = read_lisa_json(json_path)
            texts = [str(t).strip() for t in annotation["text"] if str(t).strip()]
            shapes = tuple(
                {"label": str(shape["label"]), "points": shape["points"]}
                for shape in annotation["shapes"]
                if str(shape["label"]).lower() != "flag"  # LISA: deprecated, meaningless annotations
            )
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
            skipped.append(Skipped(key, f"unreadable LISA json: {type(err).__name__}: {err}"))
            continue
        if not texts:
            skipped.append(Skipped(key, "no question text"))
            continue
        for index, text in enumerate(texts if all_texts else texts[:1]):
            samples.append(
                SourceSample(
                    key=f"{key}/text{index}",
                    dataset="reasonseg",
                    split=split,
                    question=text,
                    image_path=str(image_path),
                    lisa_shapes=shapes,
                    ids={**dict.fromkeys(SOURCE_IDS), ExtraInfo.sent_id.name: index},  # the text's position
                )
            )
    return samples, skipped


def image_key(key: str) -> str:
    """``reasonseg/<split>/<name>``: the image of a sample key (``.../text<i>``) or of a reader's skipped key."""
    return "/".join(key.split("/")[:3])


def check_split_size(report: Report, split: str, samples: Sequence[SourceSample]) -> None:
    """Adds to the closing report how many images became rows, against the published split size, and saves it.

    A mismatch is a warning, never an error: it names each image left out with its reason (the reader's and the
    row builder's), or says that none failed, so the directory holds another set of files.

    Args:
        report: The build's report (its ``skipped`` entries carry ``key`` and ``reason``).
        split: ``train``, ``val`` or ``test``.
        samples: Every sample read (not a ``--limit`` draw).
    """
    failed: dict[str, str] = {}
    for entry in report.skipped:
        failed.setdefault(image_key(entry["key"]), entry["reason"])
    n = len({image_key(sample.key) for sample in samples} - failed.keys())
    expected = PUBLISHED_SIZES[split]
    report.notes.append(f"ReasonSeg {split}: n = {n} images (published: {expected})")
    if n != expected:
        report.warnings.append(_mismatch(split, n, expected, failed))
    report.save()


def _mismatch(split: str, n: int, expected: int, failed: dict[str, str]) -> str:
    warning = f"ReasonSeg {split} has n = {n} images, the published split {expected}"
    if not failed:
        return f"{warning}; none failed, so the directory holds another set of files"
    listed = sorted(failed.items())
    named = "; ".join(f"{key} ({reason})" for key, reason in listed[:NAMED_IN_SUMMARY])
    rest = len(listed) - NAMED_IN_SUMMARY
    return f"{warning}; {len(listed)} not read: {named}" + (f"; {rest} more in the report json" if rest > 0 else "")
