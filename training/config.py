"""The training recipe: a typed dataclass tree read from YAML, with dotted overrides.

``load_config("configs/hevitpose_b_coco.yaml", ["optim.lr=5e-4", "run.precision=fp32"])``
reads the file (on top of the recipe its ``base:`` names, if any), applies each ``key=value``
(typed by the dataclass field it names) and checks the result; an unknown key or a value of the
wrong type is an error naming it.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from model import HEATMAP_STRIDE, MODEL_NAMES
from model.codec import HeatmapCodec


@dataclass
class ModelConfig:
    name: str = "hevitpose-b"
    input_size: tuple[int, int] = (256, 256)  # (width, height), multiples of 32
    # Fine-tuning: start from these network weights (a bundle's .json/.safetensors or a training
    # checkpoint .pt) instead of a random initialisation; optimiser and schedule start afresh.
    init_from: str = ""


@dataclass
class DataConfig:
    dataset: Literal["coco", "mpii"] = "coco"
    root: str = "data/coco"
    # Paths below are relative to ``root``. A dataset written in COCO format under other
    # names (e.g. by ``hevitpose synth``) only needs these four changed.
    train_ann: str = "annotations/person_keypoints_train2017.json"
    val_ann: str = "annotations/person_keypoints_val2017.json"
    train_images: str = "images/train2017"
    val_images: str = "images/val2017"
    mpii_gt: str = "annotations/mpii_gt_val.mat"  # MPII only: the official ground truth
    # COCO only: person detections for evaluation ("" = ground-truth boxes).
    det_results: str = ""
    det_bbox_thr: float = 0.0
    # COCO only: weight each joint's loss by its teacher confidence where the annotations carry
    # one (``keypoint_scores``, written by ``hevitpose label``).
    keypoint_score_weights: bool = True
    # Per-joint loss weights, one per keypoint, multiplied into every target weight (MMPose's dataset
    # keypoint weights with ``use_dataset_keypoint_weights``); () = all 1.
    keypoint_weights: tuple[float, ...] = ()
    # Mixed training: more COCO-format training sets, each a folder in the layout of ``hevitpose
    # synth`` / ``hevitpose label`` (annotations/person_keypoints_train.json, images/train/),
    # relative to ``root`` or absolute, with how many times each is repeated per epoch.
    train_repeat: int = 1
    extra_train: tuple[str, ...] = ()
    extra_train_repeat: tuple[int, ...] = ()
    # Distillation (training/distill.py): BlazePose's heatmaps of the training people, written by
    # `hevitpose teacher-heatmaps`, blended into the Gaussian targets of the people they cover.
    # ``teacher_heatmaps`` is relative to ``root``; ``extra_teacher_heatmaps`` holds one folder per
    # ``extra_train`` set, relative to it ("" = none: renders keep their exact Gaussians). "" = off.
    teacher_heatmaps: str = ""
    extra_teacher_heatmaps: tuple[str, ...] = ()
    teacher_heatmap_weight: float = 0.5  # target = (1 - w) * Gaussian + w * the teacher's map
    teacher_heatmap_max_offset: float = 3.0  # heatmap px; a teacher peak farther from the label is left out (0: none)
    workers: int = 8  # per process
    pin_memory: bool = True
    # Decode every training image once, into a file in the system's temporary folder that the loader
    # workers map (training/image_cache.py): its size is the images' pixels (printed at the start).
    cache_images: bool = False


@dataclass
class AugmentConfig:
    flip_prob: float = 0.5
    half_body_prob: float = 0.0
    half_body_min_joints: int = 8
    upper_body_ids: tuple[int, ...] = ()
    scale_factor: float = 0.5
    rotation_factor: float = 40.0
    rotation_prob: float = 0.6
    center_shift_prob: float = 0.0
    center_shift_factor: float = 0.16
    # A simulated image edge through the person (training/transforms.py frame_cut), as photos frame people:
    # portraits, half-length, knee-up, someone at the side; 0 = off
    truncate_prob: float = 0.0
    truncate_keep: tuple[float, float] = (0.25, 0.8)  # share of the box kept, along the cut's axis
    truncate_sides: tuple[float, float, float] = (0.7, 0.15, 0.15)  # weights of the bottom, left, right edge
    truncate_min_joints: int = 3  # labelled joints that must remain, or the person is left whole
    # Appearance of the crop (training/appearance.py, RTMPose's values in its comments); 0 = off.
    hsv_prob: float = 0.0
    hsv_delta: tuple[int, int, int] = (5, 30, 30)  # hue, saturation, value in OpenCV's 8-bit HSV
    blur_prob: float = 0.0
    median_blur_prob: float = 0.0
    blur_max_kernel: int = 7
    dropout_prob: float = 0.0  # one hole, filled with 0
    dropout_size: tuple[float, float] = (0.2, 0.4)  # hole side, fraction of the crop's side
    # Real people pasted over the crop (training/occluders.py; `hevitpose occluders` makes the folder)
    occluder_dir: str = ""  # relative to data.root; "" = none
    occluder_prob: float = 0.0
    occluder_size: tuple[float, float] = (0.5, 1.0)  # occluder height, fraction of the crop's


@dataclass
class CodecConfig:
    """The heatmap codec (model.codec.HeatmapCodec) but its input size, which is ``model.input_size``.

    Export writes it into the bundle, so the service crops and decodes as training did.
    """

    sigma: float = 2.0  # heatmap target Gaussian, heatmap pixels
    bbox_padding: float = 1.25  # box -> crop
    decode_method: Literal["dark", "argmax"] = "dark"
    blur_kernel: int = 11  # DARK's blur
    shift_heatmap: bool = True  # flip test: MMPose's one-pixel shift of the flipped heatmaps


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64  # total over all processes
    epochs: int = 210
    milestones: tuple[int, ...] = (170, 200)  # epochs where lr *= gamma
    gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    grad_clip: float = 0.0  # 0 = none, as MMPose
    # A moving average of the weights (training/ema.py), validated, checkpointed and exported in place
    # of the last step's; 0 = off. The decay ramps up as min(decay, (1 + n) / (10 + n)) over the steps n,
    # so 0.999 (about the last thousand steps) holds from step ~9,000; before, about the last n / 9 steps
    ema_decay: float = 0.0


@dataclass
class EvalConfig:
    interval: int = 10  # epochs between validations; the last epoch is always validated
    batch_size: int = 64  # per process
    flip_test: bool = True
    # COCO only: the annotation field OKS scales by. "area" as written (the box's, for hevitpose label's sets);
    # "mask_area" (hevitpose label --mask-area): the person's mask, as COCO's segmentation areas, stricter.
    oks_area: Literal["area", "mask_area"] = "area"
    # COCO only, MMPose's rescoring and OKS-NMS on detected boxes.
    use_nms: bool = True
    oks_thr: float = 0.9
    vis_thr: float = 0.2


@dataclass
class RunConfig:
    out_dir: str = "runs/{name}"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: Literal["bf16", "fp16", "fp32"] = "bf16"  # AMP on CUDA
    # bf16 autocast on the CPU is a separate choice because whether it pays depends on the input size
    # and the CPU: with AVX-512 BF16 / AMX, T trained faster in bf16 at 192x256 and slower at 96x128
    # (bench/train_precision.py in BENCHMARKS.md); without bf16 in hardware it is emulated and slow.
    cpu_precision: Literal["bf16", "fp32"] = "fp32"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    threads: int = 0  # torch CPU threads in the training process; 0 = torch's default
    max_steps: int = 0  # stop (with a checkpoint) after this many optimiser steps; 0 = no limit
    time_limit_s: float = 0.0  # stop likewise once training has run this long (a lent machine's budget); 0 = none
    max_val_samples: int = 0  # COCO: validate on the first N images only (quick checks); 0 = all
    log_interval: int = 20
    progress: bool = True
    tensorboard: bool = True
    plot: bool = True


@dataclass
class TrainConfig:
    name: str = "hevitpose_b_coco"
    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out_dir.format(name=self.name))


class ConfigError(ValueError):
    pass


# Keys that lived elsewhere before the recipe had a codec section: recipes and training checkpoints
# written then still load, with their values moved (and a warning).
MOVED_KEYS = {
    ("model", "sigma"): ("codec", "sigma"),
    ("augment", "bbox_padding"): ("codec", "bbox_padding"),
    ("eval", "decode"): ("codec", "decode_method"),
    ("eval", "blur_kernel"): ("codec", "blur_kernel"),
    ("eval", "shift_heatmap"): ("codec", "shift_heatmap"),
}


def move_old_keys(raw: dict[str, Any]) -> dict[str, Any]:
    for (old_section, old_key), (new_section, new_key) in MOVED_KEYS.items():
        section = raw.get(old_section)
        if not isinstance(section, dict) or old_key not in section:
            continue
        value = section.pop(old_key)
        target = raw.setdefault(new_section, {})
        if new_key in target and target[new_key] != value:
            raise ConfigError(
                f"{old_section}.{old_key}={value!r} disagrees with {new_section}.{new_key}={target[new_key]!r}"
            )
        target[new_key] = value
        warnings.warn(f"recipe key {old_section}.{old_key} is now {new_section}.{new_key}", FutureWarning, stacklevel=3)
    return raw


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: {value!r} does not fit {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return "" if value is None else str(value)
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(prefix + k for k in unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``a.b=value`` strings into the raw YAML mapping; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    return raw


def validate(cfg: TrainConfig) -> TrainConfig:
    if cfg.model.name not in MODEL_NAMES:
        raise ConfigError(f"model.name: {cfg.model.name!r} is not one of {list(MODEL_NAMES)}")
    if any(s <= 0 or s % 32 for s in cfg.model.input_size):
        raise ConfigError(f"model.input_size: {cfg.model.input_size} must be positive multiples of 32")
    if cfg.optim.batch_size <= 0 or cfg.eval.batch_size <= 0:
        raise ConfigError("batch sizes must be positive")
    d = cfg.data
    if d.extra_train_repeat and len(d.extra_train_repeat) != len(d.extra_train):
        raise ConfigError("data.extra_train_repeat: one value per data.extra_train folder (or none)")
    if d.train_repeat < 1 or any(r < 1 for r in d.extra_train_repeat):
        raise ConfigError("data.train_repeat and data.extra_train_repeat must be at least 1")
    if d.extra_teacher_heatmaps and len(d.extra_teacher_heatmaps) != len(d.extra_train):
        raise ConfigError('data.extra_teacher_heatmaps: one folder (or "") per data.extra_train folder (or none)')
    if d.dataset == "mpii" and (d.teacher_heatmaps or any(d.extra_teacher_heatmaps)):
        raise ConfigError("data.teacher_heatmaps: COCO-format sets only")
    if not 0 <= d.teacher_heatmap_weight <= 1 or d.teacher_heatmap_max_offset < 0:
        raise ConfigError("data.teacher_heatmap_weight must be in [0, 1] and data.teacher_heatmap_max_offset >= 0")
    if any(w < 0 for w in d.keypoint_weights):
        raise ConfigError(f"data.keypoint_weights: {list(d.keypoint_weights)} must not be negative")
    if cfg.optim.epochs <= 0:
        raise ConfigError("optim.epochs must be positive")
    if not 0 <= cfg.optim.ema_decay < 1:
        raise ConfigError(f"optim.ema_decay: {cfg.optim.ema_decay} must be in [0, 1) (0 = off)")
    a = cfg.augment
    if a.blur_max_kernel < 3 or a.blur_max_kernel % 2 == 0:
        raise ConfigError(f"augment.blur_max_kernel: {a.blur_max_kernel} must be odd and at least 3")
    if not 0 < a.dropout_size[0] <= a.dropout_size[1] <= 1:
        raise ConfigError(f"augment.dropout_size: {list(a.dropout_size)} must be 0 < min <= max <= 1")
    if not 0 < a.truncate_keep[0] <= a.truncate_keep[1] < 1:
        raise ConfigError(f"augment.truncate_keep: {list(a.truncate_keep)} must be 0 < min <= max < 1")
    if min(a.truncate_sides) < 0 or not sum(a.truncate_sides) > 0:
        raise ConfigError(f"augment.truncate_sides: {list(a.truncate_sides)} must be weights >= 0, not all 0")
    if a.occluder_prob > 0 and not a.occluder_dir:
        raise ConfigError("augment.occluder_prob > 0 needs augment.occluder_dir")
    if not 0 < a.occluder_size[0] <= a.occluder_size[1]:
        raise ConfigError(f"augment.occluder_size: {list(a.occluder_size)} must be 0 < min <= max")
    try:
        codec_from_config(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc).replace("codec ", "codec.", 1)) from None
    return cfg


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    return validate(_build(TrainConfig, move_old_keys(copy.deepcopy(raw))))


def codec_from_config(cfg: TrainConfig) -> HeatmapCodec:
    """The one codec of a recipe: what the datasets encode with, evaluation decodes with, and export saves."""
    c = cfg.codec
    return HeatmapCodec(
        input_size=tuple(cfg.model.input_size),
        heatmap_stride=HEATMAP_STRIDE,
        sigma=c.sigma,
        bbox_padding=c.bbox_padding,
        decode_method=c.decode_method,
        blur_kernel=c.blur_kernel,
        shift_heatmap=c.shift_heatmap,
    )


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    path = Path(path)
    raw = read_recipe(path)
    raw.setdefault("name", path.stem)
    return config_from_dict(apply_overrides(raw, overrides or []))


def read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's YAML mapping, on top of the one its ``base:`` names (a path relative to it), if any.

    A stage of a fine-tuning chain is its predecessor with a few values changed; ``base`` says so
    instead of copying the whole file. Sections merge key by key; any other value (lists included)
    replaces the base's; ``name`` is never inherited.
    """
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    if path.resolve() in seen:
        raise ConfigError(f"config file {path}: its base chain comes back to it")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} is not a mapping")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"config file {path}: base must be a file name, not {base!r}")
    inherited = read_recipe(path.parent / base, (*seen, path.resolve()))
    inherited.pop("name", None)
    return _merge(inherited, raw)


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both else value
    return out


def to_dict(cfg: TrainConfig) -> dict[str, Any]:
    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return plain(dataclasses.asdict(cfg))
