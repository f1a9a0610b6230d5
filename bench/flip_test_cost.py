"""What the flip test costs a ``/v1/predict`` request, with it and without it side by side in one run.

One app on the default settings (the default bundle, the runner the service picks at start-up), in
process through Starlette's TestClient (upload, routing, pose worker, JSON answer). Each round sends
every case with ``flip_test=false`` and ``flip_test=true``, the two alternating which goes first.
Cases: 1, 4 and 16 client boxes on a 640x480 JPEG (the detector does not run), and with ``--image``
a photo of your own through the detector. What the flip test buys is measured by ``hevitpose eval
--flip-test / --no-flip-test`` (weights/MODEL_CARD.md), not here.

    python bench/flip_test_cost.py --image data/photos_src/bus.jpg
    python bench/flip_test_cost.py --rounds 2 --requests 5 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import machine, write_section  # noqa: E402
from bench.response_time import _boxes, jpeg  # noqa: E402

KEY = "flip_test_cost"
BOX_CASES = (1, 4, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(ROOT / "weights" / "hevitpose-t-default"))
    ap.add_argument("--image", type=Path, help="a photo with people, for the detector case")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--requests", type=int, default=20, help="requests per case, variant and round")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(weights=args.weights, warmup=True, log_level="WARNING", runtime_cache="")
    app = create_app(settings)
    service = app.state.service
    cases = {f"{n} client box{'es' if n > 1 else ''}": (jpeg(), {"boxes": json.dumps(_boxes(n))}) for n in BOX_CASES}
    if args.image:
        cases[f"detector, {args.image.name}"] = (args.image.read_bytes(), {})
    load_before = os.getloadavg()[0]
    times = {(c, f): [] for c in cases for f in (False, True)}
    round_p50 = {(c, f): [] for c in cases for f in (False, True)}
    persons = {}
    with TestClient(app) as client:
        assert service.wait_ready(300), service.load_error
        m = service.model
        runner = f"{m.backend} {m.dtype} on {m.device}, {m.runtime_choice.threads} thread(s)"

        def post(case: str, flip: bool) -> None:
            data, form = cases[case]
            r = client.post("/v1/predict", files={"image": ("x.jpg", data, "image/jpeg")},
                            data={**form, "flip_test": str(flip).lower()})  # fmt: skip
            assert r.status_code == 200, r.text
            persons[case] = len(r.json()["persons"])

        for case in cases:  # warm both paths before anything is timed
            for flip in (False, True, False, True):
                post(case, flip)
        for r in range(args.rounds):
            for case in cases:
                for flip in (r % 2 == 0, r % 2 == 1):
                    out = []
                    for _ in range(args.requests):
                        t0 = time.perf_counter()
                        post(case, flip)
                        out.append(time.perf_counter() - t0)
                    times[(case, flip)] += out
                    round_p50[(case, flip)].append(float(np.median(out)))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    load_after = os.getloadavg()[0]

    rows = []
    for case in cases:
        off, on = times[(case, False)], times[(case, True)]
        per_round = [b / a for a, b in zip(round_p50[(case, False)], round_p50[(case, True)])]
        rows.append(f"| {case} | {persons[case]} | {np.median(off) * 1e3:.1f} | {np.median(on) * 1e3:.1f} | "
                    f"**{np.median(on) / np.median(off):.2f}x** ({min(per_round):.2f}-{max(per_round):.2f}) |")  # fmt: skip
    date = datetime.now(UTC).strftime("%Y-%m-%d")
    body = "\n".join([
        "## What the flip test costs a request",
        "",
        f"`bench/flip_test_cost.py`, {date}, {machine()}. `{Path(args.weights).name}` on the service's default "
        f"settings (runner: {runner}), through the ASGI app in process; {args.rounds} rounds x {args.requests} "
        "requests per case and variant, `flip_test=false` and `true` alternating which goes first. The range is "
        "that of each round's p50 ratio. 1-minute load average "
        f"{load_before:.1f} before the run, {load_after:.1f} after it, on {os.cpu_count()} CPU threads.",
        "",
        "| request | persons | p50 ms, no flip test | p50 ms, flip test | ratio (range of the rounds') |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ])  # fmt: skip
    print(body)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", KEY, body)


if __name__ == "__main__":
    main()
