"""The pose model of the service: a bundle, its codec and the fastest runner, fed in batches.

The top-down pass itself (crop matrices, crops, flip test, decode, image pixels) is
``model/topdown.py``, shared with training's evaluation; this module adds the service's split
of it across threads. :meth:`PoseModel.prepare_job` runs in the request's thread-pool slot: it
builds the affine matrices, and on a CPU cuts and normalises the crops there, so the pose worker
only runs the model. On a GPU the worker cuts every crop of the batch at once with
``warp_crops_torch``. :meth:`PoseModel.run_jobs` is what the pose worker calls with one batch.
"""

from __future__ import annotations

import concurrent.futures
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.bundle import BundleMeta, bundle_paths, load_bundle, sha256
from model.codec import HeatmapCodec, invert_affine, normalize, warp_crops_torch
from model.runtime import RuntimeConfig, create_runner
from model.topdown import crop_inputs, crop_matrices, decode_to_image, forward_heatmaps
from service.runtime_choice import RuntimeChoice, select_runner

log = logging.getLogger("service.pose_model")


@dataclass
class PoseResult:
    keypoints: np.ndarray  # (N, K, 2) image pixels
    scores: np.ndarray  # (N, K)
    queue_s: float = 0.0
    crop_s: float = 0.0
    pose_s: float = 0.0  # model calls of the whole batch this job rode in
    postprocess_s: float = 0.0


@dataclass(eq=False)  # identity: the queue finds and removes jobs by ``is``
class PoseJob:
    """One image's boxes on their way through the pose worker."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    bboxes: np.ndarray  # (N, 4) image pixels
    matrices: np.ndarray  # (N, 2, 3) image -> input
    inputs: torch.Tensor | None  # normalised crops, cut on the CPU; None when the worker cuts them
    flip_test: bool
    deadline: float  # time.monotonic() after which nobody waits for the answer
    crop_s: float = 0.0
    enqueued_at: float = 0.0
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    @property
    def num_crops(self) -> int:
        return len(self.bboxes)


class PoseModel:
    """A loaded bundle wrapped in the fastest runner for the device.

    The codec is the bundle's (the values its training used); ``codec_overrides`` replaces only
    the fields a user set explicitly (``HEVITPOSE_BBOX_PADDING``, ``HEVITPOSE_DECODE_METHOD``).
    """

    def __init__(
        self,
        weights: str | Path,
        runtime: RuntimeConfig,
        codec_overrides: Mapping[str, Any] | None = None,
        runtime_cache: Path | None = None,
    ) -> None:
        weights_path, _ = bundle_paths(weights)
        model, meta = load_bundle(weights)
        self.meta: BundleMeta = meta
        self.codec: HeatmapCodec = replace(meta.codec, **(codec_overrides or {}))
        if codec_overrides:
            log.info(
                "codec of %s with settings overriding %s: %s", weights_path.name, dict(codec_overrides), self.codec
            )
        self.num_params = sum(p.numel() for p in model.parameters())
        self.weights_sha256 = sha256(weights_path)
        self.input_size: tuple[int, int] = self.codec.input_size
        self.flip_index = meta.flip_index
        self._onnx_dir = tempfile.TemporaryDirectory(prefix="hevitpose-serve-")
        try:
            self.runner, self.runtime_choice = select_runner(
                model, self.codec, runtime, self.weights_sha256, meta.mean, meta.std, self._onnx_dir.name, runtime_cache
            )
        except Exception as exc:
            if runtime.backend != "auto":
                raise
            # An install without onnx (the exporter) or with a broken backend still serves, through
            # eager torch, rather than never becoming ready.
            log.warning("fastest backend unavailable (%s: %s); using torch", type(exc).__name__, exc)
            self.runner = create_runner(model, self.input_size, replace(runtime, backend="torch"))
            self.runtime_choice = RuntimeChoice(
                "torch", str(self.runner.dtype).removeprefix("torch."), runtime.threads, "fallback"
            )
        self.device: torch.device = self.runner.device
        self.backend: str = self.runner.backend
        self.dtype = str(self.runner.dtype).removeprefix("torch.")
        self.crop_on_device = self.device.type == "cuda"

    @property
    def name(self) -> str:
        return self.meta.model

    @property
    def version(self) -> str:
        return str(self.meta.version)

    def close(self) -> None:
        self._onnx_dir.cleanup()

    def warmup(self, batch_size: int) -> None:
        w, h = self.input_size
        x = torch.zeros(batch_size, 3, h, w)
        for n in sorted({1, batch_size}):
            self.runner(x[:n])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) RGB in [0, 255] -> network input, with the bundle's mean and std."""
        return normalize(crops, self.meta.mean, self.meta.std)

    # ------------------------------------------------------------------ request side

    def prepare_job(self, image: np.ndarray, bboxes: np.ndarray, flip_test: bool, deadline: float) -> PoseJob:
        t0 = time.perf_counter()
        matrices = crop_matrices(self.codec, bboxes)
        inputs = (
            None if self.crop_on_device else crop_inputs(image, matrices, self.codec, self.meta.mean, self.meta.std)
        )
        return PoseJob(image, bboxes, matrices, inputs, flip_test, deadline, crop_s=time.perf_counter() - t0)

    # ------------------------------------------------------------------ worker side

    def _inputs_on_device(self, jobs: list[PoseJob]) -> torch.Tensor:
        if not self.crop_on_device:
            return torch.cat([job.inputs for job in jobs])
        images = [torch.from_numpy(job.image).to(self.device, non_blocking=True).permute(2, 0, 1) for job in jobs]
        index = [i for i, job in enumerate(jobs) for _ in range(job.num_crops)]
        matrices = torch.from_numpy(np.concatenate([job.matrices for job in jobs])).to(self.device)
        crops = warp_crops_torch([im.float() for im in images], index, matrices.float(), self.input_size)
        return self.normalize(crops)

    def run_jobs(
        self, jobs: list[PoseJob], max_batch_size: int, on_call: Callable[[int], None] | None = None
    ) -> list[PoseResult]:
        """Pose for every box of ``jobs``; model calls of at most ``max_batch_size`` crops.

        ``on_call(n)`` is told the number of crops of each model call (the batch-size metric).
        """
        t0 = time.perf_counter()
        inputs = self._inputs_on_device(jobs)
        t1 = time.perf_counter()
        flips = torch.tensor([job.flip_test for job in jobs for _ in range(job.num_crops)])
        heatmaps = torch.empty(0)
        chunks = []
        for use_flip in (False, True):
            rows = (flips == use_flip).nonzero().flatten()
            for start in range(0, len(rows), max_batch_size):
                part = rows[start : start + max_batch_size]
                x = inputs[part.to(inputs.device)]
                out = forward_heatmaps(self.runner, x, self.codec, self.flip_index if use_flip else None)
                chunks.append((part, out))
                if on_call is not None:
                    on_call(len(part))
        if chunks:
            k, hh, ww = chunks[0][1].shape[1:]
            heatmaps = torch.empty(len(flips), k, hh, ww, device=chunks[0][1].device)
            for part, out in chunks:
                heatmaps[part.to(heatmaps.device)] = out
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t2 = time.perf_counter()
        keypoints, scores = decode_to_image(
            self.codec, heatmaps, invert_affine(np.concatenate([job.matrices for job in jobs]))
        )
        keypoints = keypoints.double().cpu().numpy()
        scores = scores.cpu().numpy()
        t3 = time.perf_counter()
        results, start = [], 0
        for job in jobs:
            n = job.num_crops
            results.append(
                PoseResult(
                    keypoints[start : start + n],
                    scores[start : start + n],
                    crop_s=job.crop_s + (t1 - t0),
                    pose_s=t2 - t1,
                    postprocess_s=t3 - t2,
                )  # fmt: skip
            )
            start += n
        return results
