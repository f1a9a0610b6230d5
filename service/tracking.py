"""Person tracking across frames: ByteTrack-style two-stage matching on box IoU.

Each :class:`Tracker` belongs to one video or one WebSocket connection, so ids are unique
within it (1, 2, 3, ... in order of appearance). A track keeps its box and a constant-velocity
motion model (the box's centre, width and height per frame, smoothed); every frame each track
is first moved by its velocity, then:

1. detections scoring at least ``high_score`` are matched to all tracks (live and lost) by IoU
   against the predicted boxes, greedily from the highest IoU, pairs below ``match_iou`` refused;
2. the remaining detections scoring at least ``low_score`` are matched to the tracks that were
   seen in the previous frame and are still unmatched, at IoU ``low_match_iou`` (ByteTrack's
   second association: a person partly hidden scores lower but keeps their id);
3. unmatched detections scoring at least ``new_score`` start new tracks; other unmatched
   detections are dropped (background, as in ByteTrack and Ultralytics' ``track``);
4. tracks unmatched for more than ``max_lost`` frames are forgotten. Until then a lost track keeps
   moving at its last velocity, so a person walking behind an obstacle is found again where
   they come out.

ByteTrack solves each association with the Hungarian algorithm; greedy matching by IoU gives
the same pairs whenever the best pairs do not conflict, which is the case for people who
overlap less than ``match_iou`` with their neighbours' predicted boxes, and needs no scipy.

Between detector frames (``detect_every`` > 1) the boxes come from the tracks themselves:
:meth:`Tracker.propagate` takes one box per known track id (the caller builds it from that
person's keypoints in the previous frame) and updates those tracks without matching.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) x (M, 4) boxes [x1, y1, x2, y2] -> (N, M) intersection over union."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def greedy_match(iou: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Pairs (row, col) by decreasing IoU, each row and column used once, IoU >= threshold."""
    pairs: list[tuple[int, int]] = []
    if iou.size == 0:
        return pairs
    order = np.argsort(-iou, axis=None, kind="stable")
    used_r, used_c = set(), set()
    for flat in order:
        r, c = divmod(int(flat), iou.shape[1])
        if iou[r, c] < threshold:
            break
        if r in used_r or c in used_c:
            continue
        used_r.add(r)
        used_c.add(c)
        pairs.append((r, c))
    return pairs


def _to_cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], np.float64)


def _to_xyxy(s: np.ndarray) -> np.ndarray:
    cx, cy, w, h = s
    w, h = max(w, 1e-3), max(h, 1e-3)
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float64)


@dataclass
class Track:
    id: int
    state: np.ndarray  # cx, cy, w, h of the last observed box
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))  # per frame
    lost: int = 0  # frames since it was last matched
    hits: int = 1
    score: float = 1.0

    def predicted(self) -> np.ndarray:
        """The box where the motion model expects it in the coming frame."""
        return _to_xyxy(self.state + self.velocity * (self.lost + 1))

    def observe(self, box: np.ndarray, score: float, velocity_smoothing: float) -> None:
        new = _to_cxcywh(box)
        step = (new - self.state) / (self.lost + 1)
        a = velocity_smoothing
        self.velocity = step if self.hits == 1 else a * step + (1 - a) * self.velocity
        self.state = new
        self.lost = 0
        self.hits += 1
        self.score = float(score)


@dataclass
class TrackerConfig:
    high_score: float = 0.3
    low_score: float = 0.1
    new_score: float = 0.3
    match_iou: float = 0.2
    low_match_iou: float = 0.5
    max_lost: int = 30  # frames (processed frames) a lost track is kept
    velocity_smoothing: float = 0.5  # weight of the newest step in the velocity average


class Tracker:
    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self._next_id = 1
        self.started = 0  # tracks started so far (the tracks-started metric)

    def _new_track(self, box: np.ndarray, score: float) -> Track:
        track = Track(self._next_id, _to_cxcywh(box), score=float(score))
        self._next_id += 1
        self.started += 1
        self.tracks.append(track)
        return track

    def _age(self, matched: set[int]) -> None:
        for track in self.tracks:
            if track.id not in matched:
                track.lost += 1
        self.tracks = [t for t in self.tracks if t.lost <= self.config.max_lost]

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """One detector frame: a track id per detection (int array), ``-1`` for those dropped."""
        c = self.config
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        ids = np.full(len(boxes), -1, np.int64)
        tracks = list(self.tracks)
        predicted = np.array([t.predicted() for t in tracks]).reshape(-1, 4)
        matched: set[int] = set()

        high = np.flatnonzero(scores >= c.high_score)
        for r, col in greedy_match(iou_matrix(boxes[high], predicted), c.match_iou):
            det, track = high[r], tracks[col]
            track.observe(boxes[det], scores[det], c.velocity_smoothing)
            ids[det] = track.id
            matched.add(track.id)

        low = np.flatnonzero((scores >= c.low_score) & (scores < c.high_score))
        recent = [i for i, t in enumerate(tracks) if t.id not in matched and t.lost == 0]
        if len(low) and recent:
            iou = iou_matrix(boxes[low], predicted[recent])
            for r, col in greedy_match(iou, c.low_match_iou):
                det, track = low[r], tracks[recent[col]]
                track.observe(boxes[det], scores[det], c.velocity_smoothing)
                ids[det] = track.id
                matched.add(track.id)

        self._age(matched)
        for det in np.flatnonzero(ids < 0):
            if scores[det] >= c.new_score:
                ids[det] = self._new_track(boxes[det], scores[det]).id
        return ids

    def propagate(self, track_ids: list[int], boxes: np.ndarray) -> None:
        """A frame without detection: ``boxes[i]`` is where track ``track_ids[i]`` is now."""
        by_id = {t.id: t for t in self.tracks}
        matched = set()
        for tid, box in zip(track_ids, np.asarray(boxes, np.float64).reshape(-1, 4)):
            track = by_id.get(int(tid))
            if track is not None:
                track.observe(box, track.score, self.config.velocity_smoothing)
                matched.add(track.id)
        self._age(matched)

    def velocity_of(self, track_id: int) -> np.ndarray:
        for t in self.tracks:
            if t.id == track_id:
                return t.velocity
        return np.zeros(4)


def keypoint_box(
    keypoints: np.ndarray, scores: np.ndarray, threshold: float, width: int, height: int, margin: float = 0.1
) -> np.ndarray | None:
    """A person's box from their keypoints above ``threshold`` (``None`` if fewer than 2):
    their extent, widened by ``margin`` of its size on each side, clipped to the image."""
    visible = np.asarray(scores) >= threshold
    if visible.sum() < 2:
        return None
    pts = np.asarray(keypoints, np.float64)[visible]
    x1, y1 = pts.min(axis=0)
    x2, y2 = pts.max(axis=0)
    size = max(x2 - x1, y2 - y1, 1.0)
    pad_x = max(margin * (x2 - x1), 0.05 * size)
    pad_y = max(margin * (y2 - y1), 0.05 * size)
    box = np.array([x1 - pad_x, y1 - pad_y, x2 + pad_x, y2 + pad_y])
    box[[0, 2]] = box[[0, 2]].clip(0, width)
    box[[1, 3]] = box[[1, 3]].clip(0, height)
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return None
    return box
