"""A small, self-contained pack of the default model's training data, for a machine that can fetch nothing.

The GPU machine receives only the working tree (64 MiB in all), so the data travels compressed:
the labelled real footage as the videos themselves plus their label JSON (frames are decoded
again there, bit-exact, by frame index), a sample of the occluder cutouts (with their entries of
``cutouts.json``, from which ``scripts/gpu_run.py`` composes ``hevitpose composite``'s images
there), the real sets kept for evaluation (``data/photos`` and ``data/outdoor``, where they exist) and the
renders as WebP,
and every label file gzipped. ``read_pack`` rebuilds the folders
the recipes read: the real set (``data.root``, e.g. ``real2/``) with its occluders
(``augment.occluder_dir``, e.g. ``real2/occluders/``), and each render set beside it
(``data.extra_train``, e.g. ``../synth_photo``, ``../synth_portrait``), so ``configs/hevitpose_default_gpu.yaml``
reads them with only ``data.root`` set.

    python -m training.pack write data/ pack/ --budget-mb 35
    python -m training.pack read pack/ /tmp/data --workers 16
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2

SPLITS = ("train", "val")
# The shipped stage's data (configs/hevitpose_t_default_ft13.yaml, which configs/hevitpose_default_gpu.yaml
# follows): re-labelled footage, its occluders (with their labels, from which the composites are made
# again), photo-preset renders, the pose-rich ones and the portraits, the budget split evenly as the recipe
# repeats each once per epoch. The hard-preset renders (``synth``) left the CPU recipe at its sixth stage.
REAL = "real2"
RENDERS = (("synth_photo", 1.0), ("synth_poses", 1.0), ("synth_portrait", 1.0))
OCCLUDERS = "occluders"
# 1,000 of the 2,738 cutouts: 92% of them are the same few pedestrians of vtest.avi in consecutive
# frames, so every 2.7th (in name order, which keeps each video's share) loses little. Lossy WebP
# keeps alpha exact (libwebp codes it losslessly); at quality 75 a cutout is 2.7 kB against 7.4 kB
# lossless and 23 kB as PNG, colour off by 3/255 where it shows, and lower qualities save under 10%.
OCCLUDER_COUNT = 1000
OCCLUDER_QUALITY = 75
# Real sets for evaluation only (scripts/photo_eval_data.sh: split val and its parts val_*), packed as
# they are (the 18 photos 1.3 MB, the outdoor video's 21 frames 3.5 MB), so that a run on the GPU machine
# reports AP on people no training set holds; no recipe trains on them.
EVAL_SETS = ("photos", "outdoor")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _write_json(path: Path, data: dict) -> int:
    """``path`` + ``.gz`` (labels compress 4x: they are a tenth of the pack); returns its bytes."""
    blob = gzip.compress(json.dumps(data).encode(), mtime=0)  # mtime=0: the same data, the same pack
    Path(f"{path}.gz").write_bytes(blob)
    return len(blob)


def _read_json(path: Path) -> dict:
    """``path`` + ``.gz`` as written by ``_write_json``, or a plain ``path`` (packs written before)."""
    gz = Path(f"{path}.gz")
    return json.loads(gzip.decompress(gz.read_bytes()) if gz.is_file() else path.read_text())


def _write_real(data: Path, pack: Path, real: str) -> dict:
    """The videos the labels' ``source`` name, and the labels with a ``video`` key for ``read_pack``."""
    (pack / real / "annotations").mkdir(parents=True)
    (pack / real / "videos").mkdir()
    sources: dict[str, Path] = {}
    counts = {}
    for split in SPLITS:
        coco = json.loads((data / real / f"annotations/person_keypoints_{split}.json").read_text())
        for image in coco["images"]:
            name = Path(image["source"]).name  # the link's name: the footage links multi/cam01.mp4 as multi_cam01.mp4
            source = Path(image["source"]).resolve()
            if sources.setdefault(name, source) != source:  # two videos of one name would share a file
                raise ValueError(f"{source} and {sources[name]}: two labelled videos named {name}")
            target = pack / real / "videos" / name
            if not target.exists():
                shutil.copyfile(source, target)
            image["video"] = f"videos/{name}"
        _write_json(pack / real / f"annotations/person_keypoints_{split}.json", coco)
        counts[f"real_{split}_images"] = len(coco["images"])
        counts[f"real_{split}_people"] = len(coco["annotations"])
    counts["real_videos"] = len(sources)
    return counts


def _write_eval_set(data: Path, pack: Path, name: str) -> dict:
    """``data/<name>``'s val images and every ``person_keypoints_val*.json``, or nothing where it is absent."""
    src = data / name
    if not (src / "annotations/person_keypoints_val.json").is_file():
        return {}
    (pack / name / "annotations").mkdir(parents=True)
    for ann in sorted((src / "annotations").glob("person_keypoints_val*.json")):
        _write_json(pack / name / "annotations" / ann.name, json.loads(ann.read_text()))
    coco = json.loads((src / "annotations/person_keypoints_val.json").read_text())
    (pack / name / "images/val").mkdir(parents=True)
    for image in coco["images"]:
        shutil.copyfile(src / "images/val" / image["file_name"], pack / name / "images/val" / image["file_name"])
    return {f"{name}_val_images": len(coco["images"]), f"{name}_val_people": len(coco["annotations"])}


def _write_occluders(src: Path, dst: Path, count: int, quality: int) -> dict:
    """Every (len / count)-th cutout of ``src`` as WebP with alpha, and their entries of its
    ``cutouts.json`` (the labels ``hevitpose composite`` stands them up with) where it has one."""
    paths = sorted(src.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no occluder PNGs in {src}")
    n = min(count, len(paths))
    dst.mkdir(parents=True)
    picked = [paths[i * len(paths) // n] for i in range(n)]
    labelled = 0
    if (src / "cutouts.json").is_file():
        index = json.loads((src / "cutouts.json").read_text())
        names = {path.name for path in picked}
        index["cutouts"] = [entry for entry in index["cutouts"] if entry["file"] in names]
        _write_json(dst / "cutouts.json", index)
        labelled = len(index["cutouts"])
    for path in picked:
        bgra = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
            raise ValueError(f"{path}: not an RGBA cutout")
        ok, buf = cv2.imencode(".webp", bgra, [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"could not encode {path}")
        (dst / f"{path.stem}.webp").write_bytes(buf.tobytes())
    return {"occluder_images": n, "occluders_available": len(paths), "occluder_labels": labelled}


def _write_renders(data: Path, pack: Path, name: str, split: str, budget: float, limit: int, quality: int) -> int:
    """As many of ``name``'s ``split`` renders as ``budget`` bytes (and ``limit``) allow, in order; returns bytes."""
    coco = json.loads((data / name / f"annotations/person_keypoints_{split}.json").read_text())
    for ann in coco["annotations"]:
        ann.pop("segmentation", None)  # training reads boxes and keypoints only
    # Labels are stored gzipped: charge the file's fixed part (categories, ...) up front, and each
    # image its JSON at the whole file's compression ratio
    ratio = len(gzip.compress(json.dumps(coco).encode(), compresslevel=6)) / max(len(json.dumps(coco)), 1)
    estimate = len(gzip.compress(json.dumps({**coco, "images": [], "annotations": []}).encode()))
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out_dir = pack / name / "images" / split
    out_dir.mkdir(parents=True)
    kept, spent = [], 0
    for image in coco["images"][:limit]:
        bgr = cv2.imread(str(data / name / "images" / split / image["file_name"]), cv2.IMREAD_COLOR)
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"could not encode {image['file_name']}")
        cost = buf.nbytes + ratio * len(json.dumps([image, by_image.get(image["id"], [])]))
        if estimate + cost > budget:
            break
        estimate += cost
        spent += buf.nbytes
        image["file_name"] = Path(image["file_name"]).with_suffix(".webp").name
        (out_dir / image["file_name"]).write_bytes(buf.tobytes())
        kept.append(image)
    ids = {img["id"] for img in kept}
    coco["images"] = kept
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (pack / name / "annotations").mkdir(exist_ok=True)
    return spent + _write_json(pack / name / f"annotations/person_keypoints_{split}.json", coco)


def write_pack(
    data: Path,
    pack: Path,
    budget_mb: float,
    webp_quality: int = 60,
    synth_val_images: int = 100,
    real: str = REAL,
    renders: tuple[tuple[str, float], ...] = RENDERS,
    occluders: str = OCCLUDERS,
    occluder_count: int = OCCLUDER_COUNT,
    occluder_quality: int = OCCLUDER_QUALITY,
    eval_sets: tuple[str, ...] = EVAL_SETS,
) -> dict:
    """``data/<real>`` (hevitpose label output, frames from videos), its occluders and renders into ``pack``.

    The real set, the occluder sample and the evaluation sets (``data/<eval_sets>``, those that exist)
    go in whole; each render set then puts in its first
    ``synth_val_images`` validation renders (a fixed small evaluation split); the budget left is
    split between the render sets' training renders by their weights, in order, a set that runs
    out of renders handing the rest of its share to the sets after it. ``occluders`` is relative
    to the real set, as ``augment.occluder_dir`` is to ``data.root``; "" packs none.
    """
    if pack.exists():
        raise FileExistsError(f"{pack} exists; remove it first")
    if any(weight <= 0 for _, weight in renders):
        raise ValueError(f"render weights must be positive: {renders}")
    counts = _write_real(data, pack, real)
    if occluders:
        counts |= _write_occluders(data / real / occluders, pack / real / occluders, occluder_count, occluder_quality)
    packed_eval_sets = []
    for name in eval_sets:
        if eval_counts := _write_eval_set(data, pack, name):
            counts |= eval_counts
            packed_eval_sets.append(name)
    budget = budget_mb * 2**20 - _size(pack)
    for name, _ in renders:
        budget -= _write_renders(data, pack, name, "val", budget, synth_val_images, webp_quality)
    if budget <= 0:
        raise ValueError(
            f"the real set, occluders, evaluation sets and validation renders alone exceed {budget_mb} MiB"
        )
    weights = [weight for _, weight in renders]
    for i, (name, weight) in enumerate(renders):
        share = budget * weight / sum(weights[i:])
        budget -= _write_renders(data, pack, name, "train", share, sys.maxsize, webp_quality)
    for name, _ in renders:
        for split in SPLITS:
            coco = _read_json(pack / name / f"annotations/person_keypoints_{split}.json")
            counts[f"{name}_{split}_images"] = len(coco["images"])
            counts[f"{name}_{split}_people"] = len(coco["annotations"])
    layout = {"real": real, "renders": [name for name, _ in renders], "occluder_dir": occluders,
              "eval_sets": packed_eval_sets}  # fmt: skip
    manifest = {"bytes": _size(pack), "webp_quality": webp_quality, "occluder_quality": occluder_quality,
                **layout, "render_weights": weights, **counts}  # fmt: skip
    (pack / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def _decode_video(job: tuple[str, list[tuple[int, str, int, int]]]) -> int:
    """Decode one video and write the listed frames (index, path, width, height)."""
    cv2.setNumThreads(1)
    video, wanted = job
    by_index = {index: (path, w, h) for index, path, w, h in wanted}
    cap = cv2.VideoCapture(video)
    written, index = 0, 0
    last = max(by_index)
    while index <= last:
        ok, frame = cap.read()
        if not ok:
            raise RuntimeError(f"{video}: ended at frame {index}, before frame {last}")
        if index in by_index:
            path, w, h = by_index[index]
            if (frame.shape[1], frame.shape[0]) != (w, h):
                frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)  # as hevitpose label's --max-side
            cv2.imwrite(path, frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
            written += 1
        index += 1
    cap.release()
    return written


def _decode_occluder(job: tuple[str, str]) -> int:
    """WebP -> PNG: ``OccluderBank`` reads the PNGs ``hevitpose occluders`` writes."""
    cv2.setNumThreads(1)
    src, dst = job
    cv2.imwrite(dst, cv2.imread(src, cv2.IMREAD_UNCHANGED), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return 1


def read_pack(pack: Path, out: Path, workers: int = 0) -> dict:
    """Rebuild ``out/<real>`` (frames decoded from the packed videos, occluders) and each render set."""
    manifest = json.loads((pack / "manifest.json").read_text()) if (pack / "manifest.json").is_file() else {}
    # packs written before the manifest named its folders held real/ and synth/ only
    real = manifest.get("real", "real")
    renders = manifest.get("renders", ["synth"])
    occluders = manifest.get("occluder_dir", "")
    # packs of the sixth session named one evaluation set, "photos" (or "" for none)
    eval_sets = manifest.get("eval_sets", [name for name in [manifest.get("photos", "")] if name])
    jobs: dict[str, list[tuple[int, str, int, int]]] = {}
    for split in SPLITS:
        coco = _read_json(pack / real / f"annotations/person_keypoints_{split}.json")
        image_dir = out / real / "images" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        (out / real / "annotations").mkdir(parents=True, exist_ok=True)
        (out / real / f"annotations/person_keypoints_{split}.json").write_text(json.dumps(coco))
        for image in coco["images"]:
            video = str(pack / real / image["video"])
            jobs.setdefault(video, []).append(
                (image["frame"], str(image_dir / image["file_name"]), image["width"], image["height"])
            )
    cutouts, labelled = [], 0
    if occluders:
        (out / real / occluders).mkdir(parents=True, exist_ok=True)
        cutouts = [(str(p), str(out / real / occluders / f"{p.stem}.png")) for p in (pack / real / occluders).glob("*.webp")]  # fmt: skip
        if Path(f"{pack / real / occluders / 'cutouts.json'}.gz").is_file():  # packs before it carried no labels
            index = _read_json(pack / real / occluders / "cutouts.json")
            (out / real / occluders / "cutouts.json").write_text(json.dumps(index))
            labelled = len(index["cutouts"])
    workers = workers or os.cpu_count() or 1
    # spawn, not fork: a forked child of a process whose OpenCV/torch thread pools already ran can
    # deadlock on a lock copied mid-use
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=context) as pool:
        frames = sum(pool.map(_decode_video, sorted(jobs.items())))
        n_occluders = sum(pool.map(_decode_occluder, cutouts, chunksize=64))
    render_images = {}
    for name in renders:
        shutil.copytree(pack / name / "images", out / name / "images", dirs_exist_ok=True)
        (out / name / "annotations").mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            coco = _read_json(pack / name / f"annotations/person_keypoints_{split}.json")
            (out / name / f"annotations/person_keypoints_{split}.json").write_text(json.dumps(coco))
        render_images[name] = sum(1 for _ in (out / name / "images").rglob("*.webp"))
    eval_splits = {}
    for name in eval_sets:
        shutil.copytree(pack / name / "images", out / name / "images", dirs_exist_ok=True)
        (out / name / "annotations").mkdir(parents=True, exist_ok=True)
        eval_splits[name] = []
        for gz in sorted((pack / name / "annotations").glob("*.json.gz")):
            ann = gz.with_suffix("")  # person_keypoints_<split>.json, as _write_json was given it
            (out / name / "annotations" / ann.name).write_text(json.dumps(_read_json(ann)))
            eval_splits[name].append(ann.stem.removeprefix("person_keypoints_"))
    return {
        "real": real,
        "real_frames": frames,
        "videos": len(jobs),
        "render_images": render_images,
        "occluder_dir": occluders,
        "occluder_images": n_occluders,
        "occluder_labels": labelled,
        "eval_splits": eval_splits,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.pack", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="data folder -> pack")
    w.add_argument("data", type=Path)
    w.add_argument("pack", type=Path)
    # 64 MiB travel to the device: the tracked tree (23.4 MiB), bench/gpu_wheels.sh's wheels (3.7 MiB) and the pack
    w.add_argument("--budget-mb", type=float, default=35.0)
    w.add_argument("--webp-quality", type=int, default=60, help="renders")
    w.add_argument("--val-images", type=int, default=100, help="validation renders per render set")
    w.add_argument("--real", default=REAL, help="the labelled real set, a folder of DATA")
    w.add_argument("--renders", nargs="+", default=[f"{n}:{wt:g}" for n, wt in RENDERS],
                   help="render sets, folders of DATA, as NAME[:WEIGHT] (default weight 1), in the order they fill")  # fmt: skip
    w.add_argument("--occluders", default=OCCLUDERS, help="cutouts, a folder of the real set ('' for none)")
    w.add_argument("--occluder-count", type=int, default=OCCLUDER_COUNT)
    w.add_argument("--occluder-quality", type=int, default=OCCLUDER_QUALITY, help="WebP quality; over 100 is lossless")
    w.add_argument("--eval-sets", nargs="*", default=list(EVAL_SETS),
                   help="real sets for evaluation only, folders of DATA (split val), packed where present")  # fmt: skip
    r = sub.add_parser("read", help="pack -> data folder")
    r.add_argument("pack", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--workers", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "write":
        renders = tuple((s.split(":")[0], float(s.split(":")[1]) if ":" in s else 1.0) for s in args.renders)
        report = write_pack(args.data, args.pack, args.budget_mb, args.webp_quality, args.val_images, args.real,
                            renders, args.occluders, args.occluder_count, args.occluder_quality, tuple(args.eval_sets))  # fmt: skip
    else:
        report = read_pack(args.pack, args.out, args.workers)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
