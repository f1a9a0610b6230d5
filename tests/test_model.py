import pytest
import torch
from torch import nn

from model import MODEL_NAMES, build_model
from model.attention import SpatialReductionAttention
from model.flops import full_macs
from model.profile import PAPER, profile


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_params_and_gflops_within_one_percent_of_paper(name):
    row = profile(name)
    assert abs(row.params_dev) < 0.01, f"{name}: {row.params_m:.3f} M vs paper {row.paper_params_m} M"
    assert abs(row.gflops_dev) < 0.01, f"{name}: {row.gflops_mmcv:.3f} G vs paper {row.paper_gflops} G"


def test_every_model_has_a_paper_row():
    assert set(PAPER) == set(MODEL_NAMES)


def test_full_count_includes_attention():
    # docs/model.md: about 5.69 G for B and 1.76 G for T when everything is counted.
    assert full_macs(build_model("hevitpose-b", 16), (3, 256, 256)) / 1e9 == pytest.approx(5.69, abs=0.01)
    assert full_macs(build_model("hevitpose-t", 16), (3, 256, 256)) / 1e9 == pytest.approx(1.76, abs=0.01)


@pytest.mark.parametrize("name", ["hevitpose-t", "hevitpose-b", "efficientvit-m4-peow1", "hevitpose-b-r421"])
@pytest.mark.parametrize("hw", [(256, 256), (256, 192), (384, 288)])
def test_output_is_quarter_resolution(name, hw):
    model = build_model(name, num_keypoints=17).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 17, hw[0] // 4, hw[1] // 4)
    assert torch.isfinite(out).all()


def test_rejects_sizes_not_divisible_by_32():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_model("hevitpose-t")(torch.randn(1, 3, 250, 256))


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="hevitpose-b"):
        build_model("hevitpose-xl")


@pytest.mark.parametrize("reduction", [1, 4])
def test_attention_matches_nn_multihead_attention(reduction):
    torch.manual_seed(0)
    attn = SpatialReductionAttention(dim=32, num_heads=4, reduction=reduction).eval()
    nn.init.normal_(attn.in_proj_bias)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    mha.load_state_dict({k: v for k, v in attn.state_dict().items() if k.startswith(("in_proj", "out_proj"))})
    x = torch.randn(2, 32, 16, 12)
    with torch.no_grad():
        q = attn.norm(x.flatten(2).transpose(1, 2))
        kv = attn.sr_norm(attn.sr(x).flatten(2).transpose(1, 2)) if reduction > 1 else q
        ref = attn.out_norm(mha(q, kv, kv, need_weights=False)[0]).transpose(1, 2).reshape(x.shape)
        out = attn(x)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_one_attention_module_per_block_is_shared_by_groups():
    model = build_model("hevitpose-b")
    block = model.stage1[0]
    attn_modules = [m for m in block.modules() if isinstance(m, SpatialReductionAttention)]
    assert len(attn_modules) == 1
    # stage 1 of B: 128 channels in 4 groups of 32, reduction 8 -> kernel 15, stride 8
    sr = attn_modules[0].sr
    assert (sr.in_channels, sr.kernel_size, sr.stride, sr.padding) == (32, (15, 15), (8, 8), (7, 7))


def test_backward_runs():
    model = build_model("hevitpose-t", 16).train()
    out = model(torch.randn(2, 3, 64, 64))
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
