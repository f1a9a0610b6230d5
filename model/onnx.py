"""ONNX export with a dynamic batch axis, and its check against eager PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAME = "input"
OUTPUT_NAME = "heatmaps"


def export_onnx(model: nn.Module, path: str | Path, input_size: tuple[int, int] = (256, 256), opset: int = 17) -> Path:
    """Write ``model`` (float32, eval) to ``path``; batch is dynamic, (W, H) fixed to ``input_size``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = input_size
    model = model.float().eval()
    # The TorchScript exporter handles this graph in seconds; the dynamo one needs ~10x longer.
    torch.onnx.export(
        model,
        (torch.zeros(1, 3, h, w),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return path


def check_onnx(
    model: nn.Module, path: str | Path, batch_sizes: tuple[int, ...] = (1, 8), input_size: tuple[int, int] = (256, 256)
) -> float:
    """Largest absolute difference between onnxruntime and eager over random batches."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    w, h = input_size
    worst = 0.0
    model = model.float().eval()
    for n in batch_sizes:
        x = torch.randn(n, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        worst = max(worst, float(np.abs(out - ref).max()))
    return worst
