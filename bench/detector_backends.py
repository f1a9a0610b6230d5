"""The person detector's two backends side by side: the same boxes, and the time per image.

onnxruntime runs the ONNX file; torch runs ``service/nanodet.py`` with the same weights. On a CPU
both run here, interleaved image by image (the order alternating), with the same thread count;
on a CUDA machine the torch backend runs on the GPU (float16 autocast, the service's choice, and
float32) against onnxruntime on that machine's CPU.

CPU, here (writes BENCHMARKS.md's ``detector_backends`` section, beside the detector's other numbers)::

    nice -n 10 .venv/bin/python bench/detector_backends.py --write

GPU check, on a lent CUDA machine from the repository root (needs torch, onnx, onnxruntime,
OpenCV and scikit-image, no pydantic and no data set: its images are built from the repository's
background photographs and scikit-image's astronaut photo)::

    PYTHONUNBUFFERED=1 python3 bench/detector_backends.py --device cuda --out "$OUT"

It exits 1 when torch-on-CUDA's person boxes differ from onnxruntime-on-CPU's (a different count,
or a box matched at IoU <= 0.99) and writes ``detector_backends_cuda.md`` and ``.json`` to
``--out``. Back here, ``--section-from that.md`` puts the section into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from report import machine, write_section  # noqa: E402

from service.detector import INPUT_SIZE, DetectorConfig, Letterbox, NanoDetPersonDetector  # noqa: E402

# service.settings.DEFAULT_DETECTOR, spelled out: the GPU image has no pydantic-settings.
DETECTOR = ROOT / "service" / "assets" / "nanodet-m-416-coco.onnx"
BACKGROUNDS = ROOT / "training" / "synth" / "assets" / "backgrounds"
IOU_MIN = 0.99
Result = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------- images


def real_looking_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """The astronaut photo, and the repository's people-free background photographs with her pasted
    in once or twice at random sizes and places (some cut by the border), at common frame sizes."""
    from skimage import data

    person = data.astronaut()
    sizes = [(960, 640), (1280, 720), (640, 480), (540, 960), (768, 576)]
    rng = np.random.default_rng(seed)
    backgrounds = sorted(BACKGROUNDS.glob("*.jpg"))
    images = [person]
    for k in range(n - 1):
        w, h = sizes[k % len(sizes)]
        image = cv2.cvtColor(cv2.resize(cv2.imread(str(backgrounds[k % len(backgrounds)])), (w, h)), cv2.COLOR_BGR2RGB)
        for _ in range(int(rng.integers(1, 3))):
            side = int(rng.uniform(0.15, 0.8) * min(w, h))
            pasted = cv2.resize(person, (side, side), interpolation=cv2.INTER_AREA)
            x0, y0 = int(rng.integers(-side // 3, w - side // 2)), int(rng.integers(0, h - side // 2))
            xa, ya, xb, yb = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
            image[ya:yb, xa:xb] = pasted[ya - y0 : yb - y0, xa - x0 : xb - x0]
        images.append(image)
    return images


def labelled_images(n: int) -> list[np.ndarray]:
    """An even sample of bench/detector_eval.py's set (renders, pose2sim and vtest frames), if it is here."""
    from detector_eval import load_set  # imports service.settings: only where the set exists

    items = load_set(Path("/work/data/synth"), Path("/work/data/real"), 150, 80, 80)
    items = items[:: max(1, len(items) // n)][:n]
    return [cv2.cvtColor(cv2.imread(str(it["path"])), cv2.COLOR_BGR2RGB) for it in items]


# ---------------------------------------------------------------------------- agreement


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x1, y1 = np.maximum(a[:, None, 0], b[None, :, 0]), np.maximum(a[:, None, 1], b[None, :, 1])
    x2, y2 = np.minimum(a[:, None, 2], b[None, :, 2]), np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def agreement(reference: list[Result], other: list[Result]) -> dict:
    """Per image: same box count, and each reference box matched (one to one, by IoU) above IOU_MIN.

    Matched by IoU, not rank: two near-equal scores may swap places in float16.
    """
    failures, min_iou, max_score_diff, boxes = [], 1.0, 0.0, 0
    for i, ((rb, rs), (ob, os_)) in enumerate(zip(reference, other)):
        boxes += len(rb)
        if len(rb) != len(ob):
            failures.append({"image": i, "why": f"{len(rb)} boxes vs {len(ob)}"})
            continue
        if len(rb) == 0:
            continue
        iou = iou_matrix(rb, ob)
        j = iou.argmax(axis=1)
        best = iou.max(axis=1)
        min_iou = min(min_iou, float(best.min()))
        max_score_diff = max(max_score_diff, float(np.abs(os_[j] - rs).max()))
        if len(set(j.tolist())) != len(j) or best.min() <= IOU_MIN:
            failures.append({"image": i, "why": f"IoU {best.min():.4f}"})
    return {"images": len(reference), "boxes": boxes, "failures": failures, "min_iou": round(min_iou, 5),
            "max_score_diff": max_score_diff, "ok": not failures}  # fmt: skip


def describe(a: dict) -> str:
    if a["ok"]:
        return (f"same boxes on all {a['images']} images ({a['boxes']} boxes; least IoU {a['min_iou']:.4f}, "
                f"scores within {a['max_score_diff']:.1e})")  # fmt: skip
    return f"DIFFERENT on {len(a['failures'])} of {a['images']} images: {a['failures'][:5]}"


# ---------------------------------------------------------------------------- timing


def ms(seconds: list[float]) -> str:
    return f"{1e3 * statistics.mean(seconds):.2f} | {1e3 * statistics.median(seconds):.2f}"


def interleaved(
    dets: dict[str, NanoDetPersonDetector], images: list[np.ndarray]
) -> tuple[dict[str, list[float]], dict[str, list[float]], dict[str, list[Result]]]:
    """Each image through each detector (the order alternating image by image): whole call and network only."""
    names = list(dets)
    for det in dets.values():  # warm-up: first calls allocate
        det(images[0])
        det(images[-1])
    call = {n: [] for n in names}
    net = {n: [] for n in names}
    results: dict[str, list[Result]] = {n: [] for n in names}
    for k, image in enumerate(images):
        lb = Letterbox.fit(image.shape[1], image.shape[0], INPUT_SIZE)
        batch = lb.apply(image)[None]
        for name in names if k % 2 == 0 else names[::-1]:
            det = dets[name]
            t0 = time.perf_counter()
            results[name].append(det(image))
            t1 = time.perf_counter()
            det.network(batch)
            t2 = time.perf_counter()
            call[name].append(t1 - t0)
            net[name].append(t2 - t1)
    return call, net, results


def ratio_lines(call: dict[str, list[float]], net: dict[str, list[float]], base: str, other: str) -> list[str]:
    """torch / onnxruntime: of the medians, and the median of per-image ratios (paired, so load that
    changes over the run cancels)."""
    out = []
    for label, t in (("detector call", call), ("network only", net)):
        paired = statistics.median(o / b for o, b in zip(t[other], t[base]))
        of_medians = statistics.median(t[other]) / statistics.median(t[base])
        out.append(f"| {label} | {of_medians:.2f} | {paired:.2f} |")
    return out


def header(device: str, threads: int, n: int, source: str, load: tuple[float, float]) -> str:
    return (
        f"`bench/detector_backends.py --device {device}`, {datetime.date.today().isoformat()}, {machine()}, "
        f"onnxruntime {'and torch ' if device == 'cpu' else ''}with "
        f"{threads or 'the default number of'} thread{'s' if threads != 1 else ''}; {n} images ({source}); "
        f"load average over 1 minute {load[0]:.1f} before, {load[1]:.1f} after"
    )


# ---------------------------------------------------------------------------- CPU


def run_cpu(args: argparse.Namespace) -> tuple[str, dict, bool]:
    if args.threads:
        torch.set_num_threads(args.threads)
    have_set = Path("/work/data/real").is_dir() and Path("/work/data/synth").is_dir()
    if have_set and not args.built_in:
        images, source = labelled_images(args.images), "an even sample of bench/detector_eval.py's set"
    else:
        images, source = real_looking_images(args.images), "built-in: backgrounds with the astronaut pasted in"
    cfg = DetectorConfig(DETECTOR, threads=args.threads)
    dets = {
        "onnxruntime": NanoDetPersonDetector(replace(cfg, backend="onnxruntime")),
        "torch": NanoDetPersonDetector(replace(cfg, backend="torch")),
    }
    load0 = os.getloadavg()[0]
    call, net, results = interleaved(dets, images)
    load1 = os.getloadavg()[0]
    agree = agreement(results["onnxruntime"], results["torch"])
    body = "\n".join([
        "## Person detector backends (CPU)", "",
        header("cpu", args.threads, len(images), source, (load0, load1)) + ". **The machine was shared** "
        "with a training job and other benchmarks, so milliseconds measured here say more about their load than "
        "about this CPU and are left out (`--out` keeps them); the two backends ran on the same images, "
        "interleaved image by image, so their ratio holds. Time per image, torch over onnxruntime "
        "(above 1: onnxruntime is the faster):", "",
        "| torch / onnxruntime | of the medians | median of per-image ratios |", "|---|---:|---:|",
        *ratio_lines(call, net, "onnxruntime", "torch"), "",
        f"Boxes: torch vs onnxruntime, {describe(agree)}. A call is letterbox + network + decoding + NMS; "
        "the service takes onnxruntime on a CPU (`HEVITPOSE_DETECTOR_BACKEND=auto`).",
    ])  # fmt: skip
    data = {"images": len(images), "source": source, "threads": args.threads, "load": [load0, load1],
            "call_s": call, "network_s": net, "agreement": agree}  # fmt: skip
    return body, data, agree["ok"]


# ---------------------------------------------------------------------------- CUDA


def network_speed(det: NanoDetPersonDetector, image: np.ndarray, batches: list[int], reps: int) -> dict[int, float]:
    """Median seconds per image of one forward pass (upload, network, download) at each batch size."""
    x = Letterbox.fit(image.shape[1], image.shape[0]).apply(image)
    out = {}
    for b in batches:
        batch = np.repeat(x[None], b, axis=0)
        det.network.forward(batch)  # type: ignore[attr-defined]
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            det.network.forward(batch)  # type: ignore[attr-defined]  # ends with a copy to the host: synchronised
            times.append(time.perf_counter() - t0)
        out[b] = statistics.median(times) / b
    return out


def concurrent(det: NanoDetPersonDetector, images: list[np.ndarray], threads: int) -> dict:
    """``threads`` threads detecting ``images`` at once, as the service's thread pool does: shared passes."""
    shared = det.network.shared  # type: ignore[attr-defined]
    passes0, images0 = shared.passes, shared.images
    chunks = [images[i::threads] for i in range(threads)]
    t0 = time.perf_counter()
    workers = [threading.Thread(target=lambda c=c: [det(im) for im in c]) for c in chunks]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wall = time.perf_counter() - t0
    passes = shared.passes - passes0
    return {"threads": threads, "images": len(images), "wall_s": wall, "passes": passes,
            "images_per_pass": (shared.images - images0) / max(passes, 1)}  # fmt: skip


def run_cuda(args: argparse.Namespace) -> tuple[str, dict, bool]:
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    images = real_looking_images(args.images)
    cfg = DetectorConfig(DETECTOR, threads=args.threads)
    cpu = NanoDetPersonDetector(replace(cfg, backend="onnxruntime"))  # device cpu: the CPU provider
    gpu = {
        "torch cuda float16": NanoDetPersonDetector(replace(cfg, backend="auto", device="cuda")),
        "torch cuda float32": NanoDetPersonDetector(replace(cfg, backend="torch", device="cuda", half=False)),
    }
    assert gpu["torch cuda float16"].backend == "torch", "auto must pick torch on CUDA"
    load0 = os.getloadavg()[0]
    checks: dict[str, dict] = {}
    for tiles in (False, True):
        for d in (cpu, *gpu.values()):
            d.cfg = replace(d.cfg, tiles=tiles)
        ref = [cpu(im) for im in images]
        for name, det in gpu.items():
            checks[f"{name}, tiles {'on' if tiles else 'off'}"] = agreement(ref, [det(im) for im in images])
        batched = []
        for i in range(0, len(images), 8):
            batched += gpu["torch cuda float16"].detect_batch(images[i : i + 8])
        checks[f"torch cuda float16 detect_batch(8), tiles {'on' if tiles else 'off'}"] = agreement(ref, batched)
    for d in (cpu, *gpu.values()):
        d.cfg = replace(d.cfg, tiles=False)
    dets = {"onnxruntime cpu": cpu, **gpu}
    call, net, _ = interleaved(dets, images)
    fp16 = gpu["torch cuda float16"]
    batch8 = []
    for _ in range(3):
        for i in range(0, len(images) - 7, 8):
            t0 = time.perf_counter()
            fp16.detect_batch(images[i : i + 8])
            batch8.append((time.perf_counter() - t0) / 8)
    speeds = {name: network_speed(det, images[0], args.network_batches, args.reps) for name, det in gpu.items()}
    conc = concurrent(fp16, images * 2, 8)
    load1 = os.getloadavg()[0]
    ok = all(c["ok"] for c in checks.values())

    body = "\n".join([
        "## Person detector backends (CUDA)", "",
        header("cuda", args.threads, len(images), "built-in: backgrounds with the astronaut pasted in",
               (load0, load1)) + ".", "",
        "Boxes against onnxruntime on the CPU (same count, each box matched one to one at IoU > 0.99):", "",
        *[f"- {name}: {describe(c)}" for name, c in checks.items()], "",
        "| backend | call: mean ms / image | median ms | network only: mean ms | median ms |",
        "|---|---:|---:|---:|---:|",
        *[f"| {n} | {ms(call[n])} | {ms(net[n])} |" for n in dets],
        f"| torch cuda float16, detect_batch of 8 | {ms(batch8)} | | |", "",
        "| torch cuda float16 / onnxruntime cpu | of the medians | median of per-image ratios |", "|---|---:|---:|",
        *ratio_lines(call, net, "onnxruntime cpu", "torch cuda float16"), "",
        "Network only (upload uint8, forward, download), ms per image by batch size:", "",
        "| backend | " + " | ".join(f"batch {b}" for b in next(iter(speeds.values()))) + " |",
        "|---|" + "---:|" * len(next(iter(speeds.values()))),
        *[f"| {n} | " + " | ".join(f"{1e3 * s:.3f}" for s in sp.values()) + " |" for n, sp in speeds.items()], "",
        f"{conc['threads']} threads detecting {conc['images']} images at once (the service's thread pool): "
        f"{conc['passes']} forward passes, {conc['images_per_pass']:.1f} images per pass, "
        f"{1e3 * conc['wall_s'] / conc['images']:.2f} ms per image of wall time.",
    ])  # fmt: skip
    data = {"images": len(images), "threads": args.threads, "load": [load0, load1], "checks": checks,
            "call_s": call, "network_s": net, "detect_batch8_s_per_image": batch8,
            "network_s_per_image_by_batch": speeds, "concurrent": conc, "ok": ok}  # fmt: skip
    return body, data, ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: 1 on cpu, the library's on cuda)")
    ap.add_argument(
        "--network-batches",
        type=lambda s: [int(b) for b in s.split(",")],
        default=[1, 8, 32, 128],
        help="cuda: batch sizes of the network-only timing",
    )
    ap.add_argument("--reps", type=int, default=20, help="cuda: timed passes per batch size")
    ap.add_argument("--built-in", action="store_true", help="the built-in images even where the labelled set is")
    ap.add_argument("--out", type=Path, help="write detector_backends_<device>.md and .json here")
    ap.add_argument("--write", action="store_true", help="write the section into BENCHMARKS.md")
    ap.add_argument("--section-from", type=Path, help="write this saved .md section into BENCHMARKS.md and stop")
    args = ap.parse_args()
    if args.section_from:
        body = args.section_from.read_text().strip("\n")
        key = "detector_backends_cuda" if "(CUDA)" in body.splitlines()[0] else "detector_backends"
        write_section(ROOT / "BENCHMARKS.md", key, body)
        return
    if args.threads is None:
        args.threads = 1 if args.device == "cpu" else 0
    body, data, ok = (run_cuda if args.device == "cuda" else run_cpu)(args)
    print(body)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"detector_backends_{args.device}.md").write_text(body + "\n")
        (args.out / f"detector_backends_{args.device}.json").write_text(json.dumps(data, indent=1, default=float))
    if args.write:
        write_section(ROOT / "BENCHMARKS.md", "detector_backends" + ("_cuda" if args.device == "cuda" else ""), body)
    if not ok:
        print("\nFAILED: the backends' boxes differ", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
