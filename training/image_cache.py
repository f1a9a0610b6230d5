"""Training images decoded once, into one raw file that every loader worker maps (``data.cache_images``).

Decoding a JPEG is the largest single cost of a training sample on the GPU recipe's data
(``bench/loader_speed.py``), and every epoch decodes each image again as many times as it holds
people. The loader's workers are started by a fork server, so they share no memory with the process
that built the dataset, and a pickled in-memory cache would be copied into each of them; a file is
mapped instead: its pages sit once in the page cache, whatever the number of workers.
"""

from __future__ import annotations

import os
import tempfile
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np


def _remove(name: str, owner: int) -> None:
    # only the process that made the file deletes it, not a forked copy of that process as it exits
    if os.getpid() == owner:
        Path(name).unlink(missing_ok=True)


def _decode(path: str) -> np.ndarray | None:
    try:
        return cv2.imread(path, cv2.IMREAD_COLOR)
    except cv2.error:
        return None


_LIVE: weakref.WeakValueDictionary[tuple[str, ...], ImageCache] = weakref.WeakValueDictionary()


@dataclass
class ImageCache:
    """BGR images as ``cv2.imread`` gives them, row ``i`` at ``offsets[i]`` with shape ``shapes[i]``
    (all zeros for an image that could not be read)."""

    path: Path
    offsets: np.ndarray  # (N,) int64, bytes into the file
    shapes: np.ndarray  # (N, 3) int64: height, width, channels
    _map: np.memmap | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, paths: Sequence[str], folder: str | Path | None = None, threads: int = 0) -> ImageCache:
        """Decode ``paths`` in ``threads`` threads (0: one per core) into a new file in ``folder``
        (the system's temporary folder by default), deleted with the cache or when this process exits."""
        fd, name = tempfile.mkstemp(prefix="hevitpose-images-", suffix=".raw", dir=folder)
        offsets = np.zeros(len(paths), dtype=np.int64)
        shapes = np.zeros((len(paths), 3), dtype=np.int64)
        position = 0
        with os.fdopen(fd, "wb") as out, ThreadPoolExecutor(threads or os.cpu_count() or 1) as pool:
            for i, image in enumerate(pool.map(_decode, paths)):
                offsets[i] = position
                if image is not None:
                    shapes[i] = image.shape
                    out.write(image.tobytes())
                    position += image.nbytes
        cache = cls(Path(name), offsets, shapes)
        weakref.finalize(cache, _remove, name, os.getpid())
        return cache

    @classmethod
    def shared(cls, paths: Sequence[str]) -> ImageCache:
        """The cache of these paths that a live dataset of this process already holds, else a new one:
        a script that builds the same training set more than once (scripts/gpu_run.py probes several
        models, each with its own trainer) decodes it once."""
        key = tuple(paths)
        cache = _LIVE.get(key)
        if cache is None:
            cache = _LIVE[key] = cls.build(paths)
        return cache

    @property
    def nbytes(self) -> int:
        return int(self.shapes.prod(axis=1).sum())

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> np.ndarray | None:
        """Image ``i``, a read-only view of the mapped file; None when it could not be read."""
        shape = tuple(int(v) for v in self.shapes[i])
        if shape[0] == 0:
            return None
        if self._map is None:  # mapped on first use, in whichever process uses it
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        start = int(self.offsets[i])
        return self._map[start : start + shape[0] * shape[1] * shape[2]].reshape(shape)

    def __getstate__(self) -> dict:
        # a worker maps the file itself; a mapping does not travel
        return {**self.__dict__, "_map": None}
