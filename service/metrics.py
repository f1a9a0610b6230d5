"""Prometheus metrics, one registry per app so several apps can live in one process.

Names follow prometheus-fastapi-instrumentator (requests by endpoint and status, a latency
histogram per endpoint) and Triton (queue wait, batch size, per-stage latency).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# prometheus-fastapi-instrumentator's default latency buckets, plus 30 s for slow batches.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PERSON_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100)

STAGES = ("decode", "detect", "crop", "pose", "postprocess")
ENDPOINTS = (
    "/v1/predict",
    "/v1/predict/batch",
    "/v1/render",
    "/v1/predict/video",
    "/v1/render/video",
    "/v1/stream",
    "/v1/models",
    "/healthz",
    "/readyz",
    "/metrics",
)
SOURCES = ("video", "stream")  # where frames come from: an uploaded video or a WebSocket stream


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "hevitpose_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.request_duration = Histogram(
            "hevitpose_request_duration_seconds", "End-to-end request latency", ["endpoint"],
            buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        self.stage_duration = Histogram(
            "hevitpose_stage_duration_seconds", "Latency of one pipeline stage (per image; pose per batch)",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "hevitpose_queue_wait_seconds", "Time an image's crops waited for the pose worker",
            buckets=STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "hevitpose_batch_size", "Crops per pose model call", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("hevitpose_queue_depth", "Images waiting for the pose worker", registry=r)
        self.persons_per_image = Histogram(
            "hevitpose_persons_per_image", "Persons returned per image", buckets=PERSON_BUCKETS, registry=r
        )
        self.rejections = Counter("hevitpose_rejections", "Requests refused, by reason", ["reason"], registry=r)
        self.model_info = Gauge(
            "hevitpose_model_info", "The loaded pose model (value 1)", ["name", "version", "device", "backend"],
            registry=r,
        )  # fmt: skip
        self.gpu_memory = Gauge(
            "hevitpose_gpu_memory_bytes", "CUDA memory held by the pose model's process", ["device", "kind"],
            registry=r,
        )  # fmt: skip
        self.frames = Counter("hevitpose_frames", "Video and stream frames processed", ["source"], registry=r)
        self.frames_dropped = Counter(
            "hevitpose_frames_dropped", "Stream frames dropped because the client sent faster than it was answered"
            " (or the pose queue was full)", ["source"], registry=r,
        )  # fmt: skip
        self.active_streams = Gauge(
            "hevitpose_active_streams", "Videos being processed and WebSocket streams open", ["source"], registry=r
        )
        self.tracks_started = Counter(
            "hevitpose_tracks_started", "Person tracks started (new track ids)", ["source"], registry=r
        )
        self.frame_duration = Histogram(
            "hevitpose_frame_duration_seconds", "Latency of one frame: decoded or received to its answer",
            ["source"], buckets=REQUEST_BUCKETS, registry=r,
        )  # fmt: skip
        for stage in STAGES:  # export every series from the start, so dashboards never see gaps
            self.stage_duration.labels(stage)
        for source in SOURCES:
            for metric in (self.frames, self.frames_dropped, self.active_streams, self.tracks_started,
                           self.frame_duration):  # fmt: skip
                metric.labels(source)

    def update_gpu_memory(self, device) -> None:
        import torch

        if device is None or device.type != "cuda":
            return
        name = str(device)
        self.gpu_memory.labels(name, "allocated").set(torch.cuda.memory_allocated(device))
        self.gpu_memory.labels(name, "reserved").set(torch.cuda.memory_reserved(device))
