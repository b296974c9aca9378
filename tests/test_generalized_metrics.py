"""gRefCOCO's metrics against a transcription of its authors' evaluator.

``rela_evaluate`` below is ReLA's ``ReferEvaluator`` (henghuiding/ReLA, gres_model/evaluation/refer_evaluation.py,
``computeIoU`` and the loop of ``evaluate()`` as of its "fix eval metrics" commit 884ef17, 2023-08-26), cut to one
source and to the four numbers, with the distributed gathering, logging and file output left out. Its predictions
carry ReLA's two outputs: a predicted mask and the no-target classifier's decision (``pred_nt``).
"""

import math

import numpy as np
import pytest

from recipe.task.metrics import GeneralizedMetrics


def compute_iou(pred_seg, gd_seg):
    I = np.sum(np.logical_and(pred_seg, gd_seg))  # noqa: E741 - ReLA's names
    U = np.sum(np.logical_or(pred_seg, gd_seg))
    return I, U


def rela_evaluate(predictions):
    accum_I, accum_U, accum_IoU = 0, 0, 0
    total_count, not_empty_count, empty_count = 0, 0, 0
    nt = {"TP": 0, "TN": 0, "FP": 0, "FN": 0}
    for eval_sample in predictions:
        I, U = compute_iou(eval_sample["pred_mask"], eval_sample["gt_mask"])  # noqa: E741
        if eval_sample["gt_nt"]:
            empty_count += 1
            if eval_sample["pred_nt"]:
                nt["TP"] += 1
                accum_IoU += 1
                accum_I += 0
                accum_U += 0
            else:
                nt["FN"] += 1
                accum_IoU += 0
                accum_I += 0
                accum_U += int(U)
        else:
            if eval_sample["pred_nt"]:
                nt["FP"] += 1
                I = 0  # noqa: E741
            else:
                nt["TN"] += 1
            this_iou = float(0) if U == 0 else float(I) / float(U)
            accum_IoU += this_iou
            accum_I += I
            accum_U += U
            not_empty_count += 1
        total_count += 1
    res = {"gIoU": 100.0 * (accum_IoU / total_count), "cIoU": accum_I * 100.0 / accum_U}
    if empty_count > 0:
        res["T_acc"] = nt["TN"] / (nt["TN"] + nt["FP"])
        res["N_acc"] = nt["TP"] / (nt["TP"] + nt["FN"])
    else:
        res["T_acc"] = res["N_acc"] = 0
    return res


def random_prediction(rng: np.random.Generator) -> dict:
    """A sample with an empty or a one-to-three-blob target, a mask that may be empty, and either decision."""
    shape = (int(rng.integers(4, 24)), int(rng.integers(4, 24)))
    gt = np.zeros(shape, bool)
    if rng.random() < 0.6:
        for _ in range(int(rng.integers(1, 4))):
            y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            gt[y : y + int(rng.integers(1, 6)), x : x + int(rng.integers(1, 6))] = True
    pred = rng.random(shape) < rng.choice([0.0, 0.1, 0.5]) if rng.random() < 0.5 else gt & (rng.random(shape) < 0.8)
    return {"pred_mask": pred, "gt_mask": gt, "gt_nt": not gt.any(), "pred_nt": bool(rng.random() < 0.4)}


def ours(predictions) -> dict:
    metrics = GeneralizedMetrics()
    for p in predictions:
        intersection, union = compute_iou(p["pred_mask"], p["gt_mask"])
        metrics.add(int(intersection), int(union), p["gt_nt"], p["pred_nt"])
    return metrics.summary()


@pytest.mark.parametrize("seed", range(40))
def test_matches_relas_evaluator_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    predictions = [random_prediction(rng) for _ in range(int(rng.integers(1, 40)))]
    if not any(p["gt_nt"] for p in predictions):  # ReLA reports 0 for both accuracies without a no-target sample
        predictions.append({**random_prediction(rng), "gt_nt": True, "gt_mask": np.zeros((5, 5), bool)})
        predictions[-1]["pred_mask"] = np.zeros((5, 5), bool)
    counted = [p for p in predictions if not p["gt_nt"] or not p["pred_nt"]]
    if sum(compute_iou(p["pred_mask"], p["gt_mask"])[1] for p in counted) == 0:
        predictions.append({"pred_mask": np.ones((3, 3), bool), "gt_mask": np.ones((3, 3), bool), "gt_nt": False})
        predictions[-1]["pred_nt"] = False  # ReLA divides by a zero union otherwise
    reference, summary = rela_evaluate(predictions), ours(predictions)
    assert 100 * summary["gIoU"] == pytest.approx(reference["gIoU"])
    assert 100 * summary["cIoU"] == pytest.approx(reference["cIoU"])
    assert summary["N_acc"] == pytest.approx(reference["N_acc"])
    assert summary["T_acc"] == pytest.approx(reference["T_acc"])
    assert summary["n"] == len(predictions) and summary["n_no_target"] == sum(p["gt_nt"] for p in predictions)


def test_each_of_relas_cases_by_hand():
    metrics = GeneralizedMetrics()
    assert metrics.add(0, 0, no_target=True, said_none=True).iou == 1.0  # TP: a correct "none"
    assert metrics.add(0, 7, no_target=True, said_none=False).iou == 0.0  # FN: 7 pixels found in nothing
    assert metrics.add(0, 10, no_target=False, said_none=True).iou == 0.0  # FP: "none" for a 10-pixel target
    assert metrics.add(6, 12, no_target=False, said_none=False).iou == 0.5  # TN: an answer, scored as usual
    summary = metrics.summary()
    assert summary["gIoU"] == pytest.approx(1.5 / 4)
    assert summary["cIoU"] == pytest.approx(6 / (7 + 10 + 12))
    assert (summary["N_acc"], summary["T_acc"]) == (0.5, 0.5)


def test_an_answer_without_a_list_is_the_wrong_decision_either_way():
    metrics = GeneralizedMetrics()
    assert metrics.add(0, 0, no_target=True, said_none=None).iou == 0.0  # never a correct "none"
    assert metrics.add(0, 9, no_target=False, said_none=None).iou == 0.0
    summary = metrics.summary()
    assert (summary["N_acc"], summary["T_acc"]) == (0.0, 0.0)


def test_without_no_target_samples_n_acc_is_undefined_and_t_acc_is_computed():
    metrics = GeneralizedMetrics()
    metrics.add(3, 4, no_target=False, said_none=False)
    metrics.add(0, 4, no_target=False, said_none=True)
    summary = metrics.summary()
    assert math.isnan(summary["N_acc"]) and summary["T_acc"] == 0.5
    assert math.isnan(GeneralizedMetrics().summary()["gIoU"])
