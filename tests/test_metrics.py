"""metrics.py: instance matching and scores on literal label images."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from etemlive.errors import CalibrationError, InputError
from etemlive.measure import measure_particles
from etemlive.metrics import (
    SCORE_KEYS,
    aggregate_scores,
    box_iou,
    instance_boxes,
    mask_to_instances,
    match_instances,
    read_yolo_boxes,
    score_against_mask,
    score_boxes,
    score_segmentation,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _squares(shape, specs):
    """Label image with squares: specs = [(label, row0, col0, side), ...]."""
    labels = np.zeros(shape, np.int32)
    for lab, r, c, s in specs:
        labels[r:r + s, c:c + s] = lab
    return labels


def test_perfect_match_any_numbering():
    true = _squares((40, 40), [(1, 5, 5, 8), (2, 20, 20, 10)])
    pred = np.where(true == 1, 9, np.where(true == 2, 4, 0)).astype(np.int32)
    m = match_instances(pred, true)
    assert m.true_ids.tolist() == [1, 2]
    assert m.pred_ids.tolist() == [9, 4]
    np.testing.assert_allclose(m.iou, [1.0, 1.0])
    s = score_segmentation(pred, true, 1.0)
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 1.0, 1.0)
    assert s["diameter_mae_nm"] == 0.0
    assert s["count_error"] == 0.0
    assert set(s) == set(SCORE_KEYS)


def test_iou_threshold_boundary():
    # True 10x10 = 100 px; pred covers 6 rows -> IoU 0.6; 4 rows -> IoU 0.4.
    true = _squares((30, 30), [(1, 10, 10, 10)])
    pred = np.zeros_like(true)
    pred[10:16, 10:20] = 1
    assert match_instances(pred, true).n_matched == 1
    assert match_instances(pred, true).iou[0] == pytest.approx(0.6)
    assert match_instances(pred, true, iou_threshold=0.7).n_matched == 0
    pred[:] = 0
    pred[10:14, 10:20] = 1
    assert match_instances(pred, true).n_matched == 0
    assert match_instances(pred, true, iou_threshold=0.3).n_matched == 1


def test_split_and_merge_errors():
    true = _squares((40, 60), [(1, 10, 5, 10), (2, 10, 15, 10), (3, 10, 40, 12)])
    pred = np.zeros_like(true)
    pred[10:20, 5:25] = 1  # merges true 1 and 2: IoU 0.5 with neither... exactly 100/200
    pred[10:22, 40:46] = 2  # half of true 3: IoU 0.5
    pred[10:22, 46:52] = 3  # other half of true 3: IoU 0.5
    s = score_segmentation(pred, true, 1.0)
    # IoU exactly 0.5 counts as a match (>=): true 1 or 2 matches the merged blob,
    # true 3 matches one of its halves.
    assert s["n_matched"] == 2
    assert s["n_true"] == 3 and s["n_pred"] == 3
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    s = score_segmentation(pred, true, 1.0, iou_threshold=0.51)
    assert s["n_matched"] == 0
    assert s["f1"] == 0.0


def test_false_positive_and_miss_counts():
    true = _squares((50, 50), [(1, 5, 5, 8), (2, 20, 20, 8), (3, 35, 35, 8)])
    pred = _squares((50, 50), [(1, 5, 5, 8), (2, 20, 20, 8), (5, 35, 5, 6), (6, 5, 35, 6)])
    s = score_segmentation(pred, true, 2.0)
    assert (s["n_true"], s["n_pred"], s["n_matched"]) == (3, 4, 2)
    assert s["precision"] == pytest.approx(0.5)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 * 2 / 7)
    assert s["count_error"] == pytest.approx(1 / 3)


def test_size_errors_on_matched_pairs():
    true = _squares((60, 60), [(1, 10, 10, 20)])
    pred = _squares((60, 60), [(1, 10, 10, 18)])  # IoU 0.81
    s = score_segmentation(pred, true, 0.5)
    d_true = math.sqrt(4 * 400 / math.pi) * 0.5
    d_pred = math.sqrt(4 * 324 / math.pi) * 0.5
    assert s["diameter_mae_nm"] == pytest.approx(d_true - d_pred)
    assert s["diameter_rel_err"] == pytest.approx((d_true - d_pred) / d_true)
    assert s["aspect_ratio_rmse"] == pytest.approx(0.0, abs=1e-9)


def test_aspect_and_roundness_rmse_match_measure():
    true = _squares((60, 60), [(1, 10, 10, 20)])
    pred = np.zeros_like(true)
    pred[10:30, 10:27] = 1
    s = score_segmentation(pred, true, 1.0)
    tp, tt = measure_particles(pred, 1.0).iloc[0], measure_particles(true, 1.0).iloc[0]
    assert s["aspect_ratio_rmse"] == pytest.approx(abs(tp["aspect_ratio"] - tt["aspect_ratio"]))
    assert s["roundness_rmse"] == pytest.approx(abs(tp["roundness"] - tt["roundness"]))
    assert s["aspect_ratio_rmse"] > 0.1


def test_edge_particles_excluded_both_sides():
    true = _squares((40, 40), [(1, 0, 10, 6), (2, 15, 15, 8)])
    pred = _squares((40, 40), [(3, 1, 10, 5), (4, 15, 15, 8), (5, 30, 0, 5)])
    m = match_instances(pred, true)
    # true 1 touches the top: excluded with its match (pred 3, which does not touch);
    # pred 5 touches the left edge and matches nothing: excluded.
    assert m.true_kept.tolist() == [2]
    assert m.pred_kept.tolist() == [4]
    assert m.n_matched == 1
    m_all = match_instances(pred, true, exclude_edge=False)
    assert (m_all.n_true, m_all.n_pred, m_all.n_matched) == (2, 3, 2)


def test_empty_images():
    z = np.zeros((10, 10), np.int32)
    s = score_segmentation(z, z, 1.0)
    assert (s["precision"], s["recall"], s["f1"]) == (1.0, 1.0, 1.0)
    assert math.isnan(s["diameter_mae_nm"]) and math.isnan(s["count_error"])
    one = _squares((10, 10), [(1, 3, 3, 3)])
    assert score_segmentation(z, one, 1.0)["recall"] == 0.0
    assert score_segmentation(one, z, 1.0)["precision"] == 0.0


@pytest.mark.parametrize(
    "pred, true, match",
    [
        (np.zeros((5, 5), np.int32), np.zeros((5, 6), np.int32), "shape"),
        (np.zeros((5, 5), np.float32), np.zeros((5, 5), np.int32), "integer"),
        (np.zeros((5, 5, 2), np.int32), np.zeros((5, 5, 2), np.int32), "2-D"),
    ],
)
def test_bad_inputs(pred, true, match):
    with pytest.raises(InputError, match=match):
        match_instances(pred, true)


@pytest.mark.parametrize("bad", [0.0, -2.0, float("nan")])
def test_bad_pixel_size(bad):
    z = np.zeros((5, 5), np.int32)
    with pytest.raises(CalibrationError):
        score_segmentation(z, z, bad)


def test_aggregate_micro_and_weighted():
    a = {"precision": 1, "recall": 1, "f1": 1, "n_true": 2, "n_pred": 2, "n_matched": 2,
         "diameter_mae_nm": 1.0, "diameter_rel_err": 0.1, "aspect_ratio_rmse": 0.0,
         "roundness_rmse": 0.3, "count_error": 0.0}
    b = {"precision": 0.5, "recall": 0.25, "f1": 1 / 3, "n_true": 4, "n_pred": 2,
         "n_matched": 1, "diameter_mae_nm": 4.0, "diameter_rel_err": 0.4,
         "aspect_ratio_rmse": 0.6, "roundness_rmse": 0.0, "count_error": -0.5}
    c = {"precision": 0.0, "recall": 1.0, "f1": 0.0, "n_true": 0, "n_pred": 1, "n_matched": 0,
         "diameter_mae_nm": math.nan, "diameter_rel_err": math.nan,
         "aspect_ratio_rmse": math.nan, "roundness_rmse": math.nan, "count_error": math.nan}
    g = aggregate_scores([a, b, c])
    assert (g["n_true"], g["n_pred"], g["n_matched"]) == (6, 5, 3)
    assert g["precision"] == pytest.approx(3 / 5)
    assert g["recall"] == pytest.approx(3 / 6)
    assert g["f1"] == pytest.approx(6 / 11)
    assert g["diameter_mae_nm"] == pytest.approx((2 * 1.0 + 4.0) / 3)
    assert g["aspect_ratio_rmse"] == pytest.approx(math.sqrt(0.36 / 3))
    assert g["roundness_rmse"] == pytest.approx(math.sqrt(2 * 0.09 / 3))
    assert g["count_error"] == pytest.approx(-1 / 6)


def test_mask_to_instances_connected_components():
    mask = np.zeros((10, 10, 4), np.uint8)
    mask[1:4, 1:4] = 255
    mask[1:4, 4:6] = 255  # touches the first: one region
    mask[7:9, 7:9] = 255
    labels = mask_to_instances(mask)
    assert labels.max() == 2
    assert (labels[1:4, 1:6] == labels[2, 2]).all()
    s = score_against_mask(labels, mask)
    assert s["f1"] == 1.0


def test_boxes_iou_and_scoring(tmp_path):
    np.testing.assert_allclose(box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10], [20, 20, 30, 30]]),
                               [[50 / 150, 0.0]])
    labels = _squares((100, 100), [(1, 10, 10, 20), (2, 50, 50, 10), (3, 80, 20, 8)])
    ids, boxes = instance_boxes(labels)
    assert ids.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(boxes[0], [10, 10, 30, 30])
    # YOLO file: box 1 exact, box 2 a bit larger, box 3 far away (a miss).
    lines = ["0 0.2 0.2 0.2 0.2", "0 0.55 0.55 0.12 0.12", "1 0.7 0.2 0.1 0.1"]
    path = tmp_path / "img.txt"
    path.write_text("\n".join(lines) + "\n")
    true = read_yolo_boxes(path, labels.shape)
    np.testing.assert_allclose(true[0], [10, 10, 30, 30])
    s = score_boxes(labels, true, pixel_size_nm=2.0)
    assert (s["n_pred"], s["n_true"], s["n_matched"]) == (3, 3, 2)
    assert s["diameter_mae_nm"] == pytest.approx((0 + 2 * 2.0) / 2 / 1 * 1)  # (0 + 2 px*2nm)/2
    assert s["precision"] == pytest.approx(2 / 3)


def test_read_yolo_rejects_bad_file(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("0 0.5 0.5 0.1\n")
    with pytest.raises(InputError, match="5 numbers"):
        read_yolo_boxes(p, (10, 10))


@pytest.mark.skipif(not (DATA / "msa_sintering").is_dir(), reason="../shared/data absent")
def test_real_mask_scores_itself():
    from skimage.io import imread

    path = sorted((DATA / "msa_sintering" / "test" / "labels").iterdir())[0]
    mask = imread(path)
    inst = mask_to_instances(mask)
    assert inst.max() > 0
    s = score_against_mask(inst, mask)
    assert s["f1"] == 1.0 and s["diameter_mae_nm"] == 0.0
