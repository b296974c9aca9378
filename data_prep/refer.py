"""RefCOCO, RefCOCO+ and RefCOCOg in the refer layout LISA uses: ``instances.json`` and a refs pickle.

A subset (e.g. the 9,000 RefCOCOg training samples SAM-Veteran shares with Seg-Zero) is chosen with a file of
``ref_id`` values, one per line: the refer API's id of a (referred object, expressions) entry; every expression of
a listed ref is read.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from data_prep.safe_pickle import load_plain_pickle
from data_prep.samples import Skipped, SourceSample
from recipe.task.dataset_rows import ExtraInfo

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
SPLITS = {"unc": ("train", "val", "testA", "testB"), "umd": ("train", "val", "test")}


def refer_files(refer_root: str | Path, dataset: str) -> tuple[Path, Path]:
    """``(instances.json, refs pickle)`` of a dataset under ``refer_root``."""
    directory = Path(refer_root) / dataset
    return directory / "instances.json", directory / f"refs({SPLIT_BY[dataset]}).p"


def read_coco_instances(path: Path) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
    """A COCO ``instances.json``'s images and annotations, each by id.

    Raises:
        ValueError: When the file is not a COCO instances file.
    """
    try:
        instances = json.loads(path.read_text())
        images = {image["id"]: image for image in instances["images"]}
        annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a COCO instances file ({type(err).__name__}: {err})") from err
    return images, annotations


def read_id_file(path: str | Path) -> frozenset[int]:
    """The ``ref_id`` values listed in ``path``, one per line; blank lines and ``#`` comments are ignored.

    Raises:
        ValueError: When the file cannot be read or a line is not an integer.
    """
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read the id file {path}: {err}") from err
    ids = set()
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            ids.add(int(text))
        except ValueError:
            raise ValueError(f"{path}:{number}: expected one integer ref_id per line, got {text!r:.40}") from None
    return frozenset(ids)


def read_refer(
    refer_root: str | Path,
    image_root: str | Path,
    dataset: str,
    split: str,
    ref_ids: Collection[int] | None = None,
) -> tuple[list[SourceSample], list[Skipped]]:
    """Expression-level samples of one split: one per (sentence, referred object), in (ref_id, sent_id) order.

    Refs whose annotation or image is missing from ``instances.json`` are skipped with a reason; files that cannot
    be read at all raise ValueError (a malicious pickle raises UnsafePickleError).

    Args:
        refer_root: Directory holding ``<dataset>/instances.json`` and ``refs(<splitBy>).p``.
        image_root: Directory of the COCO images.
        dataset: ``refcoco``, ``refcoco+`` or ``refcocog``.
        split: The split to read.
        ref_ids: Read only these refs (see :func:`read_id_file`); a listed id the split lacks is reported as
            skipped. None reads every ref.
    """
    if dataset not in SPLIT_BY:
        raise ValueError(f"unknown refer dataset {dataset!r}; known: {sorted(SPLIT_BY)}")
    if split not in SPLITS[SPLIT_BY[dataset]]:
        raise ValueError(f"{dataset} has splits {SPLITS[SPLIT_BY[dataset]]}, not {split!r}")
    instances_path, refs_path = refer_files(refer_root, dataset)
    for path in (instances_path, refs_path):
        if not path.is_file():
            raise ValueError(f"missing {path}: expected <refer-root>/<dataset>/instances.json and refs(<splitBy>).p")
    images, annotations = read_coco_instances(instances_path)
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    in_split = [r for r in refs if isinstance(r, dict) and r.get("split") == split]
    samples, skipped = [], []
    if ref_ids is not None:
        in_split = [r for r in in_split if r.get("ref_id") in ref_ids]
        found = {r.get("ref_id") for r in in_split}
        reason = f"ref_id listed in the id file but not in {dataset} {split}"
        skipped += [Skipped(f"{dataset}/{split}/ref{ref_id}", reason) for ref_id in sorted(set(ref_ids) - found)]
    for ref in sorted(in_split, key=_ref_order):
        sample_or_skip = _ref_samples(ref, images, annotations, Path(image_root), dataset, split)
        (samples.extend if isinstance(sample_or_skip, list) else skipped.append)(sample_or_skip)
    return samples, skipped


def _ref_order(ref: dict[str, Any]) -> tuple[int, int]:
    return int(ref.get("ref_id", -1)), int(ref.get("ann_id", -1))


def _ref_samples(
    ref: dict[str, Any], images: dict, annotations: dict, image_root: Path, dataset: str, split: str
) -> list[SourceSample] | Skipped:
    key = f"{dataset}/{split}/ref{ref.get('ref_id')}"
    annotation = annotations.get(ref.get("ann_id"))
    if annotation is None:
        return Skipped(key, f"ref points at unknown annotation {ref.get('ann_id')}")
    image = images.get(annotation.get("image_id"))
    if image is None:
        return Skipped(key, f"annotation {annotation['id']} points at unknown image {annotation.get('image_id')}")
    sentences = [s for s in ref.get("sentences", []) if isinstance(s, dict) and str(s.get("sent", "")).strip()]
    if not sentences:
        return Skipped(key, "ref has no sentences")
    ids = {
        ExtraInfo.image_id.name: image["id"],
        ExtraInfo.ann_id.name: annotation["id"],
        ExtraInfo.ref_id.name: ref.get("ref_id"),
    }
    return [
        SourceSample(
            key=f"{key}/sent{sentence.get('sent_id')}",
            dataset=dataset,
            split=split,
            question=str(sentence["sent"]).strip(),
            image_path=str(image_root / image["file_name"]),
            coco_segmentation=annotation.get("segmentation"),
            coco_hw=(int(image["height"]), int(image["width"])),
            ids={**ids, ExtraInfo.sent_id.name: sentence.get("sent_id")},
        )
        for sentence in sentences
    ]
