"""``hevitpose train | eval | export``: each takes argv and returns an exit code."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from training.checkpoint import load_checkpoint_model

if TYPE_CHECKING:
    from training.config import TrainConfig


def _fail(command: str, message: str, code: int = 2) -> int:
    print(f"hevitpose {command}: {message}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- train


def train_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hevitpose train",
        description="Train a model from a YAML recipe. Under torchrun, one process per GPU.",
    )
    parser.add_argument("config", help="YAML recipe, e.g. configs/hevitpose_b_coco.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value, e.g. optim.lr=5e-4 data.root=/data/coco")
    parser.add_argument("--resume", action="store_true", help="continue from OUT_DIR/last.pt")
    args = parser.parse_intermixed_args(argv)

    from training.annotations import DatasetError
    from training.config import load_config
    from training.trainer import NonFiniteLoss, Trainer

    try:
        cfg = load_config(args.config, args.overrides)
        if args.resume and not (cfg.out_dir / "last.pt").is_file():
            return _fail("train", f"--resume: no checkpoint at {cfg.out_dir / 'last.pt'}")
        if not args.resume and (cfg.out_dir / "last.pt").is_file():
            return _fail(
                "train",
                f"{cfg.out_dir} already holds a run (last.pt); continue it with --resume, "
                "or start a new one with another run.out_dir",
            )
        trainer = Trainer(cfg, resume=args.resume)
    except (ValueError, DatasetError, FileNotFoundError) as exc:  # ConfigError is a ValueError
        return _fail("train", str(exc))
    try:
        result = trainer.fit()
    except NonFiniteLoss as exc:
        return _fail("train", str(exc), code=1)
    except KeyboardInterrupt:
        return _fail("train", f"interrupted; the last checkpoint is {cfg.out_dir / 'last.pt'} (use --resume)", 130)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    if trainer.dist.main:
        print(json.dumps({"out_dir": str(cfg.out_dir), **result}, default=str))
    return 0


# --------------------------------------------------------------------------- eval


def _codec_as_trained(config: str, overrides: list[str], info: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The recipe with the checkpoint's crop (input size, box padding) and DARK blur, and what changed.

    The crop always follows the checkpoint. The blur goes in beneath the command line's overrides, so
    ``codec.blur_kernel=K`` still picks another: the blur is matched to the trained target's width, but
    trying another one is a decoding experiment worth allowing.
    """
    from training.config import load_config

    recipe = load_config(config, overrides)
    trained_blur = [f"codec.blur_kernel={info['blur_kernel']}"] if info.get("blur_kernel") is not None else []
    cfg = load_config(config, [*trained_blur, *overrides])
    model, codec, changed = cfg.model, cfg.codec, []
    if info.get("input_size") and tuple(info["input_size"]) != tuple(model.input_size):
        model = replace(model, input_size=tuple(info["input_size"]))
        changed.append(f"model.input_size=[{','.join(str(v) for v in model.input_size)}]")
    if info.get("bbox_padding") is not None and float(info["bbox_padding"]) != float(codec.bbox_padding):
        codec = replace(codec, bbox_padding=float(info["bbox_padding"]))
        changed.append(f"codec.bbox_padding={codec.bbox_padding}")
    if codec.blur_kernel != recipe.codec.blur_kernel:
        changed.append(f"codec.blur_kernel={codec.blur_kernel}")
    return replace(cfg, model=model, codec=codec), changed


def eval_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hevitpose eval", description="Evaluate a checkpoint on the recipe's validation set."
    )
    parser.add_argument("config")
    parser.add_argument("checkpoint", help="last.pt / best.pt, or a serving bundle (.json/.safetensors)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    parser.add_argument(
        "--flip-test", action=argparse.BooleanOptionalAction, default=None, help="default: the recipe's (on)"
    )
    parser.add_argument(
        "--decode", choices=["dark", "argmax"], default=None, help="default: the recipe's codec.decode_method (dark)"
    )
    parser.add_argument(
        "--oks-area", choices=["area", "mask_area"], default=None,
        help="COCO sets: the field OKS scales by (default: the recipe's eval.oks_area, area); mask_area: the "
             "person's mask from hevitpose label --mask-area, as COCO's segmentation areas",
    )  # fmt: skip
    parser.add_argument("--out", help="also write the metrics to this JSON file")
    parser.add_argument("--predictions", help="COCO sets: also write the predictions as COCO results JSON")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="COCO sets: a 90%% interval of AP from N resamplings of the images (0: none)")  # fmt: skip
    parser.add_argument("--baseline", metavar="PREDICTIONS",
                        help="COCO sets: another model's --predictions on this set; with --bootstrap, "
                             "the interval of the AP difference on the same resamplings")  # fmt: skip
    args = parser.parse_intermixed_args(argv)

    from training.annotations import DatasetError
    from training.config import ConfigError
    from training.data import val_dataset
    from training.distributed import autocast_dtype, pick_device
    from training.evaluation import coco_keypoint_ap, dataset_results, evaluate
    from training.predict import predict

    overrides = list(args.overrides)
    if args.flip_test is not None:
        overrides.append(f"eval.flip_test={str(args.flip_test).lower()}")
    if args.decode:
        overrides.append(f"codec.decode_method={args.decode}")
    if args.oks_area:
        overrides.append(f"eval.oks_area={args.oks_area}")
    try:
        model, info = load_checkpoint_model(args.checkpoint)
        # A network scored on crops of another size or padding than it was trained on scores low for
        # no fault of its own, and the service decodes with the bundle's blur: crop and decode as the
        # checkpoint's codec says, whatever the recipe's.
        cfg, changed = _codec_as_trained(args.config, overrides, info)
        if changed:
            print(f"hevitpose eval: as the checkpoint was trained: {' '.join(changed)}", file=sys.stderr)
        dataset = val_dataset(cfg)
    except (ConfigError, DatasetError, FileNotFoundError) as exc:
        return _fail("eval", str(exc))
    compare = args.predictions or args.bootstrap or args.baseline
    if compare and cfg.data.dataset != "coco":
        return _fail("eval", "--predictions, --bootstrap and --baseline score COCO keypoints; this set is MPII")
    if args.bootstrap < 0:
        return _fail("eval", f"--bootstrap takes a number of resamplings, not {args.bootstrap}")
    ann = Path(cfg.data.root) / cfg.data.val_ann
    image_ids = dataset.instances.meta.get("image_ids")  # a partial validation's images, else None: all
    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(Path(args.baseline).read_text())
        except (OSError, ValueError) as exc:
            return _fail("eval", f"--baseline {args.baseline}: not a COCO results file ({exc})")
        set_images = {image["id"] for image in json.loads(ann.read_text())["images"]}
        if not isinstance(baseline, list) or any(r.get("image_id") not in set_images for r in baseline):
            return _fail("eval", f"--baseline {args.baseline}: predictions for images this set does not hold")
    kset = dataset.instances.keypoint_set
    out_channels = model(torch.zeros(1, 3, 64, 64)).shape[1]
    if out_channels != kset.num_keypoints:
        return _fail(
            "eval", f"checkpoint predicts {out_channels} keypoints; the {cfg.data.dataset} set has {kset.num_keypoints}"
        )
    device = pick_device(cfg.run.device)
    model = model.to(device)
    if cfg.run.channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        num_workers=cfg.data.workers,
        multiprocessing_context="forkserver" if cfg.data.workers else None,
    )
    flip_index = kset.flip_index if cfg.eval.flip_test else None
    pred = predict(model, loader, dataset.codec, flip_index, device, autocast_dtype(cfg, device), cfg.run.channels_last)
    metrics = evaluate(cfg, dataset, pred)
    skipped = int((~pred["valid"]).sum())
    report = {"checkpoint": str(args.checkpoint), "flip_test": cfg.eval.flip_test, "decode": cfg.codec.decode_method,
              "blur_kernel": cfg.codec.blur_kernel, "oks_area": cfg.eval.oks_area,
              "people": len(dataset), "skipped_unreadable": skipped, "metrics": metrics}  # fmt: skip
    if compare:
        results = dataset_results(cfg, dataset, pred)
        if args.predictions:
            Path(args.predictions).write_text(json.dumps(results))
        if baseline is not None:
            report["baseline"] = {
                "predictions": args.baseline,
                "AP": coco_keypoint_ap(ann, baseline, image_ids=image_ids, area_field=cfg.eval.oks_area)["AP"],
            }
        if args.bootstrap:
            report |= _bootstrap_report(ann, image_ids, results, baseline, args.bootstrap, cfg.eval.oks_area)
    if skipped:
        print(f"hevitpose eval: {skipped} people skipped: their image could not be read", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def _bootstrap_report(
    ann: Path,
    image_ids: list[int] | None,
    results: list[dict],
    baseline: list[dict] | None,
    n: int,
    area_field: str,
) -> dict:
    """90% intervals of AP (and of AP minus the baseline's, paired) over ``n`` resamplings of the set's images."""
    import numpy as np

    from training.evaluation import bootstrap_ap

    runs = [results] if baseline is None else [results, baseline]
    aps = bootstrap_ap(ann, runs, n, image_ids=image_ids, area_field=area_field)
    report = {"bootstrap": {"resamples": n, "AP_interval_90": np.percentile(aps[:, 0], [5, 95]).round(4).tolist()}}
    if baseline is not None:
        diff = aps[:, 0] - aps[:, 1]
        report["bootstrap"] |= {"AP_minus_baseline_interval_90": np.percentile(diff, [5, 95]).round(4).tolist(),
                                "share_above_baseline": round(float((diff > 0).mean()), 4)}  # fmt: skip
    return report


# --------------------------------------------------------------------------- export


def export_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hevitpose export", description="Write a serving bundle (safetensors + JSON) and an ONNX file."
    )
    parser.add_argument("checkpoint", help="a training checkpoint, e.g. runs/hevitpose_b_coco/best.pt")
    parser.add_argument("out_dir")
    parser.add_argument("--name", help="file name stem (default: the recipe's name)")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    parser.add_argument("--no-onnx", action="store_true")
    args = parser.parse_intermixed_args(argv)

    from model.bundle import BundleMeta, save_bundle
    from model.onnx import check_onnx, export_onnx
    from training.config import ConfigError, codec_from_config, config_from_dict

    try:
        model, info = load_checkpoint_model(args.checkpoint)
    except FileNotFoundError as exc:
        return _fail("export", str(exc))
    if "config" not in info:
        return _fail("export", f"{args.checkpoint} is not a training checkpoint")
    try:
        cfg = config_from_dict(info["config"])
    except ConfigError as exc:
        return _fail("export", f"{args.checkpoint}: its recipe no longer reads: {exc}")
    name = args.name or cfg.name
    codec = codec_from_config(cfg)
    input_size = codec.input_size
    # flip_test: the condition the metrics were measured under (serving decides per request)
    metrics = {"dataset": cfg.data.dataset, "epoch": info["epoch"], "step": info["step"],
               "flip_test": cfg.eval.flip_test, **info["metrics"]}  # fmt: skip
    meta = BundleMeta.for_model(
        info["model"],
        info["keypoint_set"],
        codec=codec,
        metrics=metrics,
        description=f"{info['model']} trained with recipe {cfg.name} for {info['epoch']} epochs",
    )
    out_dir = Path(args.out_dir)
    weights = save_bundle(model, meta, out_dir / name, dtype=getattr(torch, args.dtype))
    written = {"weights": str(weights), "meta": str(weights.with_suffix(".json"))}
    if not args.no_onnx:
        onnx_path = export_onnx(model, out_dir / f"{name}.onnx", tuple(input_size))
        written["onnx"] = str(onnx_path)
        written["onnx_max_abs_diff"] = check_onnx(model, onnx_path, batch_sizes=(2,), input_size=tuple(input_size))
    print(json.dumps(written))
    return 0
