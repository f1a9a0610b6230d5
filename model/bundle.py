"""Serving bundles: safetensors weights plus a JSON that says how to use them.

A bundle is two files side by side, ``NAME.safetensors`` and ``NAME.json``. Training's
``hevitpose export`` writes them; the service loads them. The JSON carries everything the
service needs besides the weights: the architecture, the keypoint set, the input size and
normalisation, and the validation metrics the weights reached.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model.codec import IMAGENET_MEAN, IMAGENET_STD
from model.hevitpose import HEATMAP_STRIDE, HEViTPose, build_model
from model.keypoints import KeypointSet, flip_index


@dataclass
class BundleMeta:
    model: str
    keypoint_names: list[str]
    skeleton: list[list[int]]
    flip_pairs: list[list[int]]
    input_size: list[int] = field(default_factory=lambda: [256, 256])  # (width, height)
    heatmap_stride: int = HEATMAP_STRIDE
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    dtype: str = "float32"
    version: str = "0"
    metrics: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @classmethod
    def for_model(cls, model_name: str, keypoints: KeypointSet, **kwargs: Any) -> BundleMeta:
        return cls(
            model=model_name,
            keypoint_names=list(keypoints.names),
            skeleton=[list(p) for p in keypoints.skeleton],
            flip_pairs=[list(p) for p in keypoints.flip_pairs],
            **kwargs,
        )

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
    state = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()
    }
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
    return BundleMeta(**json.loads(meta_path.read_text()))


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

