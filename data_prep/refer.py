"""RefCOCO, RefCOCO+ and RefCOCOg in the refer layout LISA uses: ``instances.json`` and a refs pickle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.safe_pickle import load_plain_pickle
from data_prep.samples import Skipped, SourceSample

SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
SPLITS = {"unc": ("train", "val", "testA", "testB"), "umd": ("train", "val", "test")}


def refer_files(refer_root: str | Path, dataset: str) -> tuple[Path, Path]:
    """``(instances.json, refs pickle)`` of a dataset under ``refer_root``."""
    directory = Path(refer_root) / dataset
    return directory / "instances.json", directory / f"refs({SPLIT_BY[dataset]}).p"


def read_refer(
    refer_root: str | Path, image_root: str | Path, dataset: str, split: str
) -> tuple[list[SourceSample], list[Skipped]]:
    """Expression-level samples of one split: one per (sentence, referred object), in (ref_id, sent_id) order.

    Refs whose annotation or image is missing from ``instances.json`` are skipped with a reason; files that cannot
    be read at all raise ValueError (a malicious pickle raises UnsafePickleError).
    """
    if dataset not in SPLIT_BY:
        raise ValueError(f"unknown refer dataset {dataset!r}; known: {sorted(SPLIT_BY)}")
    if split not in SPLITS[SPLIT_BY[dataset]]:
        raise ValueError(f"{dataset} has splits {SPLITS[SPLIT_BY[dataset]]}, not {split!r}")
    instances_path, refs_path = refer_files(refer_root, dataset)
    for path in (instances_path, refs_path):
        if not path.is_file():
            raise ValueError(f"missing {path}: expected <refer-root>/<dataset>/instances.json and refs(<splitBy>).p")
    try:
        instances = json.loads(instances_path.read_text())
        images = {image["id"]: image for image in instances["images"]}
        annotations = {annotation["id"]: annotation for annotation in instances["annotations"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{instances_path}: not a COCO instances file ({type(err).__name__}: {err})") from err
    refs = load_plain_pickle(refs_path)
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    samples, skipped = [], []
    for ref in sorted((r for r in refs if isinstance(r, dict) and r.get("split") == split), key=_ref_order):
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
    ids = {"image_id": image["id"], "ann_id": annotation["id"], "ref_id": ref.get("ref_id")}
    return [
        SourceSample(
            key=f"{key}/sent{sentence.get('sent_id')}",
            dataset=dataset,
            split=split,
            question=str(sentence["sent"]).strip(),
            image_path=str(image_root / image["file_name"]),
            coco_segmentation=annotation.get("segmentation"),
            coco_hw=(int(image["height"]), int(image["width"])),
            ids={**ids, "sent_id": sentence.get("sent_id")},
        )
        for sentence in sentences
    ]
