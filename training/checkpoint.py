"""Atomic checkpoints and the RNG states that make a resumed run identical; loading a
checkpoint's (or a bundle's) network for fine-tuning, evaluation and export."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model import build_model
from model.keypoints import KEYPOINT_SETS


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj: Any, path: str | Path) -> Path:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``.

    A kill at any moment leaves either the old checkpoint or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    # Our own files: they hold numpy RNG states and the recipe, which weights_only refuses.
    return torch.load(path, map_location=map_location, weights_only=False)


def load_weights(model: torch.nn.Module, path: str | Path, model_name: str) -> None:
    """Load the network weights of a bundle or a training checkpoint into ``model`` (``model.init_from``).

    A file made for another architecture or keypoint count is refused with one line that says so,
    not a wall of state-dict key errors.
    """
    from safetensors.torch import load_file

    from model.bundle import bundle_paths, load_meta

    path = Path(path)
    if path.suffix == ".pt":
        state = load(path)
        made_for, weights = state["config"]["model"]["name"], state["model"]
    else:
        weights_path, _ = bundle_paths(path)
        made_for = load_meta(path).model
        if not weights_path.is_file():
            raise FileNotFoundError(f"bundle weights {weights_path} not found")
        weights = load_file(str(weights_path))
    if made_for != model_name:
        raise ValueError(f"model.init_from: {path} holds {made_for} weights, the recipe builds {model_name}")
    own = model.state_dict()
    wrong = [k for k, v in own.items() if k not in weights or weights[k].shape != v.shape]
    if wrong:
        raise ValueError(
            f"model.init_from: {path} does not fit this network ({len(wrong)} tensors missing or of another "
            f"shape, e.g. {wrong[-1]}: a different keypoint count?)"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in weights.items()})


def load_checkpoint_model(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A training checkpoint (``last.pt``/``best.pt``) or a serving bundle -> model (eval) and info."""
    path = Path(path)
    if path.suffix in (".json", ".safetensors"):
        from model.bundle import load_bundle

        model, meta = load_bundle(path)
        return model, {
            "model": meta.model,
            "metrics": meta.metrics,
            "num_keypoints": meta.num_keypoints,
            "input_size": list(meta.codec.input_size),
            "bbox_padding": meta.codec.bbox_padding,
            "blur_kernel": meta.codec.blur_kernel,
        }
    state = load(path)
    cfg = state["config"]
    kset = KEYPOINT_SETS[state["keypoint_set"]]
    model = build_model(cfg["model"]["name"], kset.num_keypoints)
    model.load_state_dict(state["model"])
    return model.eval(), {
        "model": cfg["model"]["name"],
        "config": cfg,
        "keypoint_set": kset,
        "metrics": state.get("val_metrics", {}),
        "best": state.get("best", {}),
        "epoch": state.get("epoch"),
        "step": state.get("step"),
        "input_size": list(cfg["model"]["input_size"]),
        "bbox_padding": cfg.get("codec", {}).get("bbox_padding"),
        "blur_kernel": cfg.get("codec", {}).get("blur_kernel"),
    }
