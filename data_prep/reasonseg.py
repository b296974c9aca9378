"""ReasonSeg in LISA's layout: ``<root>/<split>/<name>.jpg`` with ``<name>.json`` (texts and labelled polygons)."""

from __future__ import annotations

import json
from pathlib import Path

from data_prep.samples import Skipped, SourceSample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_reasonseg(root: str | Path, split: str, all_texts: bool = False) -> tuple[list[SourceSample], list[Skipped]]:
    """Samples of one split, in file-name order.

    Args:
        root: The ReasonSeg directory holding ``train``, ``val`` and ``test``.
        split: The split directory.
        all_texts: One sample per text (training); otherwise the first text only, as LISA evaluates val and test.
    """
    directory = Path(root) / split
    if not directory.is_dir():
        raise ValueError(f"missing {directory}: expected <reasonseg-root>/{split}/*.json with their images")
    samples, skipped = [], []
    for json_path in sorted(directory.glob("*.json")):
        key = f"reasonseg/{split}/{json_path.stem}"
        image_path = next((p for s in IMAGE_SUFFIXES if (p := json_path.with_suffix(s)).is_file()), None)
        if image_path is None:
            skipped.append(Skipped(key, "no image next to the json"))
            continue
        try:
            annotation = json.loads(json_path.read_text())
            texts = [str(t).strip() for t in annotation["text"] if str(t).strip()]
            shapes = tuple(
                {"label": str(shape["label"]), "points": shape["points"]}
                for shape in annotation["shapes"]
                if str(shape["label"]).lower() != "flag"  # LISA: deprecated, meaningless annotations
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            skipped.append(Skipped(key, f"unreadable LISA json ({type(err).__name__}: {err})"))
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
                    ids={"image_id": None, "ann_id": None, "ref_id": None, "sent_id": index},
                )
            )
    return samples, skipped
