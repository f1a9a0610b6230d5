"""hevitpose label: teacher agreement, and the command on real decoded frames.

The frames are a real photograph (scikit-image's astronaut, public domain) written into a tiny
video with OpenCV; the teachers are the ONNX files in ../shared/models.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from model.keypoints import COCO17
from training.annotations import load_coco
from training.label import LabelConfig, agree, drop_duplicates, joint_similarity, main
from training.teachers import TEACHER_FILES, Person, default_models_dir

MODELS = default_models_dir()
needs_teachers = pytest.mark.skipif(
    not all((MODELS / f).is_file() for f in TEACHER_FILES.values()),
    reason=f"teacher ONNX files not found in {MODELS} (../shared/models beside the repository)",
)


def test_agreement_keeps_the_agreeing_pair_and_drops_the_outlier():
    rng = np.random.default_rng(0)
    truth = rng.uniform(100, 300, (17, 2))
    ones = np.ones(17)
    estimates = {
        "multipose": (truth + 1.0, ones * 0.9),
        "thunder": (truth - 1.0, ones * 0.7),
        "blazepose": (truth + 80.0, ones * 0.9),  # a different place for every joint
    }
    keypoints, scores, labelled = agree(estimates, area=200.0 * 200.0, cfg=LabelConfig())
    assert labelled.all()
    # score-weighted mean of the two that agree: (0.9 * (t + 1) + 0.7 * (t - 1)) / 1.6
    np.testing.assert_allclose(keypoints, truth + 0.2 / 1.6, atol=1e-9)
    np.testing.assert_allclose(scores, 0.8)


def test_agreement_needs_two_confident_teachers_and_respects_the_anchor():
    truth = np.full((17, 2), 150.0)
    estimates = {
        "multipose": (truth + 90.0, np.full(17, 0.9)),
        "thunder": (truth, np.full(17, 0.8)),
        "blazepose": (truth, np.full(17, 0.8)),
    }
    cfg = LabelConfig()
    _, _, labelled = agree(estimates, 100.0 * 100.0, cfg)
    assert labelled.all()  # thunder and blazepose agree
    _, _, labelled = agree(estimates, 100.0 * 100.0, cfg, anchor="multipose")
    assert not labelled.any()  # they agree with each other, not with the box source
    estimates["blazepose"] = (truth, np.full(17, 0.1))  # not confident
    _, _, labelled = agree(estimates, 100.0 * 100.0, cfg)
    assert not labelled.any()


def test_joint_similarity_is_the_oks_term():
    a = np.zeros((17, 2))
    b = np.zeros((17, 2))
    b[:, 0] = 10.0
    sim = joint_similarity(a, b, area=100.0**2)
    k = 2 * np.asarray(COCO17.sigmas)
    np.testing.assert_allclose(sim, np.exp(-100.0 / (2 * 100.0**2 * k**2)))


def _person(bbox, keypoints, labelled, score=0.9) -> Person:
    return Person(np.asarray(bbox, float), score, keypoints, np.where(labelled, 0.8, 0.0))


def test_a_person_boxed_twice_is_labelled_once_and_neighbours_stay():
    rng = np.random.default_rng(1)
    body = rng.uniform([100, 100], [200, 400], (17, 2))
    body[:5] = rng.uniform([130, 100], [170, 140], (5, 2))  # face joints near the top
    whole = _person([90, 90, 210, 410], body, np.ones(17, bool))
    # MultiPose's second box around the same head and shoulders: its few joints sit on the first's
    head_only = np.zeros(17, bool)
    head_only[:7] = True
    head = _person([120, 90, 210, 200], body + 1.0, head_only, score=0.95)
    # someone half behind the first: one joint shared by both labels, the others elsewhere
    other_pts = body + rng.uniform(30, 60, (17, 2))
    other_pts[0] = body[0]
    other = _person([110, 100, 200, 380], other_pts, np.ones(17, bool))

    kept = drop_duplicates([head, whole, other], min_similarity=0.5)
    assert kept == [whole, other]  # the one with more joints stays, in the order found
    assert drop_duplicates([whole, other], 0.5) == [whole, other]
    # the same head box far from the first person is a person of its own
    far = _person([420, 90, 510, 200], body + [300.0, 0.0], head_only)
    assert drop_duplicates([whole, far], 0.5) == [whole, far]


def _astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return cv2.cvtColor(skimage_data.astronaut(), cv2.COLOR_RGB2BGR)


def _write_video(path: Path, frames: list[np.ndarray]) -> None:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def _nothing_written(out: Path) -> bool:
    return not (out / "annotations").exists() and not any((out / "images").glob("*")) if out.exists() else True


@needs_teachers
def test_label_a_video_writes_a_coco_dataset_that_training_reads(tmp_path, capsys):
    photo = _astronaut()
    shifted = np.roll(photo, 24, axis=1)
    video = tmp_path / "in" / "clip.avi"
    video.parent.mkdir()
    # three identical frames, then three of a moved camera: near-duplicates are skipped
    _write_video(video, [photo] * 3 + [shifted] * 3)
    out = tmp_path / "out"
    args = [str(video), str(out), "--no-progress", "--threads", "1"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames"] == 2 and summary["images"] == 2 and summary["people"] == 2
    dataset = json.loads((out / "annotations/person_keypoints_train.json").read_text())
    assert [img["frame"] for img in dataset["images"]] == [0, 3]
    assert dataset["categories"][0]["keypoints"] == list(COCO17.names)
    for ann in dataset["annotations"]:
        kps = np.asarray(ann["keypoints"]).reshape(17, 3)
        scores = np.asarray(ann["keypoint_scores"])
        labelled = kps[:, 2] > 0
        assert ann["num_keypoints"] == labelled.sum() >= 4
        assert (scores[labelled] > 0).all() and (scores[~labelled] == 0).all()
        # an upper-body photo: the head and shoulders are labelled, the ankles (out of frame) are not
        assert labelled[[0, 5, 6]].all() and not labelled[[15, 16]].any()
    # the second frame's labels moved with the camera
    a, b = (np.asarray(ann["keypoints"]).reshape(17, 3) for ann in dataset["annotations"])
    both = (a[:, 2] > 0) & (b[:, 2] > 0)
    assert both.sum() >= 4 and abs(np.median(b[both, 0] - a[both, 0]) - 24) < 2
    instances = load_coco(out / "annotations/person_keypoints_train.json", out / "images/train", 0.75)
    assert len(instances) == 2 and all(Path(p).is_file() for p in instances.image_paths)
    assert 0 < instances.visible.max() <= 1 and instances.visible.min() == 0  # confidences as weights

    # deterministic: the same inputs give the same labels
    assert main([str(video), str(out), "--split", "again", "--no-progress", "--threads", "1"]) == 0
    again = json.loads((out / "annotations/person_keypoints_again.json").read_text())
    assert again["annotations"] == dataset["annotations"]
    # an existing split is never overwritten
    assert main(args) == 2
    assert "already holds" in capsys.readouterr().err

    # --mask-area: the same labels, and each person's mask area (COCO's meaning of area) beside the box's
    assert main([str(video), str(out), "--split", "masked", "--mask-area", "--no-progress", "--threads", "1"]) == 0
    masked = json.loads((out / "annotations/person_keypoints_masked.json").read_text())["annotations"]
    assert [{k: v for k, v in ann.items() if k != "mask_area"} for ann in masked] == dataset["annotations"]
    # the astronaut in a spacesuit fills much of her box, but not all of it
    assert all(0.3 * ann["area"] < ann["mask_area"] < 0.95 * ann["area"] for ann in masked)


@needs_teachers
def test_label_errors_are_clear_and_leave_nothing_behind(tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    out = tmp_path / "out"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty), str(out), "--no-progress"]) == 2
    assert "no images or videos" in capsys.readouterr().err
    assert _nothing_written(out)

    corrupt = tmp_path / "broken.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    assert main([str(corrupt), str(out), "--no-progress"]) == 2
    assert "cannot be decoded as a video" in capsys.readouterr().err
    assert _nothing_written(out)

    truncated = tmp_path / "truncated.avi"
    _write_video(truncated, [_astronaut()] * 4)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    assert main([str(truncated), str(out), "--no-progress"]) == 2
    assert "truncated" in capsys.readouterr().err
    assert _nothing_written(out)

    no_people = tmp_path / "objects"
    no_people.mkdir()
    for name in ("coffee", "rocket"):
        cv2.imwrite(str(no_people / f"{name}.png"), cv2.cvtColor(getattr(skimage_data, name)(), cv2.COLOR_RGB2BGR))
    assert main([str(no_people), str(out), "--no-progress", "--threads", "1"]) == 1
    assert "no person was labelled in 2 frame(s)" in capsys.readouterr().err
    assert _nothing_written(out)

    assert main([str(tmp_path / "missing.mp4"), str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main([str(no_people), str(out), "--teachers", "thunder,blazepose"]) == 2
    assert "multipose teacher is required" in capsys.readouterr().err
    assert main([str(no_people), str(out), "--teachers", "multipose,thunder", "--mask-area"]) == 2
    assert "--mask-area needs the blazepose teacher" in capsys.readouterr().err
