"""Train the default model on a lent GPU in one call: unpack, measure, train, evaluate, export.

Run on the device machine from the repository root, with the data pack (training/pack.py) and
the carried wheels beside it::

    python3 scripts/gpu_run.py --pack data/pack --out "$OUT" --train-seconds 330

The pack unpacks to the folders the recipe reads (the real set, its occluders, the render sets
beside it); the packed cutouts' labels then make ``hevitpose composite``'s set (``--composites``
images, every core) beside them; ``data.root`` is set to the real set the pack names, the rest is
the recipe's.

Every step's result lands in ``--out`` as soon as it exists (timings.json is rewritten after each
step), so a run cut short still returns what it did. ``--smoke`` runs the whole path on a CPU in
a minute (a few steps, tiny inputs): CI tests it, so the first lent GPU spends its time training.

Model choice, by measurement: each candidate trains ``--probe-steps`` steps; the first (largest)
whose rate fits ``--min-samples`` into the training time is taken, else the largest within 10% of
the fastest (the loader may bound every model's rate alike, and then size costs nothing). Epochs and
the learning-rate steps are then sized to the measured rate.

``--init-from weights/hevitpose-t-default.json`` fine-tunes a bundle instead of training from
scratch: its network, input size and codec replace the recipe's and the candidates, at
``FINE_TUNE_LR``, and only its own rate is probed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
COMPOSITE = "composite"  # beside the real set, as configs/hevitpose_default_gpu.yaml's data.extra_train names it
# The CPU stages fine-tuned at 3e-4 with batch 32; the recipe's batch of 256 scales it by the square root of 8, as
# the recipe scales the paper's rate.
FINE_TUNE_LR = 8.5e-4


class Timings:
    def __init__(self, out: Path):
        self.out, self.start, self.steps = out, time.perf_counter(), {}

    def mark(self, name: str, **info) -> None:
        self.steps[name] = {"at_s": round(time.perf_counter() - self.start, 1), **info}
        (self.out / "timings.json").write_text(json.dumps(self.steps, indent=2, default=str))
        print(f"[{self.steps[name]['at_s']:7.1f} s] {name} {json.dumps(info, default=str)}", flush=True)


def rate_of(metrics_file: Path) -> float:
    """Samples/s of the last logged training window (the first one includes start-up)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in rows if r.get("kind") == "train"]
    return rates[-1] if rates else 0.0


def epoch_plan(rate: float, seconds: float, epoch_samples: int, minimum: int = 1) -> tuple[int, list[int]]:
    epochs = max(minimum, int(rate * seconds // max(epoch_samples, 1)))
    milestones = sorted({max(1, math.floor(0.8 * epochs)), max(1, math.floor(0.95 * epochs))})
    return epochs, [m for m in milestones if m < epochs] or [epochs]


def choose_model(rates: dict[str, float], seconds: float, min_samples: int, within: float = 0.9) -> str:
    """``rates`` in probe order, largest model first: the first that fits ``min_samples`` into ``seconds``, else
    the first whose rate is ``within`` of the fastest's."""
    for name, rate in rates.items():
        if rate * seconds >= min_samples:
            return name
    fastest = max(rates.values())
    return next(name for name, rate in rates.items() if rate >= within * fastest)


def fine_tune_overrides(bundle: Path) -> tuple[str, list[str]]:
    """A bundle's network and the recipe keys that must match it: its input size and codec."""
    from model.bundle import load_meta

    meta = load_meta(bundle)
    c = meta.codec
    width, height = c.input_size
    return meta.model, [
        f"model.name={meta.model}", f"model.init_from={bundle}", f"model.input_size=[{width},{height}]",
        f"codec.sigma={c.sigma}", f"codec.bbox_padding={c.bbox_padding}", f"codec.decode_method={c.decode_method}",
        f"codec.blur_kernel={c.blur_kernel}", f"codec.shift_heatmap={str(c.shift_heatmap).lower()}",
        f"optim.lr={FINE_TUNE_LR}",
    ]  # fmt: skip


def has_mask_areas(ann_file: Path | None) -> bool:
    """Whether every person of a COCO file records ``mask_area`` (hevitpose label --mask-area)."""
    from training.evaluation import load_gt

    if ann_file is None or not ann_file.is_file():
        return False
    try:
        load_gt(ann_file, "mask_area")
    except ValueError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pack", type=Path, default=ROOT / "data/pack")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_run_out")))
    parser.add_argument("--work", type=Path, default=Path("/tmp/hevitpose_gpu_run"))
    parser.add_argument("--config", default=str(ROOT / "configs/hevitpose_default_gpu.yaml"))
    parser.add_argument("--models", default="hevitpose-b,hevitpose-s,hevitpose-t", help="candidates, largest first")
    parser.add_argument("--train-seconds", type=float, default=330.0, help="training time after the probes")
    parser.add_argument("--min-samples", type=int, default=600_000)
    parser.add_argument("--probe-steps", type=int, default=40)
    parser.add_argument("--composites", type=int, default=4000,
                        help="images of the packed cutouts on photographs, as many as the CPU recipe's (0: none; "
                             "the recipe then needs data.extra_train without ../composite)")  # fmt: skip
    parser.add_argument("--init-from", type=Path, default=None,
                        help="a bundle to fine-tune instead of training from scratch (its model, size and codec)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="CPU check of the whole path: tiny inputs, a few steps")
    parser.add_argument("overrides", nargs="*", help="extra recipe overrides, key=value")
    args = parser.parse_args(argv)

    import torch

    from training.cli import eval_main, export_main
    from training.composite import CompositeConfig, write_composites
    from training.config import load_config
    from training.data import train_dataset
    from training.pack import read_pack
    from training.trainer import Trainer

    args.out.mkdir(parents=True, exist_ok=True)
    timings = Timings(args.out)
    cuda = torch.cuda.is_available()
    timings.mark("start", cuda=cuda, device=torch.cuda.get_device_name(0) if cuda else "cpu", torch=torch.__version__)
    if not cuda and not args.smoke:
        print("no CUDA device: run with --smoke on a CPU", file=sys.stderr)
        return 2

    data = args.work / "data"
    if args.work.exists():
        shutil.rmtree(args.work)
    report = read_pack(args.pack, data, workers=os.cpu_count() or 1)
    timings.mark("unpacked", **report)
    if args.composites and report["occluder_labels"]:
        cutouts = data / report["real"] / report["occluder_dir"]
        composite = CompositeConfig(num=8 if args.smoke else args.composites)
        made = write_composites(cutouts, data / COMPOSITE, "train", composite, workers=os.cpu_count() or 1)
        timings.mark("composited", **made)

    candidates = [m.strip() for m in args.models.split(",") if m.strip()]
    base = [f"data.root={data / report['real']}"]
    if args.init_from:
        model, tuned = fine_tune_overrides(args.init_from)
        candidates, base = [model], [*base, *tuned]
    base += args.overrides  # the caller's last, so that they win
    if args.smoke:
        base += ["model.input_size=[64,64]", "optim.batch_size=4", "eval.batch_size=8", "data.workers=1",
                 "data.pin_memory=false", "run.max_val_samples=4", "run.plot=true"]  # fmt: skip
        probe_steps, train_seconds = 2, 0.0
    else:
        probe_steps, train_seconds = args.probe_steps, args.train_seconds

    train_set = train_dataset(load_config(args.config, base))  # fails here if the pack lacks a folder the recipe reads
    epoch_samples = len(train_set)
    occluders = len(train_set.occluders) if train_set.occluders is not None else 0
    rates = {}
    for name in candidates:
        probe_dir = args.work / f"probe_{name}"
        cfg = load_config(args.config, [*base, f"model.name={name}", f"run.max_steps={probe_steps}",
                                        f"run.out_dir={probe_dir}", "run.log_interval=10", "run.plot=false"])  # fmt: skip
        Trainer(cfg).fit()
        rates[name] = rate_of(probe_dir / "metrics.jsonl")
        timings.mark(f"probe {name}", samples_per_s=round(rates[name], 1))
        if rates[name] * max(train_seconds, 1.0) >= args.min_samples or args.smoke:
            break
    chosen = choose_model(rates, train_seconds, args.min_samples)  # the smoke run probes one
    epochs, milestones = epoch_plan(rates[chosen], train_seconds, epoch_samples)
    run_dir = args.work / "run"
    train_overrides = [*base, f"model.name={chosen}", f"optim.epochs={epochs}", f"optim.milestones={milestones}",
                       f"run.out_dir={run_dir}", f"run.time_limit_s={train_seconds * 1.15 if train_seconds else 0}"]  # fmt: skip
    if args.smoke:
        train_overrides += ["run.max_steps=3"]
    timings.mark("plan", model=chosen, rates=rates, epoch_samples=epoch_samples, occluders=occluders, epochs=epochs,
                 milestones=milestones, init_from=str(args.init_from or ""))  # fmt: skip

    cfg = load_config(args.config, train_overrides)
    result = Trainer(cfg).fit()
    timings.mark("trained", step=result["step"], epoch=result["epoch"], stopped=result["stopped"], val=result["val"])
    for name in ("metrics.jsonl", "config.json", "curves.png"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, args.out / name)

    checkpoint = run_dir / "last.pt"
    bundle_name = f"{chosen}-default-gpu"
    export_main([str(checkpoint), str(args.out / "weights"), "--name", bundle_name, "--no-onnx"])
    timings.mark("exported", bundle=str(args.out / "weights" / bundle_name))

    # each eval: its overrides and its annotation file (None for renders, whose people record no mask areas)
    evals = {"real_val": ([], data / report["real"] / cfg.data.val_ann)}  # the held-out video, agreed labels
    for name in report["render_images"]:  # each render set's held-out renders, exact labels
        evals[f"{name}_val"] = ([f"data.root={data / name}"], None)
    for name, splits in report["eval_splits"].items():  # real photos and video, evaluation only (photo_eval_data.sh)
        for split in splits:
            ann = f"annotations/person_keypoints_{split}.json"
            evals[f"{name}_{split}"] = ([f"data.root={data / name}", "data.val_images=images/val",
                                         f"data.val_ann={ann}"], data / name / ann)  # fmt: skip
    for split, (extra, ann_file) in evals.items():
        scorings = [("", [])]
        if has_mask_areas(ann_file):  # a real set that records them is also scored as COCO scores
            scorings.append(("_mask_area", ["--oks-area", "mask_area"]))
        for suffix, oks in scorings:
            out_file = args.out / f"eval_{split}{suffix}.json"
            eval_main([args.config, str(checkpoint), *train_overrides, *extra, *oks, "--out", str(out_file)])
            metrics = json.loads(out_file.read_text())["metrics"]
            timings.mark(f"eval {split}{suffix}", AP=metrics.get("AP"), AP50=metrics.get("AP50"))
    timings.mark("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
