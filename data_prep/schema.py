"""The parquet schema of every dataset file, one for all tasks.

verl concatenates the files of ``data.train_files``; they concatenate only when their schemas match, so the
SAM-Veteran task files (grounding, mask comprehension, auxiliary) share this schema and leave unused fields null.
The fields and their order are the row contract's (``recipe.task.dataset_rows``, whose views every reader and
writer uses; tests/test_dataset_rows.py checks that both name the same fields); this module gives them their types.
"""

from __future__ import annotations

import pyarrow as pa

RLE = pa.struct([("size", pa.list_(pa.int32())), ("counts", pa.string())])
REGION = pa.struct([("mask", RLE), ("center", pa.list_(pa.float64()))])
TARGET = pa.struct([("mask", RLE), ("box", pa.list_(pa.float64()))])
LOGITS = pa.struct([("shape", pa.list_(pa.int32())), ("data", pa.binary())])  # recipe.task.stored_logits

# recipe.task.labels.label_mask reads these masks back as evaluation labels.
GROUND_TRUTH = pa.struct(
    [
        ("mask", RLE),  # target at 840x840 (model space)
        ("ignore", RLE),  # ignored pixels at 840 (ReasonSeg), or null
        ("box", pa.list_(pa.float64())),  # tight xyxy box of the target at 840
        ("orig_size", pa.list_(pa.int32())),  # [H, W] of the original image
        ("orig_mask", RLE),  # target at the original resolution
        ("orig_ignore", RLE),  # ignored pixels at the original resolution, or null
        ("init_mask", RLE),  # SAM-Veteran: the mask shown for refinement (SAM mask of the GT box, or corrupted GT)
        ("init_edge_iou", pa.float64()),  # mask comprehension: edge-excluded IoU of init_mask
        ("init_logits", LOGITS),  # mask comprehension: SAM2's low-res logits of init_mask, a refinement's mask_input
        ("case", pa.string()),  # good_enough | need_refinement | none | fp | fn | both
        ("false_positive", REGION),  # auxiliary: the included region and its centre
        ("false_negative", REGION),  # auxiliary: the excluded region and its centre
        ("objects", pa.list_(TARGET)),  # generalized rows: each object's mask and box at 840 (empty: none); else null
    ]
)

EXTRA_INFO = pa.struct(
    [
        ("index", pa.int64()),
        ("split", pa.string()),
        ("question", pa.string()),
        ("dataset", pa.string()),
        ("task", pa.string()),
        ("key", pa.string()),
        ("image_id", pa.int64()),
        ("ann_id", pa.int64()),
        ("ref_id", pa.int64()),
        ("sent_id", pa.int64()),
    ]
)

ROW = pa.schema(
    [
        ("data_source", pa.string()),
        ("prompt", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("images", pa.list_(pa.struct([("bytes", pa.binary())]))),
        ("ability", pa.string()),
        ("reward_model", pa.struct([("style", pa.string()), ("ground_truth", GROUND_TRUTH)])),
        ("extra_info", EXTRA_INFO),
        ("agent_name", pa.string()),
        ("orig_image", pa.binary()),  # evaluation sets: the original image file's bytes
    ]
)
