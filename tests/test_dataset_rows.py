"""The row contract (recipe/task/dataset_rows.py) against its independent references: the parquet schema that
data_prep writes, rows written by data_prep's real writers and read back from disk, and the papers' definitions
(SAM-Veteran's Good Enough mask, LISA's ignore label)."""

import io

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from data_prep.render import render_lisa
from data_prep.rows import RowOptions, build_row
from data_prep.samples import SourceSample
from data_prep.schema import EXTRA_INFO, GROUND_TRUTH, REGION, ROW
from data_prep.shards import write_dataset
from data_prep.synthetic import synthetic_refer_parquet
from data_prep.veteran import Thresholds, build_auxiliary, build_mask_comprehension, build_workflow, classify
from recipe.evaluate.samples import BadSample, EvalSample, load_sample
from recipe.task.dataset_rows import (
    AUXILIARY,
    AUXILIARY_CASES,
    GOOD_ENOUGH,
    GROUNDING,
    IGNORE_LABEL,
    MASK_COMPREHENSION,
    MASK_COMPREHENSION_CASES,
    NEED_REFINEMENT,
    SAMR1,
    TASK_AGENTS,
    WORKFLOW,
    ExtraInfo,
    GroundTruth,
    Region,
    RewardModel,
    Row,
    is_good_enough,
    reward_image,
    with_reward_image,
)
from recipe.task.labels import label_mask
from recipe.task.metrics import SegMetrics
from recipe.task.prompts import build_messages
from recipe.task.stored_logits import decode_logits
from reward_server.masks import MODEL_SIZE, decode_rle, edge_excluded_iou, resize_mask

from support.fake_sam import GoodEveryNth

POLYGON = [40.0, 30.0, 150.0, 35.0, 140.0, 110.0, 50.0, 100.0]


def test_the_views_name_the_parquet_schemas_fields_in_order():
    reward_model = ROW.field("reward_model").type
    assert tuple(ROW.names) == Row.FIELDS
    assert tuple(field.name for field in reward_model) == RewardModel.FIELDS
    assert tuple(GROUND_TRUTH.names) == GroundTruth.FIELDS
    assert tuple(field.name for field in reward_model.field("ground_truth").type) == GroundTruth.FIELDS
    assert tuple(EXTRA_INFO.names) == ExtraInfo.FIELDS
    assert tuple(field.name for field in REGION) == Region.FIELDS
    assert tuple(field.name for field in GROUND_TRUTH.field("false_positive").type) == Region.FIELDS


def test_a_built_row_is_exactly_what_the_schema_holds():
    """Every field a view builds lands in its parquet column: pyarrow would silently drop a misnamed one."""
    truth = GroundTruth.build(
        mask={"size": [2, 2], "counts": "04"},
        box=[0.0, 0.0, 2.0, 2.0],
        case=GOOD_ENOUGH,
        false_positive=Region.build(mask={"size": [2, 2], "counts": "13"}, center=[1.0, 1.0]),
    )
    row = Row.build(
        data_source="x_train",
        prompt=[{"role": "user", "content": "q"}],
        images=[{"bytes": b"jpeg"}],
        reward_model=RewardModel.build(style="rule", ground_truth=truth),
        extra_info=ExtraInfo.build(index=3, question="q", task=GROUNDING),
        agent_name=TASK_AGENTS[GROUNDING],
    )
    (stored,) = pa.Table.from_pylist([row.to_dict()], schema=ROW).to_pylist()
    assert stored == row.to_dict()
    assert stored["reward_model"]["ground_truth"]["false_positive"]["center"] == [1.0, 1.0]
    assert Row(stored).image_bytes == b"jpeg" and Row(stored).ground_truth.false_positive.center == [1.0, 1.0]


def test_a_view_reads_absent_fields_as_none_and_never_changes_its_dict():
    truth = {"mask": {"size": [1, 1], "counts": "1"}}
    view = GroundTruth(truth)
    assert view.box is None and view.false_positive is None and not view.good_enough
    changed = view.replace(case=GOOD_ENOUGH)
    assert changed.good_enough and truth == {"mask": {"size": [1, 1], "counts": "1"}}
    with pytest.raises(TypeError, match="no field"):
        view.replace(bbox=[0, 0, 1, 1])
    with pytest.raises(TypeError, match="no field"):
        ExtraInfo.build(questions="q")
    assert GroundTruth.of(view) is view and GroundTruth.of(truth).data is truth


def test_the_reward_image_travels_in_a_copy_of_extra_info():
    info = {"question": "q"}
    added = with_reward_image(info, b"png")
    assert reward_image(added) == b"png" and "image" not in info and added["question"] == "q"
    assert reward_image(None) is None and reward_image(info) is None


@pytest.fixture
def sample(tmp_path) -> SourceSample:
    height, width = 180, 240
    rng = np.random.default_rng(0)
    path = tmp_path / "image.png"
    Image.fromarray(rng.integers(0, 255, (height, width, 3), np.uint8)).save(path)
    ids = {"image_id": 7, "ann_id": 8, "ref_id": 9, "sent_id": 10}
    key = "refcocog/train/ref9/sent10"
    return SourceSample(key, "refcocog", "train", "the grey blob", str(path), [POLYGON], (height, width), ids=ids)


@pytest.mark.parametrize(("recipe", "task"), [("samr1", SAMR1), ("veteran", GROUNDING)])
def test_rows_written_by_data_prep_read_back_through_the_views(sample, tmp_path, recipe, task):
    out = tmp_path / "rows.parquet"
    write_dataset([sample], lambda s, i: build_row(s, i, RowOptions(recipe=recipe)), out, {"test": recipe})
    (stored,) = pq.read_table(out).to_pylist()
    row = Row(stored)
    height, width = sample.coco_hw
    expected = coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects([POLYGON], height, width))).astype(bool)
    truth = row.ground_truth
    assert np.array_equal(decode_rle(truth.orig_mask), expected)
    assert np.array_equal(decode_rle(truth.mask), resize_mask(expected, (MODEL_SIZE, MODEL_SIZE)))
    assert truth.orig_size == [height, width] and truth.ignore is None and truth.orig_ignore is None
    assert truth.init_mask is None and truth.case is None and truth.false_negative is None
    x1, y1, x2, y2 = truth.box  # the tight box of the target, scaled from the original to 840
    ys, xs = np.nonzero(expected)
    scale = (MODEL_SIZE / width, MODEL_SIZE / height)
    assert (x1, y1, x2, y2) == pytest.approx(
        [xs.min() * scale[0], ys.min() * scale[1], (xs.max() + 1) * scale[0], (ys.max() + 1) * scale[1]]
    )
    info = row.extra_info
    assert (info.question, info.dataset, info.split, info.key, info.index) == (
        "the grey blob",
        "refcocog",
        "train",
        sample.key,
        0,
    )
    assert (info.image_id, info.ann_id, info.ref_id, info.sent_id) == (7, 8, 9, 10)
    assert info.task == task and row.agent_name == TASK_AGENTS[task]
    assert row.prompt == build_messages(task, "the grey blob") and row.data_source == "refcocog_train"
    assert Image.open(io.BytesIO(row.image_bytes)).size == (MODEL_SIZE, MODEL_SIZE) and row.orig_image is None
    assert row.reward_model.style == "rule" and row.ability == "reasoning_segmentation"


def test_the_ignore_label_is_lisas_ignore_index_from_render_to_metrics(sample, tmp_path):
    """LISA paints "ignore" polygons 255 and scores with ``ignore_index=255``: those pixels count nowhere."""
    shapes = (
        {"label": "target", "points": [[10, 10], [60, 10], [60, 60], [10, 60]]},
        {"label": "ignore", "points": [[40, 10], [90, 10], [90, 60], [40, 60]]},
    )
    labels = render_lisa(shapes, *sample.coco_hw)
    assert IGNORE_LABEL == 255 and set(np.unique(labels)) == {0, 1, IGNORE_LABEL}
    row = build_row(sample, 0, RowOptions(keep_original_image=True), render=lambda *_: labels)
    assert np.array_equal(label_mask(Row(row).ground_truth), labels)
    target = labels == 1
    # Predicting the target plus every ignored pixel still scores 1 under LISA's convention.
    assert SegMetrics("lisa").score(target | (labels == IGNORE_LABEL), labels).iou == 1.0


def ellipse(axes=(200, 150)) -> np.ndarray:
    mask = np.zeros((MODEL_SIZE, MODEL_SIZE), np.uint8)
    cv2.ellipse(mask, (420, 420), axes, 0, 0, 360, 1, -1)
    return mask.astype(bool)


def test_good_enough_is_an_edge_excluded_iou_of_one():
    """SAM-Veteran (A.4): "samples with IoU = 1 are treated as Good Enough", IoU being its edge-excluded IoU, so a
    mask that differs from the ground truth only near the object's edge is Good Enough; one that misses more is
    not, and rows below 0.9 need refinement."""
    gt = ellipse()
    near_edge = ellipse((203, 153))  # 3 px wider: inside the dilated edge band that the IoU leaves out
    assert (near_edge != gt).any() and edge_excluded_iou(near_edge, gt) == 1.0
    assert is_good_enough(edge_excluded_iou(gt, gt)) and is_good_enough(edge_excluded_iou(near_edge, gt))
    smaller = ellipse((150, 100))
    assert not is_good_enough(edge_excluded_iou(smaller, gt))
    assert not is_good_enough(np.nextafter(1.0, 0.0))
    # data_prep sorts the rows with the same threshold, and leaves out those between 0.9 and 1.
    for iou, case in ((1.0, GOOD_ENOUGH), (np.nextafter(1.0, 0.0), None), (0.9, None), (0.89, NEED_REFINEMENT)):
        assert classify(iou, Thresholds()) == case
        assert (case == GOOD_ENOUGH) == is_good_enough(iou)


@pytest.fixture(scope="module")
def grounding(tmp_path_factory):
    root = tmp_path_factory.mktemp("contract_grounding")
    return synthetic_refer_parquet(root, root / "grounding.parquet", "veteran", num_images=6)


@pytest.mark.slow
def test_sam_veterans_derived_rows_read_back_through_the_views(grounding, tmp_path):
    source = [Row(row) for row in pq.read_table(grounding).to_pylist()]
    outs = {task: tmp_path / f"{task}.parquet" for task in (MASK_COMPREHENSION, AUXILIARY, WORKFLOW)}
    build_mask_comprehension(grounding, outs[MASK_COMPREHENSION], GoodEveryNth(2), case_mix="all")
    build_auxiliary(grounding, outs[AUXILIARY])
    build_workflow(grounding, outs[WORKFLOW])
    by_key = {row.extra_info.key: row for row in source}
    for task, out in outs.items():
        rows = [Row(row) for row in pq.read_table(out).to_pylist()]
        assert rows and all(row.agent_name == TASK_AGENTS[task] and row.extra_info.task == task for row in rows)
        for row in rows:
            grounding_row = by_key[row.extra_info.key]
            assert row.ground_truth.mask == grounding_row.ground_truth.mask
            assert row.extra_info.index == grounding_row.extra_info.index
            assert row.image_bytes == grounding_row.image_bytes
            if task == WORKFLOW:
                assert row.prompt == grounding_row.prompt and row.ground_truth == grounding_row.ground_truth
            else:
                assert row.prompt == build_messages(task, grounding_row.extra_info.question)
    for row in (Row(row) for row in pq.read_table(outs[MASK_COMPREHENSION]).to_pylist()):
        truth = row.ground_truth
        iou = edge_excluded_iou(decode_rle(truth.init_mask), decode_rle(truth.mask))
        assert truth.case in MASK_COMPREHENSION_CASES and truth.init_edge_iou == iou
        assert truth.good_enough == is_good_enough(iou) and decode_logits(truth.init_logits).shape == (256, 256)
    for row in (Row(row) for row in pq.read_table(outs[AUXILIARY]).to_pylist()):
        truth = row.ground_truth
        assert truth.case in AUXILIARY_CASES
        for region in (truth.false_positive, truth.false_negative):
            if region is not None:
                x, y = region.center
                assert decode_rle(region.mask)[round(y), round(x)]


def test_evaluation_reads_a_data_prep_row_and_names_what_a_broken_one_lacks(sample):
    row = build_row(sample, 0, RowOptions(keep_original_image=True, keep_empty_targets=True))
    loaded = load_sample("set:0", row)
    assert isinstance(loaded, EvalSample) and loaded.question == "the grey blob"
    assert loaded.labels.shape == sample.coco_hw and loaded.dataset == "refcocog_train"
    broken = {
        "no orig_image": Row(row).replace(orig_image=None),
        "IndexError": Row(row).replace(images=[]),
        "no reward_model.ground_truth": Row(row).replace(reward_model=None),
        "empty question": Row(row).replace(extra_info=None),
    }
    for reason, bad in broken.items():
        result = load_sample("set:0", bad.to_dict())
        assert isinstance(result, BadSample) and reason in result.error
