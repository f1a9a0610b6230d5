"""The data pack and the one-call GPU script, run end to end on the CPU (--smoke).

The data is the current recipe's layout in miniature: a labelled real set ``real2`` with its
occluder cutouts (labelled, for the composites), and the render sets the pack holds by default
(``training.pack.RENDERS``), which configs/hevitpose_default_gpu.yaml reads.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _training_data import make_coco
from safetensors.torch import load_file

from model.bundle import load_meta
from training.composite import load_cutouts
from training.config import load_config
from training.occluders import OccluderBank
from training.pack import RENDERS, read_pack, write_pack

ROOT = Path(__file__).resolve().parents[1]
NAMES = [name for name, _ in RENDERS]


def _real_dataset(root: Path, video: Path, frames: list[np.ndarray], max_side: int) -> None:
    """What hevitpose label writes for a video: frames by index, downscaled, with COCO labels."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    synth = make_coco(root / "_figures", n_train=len(frames), n_val=1, names=("train", "val"))
    figures = json.loads((synth / "annotations/person_keypoints_train.json").read_text())
    s = max_side / max(h, w)
    for split, indices in (("train", [0, 2, 3]), ("val", [1])):
        (root / "real2/images" / split).mkdir(parents=True)
        cap = cv2.VideoCapture(str(video))
        decoded = [cap.read()[1] for _ in frames]
        images, anns = [], []
        for i in indices:
            small = cv2.resize(decoded[i], (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            name = f"0000_clip_{i:06d}.jpg"
            cv2.imwrite(str(root / "real2/images" / split / name), small, [cv2.IMWRITE_JPEG_QUALITY, 92])
            images.append({"id": i + 1, "file_name": name, "width": small.shape[1], "height": small.shape[0],
                           "source": str(video), "frame": i})  # fmt: skip
            ann = dict(figures["annotations"][i], id=i + 1, image_id=i + 1)
            ann["keypoint_scores"] = [0.9] * 17
            anns.append(ann)
        coco = {"images": images, "annotations": anns, "categories": figures["categories"]}
        (root / "real2/annotations").mkdir(parents=True, exist_ok=True)
        (root / f"real2/annotations/person_keypoints_{split}.json").write_text(json.dumps(coco))
    shutil.rmtree(root / "_figures")


def _occluders(folder: Path, n: int) -> None:
    """RGBA cutouts and cutouts.json as `hevitpose occluders` writes them: a coloured figure with a
    soft-edged alpha, its joints down its middle."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    index = []
    for i in range(n):
        h, w = int(rng.integers(40, 80)), int(rng.integers(16, 40))
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (w // 2, h // 2), (w // 2 - 2, h // 2 - 2), 0, 0, 360, 255, -1)
        alpha = cv2.GaussianBlur(mask, (7, 7), 0)  # every value 0-255 at the edge, as a mask's
        bgr = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        name = f"{i:06d}_{i:06d}.png"
        cv2.imwrite(str(folder / name), np.dstack([bgr, alpha]))
        kps = [[w / 2 + (3 if j % 2 else -3), 4 + (h - 8) * j / 16, 2] for j in range(17)]
        index.append({"file": name, "keypoints": np.ravel(kps).tolist(), "keypoint_scores": [0.8] * 17})
    (folder / "cutouts.json").write_text(json.dumps({"source": "test", "cutouts": index}))


@pytest.fixture()
def data_dir(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    frames = []
    for i in range(4):
        figure = cv2.imread(str(make_coco(tmp_path / f"f{i}", n_train=1, n_val=1, size=128, seed=i)
                                / "images/train2017/000000000001.jpg"))  # fmt: skip
        frame = np.concatenate([figure, rng.integers(0, 255, figure.shape, dtype=np.uint8)], axis=1)
        frames.append(cv2.resize(frame, (512, 256)))
    _real_dataset(data, tmp_path / "clip.avi", frames, max_side=384)
    for seed, name in enumerate(NAMES, start=10):
        make_coco(data / name, n_train=6, n_val=3, size=96, names=("train", "val"), seed=seed)
    _occluders(data / "real2/occluders", 6)
    photos = make_coco(data / "photos", n_train=1, n_val=2, size=96, names=("train", "val"), seed=3)
    val = json.loads((photos / "annotations/person_keypoints_val.json").read_text())
    whole = {**val, "annotations": val["annotations"][:1]}  # a part of the set, as photo_eval_data.sh writes
    (photos / "annotations/person_keypoints_val_whole.json").write_text(json.dumps(whole))
    outdoor = make_coco(data / "outdoor", n_train=1, n_val=1, size=96, names=("train", "val"), seed=4)
    ann = outdoor / "annotations/person_keypoints_val.json"
    coco = json.loads(ann.read_text())  # mask areas, as photo_eval_data.sh records them: also scored as COCO scores
    ann.write_text(
        json.dumps({**coco, "annotations": [{**a, "mask_area": a["area"] / 2} for a in coco["annotations"]]})
    )
    return data


def _pack(data_dir: Path, pack: Path, budget_mb: float = 1.0, renders=RENDERS) -> dict:
    return write_pack(data_dir, pack, budget_mb, synth_val_images=2, real="real2", renders=renders,
                      occluders="occluders", occluder_count=4)  # fmt: skip


def test_pack_round_trip_gives_the_labelled_frames_bit_exact(data_dir, tmp_path):
    pack = tmp_path / "pack"
    manifest = _pack(data_dir, pack)
    assert manifest["real"] == "real2" and manifest["renders"] == NAMES
    for name in NAMES:
        assert manifest[f"{name}_val_images"] == 2 and manifest[f"{name}_train_images"] == 6
    assert (
        manifest["occluder_images"] == 4 and manifest["occluders_available"] == 6 and manifest["occluder_labels"] == 4
    )
    assert manifest["real_train_images"] == 3 and manifest["real_val_images"] == 1 and manifest["real_videos"] == 1
    assert manifest["eval_sets"] == ["photos", "outdoor"]  # val only: never a training set
    assert manifest["photos_val_images"] == 2 and manifest["outdoor_val_images"] == 1
    assert not (pack / "photos/images/train").exists() and not (pack / "outdoor/images/train").exists()
    assert (pack / "real2/videos/clip.avi").is_file() and not any((pack / "real2").rglob("*.jpg"))
    assert not any(pack.rglob("*.png")) and len(list((pack / "real2/occluders").glob("*.webp"))) == 4
    with pytest.raises(FileExistsError):
        _pack(data_dir, pack)

    out = tmp_path / "unpacked"
    report = read_pack(pack, out, workers=2)
    assert report == {"real": "real2", "real_frames": 4, "videos": 1, "render_images": dict.fromkeys(NAMES, 8),
                      "occluder_dir": "occluders", "occluder_images": 4, "occluder_labels": 4,
                      "eval_splits": {"photos": ["val", "val_whole"], "outdoor": ["val"]}}  # fmt: skip
    for name in ("photos", "outdoor"):
        for original in (data_dir / name / "images/val").iterdir():
            assert (out / name / "images/val" / original.name).read_bytes() == original.read_bytes()
    for name in ("person_keypoints_val.json", "person_keypoints_val_whole.json"):
        assert json.loads((out / "photos/annotations" / name).read_text()) == json.loads(
            (data_dir / "photos/annotations" / name).read_text()
        )
    for split in ("train", "val"):
        for original in (data_dir / "real2/images" / split).iterdir():
            assert (out / "real2/images" / split / original.name).read_bytes() == original.read_bytes()
    for name in NAMES:
        synth = json.loads((out / name / "annotations/person_keypoints_train.json").read_text())
        assert all((out / name / "images/train" / img["file_name"]).is_file() for img in synth["images"])
        assert cv2.imread(str(out / name / "images/train" / synth["images"][0]["file_name"])).shape == (96, 96, 3)
    # the occluders come back as the PNGs OccluderBank reads: alpha exact, colour near where it shows
    assert len(OccluderBank(out / "real2/occluders").images()) == 4
    # with the labels of those four: the cutouts hevitpose composite reads
    index = json.loads((out / "real2/occluders/cutouts.json").read_text())
    original = json.loads((data_dir / "real2/occluders/cutouts.json").read_text())
    assert [e["file"] for e in index["cutouts"]] == sorted(p.name for p in (out / "real2/occluders").glob("*.png"))
    assert all(e in original["cutouts"] for e in index["cutouts"])
    assert len(load_cutouts(out / "real2/occluders")) == 4
    for png in (out / "real2/occluders").glob("*.png"):
        back = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        original = cv2.imread(str(data_dir / "real2/occluders" / png.name), cv2.IMREAD_UNCHANGED)
        assert back.shape == original.shape and (back[..., 3] == original[..., 3]).all()
        shown = original[..., 3] > 0
        assert np.abs(back[..., :3].astype(int) - original[..., :3])[shown].mean() < 8

    # a pack of the sixth session named its one evaluation set "photos"
    old = {k: v for k, v in json.loads((pack / "manifest.json").read_text()).items() if k != "eval_sets"}
    (pack / "manifest.json").write_text(json.dumps({**old, "photos": "photos"}))
    assert read_pack(pack, tmp_path / "unpacked_old", workers=1)["eval_splits"] == {"photos": ["val", "val_whole"]}


def test_pack_splits_the_render_budget_by_weight(data_dir, tmp_path):
    full = _pack(data_dir, tmp_path / "full")
    train_bytes = sum(_size(tmp_path / "full" / name / "images/train") for name in NAMES)
    budget = (full["bytes"] - train_bytes / 2) / 2**20  # room for about half the training renders
    even = _pack(data_dir, tmp_path / "even", budget)
    assert all(0 < even[f"{name}_train_images"] < 6 for name in NAMES)  # the budget cuts every set
    assert even["bytes"] <= budget * 2**20 and all(even[f"{name}_val_images"] == 2 for name in NAMES)  # val kept whole
    first, *rest = NAMES
    heavy = _pack(data_dir, tmp_path / "heavy", budget, renders=((first, 3.0), *((name, 1.0) for name in rest)))
    assert heavy[f"{first}_train_images"] > even[f"{first}_train_images"]
    assert sum(heavy[f"{name}_train_images"] for name in rest) < sum(even[f"{name}_train_images"] for name in rest)
    with pytest.raises(ValueError, match="exceed"):
        _pack(data_dir, tmp_path / "tiny", budget_mb=0.01)
    with pytest.raises(ValueError, match="positive"):
        _pack(data_dir, tmp_path / "zero", renders=((first, 1.0), (rest[0], 0.0)))


def test_a_render_set_that_runs_out_hands_its_share_on(data_dir, tmp_path):
    first, second = NAMES[:2]
    two = ((first, 1.0), (second, 1.0))
    ann = data_dir / first / "annotations/person_keypoints_train.json"
    coco = json.loads(ann.read_text())
    ann.write_text(json.dumps({**coco, "images": coco["images"][:1]}))  # one render in the first set, six in the second
    full = _pack(data_dir, tmp_path / "full", renders=two)
    assert full[f"{first}_train_images"] == 1 and full[f"{second}_train_images"] == 6
    last = sorted((tmp_path / "full" / second / "images/train").iterdir())
    budget = (full["bytes"] - last[-1].stat().st_size - 100) / 2**20  # room for five of the six
    cut = _pack(data_dir, tmp_path / "cut", budget, renders=two)
    # half of the room, an even split's share, would hold three; the first set's unused half comes on
    assert cut[f"{first}_train_images"] == 1 and cut[f"{second}_train_images"] >= 4


def gpu_run_module():
    """scripts/gpu_run.py, a script rather than a package module."""
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "scripts/gpu_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_gpu_run_smoke_trains_evaluates_and_exports_on_cpu(data_dir, tmp_path):
    pack = tmp_path / "pack"
    _pack(data_dir, pack)
    gpu_run = gpu_run_module()
    out = tmp_path / "out"
    args = ["--smoke", "--pack", str(pack), "--out", str(out), "--work", str(tmp_path / "work"),
            "--models", "hevitpose-t", "run.tensorboard=false"]  # fmt: skip
    assert gpu_run.main(args) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings) == ["start", "unpacked", "composited", "probe hevitpose-t", "plan", "trained", "exported",
                             "eval real_val", *(f"eval {name}_val" for name in NAMES), "eval photos_val",
                             "eval photos_val_whole", "eval outdoor_val", "eval outdoor_val_mask_area",
                             "done"]  # fmt: skip
    assert timings["composited"]["cutouts"] == 4 and timings["composited"]["images"] > 0
    assert timings["plan"]["model"] == "hevitpose-t" and timings["trained"]["step"] == 3
    assert timings["unpacked"]["real"] == "real2" and timings["plan"]["occluders"] == 4  # the recipe read the pack's
    assert (out / "weights/hevitpose-t-default-gpu.safetensors").is_file()
    meta = json.loads((out / "weights/hevitpose-t-default-gpu.json").read_text())
    assert meta["model"] == "hevitpose-t"
    for split in ("real_val", *(f"{name}_val" for name in NAMES), "photos_val", "photos_val_whole", "outdoor_val"):
        assert "AP" in json.loads((out / f"eval_{split}.json").read_text())["metrics"]
    assert json.loads((out / "eval_photos_val_whole.json").read_text())["people"] == 1
    assert json.loads((out / "eval_outdoor_val_mask_area.json").read_text())["oks_area"] == "mask_area"
    assert (out / "metrics.jsonl").is_file()


def test_gpu_run_smoke_fine_tunes_a_bundle_with_its_size_and_codec(data_dir, tmp_path):
    bundle = ROOT / "weights/hevitpose-t-default.json"
    pack, out = tmp_path / "pack", tmp_path / "out"
    _pack(data_dir, pack)
    gpu_run = gpu_run_module()
    args = ["--smoke", "--pack", str(pack), "--out", str(out), "--work", str(tmp_path / "work"),
            "--init-from", str(bundle), "run.tensorboard=false"]  # fmt: skip
    assert gpu_run.main(args) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings["plan"]["rates"]) == ["hevitpose-t"]  # the bundle's network only, not the candidates
    assert timings["plan"]["init_from"] == str(bundle) and timings["trained"]["step"] == 3
    meta, tuned = load_meta(bundle), load_meta(out / "weights/hevitpose-t-default-gpu.json")
    # the smoke run's 64x64 input aside, the codec the bundle decodes with is the one it trained with
    assert dataclasses.replace(tuned.codec, input_size=meta.codec.input_size) == meta.codec
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == gpu_run.FINE_TUNE_LR
    # three steps in warm-up move the learned weights by little: they start from the bundle's, not from random ones
    # (batch-norm statistics move with the batches, as in any training step)
    before = load_file(str(bundle.with_suffix(".safetensors")))
    after = load_file(str(out / "weights/hevitpose-t-default-gpu.safetensors"))
    learned = [k for k in before if "running_" not in k and "num_batches_tracked" not in k]
    assert before.keys() == after.keys() and len(learned) > 200
    assert all(torch.allclose(before[k].float(), after[k].float(), atol=1e-2) for k in learned)


def test_the_gpu_recipe_reads_the_packed_renders_the_shipped_stage_trains_on():
    gpu = load_config(ROOT / "configs/hevitpose_default_gpu.yaml")
    shipped = load_config(ROOT / "configs/hevitpose_t_default_ft13b.yaml")
    assert gpu.data.extra_train == (*(f"../{name}" for name in NAMES), f"../{gpu_run_module().COMPOSITE}")
    assert [p for p in shipped.data.extra_train if p.startswith("../synth")] == [f"../{name}" for name in NAMES]


def test_the_largest_model_that_fits_or_keeps_pace_is_chosen():
    choose = gpu_run_module().choose_model
    assert choose({"hevitpose-b": 2000.0}, 330.0, 600_000) == "hevitpose-b"  # 660,000 samples fit
    rates = {"hevitpose-b": 900.0, "hevitpose-s": 1400.0, "hevitpose-t": 1500.0}
    assert choose(rates, 330.0, 600_000) == "hevitpose-s"  # none fits; S keeps within 10% of T's pace
    assert choose({**rates, "hevitpose-s": 1300.0}, 330.0, 600_000) == "hevitpose-t"
    assert choose({"hevitpose-b": 1450.0, "hevitpose-s": 1500.0}, 330.0, 600_000) == "hevitpose-b"  # loader-bound


def test_epoch_plan_fits_the_measured_rate():
    gpu_run = gpu_run_module()
    epochs, milestones = gpu_run.epoch_plan(rate=2000.0, seconds=330.0, epoch_samples=13_000)
    assert epochs == 50 and milestones == [40, 47]
    assert gpu_run.epoch_plan(10.0, 1.0, 13_000) == (1, [1])
