"""The service's configuration: one typed settings object read from ``HEVITPOSE_*`` variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = PACKAGE_DIR.parent / "weights" / "hevitpose-t-default"
DEFAULT_DETECTOR = PACKAGE_DIR / "assets" / "nanodet-m-416-coco.onnx"

DetectorMode = Literal["nanodet", "boxes", "whole_image"]


class Settings(BaseSettings):
    """Every field can be set as ``HEVITPOSE_<NAME>``; ``hevitpose serve`` flags override a few."""

    model_config = SettingsConfigDict(env_prefix="HEVITPOSE_", extra="ignore", protected_namespaces=())

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    weights: Path = DEFAULT_WEIGHTS
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # auto: on a CPU, the fastest backend that agrees with float32, measured at start-up
    # (service/runtime_choice.py); on CUDA, torch. Any other value forces that backend.
    backend: Literal["auto", "torch", "onnxruntime", "onnxruntime-int8", "openvino"] = "auto"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    threads: int = Field(0, ge=0)  # CPU threads of the pose backend; 0 = measured (auto) or library default
    # where backend=auto keeps what it measured, keyed by bundle, CPU and library versions; "" = nowhere
    runtime_cache: str = str(Path.home() / ".cache" / "hevitpose" / "runtime.json")

    max_batch_size: int = Field(32, ge=1, le=1024)  # crops per model call
    max_wait_ms: float = Field(5.0, ge=0)  # how long the first crop waits for company
    queue_size: int = Field(64, ge=1)  # images in flight (admitted, not yet answered); beyond it 503
    request_timeout_s: float = Field(10.0, gt=0)
    cpu_workers: int = Field(2, ge=1)  # threads decoding, detecting and cropping

    max_body_bytes: int = Field(20 * 1024 * 1024, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)  # width * height of one image
    max_persons: int = Field(100, ge=1)  # boxes per image
    max_batch_images: int = Field(16, ge=1)  # images per /v1/predict/batch request

    detector: DetectorMode = "nanodet"  # used when a request names no detector and sends no boxes
    detector_path: Path = DEFAULT_DETECTOR
    detector_score_threshold: float = Field(0.2, ge=0, le=1)  # measured: docs/service.md "Person detection"
    detector_nms_iou: float = Field(0.4, gt=0, le=1)
    detector_threads: int = Field(0, ge=0)  # onnxruntime's intra-op threads
    # torch: NanoDet in PyTorch on the pose model's device (float16 on CUDA); auto: torch on CUDA, else onnxruntime
    detector_backend: Literal["auto", "onnxruntime", "torch"] = "auto"
    detector_letterbox: bool = True  # keep the aspect ratio and pad; false: stretch to 416x416
    detector_tiles: bool = False  # second pass on overlapping tiles of large images
    detector_tile_min_side: int = Field(640, ge=1)  # ... whose longer side is at least this
    detector_tile_max_found: int = Field(10_000, ge=1)  # ... when the first pass found fewer than this
    detector_tile_grid: int = Field(2, ge=2, le=4)  # tiles per side
    detector_tile_overlap: float = Field(0.25, ge=0, lt=1)  # share of a tile its neighbour also covers
    detector_tile_max_height: float = Field(0.3, gt=0, le=1)  # taller tile boxes: left to the first pass
    person_keypoint_threshold: float = Field(0.2, ge=0, le=1)  # keypoints counted in a person's score

    # default for requests that do not say. On: the default model gains 1.3-4.6 points of AP with it for 1.24-1.73x
    # the response time on a 2-core CPU (weights/MODEL_CARD.md, BENCHMARKS.md flip_test_cost), as MMPose's test
    # configs run it; HEVITPOSE_FLIP_TEST=false where the time matters more
    flip_test: bool = True
    # The codec is the bundle's (the values its training used); these override it only when set.
    bbox_padding: float | None = Field(None, gt=0)
    decode_method: Literal["dark", "argmax"] | None = None
    render_keypoint_threshold: float = Field(0.3, ge=0, le=1)
    warmup: bool = True
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    api_key: str = ""  # when set, all but /healthz /readyz /metrics need "Authorization: Bearer <key>"

    # Video (/v1/predict/video, /v1/render/video) and live streams (WS /v1/stream)
    video_max_bytes: int = Field(200 * 1024 * 1024, ge=1)  # largest video upload
    video_max_frames: int = Field(9000, ge=1)  # most frames one video request processes
    video_max_seconds: float = Field(600.0, gt=0)  # longest stretch of video one request reads
    video_max_pixels: int = Field(3840 * 2160, ge=1)  # width * height of a video or stream frame
    video_pipeline_depth: int = Field(4, ge=1, le=64)  # frames of one video in flight at once
    stream_max_concurrent: int = Field(8, ge=1)  # open WebSocket streams; beyond it 503
    stream_idle_timeout_s: float = Field(30.0, gt=0)  # a stream that sends nothing this long is closed

    # Tracking (ByteTrack-style, service/tracking.py) and smoothing (One Euro, service/smoothing.py)
    track_high_score: float = Field(0.3, ge=0, le=1)  # detections matched first, and that may start tracks
    track_low_score: float = Field(0.1, ge=0, le=1)  # weaker detections only continue recent tracks
    track_match_iou: float = Field(0.2, ge=0, le=1)  # least IoU with a track's predicted box
    track_max_lost_frames: int = Field(30, ge=0)  # processed frames a lost track waits to be found again
    smooth_min_cutoff: float = Field(1.0, gt=0)  # One Euro: cutoff (Hz) of a still joint
    smooth_beta: float = Field(1.0, ge=0)  # One Euro: cutoff added per person height / s of speed
    smooth_keypoint_threshold: float = Field(0.3, ge=0, le=1)  # joints below it are not smoothed

    def codec_overrides(self) -> dict[str, object]:
        """The codec fields this deployment sets (the rest stay the bundle's)."""
        fields = {"bbox_padding": self.bbox_padding, "decode_method": self.decode_method}
        return {k: v for k, v in fields.items() if v is not None}
