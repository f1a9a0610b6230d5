"""Inference backends: one call signature for eager PyTorch, ONNX Runtime and OpenVINO.

A runner takes a normalised float32 batch (N, 3, H, W) and returns float32 heatmaps
(N, K, H/4, W/4) on the runner's device. ``create_runner`` builds the one a config names; with
``backend="auto"`` it takes a fixed default (on a GPU, PyTorch in half precision with
channels_last; on a CPU, ONNX Runtime float32). The service does better on a CPU: it measures
the candidates on the machine at start-up and keeps the fastest that agrees with float32
(``service/runtime_choice.py``).

CPU backends: ``onnxruntime`` (float32), ``onnxruntime-int8`` (static QDQ quantisation,
calibrated on the crops passed as ``calibration``), ``openvino`` (float32, or bfloat16 where the
CPU has AVX-512 BF16 / AMX), ``torch`` (float32, or bfloat16 likewise).
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from torch import nn

from model.onnx import INPUT_NAME, OUTPUT_NAME, export_onnx

BackendName = Literal["auto", "torch", "onnxruntime", "onnxruntime-int8", "openvino"]
DtypeName = Literal["auto", "float32", "float16", "bfloat16"]


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    backend: BackendName = "auto"
    dtype: DtypeName = "auto"  # half precision on CUDA, float32 on CPU (bfloat16: torch and openvino)
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
    return importlib.util.find_spec("onnxruntime") is not None


def openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def cpu_has_bf16() -> bool:
    """AVX-512 BF16 or AMX: bfloat16 matrix products in hardware (elsewhere bf16 is emulated, slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))


class TorchRunner:
    backend = "torch"

    def __init__(
        self, model: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool, compile: bool
    ) -> None:
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

    def __init__(self, onnx_path: str | Path, threads: int = 0, backend: str = "onnxruntime") -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        self.backend = backend
        self.device = torch.device("cpu")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        return torch.from_numpy(out)


_openvino_lock = threading.Lock()
_openvino_core = None


def openvino_core():
    """The process's one OpenVINO ``Core``, its CPU plugin loaded in a thread that then ends.

    OpenVINO's CPU plugin, when it is created, installs an alternate signal stack (mmap + sigaltstack)
    on the thread that creates it, and when it is destroyed unmaps that stack, putting the previous one
    back only if the destroying thread is the one still using it (``SigAltStackSetup`` in the plugin's
    plugin.cpp; seen in openvino 2026.4.1). Each ``Core`` creates its own plugin, so two Cores freed in
    the order they were made, or one made in one thread and freed in another, leave a live thread's
    alternate stack pointing at unmapped memory. The next signal that thread handles (Python installs
    its handlers with SA_ONSTACK: SIGINT's, torch DataLoader's SIGCHLD, uvicorn's SIGTERM) kills the
    process with SIGSEGV before any handler, faulthandler's included, can run: the test suite's
    crash when ``hevitpose serve``'s child process exited. One Core for the process means one plugin,
    never destroyed while the process runs; loading it in a short-lived thread means the only stack
    it ever swaps is that thread's.
    """
    global _openvino_core
    with _openvino_lock:
        if _openvino_core is None:
            import openvino as ov

            core = ov.Core()
            failed: list[BaseException] = []

            def load_plugin() -> None:
                try:
                    core.get_property("CPU", "FULL_DEVICE_NAME")
                except BaseException as exc:  # re-raised in the caller's thread
                    failed.append(exc)

            loader = threading.Thread(target=load_plugin, name="openvino-cpu-plugin")
            loader.start()
            loader.join()
            if failed:
                raise failed[0]
            _openvino_core = core
        return _openvino_core


class OpenVinoRunner:
    backend = "openvino"

    def __init__(self, onnx_path: str | Path, threads: int = 0, dtype: torch.dtype = torch.float32) -> None:
        config: dict[str, object] = {
            "INFERENCE_PRECISION_HINT": "bf16" if dtype == torch.bfloat16 else "f32",
            # the pose worker sends one batch at a time: latency mode, not a pool of parallel requests
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.device = torch.device("cpu")
        self.dtype = dtype
        core = openvino_core()
        with _openvino_lock:  # start-up only; the Core is shared by every thread that builds a runner
            self.compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.request.infer({INPUT_NAME: x})[self.compiled.output(0)]
        return torch.from_numpy(out.copy())  # the request's buffer is reused by the next call


def quantize_int8(onnx_path: str | Path, calibration: torch.Tensor, out_path: str | Path) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on ``calibration`` crops.

    Activation ranges are taken from these crops, so they should look like what the service will
    see: people, not noise.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{INPUT_NAME: c[None].numpy()} for c in calibration.float()])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    out_path = Path(out_path)
    prepared = out_path.with_name(out_path.stem + ".pre.onnx")
    quant_pre_process(str(onnx_path), str(prepared))
    # The quantiser warns on the root logger once per LayerNorm weight that it has no channel
    # axis (expected: those stay per-tensor); hundreds of such lines would bury the service's log.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(
            str(prepared), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)
    return out_path


def create_runner(
    model: nn.Module,
    input_size: tuple[int, int],
    cfg: RuntimeConfig = RuntimeConfig(),
    onnx_dir: str | Path | None = None,
    calibration: torch.Tensor | None = None,
) -> PoseRunner:
    """Wrap ``model`` in the backend ``cfg`` asks for (``auto``: the fixed default for the device).

    ``onnx_dir`` receives the exported graphs of the ONNX-based backends (a temporary directory
    if not given); ``calibration`` (normalised crops, N x 3 x H x W) is needed by ``onnxruntime-int8``.
    """
    device = resolve_device(cfg.device)
    backend = cfg.backend
    if backend == "auto":
        backend = "onnxruntime" if device.type == "cpu" and onnxruntime_available() else "torch"
    if backend == "torch":
        return _torch_runner(model, device, cfg)
    if backend not in ("onnxruntime", "onnxruntime-int8", "openvino"):
        raise ValueError(f"unknown backend {backend!r}")
    if device.type != "cpu":
        raise ValueError(f"the {backend} backend is used on the CPU only; use backend=torch on CUDA")
    dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16}.get(cfg.dtype)
    if dtype is None or (dtype == torch.bfloat16 and backend != "openvino"):
        raise ValueError(f"the {backend} backend does not run {cfg.dtype}")
    onnx_dir = Path(onnx_dir) if onnx_dir else Path(tempfile.mkdtemp(prefix="hevitpose-onnx-"))
    path = onnx_dir / "model.onnx"
    if not path.is_file():  # one export serves every ONNX-based candidate the service measures
        export_onnx(model, path, input_size)
    if backend == "openvino":
        return OpenVinoRunner(path, cfg.threads, dtype)
    if backend == "onnxruntime-int8":
        if calibration is None:
            raise ValueError("the onnxruntime-int8 backend needs calibration crops")
        return OnnxRunner(quantize_int8(path, calibration, onnx_dir / "model.int8.onnx"), cfg.threads, backend)
    return OnnxRunner(path, cfg.threads)


def _torch_runner(model: nn.Module, device: torch.device, cfg: RuntimeConfig) -> TorchRunner:
    if cfg.threads and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    dtype_name = cfg.dtype
    if dtype_name == "auto":
        dtype_name = "float16" if device.type == "cuda" else "float32"
    if device.type == "cpu" and dtype_name == "float16":
        raise ValueError("float16 is supported on CUDA only (on a CPU: float32, or bfloat16 where it has AVX-512 BF16)")
    return TorchRunner(model, device, getattr(torch, dtype_name), cfg.channels_last, cfg.compile)
