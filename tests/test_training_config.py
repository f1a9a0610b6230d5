import dataclasses
import math
from pathlib import Path

import pytest

from model.bundle import load_meta
from training.config import ConfigError, codec_from_config, config_from_dict, load_config
from training.schedule import lr_factor

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("size", ["t", "s", "b"])
@pytest.mark.parametrize("dataset", ["coco", "mpii"])
def test_recipes_hold_the_papers_schedule(size, dataset):
    cfg = load_config(CONFIGS / f"hevitpose_{size}_{dataset}.yaml")
    assert cfg.name == f"hevitpose_{size}_{dataset}"
    assert cfg.model.name == f"hevitpose-{size}"
    assert cfg.model.input_size == (256, 256)
    assert cfg.data.dataset == dataset
    o = cfg.optim
    assert (o.lr, o.epochs, o.milestones, o.gamma) == (1e-3, 210, (170, 200), 0.1)
    assert (o.warmup_iters, o.warmup_ratio) == (500, 0.001)
    assert o.batch_size == (64 if dataset == "coco" else 32)
    a = cfg.augment
    assert (a.flip_prob, a.scale_factor, a.rotation_factor, a.rotation_prob) == (0.5, 0.5, 40, 0.6)
    assert a.half_body_prob == (0.3 if dataset == "coco" else 0.0)
    assert cfg.eval.flip_test and cfg.codec.decode_method == "dark"


def test_overrides_are_typed_by_the_dataclass(tmp_path):
    cfg = load_config(
        CONFIGS / "hevitpose_t_coco.yaml",
        ["optim.lr=5e-4", "model.input_size=[96,64]", "eval.flip_test=false", "optim.milestones=3,4", "data.root=/x"],
    )
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.model.input_size == (96, 64)
    assert cfg.eval.flip_test is False
    assert cfg.optim.milestones == (3, 4)
    assert cfg.data.root == "/x"


@pytest.mark.parametrize(
    "override, message",
    [
        (["optim.lrr=1"], "optim.lrr"),
        (["optim.epochs=ten"], "optim.epochs"),
        (["eval.flip_test=maybe"], "eval.flip_test"),
        (["run.precision=fp8"], "run.precision"),
        (["model.name=resnet"], "model.name"),
        (["model.input_size=[100,64]"], "multiples of 32"),
        (["optim.lr"], "key=value"),
        (["data.keypoint_weights=[1,-1]"], "data.keypoint_weights"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(CONFIGS / "hevitpose_t_mpii.yaml", override)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such.yaml")


def test_a_recipe_on_a_base_changes_only_what_it_names(tmp_path):
    (tmp_path / "parent.yaml").write_text(
        "name: parent\nmodel: {name: hevitpose-t, input_size: [96, 128]}\n"
        "data: {train_repeat: 3, extra_train: [../a, ../b]}\noptim: {lr: 3.0e-4, epochs: 4}\n"
    )
    (tmp_path / "child.yaml").write_text("base: parent.yaml\ndata: {extra_train: [../c]}\noptim: {epochs: 2}\n")
    parent, child = load_config(tmp_path / "parent.yaml"), load_config(tmp_path / "child.yaml", ["optim.lr=1e-4"])
    assert child.name == "child"  # never inherited
    assert (child.model.name, child.model.input_size) == ("hevitpose-t", (96, 128))
    assert child.data.train_repeat == 3 and child.data.extra_train == ("../c",)  # a list replaces, not appends
    assert (child.optim.epochs, child.optim.lr, parent.optim.epochs) == (2, 1e-4, 4)


def test_a_recipe_chain_that_loops_or_breaks_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="comes back"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: gone.yaml\n")
    with pytest.raises(ConfigError, match="gone.yaml not found"):
        load_config(tmp_path / "c.yaml")


def test_the_default_stages_are_their_predecessors_with_a_few_values_changed():
    ft6, ft8 = (
        load_config(CONFIGS / "hevitpose_t_default_ft6.yaml"),
        load_config(CONFIGS / "hevitpose_t_default_ft8.yaml"),
    )
    assert ft8.augment == ft6.augment and ft8.codec == ft6.codec and ft8.model.input_size == ft6.model.input_size
    assert (ft8.data.train_repeat, ft8.optim.epochs, ft8.optim.ema_decay) == (5, 2, 0.999)
    assert ft8.data.extra_train == ("../synth_photo", "../composite", "../composite_s1")
    ft9 = load_config(CONFIGS / "hevitpose_t_default_ft9.yaml")
    assert (ft9.codec.sigma, ft9.codec.blur_kernel) == (1.5, 9)
    assert dataclasses.replace(ft9.codec, sigma=ft8.codec.sigma, blur_kernel=ft8.codec.blur_kernel) == ft8.codec
    assert (ft9.data, ft9.augment, ft9.optim) == (ft8.data, ft8.augment, ft8.optim)
    ft10, ft10b = (load_config(CONFIGS / f"hevitpose_t_default_{n}.yaml") for n in ("ft10", "ft10b"))
    assert ft10.augment == dataclasses.replace(ft9.augment, truncate_prob=0.3) and ft10.codec == ft9.codec
    assert ft10.data.extra_train == (*ft9.data.extra_train, "../synth_poses") and ft10.optim == ft9.optim
    assert (ft10b.data, ft10b.augment, ft10b.codec) == (ft10.data, ft10.augment, ft10.codec)
    assert (ft10b.optim.lr, ft10b.optim.epochs, ft10b.optim.milestones) == (3e-5, 1, ())
    assert load_config(CONFIGS / "hevitpose_default_gpu.yaml").augment.truncate_prob == ft10.augment.truncate_prob
    ft11, ft11b = (load_config(CONFIGS / f"hevitpose_t_default_{n}.yaml") for n in ("ft11", "ft11b"))
    assert (ft11.augment, ft11.codec, ft11.optim) == (ft10.augment, ft10.codec, ft10.optim)
    assert ft11.data.extra_train == (*ft10.data.extra_train, "../synth_portrait")
    assert (ft11b.data, ft11b.augment, ft11b.codec) == (ft11.data, ft11.augment, ft11.codec)
    assert ft11b.optim == ft10b.optim and ft11b.run.threads == 2
    ft12, ft12b = (load_config(CONFIGS / f"hevitpose_t_default_{n}.yaml") for n in ("ft12", "ft12b"))
    for again, first in ((ft12, ft11), (ft12b, ft11b)):  # the eleventh stage once more
        assert all(getattr(again, part) == getattr(first, part) for part in ("data", "augment", "codec", "optim"))
    assert ft12b.model.init_from == "runs/hevitpose_t_default_ft12/last.pt" and ft12b.run.threads == 1
    ft13, ft13b = (load_config(CONFIGS / f"hevitpose_t_default_{n}.yaml") for n in ("ft13", "ft13b"))
    for again, first in ((ft13, ft11), (ft13b, ft11b)):  # and a third time
        assert all(getattr(again, part) == getattr(first, part) for part in ("data", "augment", "codec", "optim"))
    assert ft13b.model.init_from == "runs/hevitpose_t_default_ft13/last.pt" and ft13b.run.threads == 1


def test_the_shipped_bundle_decodes_with_the_codec_its_recipe_trained():
    meta = load_meta(CONFIGS.parent / "weights" / "hevitpose-t-default.json")
    assert meta.codec == codec_from_config(load_config(CONFIGS / "hevitpose_t_default_ft13b.yaml"))


def test_lr_schedule_is_mmcv_step_with_linear_warmup():
    o = config_from_dict({}).optim
    per_epoch = 100
    assert math.isclose(lr_factor(0, per_epoch, o), 0.001)  # warmup_ratio at the first iteration
    assert math.isclose(lr_factor(250, per_epoch, o), 1 - 0.5 * 0.999)
    assert lr_factor(500, per_epoch, o) == 1.0
    assert lr_factor(169 * per_epoch + 99, per_epoch, o) == 1.0
    assert math.isclose(lr_factor(170 * per_epoch, per_epoch, o), 0.1)  # epoch 171 runs at 1e-4
    assert math.isclose(lr_factor(200 * per_epoch, per_epoch, o), 0.01)
