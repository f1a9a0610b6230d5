import json

import numpy as np
import pytest
import torch
from _training_data import make_coco, make_mpii

from model.codec import decode_heatmaps
from model.keypoints import COCO17
from training.annotations import DatasetError, load_coco, load_mpii
from training.config import AugmentConfig, config_from_dict
from training.data import train_dataset, val_dataset
from training.transforms import frame_cut


def _cfg(root, dataset="coco", input_size=(64, 64), augment=None, **data):
    base = {"dataset": dataset, "root": str(root), "workers": 0}
    if dataset == "mpii":
        base.update(train_ann="annotations/mpii_train.json", val_ann="annotations/mpii_val.json",
                    train_images="images", val_images="images")  # fmt: skip
    base.update(data)
    model = {"name": "hevitpose-t", "input_size": list(input_size)}
    return config_from_dict({"model": model, "data": base, "augment": augment or {}})


def test_coco_format_under_other_names_reads_through_the_same_code(tmp_path):
    root = make_coco(tmp_path / "synth", n_train=3, n_val=2, names=("train", "val"))
    cfg = _cfg(root, train_ann="annotations/person_keypoints_train.json", val_ann="annotations/person_keypoints_val.json",
               train_images="images/train", val_images="images/val")  # fmt: skip
    train, val = train_dataset(cfg), val_dataset(cfg)
    assert len(train) == 3 and len(val) == 2
    sample = train[0]
    assert sample["input"].shape == (3, 64, 64) and sample["target"].shape == (17, 16, 16)
    assert sample["valid"] and sample["target_weight"].sum() > 0


def test_incomplete_dataset_names_the_missing_file(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=1, n_val=1)
    (root / "annotations" / "person_keypoints_val2017.json").unlink()
    with pytest.raises(DatasetError, match="person_keypoints_val2017.json"):
        val_dataset(_cfg(root))
    with pytest.raises(DatasetError, match="images/nope"):
        train_dataset(_cfg(root, train_images="images/nope"))
    mpii = make_mpii(tmp_path / "mpii", n_train=1, n_val=2)
    val_json = mpii / "annotations" / "mpii_val.json"
    records = json.loads(val_json.read_text())
    val_json.write_text(json.dumps(records[:1]))
    with pytest.raises(DatasetError, match="1 people but .* has 2"):
        val_dataset(_cfg(mpii, "mpii"))
    (mpii / "annotations" / "mpii_gt_val.mat").unlink()
    with pytest.raises(DatasetError, match="mpii_gt_val.mat"):
        val_dataset(_cfg(mpii, "mpii"))


def test_unreadable_images_give_invalid_zero_weight_samples(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=3, n_val=1)
    train = train_dataset(_cfg(root))
    (tmp_path / "coco" / "images" / "train2017" / "000000000001.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "coco" / "images" / "train2017" / "000000000002.jpg").unlink()
    bad = [train[i] for i in range(2)]
    assert all(not s["valid"] and s["target_weight"].sum() == 0 and s["input"].abs().sum() == 0 for s in bad)
    assert train[2]["valid"]


def test_mpii_center_scale_follow_mmpose(tmp_path):
    root = make_mpii(tmp_path / "mpii", n_train=2, n_val=1)
    rec = json.loads((root / "annotations" / "mpii_train.json").read_text())[0]
    inst = load_mpii(root / "annotations" / "mpii_train.json", root / "images")
    s = rec["scale"]
    np.testing.assert_allclose(inst.centers[0], [rec["center"][0] - 1, rec["center"][1] + 15 * s - 1])
    np.testing.assert_allclose(inst.scales[0], [s * 1.25 * 200] * 2)
    np.testing.assert_allclose(inst.keypoints[0], np.array(rec["joints"]) - 1)


def test_coco_detections_are_filtered_by_category_and_score(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=1, n_val=2)
    dets = [
        {"image_id": 1001, "category_id": 1, "bbox": [10, 20, 40, 80], "score": 0.9},
        {"image_id": 1001, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.05},
        {"image_id": 1002, "category_id": 2, "bbox": [0, 0, 50, 50], "score": 0.99},
    ]
    det_file = root / "dets.json"
    det_file.write_text(json.dumps(dets))
    inst = load_coco(root / "annotations" / "person_keypoints_val2017.json", root / "images" / "val2017",
                     aspect_ratio=0.75, det_results=det_file, det_bbox_thr=0.1)  # fmt: skip
    assert len(inst) == 1 and inst.bbox_scores[0] == 0.9
    np.testing.assert_allclose(inst.centers[0], [30, 60])
    np.testing.assert_allclose(inst.scales[0], [60 * 1.25, 80 * 1.25])  # widened to 3:4, padded


def _rgb_at_all(sample):
    assert sample["input"].dtype == torch.uint8  # the consumer normalises, on its device
    return sample["input"].float().numpy()


def _rgb_at(sample, x, y):
    return _rgb_at_all(sample)[:, int(round(y)), int(round(x))]


def _joint_rgb(j):
    bgr = np.random.default_rng(j).integers(40, 255, 3)  # as _training_data._draw
    return bgr[::-1].astype(float)


def test_augmented_crops_agree_with_their_targets(tmp_path):
    """Each joint is drawn in its own colour; after flip, half-body, scale and rotation, the
    crop's pixel under target j's peak must have the colour of the joint drawn there: j
    itself, or in a mirrored crop its partner (the new left shoulder is the old right one).
    The other colour would mean the flip pairs or the affine are wrong."""
    root = make_coco(tmp_path / "coco", n_train=6, n_val=1, size=160)
    train = train_dataset(_cfg(root, input_size=(128, 128)))
    flips = set()
    checked = 0
    flip_index = COCO17.flip_index
    for epoch in range(3):
        train.set_epoch(epoch)
        for i in range(len(train)):
            s = train[i]
            flips.add(s["flipped"])
            kps, _ = decode_heatmaps(s["target"][None], "dark")
            kps = kps[0] * 4
            for j in range(5, 17):  # shoulders to ankles: far enough apart to not overlap
                x, y = kps[j].tolist()
                if s["target_weight"][j] == 0 or not (2 <= x <= 125 and 2 <= y <= 125):
                    continue
                color = _rgb_at(s, x, y)
                drawn, other = (flip_index[j], j) if s["flipped"] else (j, flip_index[j])
                own = np.abs(color - _joint_rgb(drawn)).max()
                partner = np.abs(color - _joint_rgb(other)).max()
                assert own < 60 and own < partner, (epoch, i, j, color)
                checked += 1
    assert flips == {True, False}
    assert checked > 100


def test_frame_cut_ends_the_box_at_the_edge_and_unlabels_the_joints_beyond():
    bbox = np.array([10.0, 20.0, 50.0, 120.0])
    keypoints = np.stack([np.full(17, 30.0), np.linspace(25, 115, 17)], axis=1)
    aug = AugmentConfig(truncate_keep=(0.5, 0.5), truncate_sides=(1, 0, 0))
    cut, box, visible = frame_cut(bbox, keypoints, np.ones(17), aug, np.random.default_rng(0))
    np.testing.assert_allclose(box, [10, 20, 50, 70])  # the bottom edge halfway down the box
    np.testing.assert_array_equal(visible, keypoints[:, 1] <= 70)
    aug = AugmentConfig(truncate_keep=(0.25, 0.25), truncate_sides=(0, 0, 1), truncate_min_joints=3)
    assert frame_cut(bbox, keypoints, np.ones(17), aug, np.random.default_rng(0)) is None  # every joint at x 30 > 20
    assert frame_cut(np.full(4, np.nan), keypoints, np.ones(17), aug, np.random.default_rng(0)) is None  # MPII


def test_framed_crops_are_black_beyond_the_edge_and_keep_their_labelled_joints_in_the_picture(tmp_path):
    """Photos cut people at the picture's edge; the cut crops must look like that (black beyond the
    edge, as the warp fills outside an image) and label only the joints on this side of it."""
    root = make_coco(tmp_path / "coco", n_train=6, n_val=1, size=160)
    counts = {}
    for prob in (0.0, 1.0):
        train = train_dataset(_cfg(root, input_size=(128, 128), augment={"truncate_prob": prob}))
        labelled, black = 0, 0
        for epoch in range(4):
            train.set_epoch(epoch)
            for i in range(len(train)):
                s = train[i]
                kps, _ = decode_heatmaps(s["target"][None], "argmax")
                picture = _rgb_at_all(s).max(0) > 10
                for j in np.flatnonzero(s["target_weight"].numpy()):
                    x, y = (kps[0, j] * 4 + 2).int().tolist()  # the heatmap pixel's centre in the input
                    # a joint on the edge itself is labelled: the peak, a heatmap pixel, may lie across it
                    assert picture[max(0, y - 3) : y + 4, max(0, x - 3) : x + 4].any(), (prob, epoch, i, j)
                labelled += int((s["target_weight"] > 0).sum())
                black += int((~picture).sum())
        counts[prob] = labelled, black
    assert counts[1.0][0] < 0.85 * counts[0.0][0]
    assert counts[1.0][1] > 1.2 * counts[0.0][1]  # less of the image is in view, yet more is black


def test_samples_are_reproducible_per_epoch_and_index(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=2, n_val=1)
    a, b = train_dataset(_cfg(root)), train_dataset(_cfg(root))
    a.set_epoch(3), b.set_epoch(3)
    assert torch.equal(a[1]["input"], b[1]["input"])
    b.set_epoch(4)
    assert not torch.equal(a[1]["input"], b[1]["input"])


def test_mixed_training_sets_are_concatenated_with_repeats(tmp_path):
    real = make_coco(tmp_path / "real", n_train=3, n_val=2, names=("train", "val"))
    make_coco(tmp_path / "synth", n_train=5, n_val=1, names=("train", "val"), seed=1)
    names = dict(train_ann="annotations/person_keypoints_train.json", val_ann="annotations/person_keypoints_val.json",
                 train_images="images/train", val_images="images/val")  # fmt: skip
    cfg = _cfg(real, train_repeat=2, extra_train=["../synth"], extra_train_repeat=[1], **names)
    train = train_dataset(cfg)
    assert len(train) == 2 * 3 + 5 and len(val_dataset(cfg)) == 2
    paths = train.instances.image_paths
    assert sum("/real/" in p for p in paths) == 6 and sum("/synth/" in p for p in paths) == 5
    assert len(set(train.instances.image_ids[:3]) & set(train.instances.image_ids[6:])) == 0  # ids unique per set
    sample = train[(0, 7)]  # a synth row reads its own image
    assert sample["valid"] and sample["target"].shape[0] == 17
    with pytest.raises(ValueError, match="extra_train_repeat"):
        _cfg(real, extra_train=["../synth"], extra_train_repeat=[1, 2], **names)


def test_teacher_confidence_becomes_the_joint_weight(tmp_path):
    root = make_coco(tmp_path / "c", n_train=1, n_val=1, names=("train", "val"))
    ann_file = root / "annotations/person_keypoints_train.json"
    coco = json.loads(ann_file.read_text())
    scores = np.linspace(0.2, 1.0, 17)
    coco["annotations"][0]["keypoint_scores"] = scores.tolist()
    ann_file.write_text(json.dumps(coco))
    labelled = np.asarray(coco["annotations"][0]["keypoints"]).reshape(17, 3)[:, 2] > 0
    inst = load_coco(ann_file, root / "images/train", 1.0)
    np.testing.assert_allclose(inst.visible[0], np.where(labelled, scores, 0))
    assert (load_coco(ann_file, root / "images/train", 1.0, keypoint_scores=False).visible[0] == labelled).all()
    cfg = _cfg(root, input_size=(64, 64), train_ann="annotations/person_keypoints_train.json",
               val_ann="annotations/person_keypoints_val.json", train_images="images/train", val_images="images/val")  # fmt: skip
    ds = train_dataset(cfg)
    ds.augment.flip_prob = 0.0
    sample = ds[(0, 0)]
    weight = sample["target_weight"].numpy()
    inside = weight > 0
    np.testing.assert_allclose(weight[inside], scores[inside], rtol=1e-6)
    # the Gaussian peaks at 1 whatever the weight: the weight scales the loss, not the target
    assert np.allclose(sample["target"].flatten(1).amax(1).numpy()[inside], 1.0, atol=0.07)


def test_appearance_augmentation_changes_pixels_not_targets(tmp_path):
    """Colour, blur and the hole act on the crop only: the same draw of the crop (flip, scale,
    rotation) and the same targets as without them, other pixels, and a hole of the stated size."""
    root = make_coco(tmp_path / "coco", n_train=3, n_val=1, size=160)
    plain = train_dataset(_cfg(root, input_size=(64, 64)))
    hole = {"dropout_prob": 1.0, "dropout_size": (0.25, 0.25)}
    dropped = train_dataset(_cfg(root, input_size=(64, 64), augment=hole))
    colour = {"hsv_prob": 1.0, "blur_prob": 1.0, "median_blur_prob": 1.0}
    coloured = train_dataset(_cfg(root, input_size=(64, 64), augment=colour))
    for i in range(len(plain)):
        a, b, c = plain[(2, i)], dropped[(2, i)], coloured[(2, i)]
        for other in (b, c):
            assert torch.equal(a["target"], other["target"]) and a["flipped"] == other["flipped"]
            assert not torch.equal(a["input"], other["input"])
        # the hole is 16x16 input pixels of black, and nothing else changed
        differs = (a["input"] != b["input"]).any(0)
        ys, xs = torch.nonzero(differs, as_tuple=True)
        assert ys.max() - ys.min() < 16 and xs.max() - xs.min() < 16
        y0, x0 = int(ys.min()), int(xs.min())
        assert (b["input"][:, y0 : y0 + 1, x0 : x0 + 1] == 0).all()


def test_appearance_augmentation_off_draws_nothing(tmp_path):
    """A recipe without the appearance keys keeps its samples: the defaults draw no random number."""
    from training.appearance import augment_appearance
    from training.config import AugmentConfig

    rng, ref = np.random.default_rng(0), np.random.default_rng(0)
    image = np.full((8, 8, 3), 100, np.uint8)
    assert augment_appearance(image, AugmentConfig(), rng) is image
    assert rng.random() == ref.random()


@pytest.mark.parametrize("delta", [(5, 30, 30), (90, 255, 255)])
def test_hsv_jitter_lookup_tables_shift_as_yolox_does(delta):
    """The lookup tables give YOLOX's shift exactly: int16 HSV plus truncated offsets, hue mod 180, clipped."""
    import cv2

    from training.appearance import hsv_jitter

    image = np.random.default_rng(0).integers(0, 256, (32, 24, 3), dtype=np.uint8)
    for seed in range(50):
        gains = np.random.default_rng(seed).uniform(-1, 1, 3) * np.asarray(delta, dtype=np.float64)
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV).astype(np.int16)
        hsv[..., 0] = (hsv[..., 0] + int(gains[0])) % 180
        hsv[..., 1:] = np.clip(hsv[..., 1:] + gains[1:].astype(np.int16), 0, 255)
        expected = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
        assert np.array_equal(hsv_jitter(image, delta, np.random.default_rng(seed)), expected)


def test_cached_images_give_the_same_samples_and_the_file_goes_with_the_dataset(tmp_path):
    """data.cache_images: decoded once into a mapped file, the samples are those of reading each
    JPEG again, an unreadable image is still an invalid sample, and the file lives as long as the
    dataset that made it (a pickled copy, as a loader worker gets, maps the same file)."""
    import gc
    import pickle

    root = make_coco(tmp_path / "coco", n_train=4, n_val=1)
    (root / "images" / "train2017" / "000000000002.jpg").write_bytes(b"not a jpeg")
    augment = {"half_body_prob": 0.3, "hsv_prob": 1.0, "dropout_prob": 0.5}
    cached = train_dataset(_cfg(root, augment=augment, cache_images=True, train_repeat=2))
    plain = train_dataset(_cfg(root, augment=augment, train_repeat=2))
    assert plain.images is None and len(cached.images) == 4 < len(cached)  # people share images
    path = cached.images.path
    assert path.is_file() and path.stat().st_size == cached.images.nbytes == 3 * 128 * 128 * 3
    worker_copy = pickle.loads(pickle.dumps(cached))
    for i in range(len(plain)):
        a, b, c = plain[(1, i)], cached[(1, i)], worker_copy[(1, i)]
        assert a["valid"] == b["valid"] == c["valid"]
        for key in ("input", "target", "target_weight"):
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    assert sum(not plain[i]["valid"] for i in range(len(plain))) > 0
    del cached, worker_copy, b, c
    gc.collect()
    assert not path.exists()


def test_datasets_of_the_same_images_share_one_cache(tmp_path):
    """Two trainers of one script (gpu_run.py's probes) decode the set once, while either holds it."""
    import gc

    root = make_coco(tmp_path / "coco", n_train=2, n_val=1)
    first = train_dataset(_cfg(root, cache_images=True))
    second = train_dataset(_cfg(root, cache_images=True, input_size=(32, 32)))
    other = train_dataset(_cfg(make_coco(tmp_path / "other", n_train=2, n_val=1), cache_images=True))
    assert second.images is first.images and other.images is not first.images
    path = first.images.path
    del first
    gc.collect()
    assert path.exists()
    del second
    gc.collect()
    assert not path.exists() and other.images.path.exists()
