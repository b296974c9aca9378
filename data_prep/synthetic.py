"""Small datasets in the real on-disk formats, generated offline: for tests, benchmarks and CPU smoke runs.

- refer (LISA layout): ``<root>/refer_seg/<dataset>/instances.json`` (COCO, polygons and RLE, one crowd annotation)
  and ``refs(<split_by>).p``; images ``<root>/refer_seg/images/mscoco/images/train2014/COCO_train2014_*.jpg``.
- gRefCOCO: ``<root>/grefcoco/grefs(unc).json`` (a JSON list of refs: several objects, one, or none with
  ``ann_id`` ``[-1]``) and ``instances.json``; images ``<root>/images/train2014/COCO_train2014_*.jpg``.
- ReasonSeg (LISA json): ``<root>/ReasonSeg/<split>/<name>.jpg`` with ``<name>.json`` holding a "target" polygon, an
  "ignore" polygon and a "flag" polygon.

Objects are drawn into the images in their own colours, so a real SAM2 could find them.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from data_prep.corruption import random_polygon

REFER_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd"}
COLORS = [(220, 40, 40), (40, 180, 60), (40, 90, 220), (230, 200, 30), (170, 60, 200), (30, 200, 200)]
NAMES = ["red", "green", "blue", "yellow", "purple", "cyan"]


@dataclass(frozen=True)
class SyntheticRefer:
    refer_root: Path
    image_root: Path
    num_refs: int
    num_sentences: int


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    noise = rng.integers(90, 160, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)


def write_refer_dataset(
    root: str | Path, dataset: str = "refcocog", num_images: int = 6, objects_per_image: int = 2, seed: int = 0
) -> SyntheticRefer:
    """Writes a refer dataset; images alternate between train, val and test splits (testA/testB for unc).

    The first object of the first image is a crowd annotation in uncompressed RLE, the rest are polygons.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    refer_dir = root / "refer_seg" / dataset
    image_dir = root / "refer_seg" / "images" / "mscoco" / "images" / "train2014"
    refer_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    split_by = REFER_SPLIT_BY[dataset]
    splits = ["train", "val", "test"] if split_by == "umd" else ["train", "val", "testA", "testB"]
    images, annotations, refs = [], [], []
    sentence_id = 0
    for index in range(num_images):
        image_id = 1000 + index
        height, width = int(rng.integers(300, 480)), int(rng.integers(360, 640))
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        picture = _background(rng, height, width)
        for obj in range(objects_per_image):
            ann_id, color = 50_000 + index * 10 + obj, obj % len(COLORS)
            center = (float(rng.uniform(0.25, 0.75) * width), float(rng.uniform(0.25, 0.75) * height))
            polygon = random_polygon(rng, center, float(rng.uniform(0.1, 0.25) * min(height, width)), 8)
            cv2.fillPoly(picture, [np.round(polygon).astype(np.int32)], COLORS[color])
            flat = [[float(v) for v in polygon.reshape(-1)]]
            rle = mask_utils.merge(mask_utils.frPyObjects(flat, height, width))
            crowd = index == 0 and obj == 0
            segmentation = _uncompressed_rle(mask_utils.decode(rle)) if crowd else flat
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1 + color,
                    "segmentation": segmentation,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(crowd),
                }
            )
            sentences = [f"the {NAMES[color]} shape", f"{NAMES[color]} object in image {index}"]
            refs.append(
                {
                    "ref_id": 9000 + len(refs),
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "split": splits[index % len(splits)],
                    "category_id": 1 + color,
                    "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                    "sent_ids": [sentence_id, sentence_id + 1],
                    "sentences": [
                        {"sent_id": sentence_id + k, "sent": text, "raw": text, "tokens": text.split()}
                        for k, text in enumerate(sentences)
                    ],
                }
            )
            sentence_id += 2
        cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    categories = [{"id": 1 + i, "name": name, "supercategory": "shape"} for i, name in enumerate(NAMES)]
    (refer_dir / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    with open(refer_dir / f"refs({split_by}).p", "wb") as handle:
        pickle.dump(refs, handle, protocol=2)
    return SyntheticRefer(root / "refer_seg", image_dir, len(refs), sentence_id)


@dataclass(frozen=True)
class SyntheticGRefCOCO:
    root: Path
    image_root: Path
    num_refs: int


GREFCOCO_SPLITS = ("train", "val", "testA", "testB")


def write_grefcoco_dataset(root: str | Path, num_images: int = 4, seed: int = 0) -> SyntheticGRefCOCO:
    """Writes a gRefCOCO release: per image three shapes and three refs, one naming two of them (the first image's
    pair includes a crowd annotation, which the reader leaves out), one naming one, and one naming a colour that is
    not there (no target). Images rotate through train, val, testA and testB."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    data_dir, image_dir = root / "grefcoco", root / "images" / "train2014"
    data_dir.mkdir(parents=True, exist_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, refs, sentence_id = [], [], [], 0
    for index in range(num_images):
        image_id = 2000 + index
        height, width = int(rng.integers(300, 480)), int(rng.integers(360, 640))
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        picture = _background(rng, height, width)
        ann_ids = []
        for obj in range(3):
            ann_id = 70_000 + index * 10 + obj
            center = ((0.2 + 0.3 * obj) * width, float(rng.uniform(0.3, 0.7) * height))
            polygon = random_polygon(rng, center, float(rng.uniform(0.08, 0.13) * min(height, width)), 8)
            cv2.fillPoly(picture, [np.round(polygon).astype(np.int32)], COLORS[obj])
            flat = [[float(v) for v in polygon.reshape(-1)]]
            rle = mask_utils.merge(mask_utils.frPyObjects(flat, height, width))
            crowd = index == 0 and obj == 1
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1 + obj,
                    "segmentation": _uncompressed_rle(mask_utils.decode(rle)) if crowd else flat,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": int(crowd),
                }
            )
            ann_ids.append(ann_id)
        absent = NAMES[3 + index % 3]
        for targets, text in (
            (ann_ids[:2], f"the {NAMES[0]} and {NAMES[1]} shapes"),
            (ann_ids[2:], f"the {NAMES[2]} shape"),
            ([-1], f"the {absent} shape"),
        ):
            refs.append(
                {
                    "ref_id": 30_000 + len(refs),
                    "image_id": image_id,
                    "split": GREFCOCO_SPLITS[index % len(GREFCOCO_SPLITS)],
                    "ann_id": targets,
                    "category_id": [-1] if targets == [-1] else [1 + ann_ids.index(t) for t in targets],
                    "no_target": targets == [-1],
                    "file_name": f"COCO_train2014_{image_id:012d}_{len(refs)}.jpg",
                    "sentences": [
                        {"sent_id": sentence_id, "sent": text, "raw": text.capitalize(), "tokens": text.split()}
                    ],
                }
            )
            sentence_id += 1
        cv2.imwrite(str(image_dir / file_name), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
    categories = [{"id": 1 + i, "name": name, "supercategory": "shape"} for i, name in enumerate(NAMES)]
    (data_dir / "instances.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    (data_dir / "grefs(unc).json").write_text(json.dumps(refs))
    return SyntheticGRefCOCO(data_dir, image_dir, len(refs))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major runs starting with background), as crowd annotations store it."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    runs = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": [int(r) for r in runs]}


def write_reasonseg_split(root: str | Path, split: str = "val", num_images: int = 4, seed: int = 0) -> Path:
    """Writes ``<root>/ReasonSeg/<split>``: images with LISA json (target, ignore and flag polygons, two texts)."""
    rng = np.random.default_rng(seed)
    directory = Path(root) / "ReasonSeg" / split
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(num_images):
        height, width = int(rng.integers(300, 500)), int(rng.integers(360, 700))
        picture = _background(rng, height, width)
        target = random_polygon(rng, (0.4 * width, 0.5 * height), 0.25 * min(height, width), 10)
        ignore = random_polygon(rng, (0.55 * width, 0.5 * height), 0.12 * min(height, width), 6)
        flag = random_polygon(rng, (0.8 * width, 0.2 * height), 0.08 * min(height, width), 5)
        cv2.fillPoly(picture, [np.round(target).astype(np.int32)], COLORS[index % len(COLORS)])
        stem = f"reasonseg_{split}_{index:03d}"
        cv2.imwrite(str(directory / f"{stem}.jpg"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        shapes = [
            {"label": label, "points": points.tolist(), "shape_type": "polygon"}
            for label, points in (("target", target), ("ignore", ignore), ("flag", flag))
        ]
        texts = [f"What would you use to mark the {NAMES[index % len(NAMES)]} area?", "the second phrasing"]
        (directory / f"{stem}.json").write_text(json.dumps({"text": texts, "is_sentence": True, "shapes": shapes}))
    return directory


def synthetic_refer_parquet(
    root: str | Path,
    out: str | Path,
    recipe: str = "samr1",
    num_images: int = 6,
    limit: int | None = None,
    seed: int = 0,
) -> Path:
    """Writes a synthetic RefCOCOg dataset under ``root`` and converts its train split with ``python -m data_prep``.

    Raises:
        RuntimeError: When the conversion fails.
    """
    from data_prep import __main__ as data_prep_cli  # the CLI imports this module's siblings

    refer = write_refer_dataset(Path(root) / "downloads", "refcocog", num_images=num_images, seed=seed)
    args = ["refer", "--dataset", "refcocog", "--split", "train", "--recipe", recipe, "--workers", "1"]
    args += ["--refer-root", str(refer.refer_root), "--image-root", str(refer.image_root), "--out", str(out)]
    args += ["--seed", str(seed)] + (["--limit", str(limit)] if limit else [])
    if data_prep_cli.main(args) != 0:
        raise RuntimeError(f"data_prep refer failed for {out}")
    return Path(out)
