"""Training occluders: people cut out with BlazePose's mask and pasted over the training crop."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from _training_data import make_coco
from test_label import MODELS, needs_teachers

from training.config import ConfigError, config_from_dict
from training.data import train_dataset
from training.occluders import MAX_SIDE, OccluderBank, cut_people, main, paste
from training.teachers import TEACHER_FILES, BlazePose


def _half_opaque(h: int, w: int) -> np.ndarray:
    """A red RGBA block: opaque on its left half, transparent on its right."""
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, : w // 2, 3] = 255
    return rgba


def test_paste_blends_by_alpha_and_clips_at_the_border():
    crop = np.full((64, 48, 3), 50, np.uint8)
    rgba = _half_opaque(20, 10)
    pasted_somewhere = False
    for seed in range(50):  # centres anywhere in the crop, so many hang over its border
        out = paste(crop, rgba, 40, np.random.default_rng(seed))
        assert out.shape == crop.shape and (crop == 50).all()  # the input is not written to
        changed = (out != 50).any(2)
        # every changed pixel is red * alpha + grey * (1 - alpha): G = B = 50 (1 - a), R = 50 + 205 a
        r, g, b = (out[changed][:, c].astype(float) for c in range(3))
        alpha = 1 - g / 50
        assert (g == b).all() and np.allclose(r, 50 + 205 * alpha, atol=5)
        # the opaque half of a 40 x 20 occluder, and the one resampled column at its alpha edge
        assert changed.sum() <= 40 * 11
        pasted_somewhere |= (alpha > 0.99).sum() >= 40 * 9
    assert pasted_somewhere


@needs_teachers
def test_cut_people_writes_a_masked_cutout_of_the_labelled_person(tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    rgb = skimage_data.astronaut()
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images/astronaut.jpg"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    nose = [250.0, 120.0, 2]  # near her face; the other joints unlabelled
    kps = nose + [0, 0, 0] * 16
    ann = {"id": 7, "image_id": 1, "category_id": 1, "bbox": [100, 0, 350, 512], "num_keypoints": 13, "keypoints": kps}
    small = {**ann, "id": 8, "bbox": [0, 0, 30, 40]}  # too short to cut, and touching nothing
    coco = {"images": [{"id": 1, "file_name": "astronaut.jpg"}], "annotations": [ann, small]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    teacher = BlazePose(MODELS / TEACHER_FILES["blazepose"], 1)
    assert cut_people(tmp_path / "ann.json", tmp_path / "images", tmp_path / "occ", teacher) == 1
    (png,) = sorted((tmp_path / "occ").glob("*.png"))
    rgba = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
    assert rgba.shape[2] == 4 and rgba.shape[0] == MAX_SIDE
    alpha = rgba[..., 3] / 255.0
    # the person fills the middle of her cutout; the cut is tight, so the mask is most of it
    assert alpha[MAX_SIDE // 2, rgba.shape[1] // 2] > 0.9 and 0.4 < alpha.mean() < 0.95
    assert len(OccluderBank(tmp_path / "occ").images()) == 1
    # the index carries the labels into the cutout's pixels: the nose inside it, in the upper part
    (entry,) = json.loads((tmp_path / "occ/cutouts.json").read_text())["cutouts"]
    assert entry["file"] == png.name
    k = np.asarray(entry["keypoints"]).reshape(17, 3)
    assert k[0, 2] == 2 and 0 <= k[0, 0] < rgba.shape[1] and 0 <= k[0, 1] < MAX_SIDE / 2
    assert alpha[int(k[0, 1]), int(k[0, 0])] > 0.5 and (k[1:] == 0).all()

    # the command: the same cutout, and an existing folder is never written into
    args = [str(tmp_path / "ann.json"), str(tmp_path / "images"), str(tmp_path / "cmd"), "--threads", "1"]
    assert main(args) == 0 and len(list((tmp_path / "cmd").glob("*.png"))) == 1
    assert main(args) == 2
    coco["annotations"] = [small]
    (tmp_path / "none.json").write_text(json.dumps(coco))
    assert main([str(tmp_path / "none.json"), str(tmp_path / "images"), str(tmp_path / "none")]) == 1
    assert not (tmp_path / "none").exists() and not (tmp_path / "none.partial").exists()


def test_occluders_in_training_change_pixels_not_targets(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=3, n_val=1, size=160)
    (root / "occ").mkdir()
    block = np.zeros((30, 12, 4), np.uint8)
    block[..., 2], block[..., 3] = 255, 255  # opaque blue, as RGBA
    cv2.imwrite(str(root / "occ/block.png"), cv2.cvtColor(block, cv2.COLOR_RGBA2BGRA))

    def cfg(**augment):
        data = {"dataset": "coco", "root": str(root), "workers": 0}
        return config_from_dict({"model": {"name": "hevitpose-t", "input_size": [64, 64]}, "data": data,
                                 "augment": augment})  # fmt: skip

    plain = train_dataset(cfg())
    occluded = train_dataset(cfg(occluder_dir="occ", occluder_prob=1.0, occluder_size=[0.5, 0.5]))
    blue = torch.tensor([0.0, 0.0, 1.0])
    for i in range(len(plain)):
        a, b = plain[(1, i)], occluded[(1, i)]
        assert torch.equal(a["target"], b["target"]) and torch.equal(a["target_weight"], b["target_weight"])
        rgb = b["input"].float() / 255
        is_blue = (rgb - blue[:, None, None]).abs().amax(0) < 0.02
        assert 0 < is_blue.sum() <= 32 * 13  # a 32-px-tall block, mirrored or not, maybe clipped
    with pytest.raises(ConfigError, match="occluder_dir"):
        cfg(occluder_prob=0.5)
    with pytest.raises(FileNotFoundError, match="no occluder PNGs"):
        train_dataset(cfg(occluder_dir="nothing_here", occluder_prob=0.5))
