import json
import math

import numpy as np
import pytest
from _training_data import MPII_MAT_NAMES, make_coco, make_mpii

from model.keypoints import COCO17
from training.evaluation import (
    bootstrap_ap,
    coco_keypoint_ap,
    coco_results,
    load_mpii_gt,
    mpii_pckh,
    oks_iou,
    oks_nms,
    rescore,
)

ANKLES, KNEES, WRISTS = (0, 5), (1, 4), (10, 15)


def _mpii_case():
    """Four people; head boxes whose 0.6 x diagonal is exactly 10 px; errors along x."""
    n = 4
    rng = np.random.default_rng(0)
    gt = rng.uniform(50, 150, size=(n, 16, 2))
    err = np.zeros((n, 16))
    err[1] = 3.0  # within 0.5 (5 px), outside 0.1 (1 px)
    err[2, list(ANKLES)] = 7.0  # outside both
    err[3] = 0.5  # inside both ...
    err[3, list(KNEES)] = 5.0  # ... except the knees: exactly at 0.5 (counts, <=), outside 0.1
    missing = np.zeros((16, n))
    missing[list(WRISTS), 3] = 1  # person 3's wrists are not labelled
    preds = gt - 1 + np.stack([err, np.zeros_like(err)], axis=-1)  # 0-based predictions
    head = np.zeros((2, 2, n))
    head[1, 0], head[1, 1] = 10.0, 40.0 / 3.0  # diagonal 50/3, x 0.6 = 10
    g = {
        "joint_names": np.array(MPII_MAT_NAMES),
        "jnt_missing": missing,
        "pos_gt_src": gt.transpose(1, 2, 0),
        "headboxes_src": head,
    }
    return preds, g


def test_pckh_matches_a_hand_count():
    preds, gt = _mpii_case()
    m = mpii_pckh(preds, gt)
    assert m["Head"] == m["Shoulder"] == m["Elbow"] == m["Hip"] == 100.0
    assert m["Knee"] == 100.0  # error of exactly 0.5 head sizes is a hit
    assert m["Wrist"] == 100.0  # unlabelled wrists are not counted
    assert m["Ankle"] == 75.0  # person 2 misses both ankles
    # 14 joints (pelvis, thorax excluded) x 4 people - 2 unlabelled wrists = 54 counted
    assert math.isclose(m["PCKh"], 100 * 52 / 54)
    # at 0.1: person 0 all 14, person 1 none, person 2 all but ankles, person 3: 14 - 2 wrists - 2 knees
    assert math.isclose(m["PCKh@0.1"], 100 * (14 + 0 + 12 + 10) / 54)


def test_pckh_through_the_mat_file_and_the_json(tmp_path):
    root = make_mpii(tmp_path / "mpii", n_train=1, n_val=3)
    gt = load_mpii_gt(root / "annotations" / "mpii_gt_val.mat")
    records = json.loads((root / "annotations" / "mpii_val.json").read_text())
    preds = np.array([r["joints"] for r in records]) - 1  # the dataset's 0-based pixels
    m = mpii_pckh(preds, gt)
    assert all(v == 100.0 for v in m.values())
    preds[:, 9, 0] += 1000  # every head top off
    assert mpii_pckh(preds, gt)["Head"] == 0.0
    with pytest.raises(ValueError, match="predictions"):
        mpii_pckh(preds[:2], gt)


def _coco_gt(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=1, n_val=6)
    ann_file = root / "annotations" / "person_keypoints_val2017.json"
    return ann_file, json.loads(ann_file.read_text())["annotations"]


def test_coco_perfect_predictions_give_ap_1(tmp_path):
    ann_file, anns = _coco_gt(tmp_path)
    kps = np.array([np.reshape(a["keypoints"], (17, 3))[:, :2] for a in anns])
    results = coco_results(
        np.array([a["image_id"] for a in anns]), kps, np.ones((len(anns), 17)), np.ones(len(anns)),
        np.array([a["area"] for a in anns]),
    )  # fmt: skip
    m = coco_keypoint_ap(ann_file, results)
    assert m["AP"] == 1.0 and m["AP50"] == 1.0 and m["AP75"] == 1.0 and m["AR"] == 1.0


def test_coco_constructed_perturbation(tmp_path):
    """Every keypoint moved so that each person's OKS is exactly 0.72.

    A prediction matches at the thresholds 0.50 ... 0.70 and at none from 0.75 on, so
    AP = 5/10, AP50 = 1, AP75 = 0.
    """
    ann_file, anns = _coco_gt(tmp_path)
    sigmas = np.array(COCO17.sigmas)
    results = []
    for a in anns:
        k = np.reshape(a["keypoints"], (17, 3)).astype(float)
        d = np.sqrt(-2 * math.log(0.72) * a["area"] * (2 * sigmas) ** 2)
        angle = np.linspace(0, 2 * np.pi, 17, endpoint=False)
        k[:, 0] += d * np.cos(angle)
        k[:, 1] += d * np.sin(angle)
        k[:, 2] = 1
        results.append({"image_id": a["image_id"], "category_id": 1, "keypoints": k.ravel().tolist(), "score": 1.0})
    m = coco_keypoint_ap(ann_file, results)
    assert math.isclose(m["AP"], 0.5) and m["AP50"] == 1.0 and m["AP75"] == 0.0
    assert math.isclose(m["AR"], 0.5)


def _shifted(ann: dict, oks: float) -> dict:
    """A result for ``ann`` whose keypoints all sit at the distance that gives OKS ``oks``."""
    k = np.reshape(ann["keypoints"], (17, 3)).astype(float)
    d = np.sqrt(-2 * math.log(oks) * ann["area"] * (2 * np.array(COCO17.sigmas)) ** 2)
    angle = np.linspace(0, 2 * np.pi, 17, endpoint=False)
    k[:, 0] += d * np.cos(angle)
    k[:, 1] += d * np.sin(angle)
    k[:, 2] = 1
    return {"image_id": ann["image_id"], "category_id": 1, "keypoints": k.ravel().tolist(), "score": 1.0}


def test_bootstrap_resamples_images_and_pairs_the_runs(tmp_path):
    ann_file, anns = _coco_gt(tmp_path)
    perfect = [_shifted(a, 0.999) for a in anns]
    first_image = anns[0]["image_id"]
    # every person of the first image at OKS 0.72 (AP 0.5 there), the rest perfect
    worse = [_shifted(a, 0.72 if a["image_id"] == first_image else 0.999) for a in anns]
    aps = bootstrap_ap(ann_file, [perfect, worse], 200, seed=1)
    assert aps.shape == (200, 2) and (aps[:, 0] == 1.0).all()
    diff = aps[:, 0] - aps[:, 1]
    # a resampling without the first image cannot tell the runs apart; one that draws it can
    assert (diff >= 0).all() and (diff == 0).any() and (diff > 0).any()
    full = coco_keypoint_ap(ann_file, worse)["AP"]
    assert aps[:, 1].min() < full < 1.0 and aps[:, 1].min() >= 0.5
    np.testing.assert_array_equal(aps, bootstrap_ap(ann_file, [perfect, worse], 200, seed=1))  # deterministic
    # only the images asked for are drawn
    only_first = bootstrap_ap(ann_file, [worse], 20, image_ids=[first_image])
    assert np.allclose(only_first, 0.5)


def test_oks_on_the_mask_area_is_stricter(tmp_path):
    """The same predictions, OKS 0.72 on the box's area, scored on a mask of half that area: each
    squared distance counts twice, OKS 0.72^2 = 0.52, a match at the threshold 0.50 only (AP 0.1)."""
    ann_file, anns = _coco_gt(tmp_path)
    results = [_shifted(a, 0.72) for a in anns]
    gt = json.loads(ann_file.read_text())
    masked = tmp_path / "masked.json"
    masked.write_text(json.dumps({**gt, "annotations": [{**a, "mask_area": a["area"] / 2} for a in gt["annotations"]]}))
    assert math.isclose(coco_keypoint_ap(masked, results)["AP"], 0.5)
    assert math.isclose(coco_keypoint_ap(masked, results, area_field="mask_area")["AP"], 0.1)
    assert np.allclose(bootstrap_ap(masked, [results], 5, area_field="mask_area"), 0.1)
    # a set without the field says so, and which command writes it
    with pytest.raises(ValueError, match=r"6 of 6 people have no 'mask_area' \(hevitpose label --mask-area"):
        coco_keypoint_ap(ann_file, results, area_field="mask_area")


def test_rescoring_and_oks_nms():
    scores = np.array([[0.9, 0.8, 0.1, 0.6], [0.1, 0.1, 0.1, 0.1]])
    # mean of the keypoints above 0.2, times the box score; none above -> 0
    np.testing.assert_allclose(rescore(scores, np.array([0.5, 1.0]), 0.2), [0.5 * (0.9 + 0.8 + 0.6) / 3, 0.0])

    sigmas = np.array(COCO17.sigmas)
    person = np.concatenate([np.random.default_rng(0).uniform(0, 100, (17, 2)), np.ones((17, 1))], axis=1)
    near = person.copy()
    near[:, 0] += 1.0
    far = person.copy()
    far[:, :2] += 300
    kps = np.stack([near, person, far])
    areas = np.full(3, 5000.0)
    # OKS by hand: 1 px in x on every keypoint
    expected = np.mean(np.exp(-1.0 / (2 * sigmas) ** 2 / 5000.0 / 2))
    np.testing.assert_allclose(oks_iou(person, near[None], 5000.0, areas[:1], sigmas), [expected])
    assert oks_nms(kps, np.array([0.8, 0.9, 0.5]), areas, 0.9, sigmas) == [1, 2]
    assert oks_nms(kps, np.array([0.8, 0.9, 0.5]), areas, 0.9999, sigmas) == [1, 0, 2]


def test_coco_evaluation_on_detected_boxes_end_to_end(tmp_path):
    """Detections equal to the ground-truth boxes (plus a duplicate and a low-score box), the
    ground-truth keypoints as predictions: rescoring, OKS-NMS and COCOeval give AP 1."""
    from training.config import config_from_dict
    from training.data import val_dataset
    from training.evaluation import evaluate

    ann_file, anns = _coco_gt(tmp_path)
    root = ann_file.parent.parent
    dets = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in anns]
    dets.append({**dets[0], "score": 0.5})  # a duplicate: suppressed by OKS-NMS
    dets.append({"image_id": anns[0]["image_id"], "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.01})
    (root / "dets.json").write_text(json.dumps(dets))
    cfg = config_from_dict({
        "model": {"name": "hevitpose-t", "input_size": [64, 64]},
        "data": {"dataset": "coco", "root": str(root), "det_results": "dets.json", "det_bbox_thr": 0.1},
    })  # fmt: skip
    dataset = val_dataset(cfg)
    assert len(dataset) == len(anns) + 1  # the 0.01 box is filtered out
    gt = {a["image_id"]: np.reshape(a["keypoints"], (17, 3))[:, :2] for a in anns}
    pred = {
        "index": np.arange(len(dataset)),
        "keypoints": np.stack([gt[i] for i in dataset.instances.image_ids]),
        "scores": np.full((len(dataset), 17), 0.8),
        "valid": np.ones(len(dataset), bool),
    }
    m = evaluate(cfg, dataset, pred)
    assert m["AP"] == 1.0 and m["AR"] == 1.0
