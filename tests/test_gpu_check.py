"""bench/gpu_check.py end to end on the CPU (--cpu-smoke): every part it will run on a lent GPU runs here."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_smoke_runs_every_part(tmp_path):
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--cpu-smoke", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    summary = json.loads((tmp_path / "summary.json").read_text())
    parts = {p["name"]: p for p in summary["parts"]}
    assert list(parts) == ["wheels", "cuda_tests", "model_speed", "ort_providers", "detector", "service_load",
                           "train_speed", "ddp_smoke"]  # fmt: skip
    failed = {n: (p["rc"], p["note"]) for n, p in parts.items() if p["rc"] != 0}
    assert not failed and done.returncode == 0, (failed, done.stdout[-2000:])
    assert all((tmp_path / f"{name}.log").is_file() for name in parts)
    tables = (tmp_path / "BENCHMARKS.gpu.md").read_text()
    for section in ("model_speed_cpu", "service_load", "train_speed"):
        assert f"<!-- {section}:begin -->" in tables
    assert "stopped at step 4" in (tmp_path / "ddp_smoke.log").read_text()
    assert "| ddp_smoke | ok |" in done.stdout  # the summary table comes last
