"""hevitpose composite: labelled cutouts pasted onto people-free photographs, as a COCO set."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from model.keypoints import COCO17
from training.annotations import load_coco
from training.composite import Cutout, main, place


def _joint_colour(j: int) -> np.ndarray:
    return np.array([40 + 12 * j, 255 - 12 * j, 128], np.uint8)


def _cutout(h: int = 80, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """An opaque grey figure with a 5x5 patch of its own colour at each joint (left side of the image:
    odd COCO indices are the person's left, placed at image right as a person facing the camera)."""
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 90, 255
    kps = np.zeros((17, 3))
    for j in range(17):
        x = w * (0.7 if j % 2 else 0.3) if j else w / 2
        y = 4 + (h - 8) * j / 16
        kps[j] = x, y, 2
        xi, yi = int(round(x)), int(round(y))
        rgba[yi - 2 : yi + 3, xi - 2 : xi + 3, :3] = _joint_colour(j)
    return rgba, kps


def test_place_maps_keypoints_with_the_pixels_and_swaps_sides_when_mirrored():
    rgba, kps = _cutout()
    cut = Cutout(rgba, kps, np.linspace(0.5, 1.0, 17))
    for flip in (False, True):
        canvas = np.zeros((200, 150, 3), np.float32)
        out, pk, scores, box = place(canvas, cut, 160, 30, 20, flip, 1.0)
        assert box.tolist() == [30, 20, 110, 180]  # 40x80 scaled by 2, at (30, 20)
        img = (out * 255).round().astype(np.uint8)
        for j in range(17):
            x, y = np.round(pk[j, :2]).astype(int)
            # the joint's own colour lies under its keypoint, mirrored or not
            assert np.abs(img[y, x].astype(int) - _joint_colour(j if not flip else COCO17.flip_index[j])).max() <= 3
        # a mirrored person's left joints take the right joints' scores with their labels
        expected = cut.scores[COCO17.flip_index] if flip else cut.scores
        np.testing.assert_allclose(scores, expected)


def test_place_unlabels_joints_outside_the_image_and_keeps_the_visible_box():
    rgba, kps = _cutout()
    cut = Cutout(rgba, kps, np.ones(17))
    canvas = np.zeros((100, 100, 3), np.float32)
    out, pk, scores, box = place(canvas, cut, 160, 70, -40, False, 1.0)  # cut by the right and top borders
    assert box.tolist() == [70, 0, 100, 100]
    inside = pk[:, 2] > 0
    assert inside.any() and not inside.all()
    assert (scores[~inside] == 0).all() and (pk[~inside] == 0).all()
    assert ((pk[inside, 0] < 100) & (pk[inside, 1] < 100) & (pk[inside, :2] >= 0).all(1)).all()
    assert place(canvas, cut, 160, 200, 0, False, 1.0) is None  # entirely off the canvas


def test_composite_command_writes_a_set_training_reads(tmp_path, capsys):
    pytest.importorskip("skimage")
    folder = tmp_path / "cutouts"
    folder.mkdir()
    rgba, kps = _cutout()
    cv2.imwrite(str(folder / "a.png"), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    index = {"cutouts": [{"file": "a.png", "keypoints": kps.reshape(-1).tolist(), "keypoint_scores": [0.9] * 17}]}
    (folder / "cutouts.json").write_text(json.dumps(index))
    out = tmp_path / "set"
    args = [str(folder), str(out), "--num", "6", "--width", "96", "--height", "96", "--seed", "3"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    ann = out / "annotations/person_keypoints_train.json"
    coco = json.loads(ann.read_text())
    assert report["images"] == len(coco["images"]) > 0 and report["people"] == len(coco["annotations"])
    for a in coco["annotations"]:
        k = np.asarray(a["keypoints"]).reshape(17, 3)
        assert a["num_keypoints"] == (k[:, 2] > 0).sum() >= 4
        assert ((k[:, 2] > 0) == (np.asarray(a["keypoint_scores"]) > 0)).all()
    instances = load_coco(ann, out / "images/train", 0.75)
    assert len(instances) == len(coco["annotations"])
    # deterministic, and an existing split is never overwritten
    assert main([*args, "--split", "again"]) == 0
    capsys.readouterr()
    again = json.loads((out / "annotations/person_keypoints_again.json").read_text())
    assert again["annotations"] == coco["annotations"]
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    # the same images and labels from a pool of processes
    pooled = tmp_path / "pooled"
    assert main([str(folder), str(pooled), *args[2:], "--workers", "2"]) == 0
    capsys.readouterr()
    pooled_coco = json.loads((pooled / "annotations/person_keypoints_train.json").read_text())
    assert pooled_coco["images"] == coco["images"] and pooled_coco["annotations"] == coco["annotations"]
    for img in coco["images"]:
        name = img["file_name"]
        assert (pooled / "images/train" / name).read_bytes() == (out / "images/train" / name).read_bytes()
    assert main([str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
