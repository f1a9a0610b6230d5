"""``/v1/predict`` response time with client boxes, two code trees side by side in one run.

Each tree (``--tree`` DIR, given once or more: e.g. this checkout and ``git worktree add
/tmp/old <commit>``) gets its own worker process that imports that tree's ``service`` package,
builds its app on the same bundle and settings and serves requests through the ASGI app in
process (Starlette's TestClient: multipart upload, routing, middlewares, the pose worker, the
JSON answer). The driver runs rounds; in each round every tree answers N requests of each case
(0, 1 and 16 persons, client boxes, so the detector does not run; 0 runs no pose model), the trees' order turning
from round to round. Each worker also times the JSON answer alone (building the body from the
prediction and serialising it, as its route does), where a change in how answers are built shows
without the model's noise.

    python bench/response_time.py --tree /tmp/old --tree .           # old vs new
    python bench/response_time.py --tree . --rounds 3 --requests 10 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KEY = "response_time"
# Persons per request; 0 (an empty boxes list) runs everything but the pose model: upload, form,
# middlewares, decoding, the answer, so that what the model's time hides shows.
CASES = (0, 1, 16)


# ---------------------------------------------------------------------------- worker (one per tree)


def _boxes(n: int) -> list[list[float]]:
    """``n`` person-sized boxes in a grid on a 640x480 image."""
    cols = 4 if n > 1 else 1
    w, h = 640 / cols, 480 / max(1, (n + cols - 1) // cols)
    return [[c * w + 2, r * h + 2, (c + 1) * w - 2, (r + 1) * h - 2] for r, c in (divmod(i, cols) for i in range(n))]


def worker(weights: str) -> None:
    from fastapi.testclient import TestClient

    import service
    from service.app import create_app
    from service.settings import Settings

    print(f"worker: {service.__file__}", file=sys.stderr)
    image = jpeg()
    settings = Settings(weights=weights, device="cpu", backend="onnxruntime", threads=1, detector_threads=1,
                        cpu_workers=2, max_wait_ms=1, request_timeout_s=60, warmup=True, log_level="WARNING",
                        runtime_cache="")  # fmt: skip
    app = create_app(settings)
    service = app.state.service
    forms = {n: {"boxes": json.dumps(_boxes(n))} for n in CASES}
    with TestClient(app) as client:
        assert service.wait_ready(300), service.load_error

        def post(n: int):
            r = client.post("/v1/predict", files={"image": ("x.jpg", image, "image/jpeg")}, data=forms[n])
            assert r.status_code == 200 and len(r.json()["persons"]) == n, r.text
            return r

        for n in CASES:  # warm both paths before anything is timed
            for _ in range(3):
                post(n)
        answer_only = _answer_timer(app, service)
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            n, count = map(int, line.split())
            request_s = []
            for _ in range(count):
                t0 = time.perf_counter()
                post(n)
                request_s.append(time.perf_counter() - t0)
            print(json.dumps({"request_s": request_s, "answer_s": answer_only(n, count)}), flush=True)


def _answer_timer(app, service):
    """A function timing the JSON answer of a prediction of ``n`` persons the way this tree's
    ``/v1/predict`` builds and serialises it."""
    import asyncio

    import numpy as np

    from service.schemas import PredictOptions

    preds = {}
    for n in CASES:
        options = PredictOptions("boxes", np.asarray(_boxes(n), np.float64).reshape(-1, 4), False, 0.0, 100)
        (preds[n],) = asyncio.run(_predict(service, jpeg(), options))
    if hasattr(service, "to_json"):  # the old tree: a dict, rendered by JSONResponse
        from fastapi.responses import JSONResponse

        def answer(pred):
            return JSONResponse(service.to_json(pred)).body
    else:  # the new tree: the model, validated and serialised by FastAPI's response_model field
        from fastapi.routing import serialize_response

        from service.routes import images

        route = next(r for r in images.router.routes if r.path == "/v1/predict")
        field = route.response_field

        def answer(pred):
            return _run_sync(serialize_response(field=field, response_content=service.response(pred), dump_json=True))

    def timed(n: int, count: int) -> list[float]:
        out = []
        for _ in range(count):
            t0 = time.perf_counter()
            answer(preds[n])
            out.append(time.perf_counter() - t0)
        return out

    return timed


def _run_sync(coro):
    """The value of a coroutine that never waits (FastAPI's serialize_response for an async route),
    without an event loop's overhead, which the old tree's answer did not pay either."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("the coroutine waited")


def jpeg() -> bytes:
    """A smooth random 640x480 JPEG (noise would make a big file)."""
    import cv2
    import numpy as np

    small = np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC))[1].tobytes()


async def _predict(service, data, options):
    return await service.predict_many([data], [options])


# ---------------------------------------------------------------------------- driver


def quantile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.quantile(values, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", action="append", required=True, help="a checkout of the repository (once per tree)")
    ap.add_argument("--weights", default=str(ROOT / "weights" / "hevitpose-t-default"))
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--requests", type=int, default=25, help="requests per case, tree and round")
    ap.add_argument("--cases", default=",".join(map(str, CASES)), help="persons per request, comma-separated")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    cases = [int(c) for c in args.cases.split(",")]
    trees = [Path(t).resolve() for t in args.tree]
    load_before = os.getloadavg()[0]
    workers = []
    for tree in trees:  # the same start for every tree: a fresh process, its tree first on the path
        env = {**os.environ, "PYTHONPATH": str(tree), "HEVITPOSE_LOG_LEVEL": "WARNING"}
        workers.append(subprocess.Popen([sys.executable, __file__, "--worker", args.weights], cwd=tree, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))  # fmt: skip
    for w in workers:
        assert json.loads(w.stdout.readline())["ready"]
    request_s = {(t, n): [] for t in range(len(trees)) for n in cases}
    round_p50 = {(t, n): [] for t in range(len(trees)) for n in cases}  # each round's median
    answer_s = {(t, n): [] for t in range(len(trees)) for n in cases}
    for r in range(args.rounds):
        for n in cases:
            order = list(range(len(trees)))
            order = order[r % len(order) :] + order[: r % len(order)]  # each tree goes first in turn
            for t in order:
                workers[t].stdin.write(f"{n} {args.requests}\n")
                workers[t].stdin.flush()
                out = json.loads(workers[t].stdout.readline())
                request_s[(t, n)] += out["request_s"]
                round_p50[(t, n)].append(quantile(out["request_s"], 0.5))
                answer_s[(t, n)] += out["answer_s"]
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    for w in workers:
        w.stdin.close()
        w.wait(60)
    load_after = os.getloadavg()[0]

    base = 0  # ratios against the first tree
    rows = []
    for n in cases:
        for t, tree in enumerate(trees):
            req, ans = request_s[(t, n)], answer_s[(t, n)]
            ratio = quantile(req, 0.5) / quantile(request_s[(base, n)], 0.5)
            per_round = [a / b for a, b in zip(round_p50[(t, n)], round_p50[(base, n)])]
            ans_ratio = quantile(ans, 0.5) / quantile(answer_s[(base, n)], 0.5)
            rows.append(f"| {n} | {_label(tree)} | {quantile(req, 0.5) * 1e3:.2f} | {quantile(req, 0.9) * 1e3:.2f} | "
                        f"**{ratio:.2f}x** ({min(per_round):.2f}-{max(per_round):.2f}) | {quantile(ans, 0.5) * 1e3:.3f} | {quantile(ans, 0.9) * 1e3:.3f} | "
                        f"**{ans_ratio:.2f}x** |")  # fmt: skip
    sys.path.insert(0, str(ROOT))
    from bench.report import machine, write_section

    date = datetime.now(UTC).strftime("%Y-%m-%d")
    body = "\n".join([
        "## /v1/predict response time, old vs new code (client boxes)",
        "",
        f"`bench/response_time.py`, {date}, {machine()}. The default bundle (hevitpose-t), device cpu, backend "
        "onnxruntime with 1 thread, 2 CPU workers; a 640x480 JPEG with 0, 1 or 16 client boxes (the detector does not "
        "run; with 0 neither does the pose model). Each tree in its own fresh worker process, through the ASGI app in process (Starlette's TestClient: "
        f"upload, middlewares, routing, pose worker, JSON answer); {args.rounds} rounds x {args.requests} requests per "
        "case and tree, the trees interleaved (each round's cases run every tree, each tree first in turn). "
        "\"answer\" is the JSON body alone, built from one prediction and serialised the way that tree's route does "
        "(old: `PoseService.to_json` dict + `JSONResponse`; new: the response models through FastAPI's response_model "
        f"field). Ratios: p50 against the first tree's, `{_label(trees[base])}`; the range is that of each round's "
        "p50 ratio (the same round's medians).",
        "",
        f"**The CPU was shared** (1-minute load average {load_before:.1f} before the run, {load_after:.1f} after it, "
        f"on {os.cpu_count()} CPU threads: a training run and other work beside it), so the milliseconds are not "
        "this CPU's; read the ratios, measured side by side in the same rounds.",
        "",
        "| persons | code | request p50 ms | request p90 ms | request p50 ratio (range of the rounds' ratios) "
        "| answer p50 ms | answer p90 ms "
        "| answer p50 ratio |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ])  # fmt: skip
    print(body)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", KEY, body)


def _label(tree: Path) -> str:
    try:
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()  # fmt: skip
        return f"{rev}{'+changes' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return str(tree)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        worker(sys.argv[2])
    else:
        main()
