"""Inference backends: one call signature for eager PyTorch and ONNX Runtime.

A runner takes a normalised float32 batch (N, 3, H, W) and returns float32 heatmaps
(N, K, H/4, W/4) on the runner's device. ``create_runner`` picks what ``bench/model_speed.py``
found fastest: on a GPU, PyTorch in half precision with channels_last; on a CPU, ONNX Runtime
(1.8x eager for HEViTPose-B on a 2-core CPU) when it is installed, else eager channels_last.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import nn

from model.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx

BackendName = Literal["auto", "torch", "onnxruntime"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    backend: BackendName = "auto"
    dtype: DtypeName = "auto"  # half precision on CUDA, float32 on CPU
    channels_last: bool = True
    compile: bool = False  # torch.compile: slower start, faster steady state
    threads: int = 0  # CPU threads for the backend; 0 keeps the library default


class PoseRunner(Protocol):
    device: torch.device
    backend: str
    dtype: torch.dtype

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor: ...


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return device


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class TorchRunner:
    backend = "torch"

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool, compile: bool) -> None:
        self.device = device
        self.dtype = dtype
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        model = model.eval().to(device=device, dtype=dtype, memory_format=self.memory_format)
        self.model = torch.compile(model, dynamic=True) if compile else model

    @torch.inference_mode()
    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.to(device=self.device, dtype=self.dtype).contiguous(memory_format=self.memory_format)
        return self.model(x).float()


class OnnxRunner:
    backend = "onnxruntime"
    dtype = torch.float32

    def __init__(self, onnx_path: str | Path, threads: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.device = torch.device("cpu")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return torch.from_numpy(out)


def create_runner(
    model: nn.Module, input_size: tuple[int, int], cfg: RuntimeConfig = RuntimeConfig(), onnx_dir: str | Path | None = None
) -> PoseRunner:
    """Wrap ``model`` in the backend ``cfg`` asks for, or the fastest one for the device."""
    device = resolve_device(cfg.device)
    backend = cfg.backend
    if backend == "auto":
        backend = "onnxruntime" if device.type == "cpu" and onnxruntime_available() else "torch"
    if backend == "onnxruntime":
        if device.type != "cpu":
            raise ValueError("the onnxruntime backend is used on the CPU only; use backend=torch on CUDA")
        if cfg.dtype not in ("auto", "float32"):
            raise ValueError("the onnxruntime backend runs float32 only")
        onnx_dir = Path(onnx_dir) if onnx_dir else Path(tempfile.mkdtemp(prefix="hevitpose-onnx-"))
        path = export_onnx(model, onnx_dir / "model.onnx", input_size)
        return OnnxRunner(path, cfg.threads)
    if backend != "torch":
        raise ValueError(f"unknown backend {backend!r}")
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    dtype_name = cfg.dtype
    if dtype_name == "auto":
        dtype_name = "float16" if device.type == "cuda" else "float32"
    if device.type == "cpu" and dtype_name != "float32":
        raise ValueError("half precision is supported on CUDA only")
    return TorchRunner(model, device, getattr(torch, dtype_name), cfg.channels_last, cfg.compile)
