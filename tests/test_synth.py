"""The synthetic people generator: COCO format, keypoints on the rendered bodies, determinism,
and the left/right and visibility conventions on a person posed and placed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from hevitpose_cli import main as hevitpose
from model.keypoints import COCO17
from training.synth.annotate import coco_annotations
from training.synth.body import BodyModel
from training.synth.generate import split_of
from training.synth.render import Camera, Light, MeshSpec, Renderer, SceneSpec, look_at
from training.synth.scene import Person

NUM, SIZE, SEED = 8, 128, 3


def _generate(out: Path, workers: int, preset: str = "hard") -> None:
    # The hard preset by default: its cut-off, hidden and overlapping people exercise every case.
    args = ["synth", str(out), "--num", str(NUM), "--seed", str(SEED), "--workers", str(workers)]
    args += ["--width", str(SIZE), "--height", str(SIZE), "--val-fraction", "0.25", "--max-people", "3"]
    args += ["--preset", preset]
    assert hevitpose(args) == 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    _generate(out, workers=1)
    return out


def _load(root: Path, split: str) -> dict:
    return json.loads((root / "annotations" / f"person_keypoints_{split}.json").read_text())


def test_coco_format(dataset: Path) -> None:
    n_images = 0
    for split in ("train", "val"):
        path = dataset / "annotations" / f"person_keypoints_{split}.json"
        coco = COCO(str(path))  # pycocotools indexes it without complaint
        data = _load(dataset, split)
        assert [c["id"] for c in data["categories"]] == [1]
        cat = data["categories"][0]
        assert cat["name"] == "person" and cat["keypoints"] == list(COCO17.names)
        assert cat["skeleton"] == [[a + 1, b + 1] for a, b in COCO17.skeleton]
        image_ids = {im["id"] for im in data["images"]}
        assert len(image_ids) == len(data["images"])
        for im in data["images"]:
            assert isinstance(im["id"], int) and isinstance(im["file_name"], str)
            assert (im["width"], im["height"]) == (SIZE, SIZE)
            img = cv2.imread(str(dataset / "images" / split / im["file_name"]))
            assert img is not None and img.shape == (SIZE, SIZE, 3)
            n_images += 1
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for a in data["annotations"]:
            assert a["image_id"] in image_ids and a["category_id"] == 1 and a["iscrowd"] == 0
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE
            assert isinstance(a["area"], float) and a["area"] > 0
            kps = np.array(a["keypoints"], dtype=float).reshape(-1, 3)
            assert kps.shape == (17, 3)
            assert set(kps[:, 2].tolist()) <= {0, 1, 2}
            assert all(isinstance(v, int) for v in a["keypoints"][2::3])
            assert a["num_keypoints"] == int((kps[:, 2] > 0).sum())
            assert np.all(kps[kps[:, 2] == 0, :2] == 0)
            labelled = kps[kps[:, 2] > 0, :2]
            assert np.all((labelled >= 0) & (labelled < SIZE))
        assert len(coco.getAnnIds()) == len(data["annotations"])
    assert n_images == NUM
    # Every fourth image is in val.
    assert len(_load(dataset, "val")["images"]) == NUM // 4


def test_visible_keypoints_lie_on_their_person(dataset: Path) -> None:
    counts = np.zeros(3, dtype=int)
    for split in ("train", "val"):
        data = _load(dataset, split)
        for a in data["annotations"]:
            mask = mask_utils.decode(a["segmentation"]).astype(bool)
            assert mask.shape == (SIZE, SIZE)
            # The box and the area are those of the visible mask.
            assert a["area"] == float(mask.sum())
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert a["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            kps = np.array(a["keypoints"], dtype=float).reshape(-1, 3)
            counts += np.bincount(kps[:, 2].astype(int), minlength=3)
            for x, y, v in kps:
                if v == 2:
                    c, r = int(x), int(y)
                    window = mask[max(r - 1, 0) : r + 2, max(c - 1, 0) : c + 2]
                    assert window.any(), f"visible keypoint ({x}, {y}) off its person"
    # The set exercises every visibility flag.
    assert counts[2] > 20 and counts[1] > 0 and counts[0] > 0


def test_same_seed_same_dataset_whatever_the_workers(dataset: Path, tmp_path: Path) -> None:
    _generate(tmp_path, workers=2)
    for split in ("train", "val"):
        assert _load(tmp_path, split) == _load(dataset, split)
        for im in _load(dataset, split)["images"]:
            a = (dataset / "images" / split / im["file_name"]).read_bytes()
            b = (tmp_path / "images" / split / im["file_name"]).read_bytes()
            assert a == b


def test_a_dataset_grows_by_later_indices(dataset: Path, tmp_path: Path) -> None:
    base = ["synth", str(tmp_path), "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE)]
    base += ["--val-fraction", "0.25", "--max-people", "3", "--preset", "hard"]
    assert hevitpose(base + ["--num", "5"]) == 0
    # As a dataset made before the scene's head_in_frame field existed records it: not at all.
    for split in ("train", "val"):
        data = _load(tmp_path, split)
        del data["info"]["settings"]["scene"]["head_in_frame"]
        (tmp_path / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(data))
    assert hevitpose(base + ["--num", str(NUM - 5), "--start", "5"]) == 0
    for split in ("train", "val"):
        grown, whole = _load(tmp_path, split), _load(dataset, split)
        assert grown["images"] == whole["images"] and grown["annotations"] == whole["annotations"]
    # Other settings, or indices already there, are refused before anything is rendered.
    assert hevitpose(base[:-6] + ["--max-people", "2", "--preset", "hard", "--num", "1", "--start", str(NUM)]) == 2
    assert hevitpose(base + ["--num", "1", "--start", "3"]) == 2
    assert hevitpose(["synth", str(tmp_path / "empty"), "--num", "1", "--start", "3"]) == 2


def test_photo_preset_is_deterministic_and_valid(tmp_path: Path) -> None:
    _generate(tmp_path / "a", workers=1, preset="photo")
    _generate(tmp_path / "b", workers=2, preset="photo")
    for split in ("train", "val"):
        data = _load(tmp_path / "a", split)
        assert data == _load(tmp_path / "b", split)
        assert data["info"]["settings"]["scene"]["preset"] == "photo"
        for im in data["images"]:
            a = (tmp_path / "a" / "images" / split / im["file_name"]).read_bytes()
            assert a == (tmp_path / "b" / "images" / split / im["file_name"]).read_bytes()
        for a in data["annotations"]:
            kps = np.array(a["keypoints"], dtype=float).reshape(-1, 3)
            assert kps.shape == (17, 3) and a["num_keypoints"] == int((kps[:, 2] > 0).sum())
    assert sum(len(_load(tmp_path / "a", s)["annotations"]) for s in ("train", "val")) >= NUM


def test_split_spreads_val_evenly() -> None:
    splits = [split_of(i, 0.1) for i in range(100)]
    assert splits.count("val") == 10
    assert all(splits[i : i + 10].count("val") == 1 for i in range(0, 100, 10))
    assert all(split_of(i, 0.0) == "train" for i in range(10))


@pytest.fixture(scope="module")
def body_model() -> BodyModel:
    return BodyModel()


def _render_one(model: BodyModel, yaw_deg: float) -> np.ndarray:
    """A default-shaped person in the rest pose, 3 m in front of the camera, turned by yaw_deg
    (0: facing the camera)."""
    body = model.pose([dict.fromkeys(("gender", "age", "muscle", "weight", "height", "proportions"), 0.5)], [{}])[0]
    a = np.radians(yaw_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    vertices, keypoints = body.vertices @ rot.T, body.keypoints @ rot.T
    size = 160
    camera = Camera(200.0, 200.0, size / 2, size / 2, look_at(np.array([0.0, -3.5, 0.9]), np.array([0.0, 0.0, 0.85])))
    colors = np.full((len(vertices), 3), 0.5)
    mesh = MeshSpec(vertices, model.faces, colors, normals=model.vertex_normals(vertices), instance=1)
    light = Light(np.array([0.3, 1.0, -1.0]), np.ones(3), 3.0)
    renderer = Renderer(size, size)
    try:
        rendering = renderer.render(SceneSpec(camera, [mesh], [light]))
    finally:
        renderer.close()
    tolerance = np.maximum(0.05, 2.0 * body.keypoint_radius + 0.03)
    person = Person(body, "stand", vertices, keypoints, tolerance)
    (ann,) = coco_annotations([person], camera, rendering, model)
    return np.array(ann["keypoints"], dtype=float).reshape(-1, 3)


def test_front_view_conventions(body_model: BodyModel) -> None:
    kps = _render_one(body_model, 0.0)
    idx = {n: i for i, n in enumerate(COCO17.names)}
    # Facing the camera, everything but the ears is in plain sight.
    for name in COCO17.names:
        if not name.endswith("_ear"):
            assert kps[idx[name], 2] == 2, name
    # The person's left is on the image's right.
    for part in ("eye", "shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
        assert kps[idx[f"left_{part}"], 0] > kps[idx[f"right_{part}"], 0], part
    # Head above shoulders above hips above knees above ankles.
    ys = [kps[idx[n], 1] for n in ("nose", "left_shoulder", "left_hip", "left_knee", "left_ankle")]
    assert ys == sorted(ys)


def test_back_view_hides_the_face(body_model: BodyModel) -> None:
    kps = _render_one(body_model, 180.0)
    idx = {n: i for i, n in enumerate(COCO17.names)}
    for name in ("nose", "left_eye", "right_eye"):
        assert kps[idx[name], 2] == 1, name
    for name in ("left_shoulder", "right_shoulder", "left_hip", "right_hip", "left_ankle", "right_ankle"):
        assert kps[idx[name], 2] == 2, name
    # Seen from behind, the person's left is on the image's left.
    for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
        assert kps[idx[f"left_{part}"], 0] < kps[idx[f"right_{part}"], 0], part


def test_bad_arguments_exit_with_usage_error(tmp_path: Path) -> None:
    assert hevitpose(["synth", str(tmp_path), "--num", "0"]) == 2
    assert hevitpose(["synth", str(tmp_path), "--num", "2", "--val-fraction", "1.5"]) == 2
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    assert hevitpose(["synth", str(not_a_dir), "--num", "2"]) == 2


def test_presets() -> None:
    from training.synth.scene import PRESETS, SceneSettings, scene_settings

    # The hard preset is the original generator; photo, the default, overrides only known fields.
    assert scene_settings("hard") == SceneSettings(preset="hard")
    photo = scene_settings("photo", width=64)
    assert photo.preset == "photo" and photo.width == 64 and photo.lighting == "photo"
    assert set(PRESETS["photo"]) <= set(SceneSettings.__dataclass_fields__)
    assert photo.camera_height[0] >= 1.0 and photo.high_camera_probability == 0.0
    with pytest.raises(ValueError, match="unknown preset"):
        scene_settings("nope")
    with pytest.raises(SystemExit):
        hevitpose(["synth", "/tmp/unused", "--num", "1", "--preset", "nope"])


def test_hard_preset_is_recorded_and_renders(tmp_path: Path) -> None:
    args = ["synth", str(tmp_path), "--num", "2", "--seed", "5", "--width", "96", "--height", "96"]
    assert hevitpose(args + ["--preset", "hard", "--val-fraction", "0.5"]) == 0
    assert _load(tmp_path, "train")["info"]["settings"]["scene"]["preset"] == "hard"
    assert _load(tmp_path, "val")["info"]["settings"]["scene"]["lighting"] == "random"
    # A dataset is extended only with its own preset.
    assert hevitpose(args + ["--start", "2", "--val-fraction", "0.5"]) == 2


def test_background_photographs_ship_with_their_licences() -> None:
    from training.synth.appearance import ASSETS, Backgrounds

    files = sorted(p.name for p in ASSETS.glob("*.jpg"))
    assert len(files) >= 15
    assert sum(p.stat().st_size for p in ASSETS.iterdir()) < 3_000_000
    readme = (ASSETS / "README.md").read_text()
    for name in files:
        assert f"`{name}`" in readme, f"{name} has no licence entry"
    bg = Backgrounds("photos", photo_probability=1.0)
    assert len(bg.photos) >= len(files) and bg.ground_photos
    rng = np.random.default_rng(0)
    img = bg.sample(40, 60, rng)
    assert img.shape == (40, 60, 3) and img.dtype == np.float32 and 0 <= img.min() <= img.max() <= 1


def test_other_people_keep_apart_and_in_frame() -> None:
    from training.synth.scene import _fits

    camera = Camera(100.0, 100.0, 50.0, 50.0, look_at(np.array([0.0, 0.0, 1.0]), np.array([0.0, 5.0, 1.0])))
    main = [np.array([0.0, 5.0])]
    assert _fits(np.array([0.1, 5.0]), main, camera, 0.0, 0.0)  # no constraint
    assert not _fits(np.array([0.1, 5.0]), main, camera, 30.0, 0.0)  # 2 px across: too close
    assert _fits(np.array([2.0, 5.0]), main, camera, 30.0, 0.0)  # 40 px across
    assert not _fits(np.array([2.0, 5.0]), main, camera, 30.0, 35.0)  # 40 px off the centre


def test_activities_replace_the_presets_weights_and_reach_the_renders(tmp_path: Path) -> None:
    from training.synth.cli import activity_weights
    from training.synth.poses import ACTIVITIES
    from training.synth.scene import PRESETS

    photo = dict(zip(ACTIVITIES, PRESETS["photo"]["activity_weights"]))
    weights = dict(zip(ACTIVITIES, activity_weights("crouch=0.2, lie=0", "photo")))
    assert weights == {**photo, "crouch": 0.2, "lie": 0.0}
    for bad in ("jump=1", "lie", "lie=-1", "lie=nan", "lie=inf", ",".join(f"{a}=0" for a in ACTIVITIES)):
        with pytest.raises(ValueError, match="activit"):
            activity_weights(bad, "photo")
    assert hevitpose(["synth", str(tmp_path / "bad"), "--num", "1", "--activities", "jump=1"]) == 2
    assert not (tmp_path / "bad").exists()

    # Everyone lying down, then everyone standing: the option reaches the scenes, and the boxes of the
    # same cameras and bodies come out far wider.
    aspects = {}
    for activity in ("lie", "stand"):
        only = ",".join(f"{a}={int(a == activity)}" for a in ACTIVITIES)
        args = ["synth", str(tmp_path / activity), "--num", "4", "--seed", "1", "--width", "128", "--height", "128"]
        assert hevitpose(args + ["--max-people", "1", "--val-fraction", "0", "--activities", only]) == 0
        train = _load(tmp_path / activity, "train")
        assert train["info"]["settings"]["scene"]["activity_weights"] == [float(a == activity) for a in ACTIVITIES]
        aspects[activity] = np.mean([w / h for _, _, w, h in (a["bbox"] for a in train["annotations"])])
    assert aspects["lie"] > 2 * aspects["stand"], aspects


def test_portrait_preset_cuts_people_at_the_bottom_edge_with_the_head_inside(tmp_path: Path) -> None:
    args = ["synth", str(tmp_path), "--num", "6", "--seed", "2", "--width", "96", "--height", "96"]
    assert hevitpose(args + ["--preset", "portrait", "--max-people", "1", "--val-fraction", "0"]) == 0
    train = _load(tmp_path, "train")
    assert train["info"]["settings"]["scene"]["preset"] == "portrait"
    assert train["info"]["settings"]["scene"]["head_in_frame"] is True
    assert len(train["annotations"]) == 6
    head, feet = [0, 1, 2, 3, 4], [COCO17.names.index("left_ankle"), COCO17.names.index("right_ankle")]
    for a in train["annotations"]:
        kps = np.array(a["keypoints"], dtype=float).reshape(17, 3)
        x, y, w, h = a["bbox"]
        assert y + h >= 95, a["bbox"]  # the body runs out of the picture at the bottom
        assert (kps[feet, 2] == 0).all()  # so the ankles are unlabelled
        assert (kps[head, 2] > 0).any()  # and the head is in it
