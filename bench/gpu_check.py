"""Everything that needs a GPU, in one call of a lent machine (issue 13): each part alone, summary last.

    python3 bench/gpu_check.py --out "$OUT"                 # about 4 minutes on an H200
    python3 bench/gpu_check.py --out "$OUT" --full          # longer slices, more training steps
    python bench/gpu_check.py --cpu-smoke --out /tmp/gc     # the same parts on a CPU, tiny (CI runs this)

Parts, in order; each runs in its own process under its own time limit, so one that fails or hangs
costs only itself:
  wheels          pip-install the wheels carried in .whl/ (the device machine has no registry; it lacks
                  fastapi, uvicorn, pydantic(-settings), python-multipart, websockets and pycocotools:
                  bench/gpu_wheels.sh fetches them here for its Python)
  cuda_tests      the test suite's CUDA-only tests (they skip on a CPU)
  model_speed     bench/model_speed.py: T/S/B in fp16 and bf16, channels_last, torch.compile, CUDA
                  graphs, batch 1 to 512, achieved TFLOP/s
  ort_providers   ONNX Runtime's CUDA and TensorRT providers, where the installed onnxruntime has them
  detector        bench/detector_backends.py: NanoDet in PyTorch on CUDA against ONNX Runtime's boxes
  service_load    bench/service_load.py: the service on the GPU, pose stage against the bare model
  train_speed     bench/train_speed.py: training steps in bf16 with the real data loader (loader stall
                  share = 1 - end-to-end / step-alone)
  ddp_smoke       torchrun, one process, NCCL: a short run of the real trainer on a drawn dataset

Every part's log is ``OUT/<part>.log``; tables go to ``OUT/BENCHMARKS.gpu.md`` (the sections the
benches write into BENCHMARKS.md, to be copied over); ``OUT/summary.json`` and the summary table
printed last say what passed, what failed and how long each took.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Part:
    name: str
    cmd: list[str]
    timeout_s: float
    env: dict[str, str] | None = None
    rc: int | None = None
    seconds: float = 0.0
    note: str = ""


def wheels_cmd(wheel_dir: Path, site: Path, smoke: bool) -> list[str]:
    """Into a folder of its own (put on PYTHONPATH for the later parts): the image's site-packages stay as they are.

    The wheels are for the device machine's Python (3.12); the CPU smoke installs them as for that
    Python into a folder nothing imports from, which checks the set without running it here.
    """
    wheels = sorted(str(p) for p in wheel_dir.glob("*.whl"))
    if not wheels:
        return [PY, "-c", f"print('no wheels in {wheel_dir}: nothing to install')"]
    target = ["--target", str(site)]
    if smoke:
        target = ["--target", str(site.with_name("site-py312")), "--python-version", "3.12", "--only-binary=:all:",
                  "--platform", "manylinux2014_x86_64", "--platform", "manylinux_2_17_x86_64", "--implementation", "cp"]  # fmt: skip
    return [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", *target, *wheels]


ORT_PROVIDERS = r"""
import sys, time, tempfile, numpy as np, torch, onnxruntime as ort
sys.path.insert(0, '.')
from model import build_model
from model.onnx import export_onnx
device = sys.argv[1]
available = ort.get_available_providers()
print('providers:', available)
wanted = ['CPUExecutionProvider'] if device == 'cpu' else [p for p in ('TensorrtExecutionProvider', 'CUDAExecutionProvider') if p in available]
if not wanted:
    print('no GPU provider in this onnxruntime build (the CPU wheel): nothing to time'); sys.exit(0)
path = export_onnx(build_model('hevitpose-t').eval(), tempfile.mkdtemp() + '/t.onnx', (192, 256))
x = np.random.default_rng(0).standard_normal((32 if device != 'cpu' else 2, 3, 256, 192)).astype(np.float32)
for provider in wanted:
    try:
        s = ort.InferenceSession(str(path), providers=[provider, 'CPUExecutionProvider'])
        for _ in range(3): s.run(None, {'input': x})
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < (0.2 if device == 'cpu' else 3.0): s.run(None, {'input': x}); n += 1
        print(f'| {provider} | hevitpose-t 192x256 batch {len(x)} | {n * len(x) / (time.perf_counter() - t):.1f} crops/s |')
    except Exception as exc:
        print(f'| {provider} | failed: {type(exc).__name__}: {exc} |')
"""

DDP_SMOKE = r"""
import sys, pathlib
sys.path.insert(0, '.'); sys.path.insert(0, 'tests')
from _training_data import make_coco, write_config
work = pathlib.Path(sys.argv[1]); device = sys.argv[2]
root = make_coco(work / 'coco', n_train=16, n_val=4)
extra = {'optim': {'epochs': 50, 'batch_size': 8}, 'eval': {'interval': 100}}
run = {'device': device, 'precision': 'bf16' if device == 'cuda' else 'fp32', 'deterministic': False}
cfg = write_config(work / 'ddp.yaml', 'coco', root, work / 'run', {**extra, 'run': run})
print(cfg)
"""


def parts(args: argparse.Namespace, out: Path) -> list[Part]:
    smoke, cuda = args.cpu_smoke, not args.cpu_smoke
    device = "cuda" if cuda else "cpu"
    md = out / "BENCHMARKS.gpu.md"
    work = out / "work"
    rounds, slice_s = ("3", "0.5") if args.full else ("2", "0.25")
    speed = [PY, "bench/model_speed.py", "--device", device, "--out", str(md), "--rounds", rounds, "--slice", slice_s]
    if smoke:  # bare network on a CPU: two backends, one small batch, no compile, no bundle
        speed = [PY, "bench/model_speed.py", "--device", "cpu", "--no-bundle", "--models", "hevitpose-t", "--batches", "1",
                 "--rounds", "1", "--slice", "0.05", "--no-compile", "--backends", "torch eager", "onnxruntime",
                 "--out", str(md)]  # fmt: skip
    else:
        speed += ["--models", "hevitpose-t", "hevitpose-s", "hevitpose-b", "--batches", "1", "8", "32", "128", "512"]
    load = [
        PY,
        "bench/service_load.py",
        "--weights",
        "weights/hevitpose-t-default",
        "--device",
        device,
        "--out",
        str(md),
    ]
    load += (["--concurrency", "2", "--boxes", "1", "--duration", "2", "--warmup", "1", "--bare-seconds", "1"] if smoke
             else ["--concurrency", "32", "--boxes", "8", "--duration", "20" if not args.full else "60", "--warmup", "5",
                   "--max-batch-size", "256", "--bare-seconds", "5"])  # fmt: skip
    train = [
        PY,
        "bench/train_speed.py",
        "--models",
        "hevitpose-t",
        *([] if smoke else ["hevitpose-b"]),
        "--out",
        str(md),
    ]
    train += (
        ["--duration", "1", "--images", "8", "--workers", "1", "--e2e-steps", "2", "--cpu-batch", "2"]
        if smoke
        else [
            "--duration",
            "10",
            "--images",
            "256",
            "--workers",
            "15",
            "--e2e-steps",
            "300" if not args.full else "1000",
        ]
    )
    detector = [PY, "bench/detector_backends.py", "--device", device, "--out", str(out)]
    detector += ["--images", "2", "--network-batches", "1", "--reps", "1"] if smoke else []
    ddp_cfg = work / "ddp.yaml"
    steps = "4" if smoke else "200"
    ddp = ["bash", "-c",
           f"{PY} -c \"$DDP_SMOKE\" {work} {device} && {PY} -m torch.distributed.run --standalone --nproc_per_node 1 "
           f"-m hevitpose_cli train {ddp_cfg} run.max_steps={steps} data.workers={0 if smoke else 4}"]  # fmt: skip
    cuda_tests = [PY, "-m", "pytest", "-q", "-rs", "-k", "cuda", "tests/"]
    env_smoke = {"HEVITPOSE_BACKEND": "torch"} if smoke else {}
    return [
        Part("wheels", wheels_cmd(ROOT / args.wheels, out / "site", smoke), 120),
        Part("cuda_tests", cuda_tests, 120 if cuda else 300),
        Part("model_speed", speed, 150 if not args.full else 400),
        Part("ort_providers", [PY, "-c", ORT_PROVIDERS, device], 60),
        Part("detector", detector, 90),
        Part("service_load", load, 90 if not args.full else 200, env_smoke),
        Part("train_speed", train, 120 if not args.full else 300),
        Part("ddp_smoke", ddp, 90, {"DDP_SMOKE": DDP_SMOKE}),
    ]


def run_part(part: Part, out: Path, deadline: float) -> None:
    log = out / f"{part.name}.log"
    budget = min(part.timeout_s, max(1.0, deadline - time.monotonic()))
    site = out / "site"
    path = os.pathsep.join(p for p in (str(site) if site.is_dir() else "", os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path, **(part.env or {})}
    t0 = time.monotonic()
    with open(log, "w") as f:
        f.write("$ " + " ".join(part.cmd) + "\n")
        f.flush()
        try:
            proc = subprocess.Popen(
                part.cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
            )
            part.rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the part and every process it started
            proc.wait()
            part.rc, part.note = 124, f"killed after {budget:.0f} s"
        except OSError as exc:
            part.rc, part.note = 127, str(exc)
    part.seconds = time.monotonic() - t0
    if part.rc and not part.note:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        part.note = tail[0][:160]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_check_out")))
    parser.add_argument("--cpu-smoke", action="store_true", help="every part on a CPU with tiny sizes")
    parser.add_argument("--full", action="store_true", help="longer measurements, when there is device time")
    parser.add_argument("--budget-s", type=float, default=240.0, help="all parts together (--full: x3)")
    parser.add_argument("--only", nargs="+", help="run these parts only")
    parser.add_argument("--wheels", default=".whl", help="folder of carried wheels, relative to the repository")
    args = parser.parse_args()
    out = args.out.resolve()
    (out / "work").mkdir(parents=True, exist_ok=True)
    if not args.cpu_smoke:
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device: run on the lent GPU machine, or use --cpu-smoke", file=sys.stderr)
            return 2
    budget = args.budget_s * (3 if args.full else 1) * (4 if args.cpu_smoke else 1)  # a shared 2-core CPU is slow
    deadline = time.monotonic() + budget
    todo = [p for p in parts(args, out) if not args.only or p.name in args.only]
    for part in todo:
        if time.monotonic() >= deadline:
            part.rc, part.note = None, "not run: the budget was spent"
            continue
        run_part(part, out, deadline)
        print(f"{part.name}: rc={part.rc} in {part.seconds:.1f} s {part.note}", flush=True)
    summary = {
        "device": "cpu-smoke" if args.cpu_smoke else "cuda",
        "budget_s": budget,
        "parts": [asdict(p) for p in todo],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n| part | result | seconds | note |\n|---|---|---:|---|")
    for p in todo:
        result = "ok" if p.rc == 0 else ("not run" if p.rc is None else f"FAILED (rc {p.rc})")
        print(f"| {p.name} | {result} | {p.seconds:.1f} | {p.note} |")
    return 0 if all(p.rc == 0 for p in todo) else 1


if __name__ == "__main__":
    sys.exit(main())
