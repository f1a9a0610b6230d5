"""Tracking and smoothing on synthetic tracks (no model, no server)."""

from __future__ import annotations

import numpy as np

from service.smoothing import OneEuroFilter, TrackSmoother
from service.tracking import Tracker, TrackerConfig, greedy_match, iou_matrix, keypoint_box


def box_at(cx: float, cy: float, w: float = 40, h: float = 100) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def test_iou_and_greedy_match():
    a = np.array([box_at(50, 50), box_at(200, 50)])
    b = np.array([box_at(205, 50), box_at(52, 50)])
    iou = iou_matrix(a, b)
    assert iou.shape == (2, 2)
    assert iou[0, 1] > 0.9 and iou[1, 0] > 0.7 and iou[0, 0] == 0
    assert sorted(greedy_match(iou, 0.2)) == [(0, 1), (1, 0)]
    assert greedy_match(iou, 0.99) == []
    assert greedy_match(np.zeros((0, 3)), 0.2) == []


def test_two_people_crossing_keep_their_ids():
    """A walks right, B walks left, at the same height: their boxes overlap completely at the
    crossing; the motion model carries each through it."""
    tracker = Tracker()
    seen: dict[str, set[int]] = {"A": set(), "B": set()}
    for f in range(60):
        xa, xb = 50 + 5 * f, 350 - 5 * f
        boxes = np.array([box_at(xa, 100), box_at(xb, 100)])
        order = [0, 1] if f % 2 else [1, 0]  # the detector's order means nothing
        ids = tracker.update(boxes[order], np.array([0.9, 0.9]))
        by_det = dict(zip(order, ids))
        if abs(xa - xb) < 1e-9:  # fully on top of each other: either id, it is one box twice
            continue
        seen["A"].add(int(by_det[0]))
        seen["B"].add(int(by_det[1]))
    assert len(seen["A"]) == 1 and len(seen["B"]) == 1, seen
    assert seen["A"] != seen["B"]
    assert tracker.started == 2


def test_occlusion_gap_keeps_the_id_and_a_new_person_gets_a_new_one():
    tracker = Tracker(TrackerConfig(max_lost=10))
    (first,) = tracker.update(np.array([box_at(50, 100)]), np.array([0.9]))
    for f in range(1, 10):
        (tid,) = tracker.update(np.array([box_at(50 + 6 * f, 100)]), np.array([0.9]))
        assert tid == first
    for _ in range(10, 16):  # hidden for 6 frames, still walking
        assert len(tracker.update(np.zeros((0, 4)), np.zeros(0))) == 0
    (tid,) = tracker.update(np.array([box_at(50 + 6 * 16, 100)]), np.array([0.9]))
    assert tid == first  # found again where the motion model expected it
    ids = tracker.update(np.array([box_at(50 + 6 * 17, 100), box_at(400, 300)]), np.array([0.9, 0.8]))
    assert ids[0] == first and ids[1] not in (first, -1)
    assert tracker.started == 2


def test_lost_too_long_is_a_new_track():
    tracker = Tracker(TrackerConfig(max_lost=3))
    (a,) = tracker.update(np.array([box_at(50, 100)]), np.array([0.9]))
    for _ in range(5):
        tracker.update(np.zeros((0, 4)), np.zeros(0))
    (b,) = tracker.update(np.array([box_at(50, 100)]), np.array([0.9]))
    assert b != a


def test_low_score_detection_keeps_a_track_but_starts_none():
    tracker = Tracker(TrackerConfig(high_score=0.5, low_score=0.1, new_score=0.5))
    (a,) = tracker.update(np.array([box_at(50, 100)]), np.array([0.9]))
    # partly hidden: low score, still the same person (second association)
    ids = tracker.update(np.array([box_at(52, 100), box_at(300, 100)]), np.array([0.2, 0.2]))
    assert ids[0] == a and ids[1] == -1  # the low-score stranger is background
    assert tracker.started == 1


def test_propagate_moves_tracks_without_matching():
    tracker = Tracker()
    ids = tracker.update(np.array([box_at(50, 100), box_at(300, 100)]), np.array([0.9, 0.9]))
    tracker.propagate([int(ids[0])], np.array([box_at(60, 100)]))
    assert tracker.tracks[0].lost == 0 and tracker.tracks[1].lost == 1
    assert np.allclose(tracker.velocity_of(int(ids[0]))[:2], [10, 0])
    again = tracker.update(np.array([box_at(70, 100), box_at(300, 100)]), np.array([0.9, 0.9]))
    assert list(again) == list(ids)


def test_keypoint_box():
    kps = np.array([[10, 20], [30, 80], [500, 500]], np.float64)
    box = keypoint_box(kps, np.array([0.9, 0.9, 0.0]), 0.3, 640, 480)
    assert box is not None and box[0] < 10 and box[2] > 30 and box[1] < 20 and box[3] > 80
    assert keypoint_box(kps, np.array([0.9, 0.1, 0.1]), 0.3, 640, 480) is None
    clipped = keypoint_box(np.array([[0, 0], [5, 50]]), np.ones(2), 0.3, 640, 480)
    assert clipped[0] == 0 and clipped[1] == 0


def test_one_euro_reduces_jitter_of_a_static_pose():
    rng = np.random.default_rng(0)
    truth = rng.uniform(100, 300, (17, 2))
    f = OneEuroFilter(min_cutoff=1.0, beta=1.0)
    raw_err, smooth_err = [], []
    for i in range(150):
        noisy = truth + rng.normal(0, 3.0, truth.shape)
        out = f(noisy, np.ones(17), i / 30, scale=200)
        if i >= 30:  # after the filter settles
            raw_err.append(np.abs(noisy - truth).mean())
            smooth_err.append(np.abs(out - truth).mean())
    factor = np.mean(raw_err) / np.mean(smooth_err)
    assert factor > 2.5, factor  # 3.0 measured


def test_one_euro_follows_fast_motion():
    f = OneEuroFilter(min_cutoff=1.0, beta=1.0)
    for i in range(60):  # 2 person heights per second to the right
        x = 100 + 400 * i / 30
        out = f(np.array([[x, 50.0]]), np.ones(1), i / 30, scale=200)
    assert abs(out[0, 0] - x) < 20  # 13 px measured: under 0.05 s of motion at 400 px/s


def test_low_score_joints_do_not_drag():
    f = OneEuroFilter(min_cutoff=1.0, beta=1.0, score_threshold=0.3)
    kp = np.array([[100.0, 100.0], [200.0, 200.0]])
    f(kp, np.ones(2), 0.0, 100)
    far = np.array([[100.0, 100.0], [900.0, 900.0]])
    out = f(far, np.array([1.0, 0.05]), 1 / 30, 100)
    assert np.allclose(out[1], [900, 900])  # returned as observed, its low score says so
    out = f(kp, np.ones(2), 2 / 30, 100)
    assert np.allclose(out[1], [200, 200])  # the outlier never entered the state


def test_track_smoother_keeps_one_filter_per_track():
    s = TrackSmoother(1.0, 1.0, 0.3)
    a = s(1, np.array([[0.0, 0.0]]), np.ones(1), 0.0, 100)
    b = s(2, np.array([[500.0, 500.0]]), np.ones(1), 0.0, 100)
    assert np.allclose(a, 0) and np.allclose(b, 500)
    assert set(s.filters) == {1, 2}
