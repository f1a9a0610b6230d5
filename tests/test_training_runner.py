import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _training_data import make_coco, make_mpii, write_config

import training.trainer as trainer
from model.bundle import load_bundle
from training.cli import eval_main, export_main, train_main
from training.config import load_config
from training.trainer import Trainer

TESTS = Path(__file__).resolve().parent


pytestmark = pytest.mark.usefixtures("restore_torch_threads")


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("data") / "coco", n_train=12, n_val=3)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def test_train_writes_checkpoints_logs_curves_and_exports(tmp_path, coco_root, capsys):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", "coco", coco_root, out)
    assert train_main([str(cfg), "optim.epochs=2", "eval.interval=1"]) == 0
    for name in ("last.pt", "best.pt", "metrics.jsonl", "curves.png", "config.json"):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(r["loss"]) and r["samples_per_s"] > 0 for r in train)
    assert train[0]["lr"] == pytest.approx(1e-3 * 0.001)  # warm-up starts at warmup_ratio
    assert [r["epoch"] for r in val] == [1, 2] and all("AP" in r for r in val)
    state = torch.load(out / "last.pt", weights_only=False)
    assert (state["epoch"], state["step"], state["batch_in_epoch"]) == (2, 6, 0)
    assert {"model", "optimizer", "scheduler", "scaler", "rng"} <= set(state)

    bundle_dir = tmp_path / "bundle"
    assert export_main([str(out / "best.pt"), str(bundle_dir)]) == 0
    model, meta = load_bundle(bundle_dir / "tiny")
    assert meta.model == "hevitpose-t" and meta.input_size == [64, 64]
    assert meta.keypoint_names[5] == "left_shoulder" and [5, 6] in meta.flip_pairs
    assert "AP" in meta.metrics and meta.metrics["dataset"] == "coco"
    assert (bundle_dir / "tiny.onnx").is_file()
    capsys.readouterr()

    assert eval_main([str(cfg), str(out / "last.pt"), "--no-flip-test", "--out", str(tmp_path / "m.json")]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["flip_test"] is False and set(report["metrics"]) >= {"AP", "AP50", "AP75", "APM", "APL", "AR"}
    # the exported bundle (float16 weights) evaluates to nearly the checkpoint's numbers
    assert eval_main([str(cfg), str(bundle_dir / "tiny.json"), "--no-flip-test"]) == 0
    bundle_report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert bundle_report["metrics"]["AP"] == pytest.approx(report["metrics"]["AP"], abs=0.05)
    # a recipe of another input size or padding still crops as the network was trained
    crop_args = ["--no-flip-test", "model.input_size=[96,96]", "codec.bbox_padding=1.5"]
    assert eval_main([str(cfg), str(bundle_dir / "tiny.json"), *crop_args]) == 0
    captured = capsys.readouterr()
    assert "model.input_size=[64,64] codec.bbox_padding=1.25" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["metrics"] == bundle_report["metrics"]
    # and decodes with the bundle's DARK blur (as the service does), unless the command line picks one
    blur9 = tmp_path / "blur9"
    blur9.mkdir()
    (blur9 / "tiny.safetensors").write_bytes((bundle_dir / "tiny.safetensors").read_bytes())
    meta_json = json.loads((bundle_dir / "tiny.json").read_text())
    meta_json["codec"]["blur_kernel"] = 9
    (blur9 / "tiny.json").write_text(json.dumps(meta_json))
    assert eval_main([str(cfg), str(blur9 / "tiny.json"), "--no-flip-test"]) == 0
    captured = capsys.readouterr()
    assert "codec.blur_kernel=9" in captured.err and bundle_report["blur_kernel"] == 11
    assert json.loads(captured.out.strip().splitlines()[-1])["blur_kernel"] == 9
    assert eval_main([str(cfg), str(blur9 / "tiny.json"), "--no-flip-test", "codec.blur_kernel=5"]) == 0
    captured = capsys.readouterr()
    assert "blur_kernel" not in captured.err and json.loads(captured.out.strip().splitlines()[-1])["blur_kernel"] == 5

    # predictions written as COCO results, and scored against themselves as a baseline: a difference of 0
    preds = tmp_path / "preds.json"
    assert eval_main([str(cfg), str(out / "last.pt"), "--no-flip-test", "--predictions", str(preds)]) == 0
    val_images = json.loads((coco_root / "annotations/person_keypoints_val2017.json").read_text())["images"]
    assert {r["image_id"] for r in json.loads(preds.read_text())} == {image["id"] for image in val_images}
    capsys.readouterr()
    args = [str(cfg), str(out / "last.pt"), "--no-flip-test", "--bootstrap", "30", "--baseline", str(preds)]
    assert eval_main(args) == 0
    compared = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert compared["baseline"]["AP"] == compared["metrics"]["AP"]
    boot = compared["bootstrap"]
    assert boot["resamples"] == 30 and boot["AP_minus_baseline_interval_90"] == [0.0, 0.0]
    assert boot["share_above_baseline"] == 0.0 and boot["AP_interval_90"][0] <= boot["AP_interval_90"][1]
    # a baseline of another set's images, or not a results file: a clear error
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{**json.loads(preds.read_text())[0], "image_id": 999}]))
    assert eval_main([str(cfg), str(out / "last.pt"), "--baseline", str(other)]) != 0
    assert "does not hold" in capsys.readouterr().err
    other.write_text("{not json")
    assert eval_main([str(cfg), str(out / "last.pt"), "--baseline", str(other)]) != 0
    assert "not a COCO results file" in capsys.readouterr().err

    # OKS on the people's mask areas (hevitpose label --mask-area): stricter than on the box's area
    val_ann = coco_root / "annotations/person_keypoints_val2017.json"
    gt = json.loads(val_ann.read_text())
    masked = tmp_path / "masked.json"
    masked.write_text(json.dumps({**gt, "annotations": [{**a, "mask_area": a["area"] / 4} for a in gt["annotations"]]}))
    args = [str(cfg), str(out / "last.pt"), "--no-flip-test", f"data.val_ann={masked}"]
    assert eval_main([*args, "--oks-area", "mask_area", "--bootstrap", "5", "--baseline", str(preds)]) == 0
    strict = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert strict["oks_area"] == "mask_area" and strict["baseline"]["AP"] == strict["metrics"]["AP"]
    assert strict["metrics"]["AP"] <= report["metrics"]["AP"] and report["oks_area"] == "area"
    # a set without them: a clear error before any prediction
    assert eval_main([str(cfg), str(out / "last.pt"), "--oks-area", "mask_area"]) != 0
    assert "have no 'mask_area'" in capsys.readouterr().err


def test_resume_continues_exactly(tmp_path, coco_root):
    """4 steps straight == 2 steps, stop, resume, 2 more (mid-epoch: 3 iterations per epoch)."""
    extra = {"optim": {"epochs": 3}, "eval": {"interval": 100}}
    straight = write_config(tmp_path / "a.yaml", "coco", coco_root, tmp_path / "a", extra)
    assert train_main([str(straight), "run.max_steps=4"]) == 0
    split = write_config(tmp_path / "b.yaml", "coco", coco_root, tmp_path / "b", extra)
    assert train_main([str(split), "run.max_steps=2"]) == 0
    half = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert (half["step"], half["epoch"], half["batch_in_epoch"]) == (2, 0, 2)
    assert train_main([str(split), "--resume", "run.max_steps=4"]) == 0
    assert train_main([str(split), "--resume", "run.max_steps=4"]) == 0  # already there: no extra step
    a, b = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert not all(torch.equal(a[k], half["model"][k]) for k in a)  # the second half did train
    sa = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    sb = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert sa["scheduler"] == sb["scheduler"] and sa["step"] == sb["step"] == 4
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]


def test_sigterm_checkpoints_mid_epoch_and_resume_matches(tmp_path, coco_root, monkeypatch):
    extra = {"optim": {"epochs": 3}, "eval": {"interval": 100}}
    straight = write_config(tmp_path / "a.yaml", "coco", coco_root, tmp_path / "a", extra)
    # two loader workers here, none below: samples must not depend on who makes them
    assert train_main([str(straight), "run.max_steps=3", "data.workers=2"]) == 0
    real_loss, calls = trainer.heatmap_loss, []

    def loss_then_kill(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as a cluster scheduler would
        return real_loss(*args)

    monkeypatch.setattr(trainer, "heatmap_loss", loss_then_kill)
    killed = write_config(tmp_path / "b.yaml", "coco", coco_root, tmp_path / "b", extra)
    assert train_main([str(killed)]) == 0
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (2, 0, 2)
    monkeypatch.setattr(trainer, "heatmap_loss", real_loss)
    assert train_main([str(killed), "--resume", "run.max_steps=3"]) == 0
    a, b = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_a_checkpoint_and_a_new_run_over_an_old_one_are_errors(tmp_path, coco_root, capsys):
    cfg = write_config(tmp_path / "c.yaml", "coco", coco_root, tmp_path / "none")
    assert train_main([str(cfg), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "last.pt").write_bytes(b"precious")
    assert train_main([str(cfg)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "none" / "last.pt").read_bytes() == b"precious"


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, coco_root, monkeypatch, capsys):
    real_loss, calls = trainer.heatmap_loss, []

    def loss_that_explodes(*args):
        calls.append(1)
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) >= 5 else loss

    monkeypatch.setattr(trainer, "heatmap_loss", loss_that_explodes)
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", "coco", coco_root, out, {"optim": {"epochs": 3}, "eval": {"interval": 100}})
    assert train_main([str(cfg)]) == 1
    err = capsys.readouterr().err
    assert "loss became nan" in err and "last good checkpoint" in err
    state = torch.load(out / "last.pt", weights_only=False)
    assert state["step"] == 3 and state["epoch"] == 1  # saved at the end of epoch 1, before step 5
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_unreadable_images_are_skipped_counted_and_reported(tmp_path, capsys):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    (root / "images" / "train2017" / "000000000002.jpg").write_bytes(b"\x00garbage")
    (root / "images" / "val2017" / "000000001001.jpg").unlink()
    cfg = write_config(tmp_path / "c.yaml", "coco", root, tmp_path / "run")
    trainer = Trainer(load_config(cfg))
    result = trainer.fit()
    assert result["step"] == 1 and not result["stopped"]
    assert len(trainer.skipped_images) == 2
    assert "2 image(s) could not be read" in capsys.readouterr().err


def test_mpii_training_reports_pckh(tmp_path):
    root = make_mpii(tmp_path / "mpii", n_train=4, n_val=2)
    cfg = write_config(tmp_path / "c.yaml", "mpii", root, tmp_path / "run")
    result = Trainer(load_config(cfg)).fit()
    assert set(result["val"]) == {"Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "PCKh", "PCKh@0.1"}
    assert result["best"]["metric"] == "PCKh"


def test_ddp_two_cpu_processes_hold_the_same_weights(tmp_path, coco_root):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", "coco", coco_root, out, {"optim": {"batch_size": 4, "epochs": 1}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(TESTS / "_training_ddp_worker.py"), str(cfg), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert r0["step"] == r1["step"] == 3  # 12 people / (2 processes x 2 each)
    assert r0["batch"] == r1["batch"] == 2
    assert all(torch.equal(r0["model"][k], r1["model"][k]) for k in r0["model"])
    assert r0["val"] == r1["val"] and "AP" in r0["val"]  # rank 0's metrics broadcast to rank 1
    initial = torch.load(out / "last.pt", weights_only=False)["model"]
    assert all(torch.equal(initial[k], r0["model"][k]) for k in initial)  # rank 0 wrote the checkpoint


def test_a_short_run_learns_its_training_images(tmp_path):
    """60 steps on 4 images, with random flips in training and the flip test at evaluation:
    the network must find the keypoints of the images it trained on. Wrong flip pairs, a
    wrong heatmap shift or a wrong crop <-> image mapping would keep AP far below 0.9."""
    root = make_coco(tmp_path / "coco", n_train=4, n_val=1)
    cfg = write_config(tmp_path / "c.yaml", "coco", root, tmp_path / "run", {
        "data": {"val_ann": "annotations/person_keypoints_train2017.json", "val_images": "images/train2017"},
        "augment": {"flip_prob": 0.5, "scale_factor": 0.0, "rotation_prob": 0.0},
        "optim": {"epochs": 60, "warmup_iters": 5},
        "eval": {"interval": 1000},
        "run": {"deterministic": False, "tensorboard": False, "plot": False, "log_interval": 60},
    })  # fmt: skip
    result = Trainer(load_config(cfg)).fit()
    assert result["step"] == 60
    assert result["val"]["AP"] >= 0.9, result["val"]


def test_time_limit_stops_with_a_checkpoint(tmp_path, coco_root, capsys):
    extra = {"optim": {"epochs": 50}, "eval": {"interval": 100}}
    cfg = write_config(tmp_path / "t.yaml", "coco", coco_root, tmp_path / "t", extra)
    assert train_main([str(cfg), "run.time_limit_s=0.001"]) == 0
    state = torch.load(tmp_path / "t" / "last.pt", weights_only=False)
    assert state["step"] == 1  # the first step already ran past the limit
    assert "(run.time_limit_s)" in capsys.readouterr().err


def test_init_from_a_checkpoint_or_a_bundle_starts_from_its_weights(tmp_path, coco_root, capsys):
    extra = {"optim": {"epochs": 3}, "eval": {"interval": 100}}
    first = write_config(tmp_path / "a.yaml", "coco", coco_root, tmp_path / "a", extra)
    assert train_main([str(first), "run.max_steps=2"]) == 0
    assert export_main([str(tmp_path / "a" / "last.pt"), str(tmp_path / "w"), "--name", "a", "--no-onnx"]) == 0
    trained = _weights(tmp_path / "a" / "last.pt")

    second = write_config(tmp_path / "b.yaml", "coco", coco_root, tmp_path / "b", extra)
    from_ckpt = Trainer(load_config(second, [f"model.init_from={tmp_path / 'a' / 'last.pt'}"]))
    assert from_ckpt.step == 0  # weights only: optimiser and schedule start afresh
    assert all(torch.equal(v, trained[k]) for k, v in from_ckpt.model.state_dict().items())
    from_bundle = Trainer(load_config(second, [f"model.init_from={tmp_path / 'w' / 'a.json'}"]))
    for k, v in from_bundle.model.state_dict().items():  # the bundle is float16
        assert torch.allclose(v.float(), trained[k].float(), rtol=1e-3, atol=1e-3), k

    assert train_main([str(second), f"model.init_from={tmp_path / 'a' / 'last.pt'}", "model.name=hevitpose-s"]) == 2
    assert "holds hevitpose-t weights, the recipe builds hevitpose-s" in capsys.readouterr().err
    assert train_main([str(second), f"model.init_from={tmp_path / 'nowhere.pt'}"]) == 2


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_cpu_precision_sets_the_training_autocast(tmp_path, coco_root, precision, dtype):
    cfg = write_config(tmp_path / "t.yaml", "coco", coco_root, tmp_path / "t", {"eval": {"interval": 100}})
    runner = Trainer(load_config(cfg, [f"run.cpu_precision={precision}", "run.max_steps=2"]))
    seen = []
    runner.model.register_forward_hook(lambda module, args, out: seen.append(out.dtype) if module.training else None)
    runner.fit()
    assert seen == [dtype, dtype]
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in runner.model.parameters())


def test_keypoint_weights_scale_each_joints_loss(tmp_path, coco_root):
    def first_loss(name, *overrides):
        cfg = write_config(tmp_path / f"{name}.yaml", "coco", coco_root, tmp_path / name, {"eval": {"interval": 100}})
        runner = Trainer(load_config(cfg, ["run.max_steps=1", "run.log_interval=1", "data.workers=0", *overrides]))
        runner.fit()
        records = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return next(r["loss"] for r in records if r["kind"] == "train")

    plain = first_loss("plain")
    # the weight multiplies prediction and target, as MMPose's target weights do: twice the weight, 4x the loss
    assert first_loss("double", f"data.keypoint_weights=[{','.join(['2'] * 17)}]") == pytest.approx(4 * plain, rel=1e-4)
    face = first_loss("face", f"data.keypoint_weights=[{','.join(['1'] * 5 + ['0'] * 12)}]")
    assert 0 < face < plain
    with pytest.raises(ValueError, match="3 values for the 17 keypoints"):
        Trainer(load_config(write_config(tmp_path / "bad.yaml", "coco", coco_root, tmp_path / "bad"),
                            ["data.keypoint_weights=[1,1,1]"]))  # fmt: skip
