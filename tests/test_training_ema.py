import pytest
import torch
from _training_data import make_coco, write_config
from torch import nn

from training.cli import train_main
from training.config import ConfigError, load_config
from training.ema import ModelEma

pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def test_the_average_follows_the_ramped_decay_over_float_state():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in start.items() if v.dtype.is_floating_point}
    for n in range(20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        model(torch.randn(4, 2))  # train mode: BatchNorm's running statistics and counter move
        d = min(0.9, (1 + n) / (10 + n))
        for k in expected:
            expected[k] = d * expected[k] + (1 - d) * model.state_dict()[k]
        ema.update(model)
    own = ema.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(own[k], v, atol=1e-5), k
    assert own["1.num_batches_tracked"] == model.state_dict()["1.num_batches_tracked"] == 20
    # the average lags the raw weights (which rose by 20) and the ramp let it leave the start
    assert 5 < float((own["0.weight"] - start["0.weight"]).mean()) < 20
    assert ema.updates == 20 and not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="must be in"):
        ModelEma(model, decay=1.0)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    return make_coco(tmp_path_factory.mktemp("data") / "coco", n_train=12, n_val=3)


def test_the_checkpoint_holds_the_average_and_resume_continues_it_exactly(tmp_path, coco_root):
    extra = {"optim": {"epochs": 3, "ema_decay": 0.5}, "eval": {"interval": 100}}
    straight = write_config(tmp_path / "a.yaml", "coco", coco_root, tmp_path / "a", extra)
    assert train_main([str(straight), "run.max_steps=4"]) == 0
    split = write_config(tmp_path / "b.yaml", "coco", coco_root, tmp_path / "b", extra)
    assert train_main([str(split), "run.max_steps=2"]) == 0
    assert train_main([str(split), "--resume", "run.max_steps=4"]) == 0
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    assert a["ema"]["updates"] == b["ema"]["updates"] == 4
    for wa, wb in ((a["model"], b["model"]), (a["ema"]["raw_model"], b["ema"]["raw_model"])):
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # "model" (what eval and export read) is the average, not the last step's weights
    assert not all(torch.equal(a["model"][k], a["ema"]["raw_model"][k]) for k in a["model"])

    plain = write_config(tmp_path / "c.yaml", "coco", coco_root, tmp_path / "c", {"eval": {"interval": 100}})
    assert train_main([str(plain), "run.max_steps=1"]) == 0
    assert torch.load(tmp_path / "c" / "last.pt", weights_only=False)["ema"] is None
    with pytest.raises(ConfigError, match="optim.ema_decay"):
        load_config(plain, ["optim.ema_decay=1.5"])
