import math
from pathlib import Path

import pytest

from training.config import ConfigError, config_from_dict, load_config
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
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(CONFIGS / "hevitpose_t_mpii.yaml", override)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such.yaml")


def test_lr_schedule_is_mmcv_step_with_linear_warmup():
    o = config_from_dict({}).optim
    per_epoch = 100
    assert math.isclose(lr_factor(0, per_epoch, o), 0.001)  # warmup_ratio at the first iteration
    assert math.isclose(lr_factor(250, per_epoch, o), 1 - 0.5 * 0.999)
    assert lr_factor(500, per_epoch, o) == 1.0
    assert lr_factor(169 * per_epoch + 99, per_epoch, o) == 1.0
    assert math.isclose(lr_factor(170 * per_epoch, per_epoch, o), 0.1)  # epoch 171 runs at 1e-4
    assert math.isclose(lr_factor(200 * per_epoch, per_epoch, o), 0.01)
