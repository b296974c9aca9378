"""Your own data: a JSONL or CSV file of ``image``, ``question``, ``mask`` (or ``masks``) and optionally ``ignore``.

``masks`` instead of ``mask`` makes a generalized row (several objects or none): a JSON list with one mask per
object, ``[]`` for a question that matches nothing. Its prompt asks for a list of objects, as gRefCOCO's rows do.

A mask (and an ignore mask) is one of:

- a list of COCO polygons ``[[x1, y1, x2, y2, x3, y3, ...], ...]`` in pixel-edge coordinates of the image;
- a COCO RLE ``{"size": [H, W], "counts": ...}`` (compressed string or uncompressed list of runs);
- the path of a PNG of the image's size whose non-zero pixels are the mask (any non-zero colour channel for colour
  PNGs; alpha is not read).

Paths are relative to the file's directory unless absolute. In a CSV every cell is text: a mask cell starting with
``[`` or ``{`` is read as JSON, any other as a path, and an empty ``ignore`` cell means none. Ignored pixels become
255 in the label mask, over the target. Every row that cannot be a sample is skipped with its line number
(``<name>/<split>/line<N>``; for a CSV record spanning lines, its last line) and the reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_prep.render import render_coco, union_labels
from data_prep.samples import Skipped, SourceSample
from recipe.task.dataset_rows import IGNORE_LABEL

REQUIRED = ("image", "question")
TARGET_FIELDS = ("mask", "masks")
SUFFIXES = (".jsonl", ".csv")
POLYGON_FORM = "a polygon mask is a list of polygons [[x1, y1, x2, y2, x3, y3, ...], ...]"


@dataclass(frozen=True)
class CustomSample(SourceSample):
    """A source sample whose masks are given as polygons, a COCO RLE dict or a resolved PNG path.

    Attributes:
        mask: The target (None in a generalized sample, whose ``objects`` hold one mask form per object).
        ignore: Pixels left out of scoring, or None.
    """

    mask: Any = None
    ignore: Any = None


def custom_inputs(path: str | Path, name: str) -> dict[str, str]:
    """What determines the samples, for the resume fingerprint: an edited file never reuses its old shards."""
    path = Path(path)
    return {"file": str(path.absolute()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "name": name}


def read_custom(path: str | Path, split: str, name: str = "custom") -> tuple[list[CustomSample], list[Skipped]]:
    """Samples of a JSONL or CSV file in line order, and every line that cannot be one, with its reason.

    Args:
        path: A ``.jsonl`` or ``.csv`` file.
        split: The split the rows are written for (``train`` builds training rows).
        name: The dataset name: rows get ``data_source`` ``<name>_<split>``.

    Raises:
        ValueError: When the file cannot be read, has another suffix, or a CSV header lacks a required column.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: expected a {' or '.join(SUFFIXES)} file")
    try:
        data = path.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM, as spreadsheets write it
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    records = _csv_records(data, path) if path.suffix.lower() == ".csv" else _jsonl_records(data)
    base = path.absolute().parent
    samples, skipped = [], []
    # Reasons found while reading a record carry an empty key: each gets its line's key here.
    for number, record in records:
        key = f"{name}/{split}/line{number}"
        result = _sample(key, record, base, name, split) if isinstance(record, dict) else record
        if isinstance(result, Skipped):
            skipped.append(Skipped(key, result.reason))
        else:
            samples.append(result)
    return samples, skipped


def _jsonl_records(data: bytes) -> Iterator[tuple[int, dict[str, Any] | Skipped]]:
    # Split the bytes, not decoded text: str.splitlines also splits at U+2028, which JSON strings may hold.
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            yield number, Skipped("", f"malformed JSON line: not UTF-8 ({err.reason} at byte {err.start})")
            continue
        except json.JSONDecodeError as err:  # its own "line 1" would only confuse: name the column
            yield number, Skipped("", f"malformed JSON line: {err.msg} at column {err.colno}")
            continue
        if not isinstance(record, dict):
            yield number, Skipped("", f"malformed JSON line: expected an object, got {type(record).__name__}")
            continue
        yield number, record


def _csv_records(data: bytes, path: Path) -> Iterator[tuple[int, dict[str, Any] | Skipped]]:
    try:
        reader = csv.DictReader(io.StringIO(data.decode("utf-8"), newline=""))
        header = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: not a UTF-8 CSV file: {err}") from err
    missing = [column for column in REQUIRED if column not in header]
    if not any(column in header for column in TARGET_FIELDS):
        missing.append("mask or masks")
    if missing:
        raise ValueError(f"{path}: the CSV header lacks {missing}; columns: image, question, mask or masks[, ignore]")
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield reader.line_num, Skipped("", f"malformed CSV record: {err}")
            continue
        if None in row:
            yield reader.line_num, Skipped("", f"malformed CSV record: more fields than the {len(header)} columns")
            continue
        yield reader.line_num, {column: _cell(column, value) for column, value in row.items()}


def _cell(column: str, value: str | None) -> Any:
    """A CSV cell as JSONL would hold it: JSON for a mask cell that starts like a list or an object."""
    text = (value or "").strip()
    if not text:
        return None
    if column in ("mask", "masks", "ignore") and text[0] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            return Skipped("", f"malformed JSON in the {column} column: {err.msg} at character {err.pos}")
    return text


def _sample(key: str, record: dict[str, Any], base: Path, name: str, split: str) -> CustomSample | Skipped:
    for field in REQUIRED:
        value = record.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return Skipped(key, f"missing field {field!r}")
    given = [field for field in TARGET_FIELDS if record.get(field) not in (None, "")]
    if len(given) != 1:
        return Skipped(key, "give exactly one of 'mask' (one target) and 'masks' (a list: several targets or none)")
    if not isinstance(record["image"], str) or not isinstance(record["question"], str):
        return Skipped(key, "malformed field: 'image' and 'question' must be strings")
    image = _resolve(record["image"], base)
    if not image.is_file():
        return Skipped(key, f"missing image: {image}")
    masks = {}
    for field in ("mask", "ignore"):
        mask = _mask_form(record.get(field), base, field)
        if isinstance(mask, Skipped):
            return Skipped(key, mask.reason)
        masks[field] = mask
    objects = None
    if given == ["masks"]:
        objects = _object_forms(record["masks"], base)
        if isinstance(objects, Skipped):
            return Skipped(key, objects.reason)
    return CustomSample(
        key=key,
        dataset=name,
        split=split,
        question=record["question"].strip(),
        image_path=str(image),
        mask=masks["mask"],
        ignore=masks["ignore"],
        objects=objects,
    )


def _object_forms(value: Any, base: Path) -> tuple[Any, ...] | Skipped:
    """A ``masks`` list as one mask form per object (none: no target), or the reason it is not one."""
    if isinstance(value, Skipped):
        return value
    if not isinstance(value, list):
        return Skipped("", f"masks: expected a list with one mask per object, got {type(value).__name__}")
    forms = []
    for number, item in enumerate(value, 1):
        form = _mask_form(item, base, f"masks[{number}]") if item not in (None, "", []) else None
        if form is None:
            return Skipped("", f"masks[{number}] is empty; list each object's mask, or give [] for no target")
        if isinstance(form, Skipped):
            return form
        forms.append(form)
    return tuple(forms)


def _resolve(path: str, base: Path) -> Path:
    return Path(path) if Path(path).is_absolute() else base / path


def _mask_form(value: Any, base: Path, field: str) -> Any:
    """Polygons and RLE as given, a PNG as its resolved path, or the reason the value is none of them."""
    if value is None or value == "":
        return None
    if isinstance(value, Skipped):
        return value
    if isinstance(value, str):
        path = _resolve(value, base)
        return str(path) if path.is_file() else Skipped("", f"missing {field} PNG: {path}")
    if isinstance(value, list):
        return value if value and all(isinstance(p, list) for p in value) else Skipped("", f"{field}: {POLYGON_FORM}")
    if isinstance(value, dict):
        return value
    return Skipped("", f"{field}: expected polygons, a COCO RLE or a PNG path, got {type(value).__name__}")


def render_custom(sample: CustomSample, height: int, width: int) -> np.ndarray:
    """The label mask (0, 1, IGNORE_LABEL) of a custom sample: the mask, with ignored pixels 255 over it.

    Raises:
        ValueError: For an empty mask, a polygon point outside the image, an unreadable PNG or a mask of another size.
    """
    target = _render(sample.mask, height, width, "mask")
    if not target.any():
        raise ValueError("empty mask")
    labels = target.astype(np.uint8)
    if sample.ignore is not None:
        labels[_render(sample.ignore, height, width, "ignore")] = IGNORE_LABEL
    return labels


def render_custom_objects(sample: CustomSample, height: int, width: int) -> tuple[list[np.ndarray], np.ndarray]:
    """A generalized custom sample's object masks and label mask (their union, ignored pixels 255 over it).

    Raises:
        ValueError: As :func:`render_custom`, and for an object of zero area.
    """
    masks = [_render(form, height, width, f"masks[{n}]") for n, form in enumerate(sample.objects or (), 1)]
    labels = union_labels(masks, height, width)
    if sample.ignore is not None:
        labels[_render(sample.ignore, height, width, "ignore")] = IGNORE_LABEL
    return masks, labels


def _render(form: Any, height: int, width: int, field: str) -> np.ndarray:
    if isinstance(form, str):
        return _read_png(Path(form), height, width)
    mask = render_coco(form, height, width).astype(bool)
    if isinstance(form, list):
        # pycocotools clips polygons silently; a point off the image means the polygon belongs to another image.
        for polygon in form:
            for x, y in zip(polygon[::2], polygon[1::2], strict=True):
                if not (0 <= x <= width and 0 <= y <= height):
                    raise ValueError(f"{field} polygon point ({x}, {y}) is outside the {height}x{width} image")
    return mask


def _read_png(path: Path, height: int, width: int) -> np.ndarray:
    try:
        with Image.open(path) as png:
            colour = [index for index, band in enumerate(png.getbands()) if band != "A"]
            array = np.asarray(png)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise ValueError(f"unreadable mask PNG {path}: {type(err).__name__}: {err}") from err
    mask = (array[..., colour] != 0).any(axis=-1) if array.ndim == 3 else array != 0
    if mask.shape != (height, width):
        raise ValueError(f"mask PNG {path} is {mask.shape[0]}x{mask.shape[1]}, the image {height}x{width}")
    return mask
