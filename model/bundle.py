"""Serving bundles: safetensors weights plus a JSON that says how to use them.

A bundle is two files side by side, ``NAME.safetensors`` and ``NAME.json``. Training's
``hevitpose export`` writes them; the service loads them. The JSON carries everything the
service needs besides the weights: the architecture, the keypoint set, the codec (input size,
heatmap stride, sigma, box padding, decoding: the values training used), the normalisation, and
the validation metrics the weights reached.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.codec import IMAGENET_MEAN, IMAGENET_STD, HeatmapCodec
from model.hevitpose import HEATMAP_STRIDE, HEViTPose, build_model
from model.keypoints import KeypointSet, flip_index

log = logging.getLogger("model.bundle")


@dataclass
class BundleMeta:
    model: str
    keypoint_names: list[str]
    skeleton: list[list[int]]
    flip_pairs: list[list[int]]
    codec: HeatmapCodec = field(default_factory=HeatmapCodec)
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    dtype: str = "float32"
    version: str = "0"
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @classmethod
    def for_model(
        cls, model_name: str, keypoints: KeypointSet, input_size: list[int] | None = None, **kwargs: Any
    ) -> BundleMeta:
        """``input_size`` alone stands for the default codec at that size."""
        if input_size is not None:
            kwargs["codec"] = HeatmapCodec(input_size=tuple(input_size), heatmap_stride=HEATMAP_STRIDE)
        return cls(
            model=model_name,
            keypoint_names=list(keypoints.names),
            skeleton=[list(p) for p in keypoints.skeleton],
            flip_pairs=[list(p) for p in keypoints.flip_pairs],
            **kwargs,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "bundle") -> BundleMeta:
        data = dict(data)
        # Bundles written before the codec travelled in the bundle carry only these two of its values.
        input_size, stride = data.pop("input_size", None), data.pop("heatmap_stride", None)
        if "codec" in data:
            codec = HeatmapCodec.from_dict(data.pop("codec"))
            if (input_size is not None and list(input_size) != list(codec.input_size)) or (
                stride is not None and stride != codec.heatmap_stride
            ):
                raise ValueError(f"{source}: input_size/heatmap_stride disagree with its codec section")
        else:
            codec = HeatmapCodec(input_size=tuple(input_size or (256, 256)), heatmap_stride=stride or HEATMAP_STRIDE)
            log.info("%s has no codec section (an older bundle): using the default codec %s", source, codec)
        return cls(codec=codec, **data)

    @property
    def input_size(self) -> list[int]:
        """(width, height) of the network input."""
        return list(self.codec.input_size)

    @property
    def heatmap_stride(self) -> int:
        return self.codec.heatmap_stride

    @property
    def num_keypoints(self) -> int:
        return len(self.keypoint_names)

    @property
    def flip_index(self) -> list[int]:
        return flip_index(self.num_keypoints, self.flip_pairs)


def bundle_paths(path: str | Path) -> tuple[Path, Path]:
    """``weights/x``, ``weights/x.json`` or ``weights/x.safetensors`` -> both files."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        path = path.with_suffix("")
    return path.with_suffix(".safetensors"), path.with_suffix(".json")


def save_bundle(model: HEViTPose, meta: BundleMeta, path: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write ``path.safetensors`` (weights cast to ``dtype``; BN statistics too) and ``path.json``."""
    weights_path, meta_path = bundle_paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    meta.dtype = str(dtype).removeprefix("torch.")
    save_file(state, str(weights_path), metadata={"model": meta.model})
    # safetensors creates the file 0600; a bundle is read by other users (a container's non-root server).
    weights_path.chmod(0o644)
    meta_path.write_text(json.dumps(asdict(meta), indent=2) + "\n")
    return weights_path


def load_meta(path: str | Path) -> BundleMeta:
    _, meta_path = bundle_paths(path)
    if not meta_path.is_file():
        raise FileNotFoundError(f"bundle metadata {meta_path} not found")
    return BundleMeta.from_dict(json.loads(meta_path.read_text()), source=str(meta_path))


def load_bundle(path: str | Path) -> tuple[HEViTPose, BundleMeta]:
    """Build the bundle's network in float32 eval mode with its weights loaded."""
    weights_path, _ = bundle_paths(path)
    meta = load_meta(path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"bundle weights {weights_path} not found")
    model = build_model(meta.model, meta.num_keypoints)
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(weights_path)).items()}
    model.load_state_dict(state)
    return model.eval(), meta


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
