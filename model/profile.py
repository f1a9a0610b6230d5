"""``hevitpose profile``: every model's params and GFLOPs beside the paper's.

GFLOPs are given twice: in the paper's convention (mmcv 1.x, attention matmuls and
projections uncounted) to compare with its tables, and as full multiply-accumulates.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from functools import cache

from model.flops import count_params, full_macs, mmcv_flops
from model.hevitpose import MODEL_NAMES, build_model

# (params M, GFLOPs) at 256x256 with 16 keypoints: Tables 1, 4, 5 and 6.
PAPER: dict[str, tuple[float, float]] = {
    "hevitpose-t": (3.21, 1.75),
    "hevitpose-s": (5.88, 3.64),
    "hevitpose-b": (10.63, 5.58),
    "efficientvit-m4-peow1": (9.87, 5.91),
    "efficientvit-m4-peow3": (9.82, 5.65),
    "efficientvit-m4-peow7": (10.50, 6.29),
    "efficientvit-m4-peow3x2": (10.21, 7.38),
    "hevitpose-b-g222": (13.72, 5.80),
    "hevitpose-b-g888": (9.86, 5.46),
    "hevitpose-b-r421": (9.87, 5.48),
    "hevitpose-b-r1684": (13.94, 5.62),
}


@dataclass(frozen=True)
class ProfileRow:
    name: str
    params_m: float
    gflops_mmcv: float
    gmacs_full: float
    paper_params_m: float
    paper_gflops: float

    @property
    def params_dev(self) -> float:
        return self.params_m / self.paper_params_m - 1

    @property
    def gflops_dev(self) -> float:
        return self.gflops_mmcv / self.paper_gflops - 1


@cache  # the counts depend only on the arguments; the tests of the paper and the README share them
def profile(name: str, input_size: tuple[int, int] = (256, 256), num_keypoints: int = 16) -> ProfileRow:
    model = build_model(name, num_keypoints)
    shape = (3, input_size[1], input_size[0])
    paper_params, paper_gflops = PAPER[name]
    return ProfileRow(
        name=name,
        params_m=count_params(model) / 1e6,
        gflops_mmcv=mmcv_flops(model, shape) / 1e9,
        gmacs_full=full_macs(model, shape) / 1e9,
        paper_params_m=paper_params,
        paper_gflops=paper_gflops,
    )


def format_table(rows: list[ProfileRow]) -> str:
    header = "| model | params (M) | paper | dev | GFLOPs (mmcv) | paper | dev | GMACs (full) |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.params_m:.3f} | {r.paper_params_m:.2f} | {r.params_dev:+.2%} "
            f"| {r.gflops_mmcv:.3f} | {r.paper_gflops:.2f} | {r.gflops_dev:+.2%} | {r.gmacs_full:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hevitpose profile", description=__doc__)
    parser.add_argument("models", nargs="*", default=list(MODEL_NAMES), help="models to profile (default: all)")
    args = parser.parse_args(argv)
    print("Input 3x256x256, 16 keypoints (MPII), as in the paper's tables.\n")
    print(format_table([profile(name) for name in args.models]))
    return 0
