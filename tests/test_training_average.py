"""``hevitpose average``: the mean of fine-tunes' weights, as a checkpoint that eval and export read."""

import pytest
import torch
from _training_data import make_coco, write_config

from model.bundle import load_bundle
from training.average import average_state_dicts
from training.average import main as average_main
from training.checkpoint import load
from training.cli import eval_main, export_main, train_main

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def test_the_average_of_float_tensors_keeps_the_counters_of_the_first():
    a = {"w": torch.tensor([1.0, 2.0], dtype=torch.float16), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0], dtype=torch.float16), "n": torch.tensor(9)}
    out = average_state_dicts([a, b])
    assert out["w"].dtype == torch.float16 and out["w"].tolist() == [2.0, 4.0]
    assert out["n"].item() == 5


def test_two_runs_average_into_a_checkpoint_that_eval_and_export_read(tmp_path, capsys):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    runs = []
    for seed in (1, 2):
        recipe = write_config(tmp_path / f"c{seed}.yaml", "coco", root, tmp_path / f"run{seed}")
        assert train_main([str(recipe), "run.max_steps=2", f"run.seed={seed}"]) == 0
        runs.append(tmp_path / f"run{seed}" / "last.pt")
    assert export_main([str(runs[1]), str(tmp_path / "b2"), "--no-onnx"]) == 0
    second_bundle = tmp_path / "b2" / "tiny.json"

    soup = tmp_path / "soup" / "last.pt"
    # a bundle can be an ingredient (here the second run once more, in float16)
    assert average_main([str(runs[0]), str(runs[1]), str(second_bundle), "--out", str(soup)]) == 0
    out, a, b = load(soup), load(runs[0])["model"], load(runs[1])["model"]
    _, bundle_meta = load_bundle(second_bundle)
    key = next(k for k, v in a.items() if v.is_floating_point() and not torch.equal(v, b[k]))
    bundle_weights = load_bundle(second_bundle)[0].state_dict()[key].float()
    torch.testing.assert_close(out["model"][key], (a[key] + b[key] + bundle_weights) / 3)
    assert out["averaged_from"] == [str(runs[0]), str(runs[1]), str(second_bundle)]
    assert "optimizer" not in out and out["config"] == load(runs[0])["config"]

    assert eval_main([str(tmp_path / "c1.yaml"), str(soup), "--no-flip-test"]) == 0
    assert export_main([str(soup), str(tmp_path / "bundle"), "--no-onnx"]) == 0
    # weights only: a resume is refused with the way to go on, a fine-tune from it works
    recipe = write_config(tmp_path / "s.yaml", "coco", root, soup.parent)
    assert train_main([str(recipe), "--resume"]) == 2
    assert "model.init_from" in capsys.readouterr().err
    assert (
        train_main([str(recipe), "run.max_steps=1", f"model.init_from={soup}", f"run.out_dir={tmp_path / 'ft'}"]) == 0
    )
    capsys.readouterr()

    assert average_main([str(runs[0]), "--out", str(tmp_path / "x.pt")]) == 2
    assert average_main([str(second_bundle), str(second_bundle), "--out", str(tmp_path / "x.pt")]) == 2
    assert average_main([str(runs[0]), str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert "at least two" in err and "at least one training checkpoint" in err and "missing.pt" in err
    assert not (tmp_path / "x.pt").exists()
