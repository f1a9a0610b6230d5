"""HEViTPose networks and the pose codec shared by training and serving."""

from model.hevitpose import (
    CONFIGS,
    HEATMAP_STRIDE,
    MODEL_NAMES,
    STRIDE_MULTIPLE,
    HEViTPose,
    HEViTPoseConfig,
    build_model,
)

__all__ = [
    "CONFIGS",
    "HEATMAP_STRIDE",
    "MODEL_NAMES",
    "STRIDE_MULTIPLE",
    "HEViTPose",
    "HEViTPoseConfig",
    "build_model",
]
