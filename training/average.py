"""``hevitpose average``: the uniform average of several fine-tunes' weights (a "model soup").

Runs fine-tuned from the same weights with different seeds land in one basin of the loss, and the
mean of their weights often scores above each of them (Wortsman et al., ICML 2022), at no cost when
serving. The output is a training checkpoint that ``hevitpose eval`` and ``hevitpose export`` read
as they read ``last.pt``; its recipe, epoch and step are those of the first training checkpoint
given, and the files it averages are recorded in it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from training.checkpoint import load, load_weights, save_atomic


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of float tensors in float32 (then the first's dtype); other tensors (BatchNorm's
    batch counters) are the first's."""
    first = states[0]
    out = {}
    for key, value in first.items():
        if value.is_floating_point():
            out[key] = (sum(s[key].float() for s in states) / len(states)).to(value.dtype)
        else:
            out[key] = value.clone()
    return out


def _weights(path: Path, reference: torch.nn.Module, model_name: str) -> dict[str, torch.Tensor]:
    # load_weights refuses another architecture or keypoint count with one clear line.
    load_weights(reference, path, model_name)
    return {k: v.detach().clone() for k, v in reference.state_dict().items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hevitpose average",
        description="Average the network weights of fine-tunes of the same model (training checkpoints or "
        "bundles) into one training checkpoint.",
    )
    parser.add_argument("inputs", nargs="+", help="last.pt / best.pt or bundles (.json); at least one .pt")
    parser.add_argument("--out", required=True, help="the checkpoint to write, e.g. runs/soup/last.pt")
    args = parser.parse_args(argv)

    paths = [Path(p) for p in args.inputs]
    if len(paths) < 2:
        return _fail("give at least two checkpoints to average")
    checkpoints = [p for p in paths if p.suffix == ".pt"]
    if not checkpoints:
        return _fail("give at least one training checkpoint (.pt): its recipe goes into the output")
    try:
        base = load(checkpoints[0])
        from model import build_model
        from model.keypoints import KEYPOINT_SETS

        model_name = base["config"]["model"]["name"]
        reference = build_model(model_name, KEYPOINT_SETS[base["keypoint_set"]].num_keypoints)
        states = [_weights(p, reference, model_name) for p in paths]
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return _fail(str(exc))

    # Optimiser, scheduler and RNG states belong to one run and would resume it wrongly: keep
    # only what evaluation and export read.
    out = {key: base[key] for key in ("config", "keypoint_set", "epoch", "step") if key in base}
    out["model"] = average_state_dicts(states)
    out["averaged_from"] = [str(p) for p in paths]
    save_atomic(out, args.out)
    print(f"hevitpose average: {len(paths)} networks -> {args.out}")
    return 0


def _fail(message: str) -> int:
    print(f"hevitpose average: {message}", file=sys.stderr)
    return 2
