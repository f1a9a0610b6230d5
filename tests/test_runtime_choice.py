"""The start-up choice of the CPU backend: candidates, agreement with float32, the cache."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _service_util import make_bundle

from model.bundle import load_bundle
from model.codec import IMAGENET_MEAN, IMAGENET_STD, HeatmapCodec
from model.runtime import RuntimeConfig, openvino_available
from service import runtime_choice as rc


def test_calibration_crops_fit_any_input_size():
    tall = rc.calibration_crops((96, 128))
    square = rc.calibration_crops((64, 64))
    assert tall.shape == (48, 128, 96, 3) and square.shape == (48, 64, 64, 3)
    assert tall.dtype == np.uint8 and tall.std() > 20  # photos, not a blank file
    # a 3:4 crop in a square input is padded at the sides (black, as past an image border)
    assert square[:, :, :4].max() < 30 and square[:, :, 28:36].mean() > 30


CODEC = HeatmapCodec(input_size=(96, 128))


def test_agreement_is_one_for_equal_heatmaps_and_falls_with_distance():
    torch.manual_seed(0)
    heatmaps = torch.zeros(4, 17, 32, 24)
    ys, xs = torch.randint(4, 28, (4, 17)), torch.randint(4, 20, (4, 17))
    heatmaps[torch.arange(4)[:, None], torch.arange(17)[None], ys, xs] = 1.0
    assert rc.keypoint_agreement(heatmaps, heatmaps.clone(), CODEC) == pytest.approx(1.0)
    near = rc.keypoint_agreement(heatmaps, heatmaps.roll(1, dims=-1), CODEC)
    far = rc.keypoint_agreement(heatmaps, heatmaps.roll(3, dims=-1), CODEC)
    assert 1.0 > near > far > 0.0


def _select(bundle, cache, **runtime):
    model, meta = load_bundle(bundle)
    return rc.select_runner(model, meta.codec, RuntimeConfig(device="cpu", **runtime), "sha-of-" + bundle.name,
                            meta.mean, meta.std, bundle.parent / "onnx", cache)  # fmt: skip


def test_auto_measures_keeps_the_fastest_that_agrees_and_caches_it(tmp_path):
    bundle, cache = make_bundle(tmp_path), tmp_path / "cache" / "runtime.json"
    runner, choice = _select(bundle, cache)
    assert choice.how == "measured"
    backends = {(t.backend, t.dtype) for t in choice.trials}
    assert {("onnxruntime", "float32"), ("torch", "float32")} <= backends
    assert ("openvino", "float32") in backends or not openvino_available()
    passed = [t for t in choice.trials if t.passed]
    assert all(t.agreement >= rc.AGREEMENT_THRESHOLD and t.crops_per_s for t in passed)
    chosen = max(passed, key=lambda t: t.speed)
    assert (choice.backend, choice.dtype, choice.threads) == (chosen.backend, chosen.dtype, chosen.threads)
    assert runner.backend == choice.backend
    x = rc.calibration_inputs((64, 96), list(IMAGENET_MEAN), list(IMAGENET_STD))[:2]
    assert runner(x).shape == (2, 17, 24, 16)

    stored = json.loads(cache.read_text())
    assert len(stored) == 1 and next(iter(stored.values()))["backend"] == choice.backend
    again, cached = _select(bundle, cache)
    assert cached.how == "cached" and (cached.backend, cached.dtype, cached.threads) == (
        choice.backend,
        choice.dtype,
        choice.threads,
    )
    assert again.backend == choice.backend


def test_a_forced_backend_is_not_measured_and_a_damaged_cache_is_measured_again(tmp_path):
    bundle, cache = make_bundle(tmp_path), tmp_path / "runtime.json"
    runner, choice = _select(bundle, cache, backend="torch")
    assert (runner.backend, choice.how, choice.trials) == ("torch", "forced", [])
    assert not cache.exists()
    cache.write_text("{not json")
    _, choice = _select(bundle, cache, threads=1)
    assert choice.how == "measured" and all(t.threads == 1 for t in choice.trials)
    assert json.loads(cache.read_text())  # rewritten whole


def test_a_backend_that_disagrees_with_float32_is_not_kept(tmp_path, monkeypatch):
    class Wrong:
        """A runner whose heatmaps are shifted: fast, and wrong."""

        backend, device, dtype = "onnxruntime", torch.device("cpu"), torch.float32

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, x):
            return self.inner(x).roll(3, dims=-1)

    create = rc.create_runner

    def fake_create(model, size, cfg, **kw):
        runner = create(model, size, cfg, **kw)
        return Wrong(runner) if cfg.backend == "onnxruntime" and cfg.device == "cpu" and kw.get("onnx_dir") else runner

    monkeypatch.setattr(rc, "create_runner", fake_create)
    bundle = make_bundle(tmp_path)
    _, choice = _select(bundle, None)
    (ort,) = [t for t in choice.trials if t.backend == "onnxruntime"]
    assert not ort.passed and ort.agreement < rc.AGREEMENT_THRESHOLD and not ort.crops_per_s
    assert choice.backend != "onnxruntime"


def test_int8_and_openvino_backends_build_and_run(tmp_path):
    from model.runtime import create_runner

    model, meta = load_bundle(make_bundle(tmp_path))
    x = rc.calibration_inputs((64, 96), meta.mean, meta.std)[:8]
    with torch.no_grad():
        ref = model(x)
    int8 = create_runner(
        model, (64, 96), RuntimeConfig(device="cpu", backend="onnxruntime-int8"), onnx_dir=tmp_path, calibration=x
    )
    assert int8.backend == "onnxruntime-int8" and int8(x).shape == ref.shape
    with pytest.raises(ValueError, match="calibration"):
        create_runner(model, (64, 96), RuntimeConfig(device="cpu", backend="onnxruntime-int8"), onnx_dir=tmp_path / "b")
    if openvino_available():
        ov = create_runner(model, (64, 96), RuntimeConfig(device="cpu", backend="openvino"), onnx_dir=tmp_path)
        torch.testing.assert_close(ov(x), ref, atol=1e-3, rtol=1e-3)


# Run in a child process: where the bug is, the child dies of SIGSEGV (the suite would with it).
_ALTSTACK_CHILD = """
import ctypes, os, signal, sys, threading
from model.runtime import OpenVinoRunner

class Stack(ctypes.Structure):
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

def altstack():
    st = Stack()
    ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st))
    return st.ss_sp or 0

path, before = sys.argv[1], altstack()
a, b = OpenVinoRunner(path), OpenVinoRunner(path, threads=1)
del a, b  # oldest first, as the start-up measurement drops the candidates that lost
made = []
worker = threading.Thread(target=lambda: made.append(OpenVinoRunner(path)))
worker.start()
worker.join()
made.clear()  # built in a thread, freed in this one (a service's loader thread, its pose worker)
made.append(OpenVinoRunner(path))
worker = threading.Thread(target=made.clear)  # and the other way round
worker.start()
worker.join()
handled = []
signal.signal(signal.SIGUSR1, lambda *_: handled.append(True))
os.kill(os.getpid(), signal.SIGUSR1)
print("altstack kept" if altstack() == before else "altstack changed", "signal handled" if handled else "")
"""


@pytest.mark.skipif(not openvino_available() or sys.platform != "linux", reason="needs OpenVINO, on Linux")
def test_openvino_runners_leave_this_threads_signal_stack_alone(tmp_path):
    """OpenVINO's CPU plugin swaps the alternate signal stack of the thread that creates it and unmaps
    it when destroyed (model/runtime.py, openvino_core): with a plugin per runner, runners freed in
    the order the measurement frees them left this thread's stack unmapped, and the next signal
    handled here (torch DataLoader's SIGCHLD in the full suite) killed the process."""
    from model.onnx import export_onnx

    torch.manual_seed(0)
    path = export_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 17, 3, padding=1), torch.nn.AvgPool2d(4)),
                       tmp_path / "model.onnx", (64, 96))  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", _ALTSTACK_CHILD, str(path)], cwd=root, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert child.returncode == 0, f"child exited with {child.returncode}: {child.stdout}{child.stderr[-2000:]}"
    assert "altstack kept signal handled" in child.stdout, child.stdout + child.stderr[-2000:]
