"""The One Euro filter (Casiez, Roussel and Vogel, CHI 2012) for keypoints, one per track.

A low-pass filter whose cutoff rises with speed: still joints are smoothed hard (low cutoff,
no jitter), moving joints lightly (high cutoff, little lag). Per coordinate::

    cutoff = min_cutoff + beta * |smoothed derivative|
    alpha  = 1 / (1 + 1 / (2 pi cutoff dt))
    x_hat  = alpha * x + (1 - alpha) * x_hat_prev

Speeds are measured in person heights per second (the track's box height), so ``beta`` does
not depend on the picture's size or how far the person is. A joint whose score is below
``score_threshold`` is returned as observed and does not update that joint's state: a joint
the model could not see does not drag the filtered track, and the low score tells the client.
"""

from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    tau = 1.0 / (2 * math.pi * np.asarray(cutoff, np.float64))
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filters ``(K, 2)`` keypoints of one track; call :meth:`__call__` once per frame."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 1.0, d_cutoff: float = 1.0,
                 score_threshold: float = 0.3) -> None:  # fmt: skip
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.score_threshold = score_threshold
        self.x: np.ndarray | None = None  # (K, 2) filtered
        self.dx: np.ndarray | None = None  # (K, 2) filtered derivative, person heights / s
        self.t: np.ndarray | None = None  # (K,) time of each joint's last update
        self.seen: np.ndarray | None = None  # (K,) joint has a state

    def __call__(self, keypoints: np.ndarray, scores: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """Filtered copy of ``keypoints`` (image px) at time ``t`` (s); ``scale``: the person's
        height in px, the unit of speed."""
        kp = np.asarray(keypoints, np.float64)
        good = np.asarray(scores) >= self.score_threshold
        k = len(kp)
        if self.x is None:
            self.x, self.dx = kp.copy(), np.zeros_like(kp)
            self.t, self.seen = np.full(k, t, np.float64), good.copy()
            return kp.copy()
        out = kp.copy()
        scale = max(float(scale), 1e-6)
        for j in np.flatnonzero(good):
            if not self.seen[j]:
                self.x[j], self.dx[j], self.t[j], self.seen[j] = kp[j], 0.0, t, True
                continue
            dt = t - self.t[j]
            if dt <= 0:
                out[j] = self.x[j]
                continue
            dx = (kp[j] - self.x[j]) / scale / dt
            a_d = _alpha(self.d_cutoff, dt)
            self.dx[j] = a_d * dx + (1 - a_d) * self.dx[j]
            cutoff = self.min_cutoff + self.beta * np.abs(self.dx[j])
            a = _alpha(cutoff, dt)
            self.x[j] = a * kp[j] + (1 - a) * self.x[j]
            self.t[j] = t
            out[j] = self.x[j]
        return out


class TrackSmoother:
    """One :class:`OneEuroFilter` per track id; tracks not seen for a while are forgotten."""

    def __init__(self, min_cutoff: float, beta: float, score_threshold: float, forget_s: float = 5.0) -> None:
        self.min_cutoff, self.beta, self.score_threshold = min_cutoff, beta, score_threshold
        self.forget_s = forget_s
        self.filters: dict[int, tuple[OneEuroFilter, float]] = {}

    def __call__(self, track_id: int, keypoints: np.ndarray, scores: np.ndarray, t: float,
                 scale: float) -> np.ndarray:  # fmt: skip
        entry = self.filters.get(track_id)
        f = entry[0] if entry is not None else OneEuroFilter(self.min_cutoff, self.beta, 1.0, self.score_threshold)
        self.filters[track_id] = (f, t)
        out = f(keypoints, scores, t, scale)
        if len(self.filters) > 64:
            self.filters = {k: v for k, v in self.filters.items() if t - v[1] <= self.forget_s}
        return out
