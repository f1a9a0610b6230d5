import json
import subprocess
import sys

import pytest
import torch

from model import build_model
from model.bundle import BundleMeta, load_bundle, save_bundle, sha256
from model.keypoints import COCO17
from model.onnx import check_onnx, export_onnx
from model.runtime import RuntimeConfig, create_runner


def lively_model(name="hevitpose-t", k=17):
    """A random network whose heatmaps are O(1), so comparisons mean something."""
    torch.manual_seed(0)
    model = build_model(name, k)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.normal_(m.bias, std=0.1)
            m.running_mean.normal_(std=0.1)
            m.running_var.uniform_(0.5, 1.5)
    torch.nn.init.normal_(model.head[-1].weight, std=0.5)
    return model.eval()


def test_onnx_matches_eager_at_batch_1_and_8(tmp_path):
    model = lively_model("hevitpose-b")
    path = export_onnx(model, tmp_path / "b.onnx", (256, 256))
    with torch.no_grad():
        scale = model(torch.randn(2, 3, 256, 256)).abs().max().item()
    assert scale > 0.1
    assert check_onnx(model, path, batch_sizes=(1, 8)) < 1e-4


def test_bundle_roundtrip_float32_is_exact(tmp_path):
    model = lively_model()
    meta = BundleMeta.for_model("hevitpose-t", COCO17, version="test")
    weights = save_bundle(model, meta, tmp_path / "t", dtype=torch.float32)
    loaded, loaded_meta = load_bundle(tmp_path / "t.json")
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert loaded_meta.keypoint_names == list(COCO17.names)
    assert loaded_meta.flip_index == COCO17.flip_index
    assert json.loads((tmp_path / "t.json").read_text())["dtype"] == "float32"
    assert len(sha256(weights)) == 64


def test_bundle_float16_is_close(tmp_path):
    model = lively_model()
    save_bundle(model, BundleMeta.for_model("hevitpose-t", COCO17), tmp_path / "t")
    loaded, meta = load_bundle(tmp_path / "t")
    assert meta.dtype == "float16"
    x = torch.randn(2, 3, 128, 96)
    with torch.no_grad():
        ref, out = model(x), loaded(x)
    assert (out - ref).abs().max() < 2e-2 * ref.abs().max()


def test_missing_bundle_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_bundle(tmp_path / "nothing")


def test_runners_agree(tmp_path):
    model = lively_model()
    x = torch.randn(3, 3, 128, 96)
    with torch.no_grad():
        ref = model(x)
    for backend in ("torch", "onnxruntime"):
        runner = create_runner(
            lively_model(), (96, 128), RuntimeConfig(device="cpu", backend=backend), onnx_dir=tmp_path
        )
        assert runner.backend == backend
        torch.testing.assert_close(runner(x), ref, atol=1e-4, rtol=1e-4)
    assert (
        create_runner(lively_model(), (96, 128), RuntimeConfig(device="cpu"), onnx_dir=tmp_path).backend
        == "onnxruntime"
    )


def test_half_precision_on_cpu_is_refused():
    with pytest.raises(ValueError, match="CUDA only"):
        create_runner(lively_model(), (96, 128), RuntimeConfig(device="cpu", backend="torch", dtype="float16"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none in CI)")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_cuda_half_precision_is_close(dtype):
    model = lively_model("hevitpose-b")
    x = torch.randn(4, 3, 256, 192)
    with torch.no_grad():
        ref = model(x)
    runner = create_runner(model, (192, 256), RuntimeConfig(device="cuda", backend="torch", dtype=dtype))
    out = runner(x).cpu()
    assert (out - ref).norm() / ref.norm() < 2e-2


def test_cli_profile_and_unknown_command():
    done = subprocess.run(
        [sys.executable, "-m", "hevitpose_cli", "profile", "hevitpose-t"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "| hevitpose-t | 3.207 | 3.21 |" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "hevitpose_cli", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "unknown command" in bad.stderr


def test_bundle_files_are_world_readable(tmp_path):
    weights = save_bundle(lively_model(), BundleMeta.for_model("hevitpose-t", COCO17), tmp_path / "t")
    assert weights.stat().st_mode & 0o444 == 0o444
    assert (tmp_path / "t.json").stat().st_mode & 0o444 == 0o444
