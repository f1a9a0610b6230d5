"""CPU training: one process on every core against one process per core (torchrun, gloo DDP).

The default model trains on this kind of machine (2 cores, no GPU). A run of the recipe from
``hevitpose train`` is one process with ``run.threads`` torch threads and ``data.workers`` loader
processes; the same global batch can instead be split over one single-threaded process per core,
which ``torchrun`` starts and DistributedDataParallel (gloo) keeps in step. This measures both on
the same data and recipe, alternating the variants round by round, and writes the table into
BENCHMARKS.md between ``<!-- train_procs:begin/end -->``.

    python bench/train_procs.py --steps 120 --rounds 2

The data is ``bench/train_speed.py``'s 640x480 JPEGs with drawn people; the augmentation is the
default recipe's (``configs/hevitpose_t_default_ft4.yaml``) less its occluders and extra sets, which
need the footage. Each run's rate is the median of its logged windows after the first (start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from report import machine, write_section  # noqa: E402  (bench/ is on sys.path)
from train_speed import make_dataset  # noqa: E402

RECIPE = ROOT / "configs/hevitpose_t_default_ft4.yaml"


def run_once(data: Path, out: Path, procs: int, batch: int, steps: int, log_interval: int) -> float:
    """Global samples/s of one short training run with ``procs`` processes of ``os.cpu_count() // procs`` threads."""
    threads = max(1, (os.cpu_count() or 1) // procs)
    overrides = [f"data.root={data}", "data.extra_train=[]", "data.extra_train_repeat=[]", "augment.occluder_dir=",
                 "augment.occluder_prob=0", "model.init_from=", f"optim.batch_size={batch // procs}",
                 f"run.threads={threads}", "data.workers=1",
                 f"run.max_steps={steps}", f"run.log_interval={log_interval}", f"run.out_dir={out}",
                 "run.tensorboard=false", "run.plot=false", "eval.interval=1000"]  # fmt: skip
    cli = ["-m", "hevitpose_cli", "train", str(RECIPE), *overrides]
    if procs == 1:
        command = [sys.executable, *cli]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}", *cli]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["samples_per_s"] for r in rows if r.get("kind") == "train"][1:]
    if not rates:
        raise RuntimeError(f"{out}: no training window after the first; raise --steps")
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32, help="global batch, split over the processes")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args(argv)

    rates: dict[int, list[float]] = {p: [] for p in args.procs}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", 48)
        for r in range(args.rounds):
            for procs in args.procs:
                out = Path(tmp) / f"run_{r}_{procs}"
                rates[procs].append(run_once(data, out, procs, args.batch, args.steps, args.log_interval))
                print(f"round {r + 1}, {procs} process(es): {rates[procs][-1]:.1f} samples/s", flush=True)

    base = statistics.median(rates[args.procs[0]])
    cores = os.cpu_count() or 1
    lines = [
        "## CPU training: processes against threads",
        "",
        f"`bench/train_procs.py --steps {args.steps} --rounds {args.rounds}`, {date.today().isoformat()}, {machine()}. "
        f"hevitpose-t at 96x128, `configs/hevitpose_t_default_ft4.yaml`'s augmentation (no occluders or extra "
        f"sets) on synthetic 640x480 JPEGs, global batch {args.batch}, one loader worker per process, "
        f"{args.steps} steps a run; samples/s over all processes, the median of each run's windows of "
        f"{args.log_interval} steps after the first, variants alternated round by round.",
        "",
        "| processes x torch threads | samples/s per round | median | vs the first row |",
        "|---|---|---:|---:|",
    ]
    for procs in args.procs:
        threads = max(1, cores // procs)
        median = statistics.median(rates[procs])
        per_round = ", ".join(f"{v:.1f}" for v in rates[procs])
        lines.append(f"| {procs} x {threads}{' (torchrun, gloo)' if procs > 1 else ''} | {per_round} | "
                     f"{median:.1f} | {median / base:.2f}x |")  # fmt: skip
    spread = max((max(v) - min(v)) / statistics.median(v) for v in rates.values())
    best = max(args.procs, key=lambda p: statistics.median(rates[p]))
    lines += ["", f"Reading: the fastest variant is {best} process(es), "
              f"{statistics.median(rates[best]) / base:.2f}x the first row; one variant's runs differ by up to "
              f"{100 * spread:.0f}% between rounds, so a gain smaller than that is not established."]  # fmt: skip
    write_section(args.out, "train_procs", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
