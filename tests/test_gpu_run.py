"""The data pack and the one-call GPU script, run end to end on the CPU (--smoke)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from _training_data import make_coco

from training.pack import read_pack, write_pack

ROOT = Path(__file__).resolve().parents[1]


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
        (root / "real/images" / split).mkdir(parents=True)
        cap = cv2.VideoCapture(str(video))
        decoded = [cap.read()[1] for _ in frames]
        images, anns = [], []
        for i in indices:
            small = cv2.resize(decoded[i], (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            name = f"0000_clip_{i:06d}.jpg"
            cv2.imwrite(str(root / "real/images" / split / name), small, [cv2.IMWRITE_JPEG_QUALITY, 92])
            images.append({"id": i + 1, "file_name": name, "width": small.shape[1], "height": small.shape[0],
                           "source": str(video), "frame": i})  # fmt: skip
            ann = dict(figures["annotations"][i], id=i + 1, image_id=i + 1)
            ann["keypoint_scores"] = [0.9] * 17
            anns.append(ann)
        coco = {"images": images, "annotations": anns, "categories": figures["categories"]}
        (root / "real/annotations").mkdir(parents=True, exist_ok=True)
        (root / f"real/annotations/person_keypoints_{split}.json").write_text(json.dumps(coco))
    shutil.rmtree(root / "_figures")


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
    make_coco(data / "synth", n_train=6, n_val=3, size=96, names=("train", "val"))
    return data


def test_pack_round_trip_gives_the_labelled_frames_bit_exact(data_dir, tmp_path):
    pack = tmp_path / "pack"
    manifest = write_pack(data_dir, pack, budget_mb=1.0, synth_val_images=2)
    assert manifest["synth_val_images"] == 2 and manifest["synth_train_images"] == 6
    assert (pack / "real/videos/clip.avi").is_file() and not any((pack / "real").rglob("*.jpg"))
    with pytest.raises(FileExistsError):
        write_pack(data_dir, pack, budget_mb=1.0)
    small = write_pack(data_dir, tmp_path / "small", budget_mb=manifest["bytes"] / 2**20 - 0.002, synth_val_images=2)
    assert small["synth_train_images"] < 6 and small["bytes"] <= manifest["bytes"]  # the budget cuts renders

    out = tmp_path / "unpacked"
    report = read_pack(pack, out, workers=2)
    assert report == {"real_frames": 4, "videos": 1, "synth_images": 8}
    for split in ("train", "val"):
        for original in (data_dir / "real/images" / split).iterdir():
            assert (out / "real/images" / split / original.name).read_bytes() == original.read_bytes()
    synth = json.loads((out / "synth/annotations/person_keypoints_train.json").read_text())
    assert all((out / "synth/images/train" / img["file_name"]).is_file() for img in synth["images"])
    assert cv2.imread(str(out / "synth/images/train" / synth["images"][0]["file_name"])).shape == (96, 96, 3)


def test_gpu_run_smoke_trains_evaluates_and_exports_on_cpu(data_dir, tmp_path):
    pack = tmp_path / "pack"
    write_pack(data_dir, pack, budget_mb=1.0, synth_val_images=3)
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "scripts/gpu_run.py")
    gpu_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_run)
    out = tmp_path / "out"
    args = ["--smoke", "--pack", str(pack), "--out", str(out), "--work", str(tmp_path / "work"),
            "--models", "hevitpose-t", "run.tensorboard=false"]  # fmt: skip
    assert gpu_run.main(args) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert list(timings) == ["start", "unpacked", "probe hevitpose-t", "plan", "trained", "exported",
                             "eval real_val", "eval synth_val", "done"]  # fmt: skip
    assert timings["plan"]["model"] == "hevitpose-t" and timings["trained"]["step"] == 3
    assert (out / "weights/hevitpose-t-default-gpu.safetensors").is_file()
    meta = json.loads((out / "weights/hevitpose-t-default-gpu.json").read_text())
    assert meta["model"] == "hevitpose-t"
    for split in ("real_val", "synth_val"):
        assert "AP" in json.loads((out / f"eval_{split}.json").read_text())["metrics"]
    assert (out / "metrics.jsonl").is_file()


def test_epoch_plan_fits_the_measured_rate():
    spec = importlib.util.spec_from_file_location("gpu_run", ROOT / "scripts/gpu_run.py")
    gpu_run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_run)
    epochs, milestones = gpu_run.epoch_plan(rate=2000.0, seconds=330.0, epoch_samples=13_000)
    assert epochs == 50 and milestones == [40, 47]
    assert gpu_run.epoch_plan(10.0, 1.0, 13_000) == (1, [1])
