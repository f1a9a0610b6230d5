"""Teacher heatmaps as training targets: the warp into each sample's heatmap frame, the recipe
left untouched when they are off, and ``hevitpose teacher-heatmaps`` on a real photograph.

The warp tests stand in for BlazePose with a fake that draws Gaussians at the labels in the
teacher's crop frame, so they need no model and check the geometry alone; the command's test
runs BlazePose heavy from ../shared/models on scikit-image's astronaut (public domain).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _training_data import make_coco

from model.codec import apply_affine, decode_heatmaps
from model.keypoints import COCO17
from training.config import config_from_dict
from training.data import train_dataset
from training.distill import HEATMAPS_FILE, INDEX_FILE, main, write_teacher_heatmaps
from training.teachers import CROP_SIZE, TEACHER_FILES, BlazePose, default_models_dir, square_crop_matrix

MODELS = default_models_dir()
needs_blazepose = pytest.mark.skipif(
    not (MODELS / TEACHER_FILES["blazepose"]).is_file(),
    reason=f"BlazePose ONNX file not found in {MODELS} (../shared/models beside the repository)",
)
NAMES = dict(train_ann="annotations/person_keypoints_train.json", val_ann="annotations/person_keypoints_val.json",
             train_images="images/train", val_images="images/val")  # fmt: skip
AUGMENT = {"flip_prob": 0.5, "half_body_prob": 0.3, "upper_body_ids": list(range(11)), "scale_factor": 0.4,
           "rotation_factor": 40, "rotation_prob": 1.0, "center_shift_prob": 0.3}  # fmt: skip


class FakeTeacher:
    """BlazePose's ``heatmaps`` for the people of a COCO file: a Gaussian at each labelled joint,
    in the teacher's heatmap frame, at a probability below 1 (the writer normalises it). With
    ``misplace``, that joint's map peaks at the joint given instead."""

    def __init__(self, ann_file: Path, sigma: float = 1.5, misplace: dict[int, int] | None = None):
        coco = json.loads(Path(ann_file).read_text())
        self.people = {}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            self.people[(x, y, x + w, y + h)] = np.asarray(ann["keypoints"], float).reshape(17, 3)
        self.sigma, self.misplace = sigma, misplace or {}

    def heatmaps(self, rgb: np.ndarray, bbox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        kps = self.people[tuple(float(v) for v in bbox)]
        matrix = square_crop_matrix(bbox)
        size = CROP_SIZE // 4
        mu = apply_affine(kps[:, :2], matrix) / 4
        ys, xs = np.mgrid[:size, :size]
        maps = np.zeros((17, size, size))
        for j in range(17):
            src = self.misplace.get(j, j)
            if kps[src, 2] > 0:
                d2 = (xs - mu[src, 0]) ** 2 + (ys - mu[src, 1]) ** 2
                maps[j] = 0.8 * np.exp(-d2 / (2 * self.sigma**2))
        return maps, matrix


def _cfg(root: Path, input_size=(128, 128), augment=None, **data):
    base = {"dataset": "coco", "root": str(root), "workers": 0, **NAMES, **data}
    model = {"name": "hevitpose-t", "input_size": list(input_size)}
    return config_from_dict({"model": model, "data": base, "augment": augment or AUGMENT})


def _fake_heatmaps(root: Path, folder: str = "teacher", **fake) -> Path:
    ann = root / NAMES["train_ann"]
    write_teacher_heatmaps(ann, root / "images/train", root / folder, FakeTeacher(ann, **fake), progress=False)
    return root / folder


def _peaks(target: torch.Tensor) -> np.ndarray:
    return decode_heatmaps(target[None], "dark")[0][0].numpy()


def test_teacher_maps_follow_the_crop_through_rotation_scale_flip_and_half_body(tmp_path):
    root = make_coco(tmp_path / "c", n_train=8, n_val=1, size=160, names=("train", "val"))
    _fake_heatmaps(root)
    plain = train_dataset(_cfg(root))
    # the teacher's maps alone, and no offset check, so that any misplaced channel shows
    taught = train_dataset(_cfg(root, teacher_heatmaps="teacher", teacher_heatmap_weight=1.0,
                                teacher_heatmap_max_offset=0.0))  # fmt: skip
    assert (taught.instances.teacher_rows >= 0).all()
    flips, rotated, checked = set(), 0, 0
    for epoch in range(3):
        for i in range(len(plain)):
            a, b = plain[(epoch, i)], taught[(epoch, i)]
            assert torch.equal(a["input"], b["input"]) and torch.equal(a["target_weight"], b["target_weight"])
            flips.add(b["flipped"])
            labelled = a["target_weight"].numpy() > 0
            assert (b["target"][~labelled] == 0).all()  # unlabelled or outside: no target from the teacher either
            assert not torch.equal(a["target"][labelled], b["target"][labelled])
            np.testing.assert_allclose(b["target"][labelled].flatten(1).amax(1).numpy(), 1.0, atol=1e-6)
            gauss, teacher = _peaks(a["target"]), _peaks(b["target"])
            # DARK refines a peak 2 px or more inside the map; nearer the border, peaks decode to whole pixels
            size = np.array(a["target"].shape[:0:-1])
            inner = labelled & ((gauss >= 3) & (gauss <= size - 4)).all(1)
            gap = np.hypot(*(gauss - teacher).T)
            assert gap[inner].max() < 0.5, (epoch, i, gap[inner].max(), b["flipped"])
            w = size[0]
            pixel = [np.stack(divmod(t.flatten(1).argmax(1).numpy(), w), 1) for t in (a["target"], b["target"])]
            assert np.abs(pixel[0] - pixel[1])[labelled].max() <= 1, (epoch, i, b["flipped"])
            checked += inner.sum()
            rotated += bool(np.abs(a["inv_matrix"][0, 1].item()) > 1e-6)
    assert flips == {True, False} and rotated > 4 and checked > 200


def test_a_misplaced_teacher_joint_keeps_its_gaussian_and_the_blend_is_weighted(tmp_path):
    root = make_coco(tmp_path / "c", n_train=4, n_val=1, size=160, names=("train", "val"))
    # BlazePose's left wrist on the right ankle: a teacher that was not among those that agreed
    _fake_heatmaps(root, misplace={9: 16})
    plain = train_dataset(_cfg(root, augment={"flip_prob": 0.0}))
    taught = train_dataset(_cfg(root, augment={"flip_prob": 0.0}, teacher_heatmaps="teacher"))
    for i in range(len(plain)):
        a, b = plain[(0, i)], taught[(0, i)]
        labelled = a["target_weight"].numpy() > 0
        if labelled[9]:
            assert torch.equal(a["target"][9], b["target"][9])
        others = labelled.copy()
        others[9] = False
        assert not torch.equal(a["target"][others], b["target"][others])
        # 0.5 * Gaussian + 0.5 * peak-1 map, both peaking at the label: a peak of nearly 1
        assert np.allclose(b["target"][others].flatten(1).amax(1).numpy(), 1.0, atol=0.1)


def test_sets_without_teacher_heatmaps_keep_pure_gaussians(tmp_path):
    real = make_coco(tmp_path / "real", n_train=3, n_val=1, names=("train", "val"))
    make_coco(tmp_path / "synth", n_train=4, n_val=1, names=("train", "val"), seed=1)
    make_coco(tmp_path / "comp", n_train=2, n_val=1, names=("train", "val"), seed=2)
    _fake_heatmaps(real)
    _fake_heatmaps(tmp_path / "comp", folder="th")
    extra = {"extra_train": ["../synth", "../comp"], "train_repeat": 2}
    plain = train_dataset(_cfg(real, **extra))
    taught = train_dataset(_cfg(real, teacher_heatmaps="teacher", extra_teacher_heatmaps=["", "th"], **extra))
    rows = taught.instances.teacher_rows
    # two repeats of the real set, the renders without, the composites with their own folder
    assert (rows[:6] >= 0).all() and (rows[6:10] == -1).all() and (rows[10:] >= 3).all()
    assert list(rows[:3]) == list(rows[3:6])
    for i in range(len(plain)):
        same = torch.equal(plain[(1, i)]["target"], taught[(1, i)]["target"])
        assert same == (rows[i] < 0), i
    with pytest.raises(ValueError, match="extra_teacher_heatmaps"):
        _cfg(real, teacher_heatmaps="teacher", extra_teacher_heatmaps=["th"], **extra)


def test_a_folder_made_from_other_annotations_is_refused(tmp_path):
    root = make_coco(tmp_path / "c", n_train=2, n_val=1, names=("train", "val"))
    _fake_heatmaps(root)
    ann = root / NAMES["train_ann"]
    coco = json.loads(ann.read_text())
    coco["annotations"][0]["bbox"][0] += 5  # relabelled: same ids, other people
    ann.write_text(json.dumps(coco))
    with pytest.raises(FileNotFoundError, match="another annotation file"):
        train_dataset(_cfg(root, teacher_heatmaps="teacher"))


def test_off_by_default_the_samples_and_their_random_draws_are_unchanged(tmp_path, monkeypatch):
    """No recipe key, or a weight of 0: no teacher in the dataset and byte-identical samples. On,
    every sample draws the same random numbers (the generator ends in the same state) and differs
    from the plain one in its targets alone."""
    import training.dataset as dataset_module

    root = make_coco(tmp_path / "c", n_train=4, n_val=1, size=160, names=("train", "val"))
    _fake_heatmaps(root)
    augment = {**AUGMENT, "hsv_prob": 1.0, "dropout_prob": 0.5}
    plain = train_dataset(_cfg(root, augment=augment))
    assert plain.teacher is None and (plain.instances.teacher_rows == -1).all()
    zero = train_dataset(_cfg(root, augment=augment, teacher_heatmaps="teacher", teacher_heatmap_weight=0.0))
    assert zero.teacher is None
    taught = train_dataset(_cfg(root, augment=augment, teacher_heatmaps="teacher"))
    assert taught.teacher is not None

    generators = []
    real_rng = np.random.default_rng

    def recording_rng(seed):
        generators.append(real_rng(seed))
        return generators[-1]

    monkeypatch.setattr(dataset_module.np.random, "default_rng", recording_rng)
    for i in range(len(plain)):
        a, z, t = plain[(5, i)], zero[(5, i)], taught[(5, i)]
        state_a, state_z, state_t = (g.bit_generator.state for g in generators[-3:])
        assert state_a == state_z == state_t
        assert a.keys() == z.keys() == t.keys()
        for key in a:
            if torch.is_tensor(a[key]):
                assert torch.equal(a[key], z[key]), key
                assert torch.equal(a[key], t[key]) or key == "target", key
            else:
                assert a[key] == z[key] == t[key], key
        assert not torch.equal(a["target"], t["target"])


def _astronaut_set(tmp_path: Path, missing_second_image: bool = False) -> tuple[Path, Path]:
    import cv2

    skimage_data = pytest.importorskip("skimage.data")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "astronaut.png"), cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR))
    coco = {
        "images": [{"id": 1, "file_name": "astronaut.png", "width": 512, "height": 512}],
        "annotations": [  # the astronaut (upper body), and a head-and-shoulders box of her
            {"id": 7, "image_id": 1, "category_id": 1, "bbox": [40.0, 10.0, 440.0, 500.0], "keypoints": [0] * 51},
            {"id": 9, "image_id": 1, "category_id": 1, "bbox": [130.0, 10.0, 200.0, 220.0], "keypoints": [0] * 51},
        ],
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.names)}],
    }
    if missing_second_image:
        coco["images"].append({"id": 2, "file_name": "gone.png", "width": 512, "height": 512})
        coco["annotations"].append({"id": 11, "image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 50.0, 90.0]})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(coco))
    return ann, images


@needs_blazepose
def test_teacher_heatmaps_command_on_a_real_photo(tmp_path, capsys):
    import cv2

    ann, images = _astronaut_set(tmp_path)
    out = tmp_path / "th"
    args = [str(ann), str(images), str(out), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["people"] == 2 and summary["images"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "images", "th"]  # no .partial left
    maps = np.load(out / HEATMAPS_FILE, mmap_mode="r")
    assert maps.dtype == np.float16 and maps.shape == (2, 17, 64, 64)
    np.testing.assert_array_equal(maps.reshape(2, 17, -1).max(-1), 1.0)  # peak 1 per channel
    assert maps.min() >= 0
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["shape"] == [2, 17, 64, 64] and index["keypoints"] == list(COCO17.names)
    assert [index["rows"][k]["row"] for k in ("7", "9")] == [0, 1]
    box = np.array([40.0, 10.0, 480.0, 510.0])
    np.testing.assert_allclose(index["rows"]["7"]["affine"], square_crop_matrix(box) / 4)
    peaks = np.asarray(index["rows"]["7"]["peak"])
    assert ((peaks > 0) & (peaks <= 1)).all() and peaks[[0, 5, 6]].min() > 0.5  # nose and shoulders: sure

    # the maps' peaks, taken back to the image, are where BlazePose's own landmarks are
    rgb = cv2.cvtColor(cv2.imread(str(images / "astronaut.png")), cv2.COLOR_BGR2RGB)
    teacher = BlazePose(MODELS / TEACHER_FILES["blazepose"], threads=1)
    points, scores = teacher(rgb, box)
    to_image = np.linalg.inv(np.vstack([index["rows"]["7"]["affine"], [0, 0, 1]]))[:2]
    found = apply_affine(_peaks(torch.from_numpy(maps[0].astype(np.float32))).astype(np.float64), to_image)
    sure = scores > 0.5
    assert sure.sum() >= 5
    px = 4 / square_crop_matrix(box)[0, 0]  # image px per heatmap px
    assert np.median(np.hypot(*(found - points)[sure].T)) < px

    # deterministic, and an existing folder is refused
    again = tmp_path / "again"
    assert main([str(ann), str(images), str(again), "--no-progress", "--threads", "1"]) == 0
    capsys.readouterr()
    assert (again / HEATMAPS_FILE).read_bytes() == (out / HEATMAPS_FILE).read_bytes()
    assert json.loads((again / INDEX_FILE).read_text())["rows"] == index["rows"]
    before = (out / HEATMAPS_FILE).stat().st_mtime_ns
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert (out / HEATMAPS_FILE).stat().st_mtime_ns == before


@needs_blazepose
def test_teacher_heatmaps_command_leaves_nothing_behind_on_error(tmp_path, capsys):
    ann, images = _astronaut_set(tmp_path, missing_second_image=True)
    out = tmp_path / "th"
    assert main([str(ann), str(images), str(out), "--no-progress", "--threads", "1"]) == 2
    assert "gone.png: cannot be read" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "images"]
    assert main([str(tmp_path / "nope.json"), str(images), str(out), "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
    assert not out.exists()
