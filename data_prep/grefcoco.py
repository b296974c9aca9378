"""gRefCOCO (generalized referring expressions: several objects or none) as its own ``grefer.py`` reads it.

The release holds ``grefs(unc).json`` (a JSON list of refs over every split; ``grefs(unc).p``, when present, wins, as
in ``grefer.py``) and a COCO ``instances.json`` under ``<root>``; the images are COCO train2014. A ref's ``ann_id``
is a list of annotation ids, ``[-1]`` for an expression that matches nothing; its target is the union of its
non-crowd annotations (``getMaskByRef(merge=True)``). Every sentence of a ref is one sample, as in ReLA's loader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_prep.refer import read_coco_instances
from data_prep.safe_pickle import load_plain_pickle
from data_prep.samples import Skipped, SourceSample
from recipe.task.dataset_rows import ExtraInfo

DATASET = "grefcoco"
SPLITS = ("train", "val", "testA", "testB")
NO_TARGET = [-1]
"""``ann_id`` of a no-target ref (``grefer.py``: ``if ann_ids == [-1]``)."""


def grefcoco_files(root: str | Path) -> tuple[Path, Path]:
    """``(refs file, instances.json)`` under ``root``: ``grefs(unc).p`` when present, else ``grefs(unc).json``."""
    root = Path(root)
    pickled = root / "grefs(unc).p"
    return (pickled if pickled.is_file() else root / "grefs(unc).json"), root / "instances.json"


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]  # grefer.py's _toList


def read_grefcoco(root: str | Path, image_root: str | Path, split: str) -> tuple[list[SourceSample], list[Skipped]]:
    """Expression-level samples of one split, in (ref_id, sent_id) order; each lists its objects (none for a
    no-target ref).

    Refs pointing at unknown annotations or images, refs mixing ``-1`` with real ids, refs whose annotations are all
    crowd, and refs without sentences are skipped with a reason; files that cannot be read raise ValueError.

    Args:
        root: The directory holding ``grefs(unc).json`` and ``instances.json``.
        image_root: The COCO train2014 images.
        split: ``train``, ``val``, ``testA`` or ``testB``.
    """
    if split not in SPLITS:
        raise ValueError(f"grefcoco has splits {SPLITS}, not {split!r}")
    refs_path, instances_path = grefcoco_files(root)
    for path in (refs_path, instances_path):
        if not path.is_file():
            raise ValueError(f"missing {path}: expected <root>/grefs(unc).json and <root>/instances.json")
    images, annotations = read_coco_instances(instances_path)
    if refs_path.suffix == ".p":
        refs = load_plain_pickle(refs_path)
    else:
        try:
            refs = json.loads(refs_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{refs_path}: not JSON ({err})") from err
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    in_split = sorted(
        (ref for ref in refs if isinstance(ref, dict) and ref.get("split") == split),
        key=lambda ref: int(ref.get("ref_id", -1)),
    )
    samples, skipped = [], []
    for ref in in_split:
        result = _ref_samples(ref, images, annotations, Path(image_root), split)
        (samples.extend if isinstance(result, list) else skipped.append)(result)
    return samples, skipped


def _ref_samples(
    ref: dict[str, Any], images: dict, annotations: dict, image_root: Path, split: str
) -> list[SourceSample] | Skipped:
    key = f"{DATASET}/{split}/ref{ref.get('ref_id')}"
    ann_ids = _as_list(ref.get("ann_id"))
    if ann_ids == NO_TARGET:
        objects: list[dict[str, Any]] = []
    elif -1 in ann_ids or not ann_ids:
        return Skipped(key, f"ann_id {ann_ids} mixes the no-target id -1 with objects, or is empty")
    else:
        missing = [ann_id for ann_id in ann_ids if ann_id not in annotations]
        if missing:
            return Skipped(key, f"ref points at unknown annotations {missing}")
        objects = [annotations[ann_id] for ann_id in ann_ids if not annotations[ann_id].get("iscrowd")]
        if not objects:
            return Skipped(key, "every annotation of the ref is a crowd annotation (grefer.py skips them)")
    image = images.get(ref.get("image_id"))
    if image is None:
        return Skipped(key, f"ref points at unknown image {ref.get('image_id')}")
    if any(annotation.get("image_id") != image["id"] for annotation in objects):
        return Skipped(key, "an annotation of the ref belongs to another image")
    sentences = [
        s for s in ref.get("sentences", []) if isinstance(s, dict) and str(s.get("sent") or s.get("raw") or "").strip()
    ]
    if not sentences:
        return Skipped(key, "ref has no sentences")
    ids = {
        ExtraInfo.image_id.name: image["id"],
        ExtraInfo.ann_id.name: objects[0]["id"] if len(objects) == 1 else None,
        ExtraInfo.ref_id.name: ref.get("ref_id"),
    }
    return [
        SourceSample(
            key=f"{key}/sent{sentence.get('sent_id')}",
            dataset=DATASET,
            split=split,
            question=str(sentence.get("sent") or sentence.get("raw")).strip(),
            image_path=str(image_root / image["file_name"]),
            coco_hw=(int(image["height"]), int(image["width"])),
            objects=tuple(annotation.get("segmentation") for annotation in objects),
            ids={**ids, ExtraInfo.sent_id.name: sentence.get("sent_id")},
        )
        for sentence in sorted(sentences, key=lambda s: int(s.get("sent_id", -1)))
    ]
