import numpy as np
import pytest
import torch

from model import build_model
from model.codec import (
    HeatmapCodec,
    apply_affine,
    bbox_to_center_scale,
    decode_heatmaps,
    encode_heatmaps,
    flip_back,
    get_warp_matrix,
    warp_crop,
    warp_crops_torch,
)
from model.keypoints import COCO17, MPII16
from model.topdown import decode_to_image, forward_heatmaps

CFG = HeatmapCodec(input_size=(256, 256))


def random_keypoints(n=256, k=17, seed=0, margin=16.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, k, 2, generator=g) * (256 - 2 * margin) + margin


def test_dark_recovers_subpixel_positions():
    kps = random_keypoints()
    heatmaps, weights = encode_heatmaps(kps, torch.ones(kps.shape[:2]), CFG)
    decoded, scores = decode_heatmaps(heatmaps, "dark")
    err = (decoded - kps / CFG.heatmap_stride).norm(dim=-1)
    assert err.mean() <= 0.05
    assert weights.min() == 1 and scores.min() > 0.5


def test_argmax_with_quarter_shift():
    kps = random_keypoints(seed=1)
    heatmaps, _ = encode_heatmaps(kps, torch.ones(kps.shape[:2]), CFG)
    decoded, _ = decode_heatmaps(heatmaps, "argmax")
    err = (decoded - kps / CFG.heatmap_stride).norm(dim=-1)
    assert err.mean() <= 0.3
    # the shift helps: plain argmax is worse
    plain = torch.stack(torch.unravel_index(heatmaps.flatten(2).argmax(-1), (64, 64))[::-1], -1).float()
    assert err.mean() < (plain - kps / 4).norm(dim=-1).mean()


def test_target_weights_zero_for_unlabelled_and_outside():
    kps = torch.tensor([[[100.0, 100.0], [100.0, 100.0], [-20.0, 50.0], [50.0, 300.0]]])
    visible = torch.tensor([[2, 0, 2, 2]])
    heatmaps, weights = encode_heatmaps(kps, visible, CFG)
    assert weights.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert heatmaps[0, 1:].abs().max() == 0
    assert heatmaps[0, 0].max() == pytest.approx(1.0)
    assert heatmaps.shape == (1, 4, 64, 64)


def test_sigma_sets_the_gaussian_width():
    kps = torch.tensor([[[128.0, 128.0]]])
    heatmaps, _ = encode_heatmaps(kps, torch.ones(1, 1), HeatmapCodec(sigma=3.0))
    # one sigma (3 heatmap px) from the peak the value is exp(-1/2)
    assert heatmaps[0, 0, 32, 35].item() == pytest.approx(np.exp(-0.5), rel=1e-5)


def test_bbox_padding_and_aspect_ratio():
    center, scale = bbox_to_center_scale(np.array([[10, 20, 110, 420]]), aspect_ratio=192 / 256)
    np.testing.assert_allclose(center, [[60, 220]])
    # tall box: height kept, width widened to 3:4, then 1.25 padding
    np.testing.assert_allclose(scale, [[300 * 1.25, 400 * 1.25]])


@pytest.mark.parametrize("rotation", [0.0, 37.0, -90.0])
def test_crop_then_inverse_maps_points_back(rotation):
    rng = np.random.default_rng(0)
    center, scale = np.array([[320.5, 211.25]]), np.array([[173.0, 173.0]])
    fwd = get_warp_matrix(center, scale, (192, 256), rotation)
    inv = get_warp_matrix(center, scale, (192, 256), rotation, inv=True)
    points = rng.uniform(0, 640, size=(1, 50, 2))
    assert np.abs(apply_affine(apply_affine(points, fwd), inv) - points).max() < 1e-3
    # the box center lands in the middle of the crop
    np.testing.assert_allclose(apply_affine(center[:, None], fwd)[0, 0], [96, 128], atol=1e-9)


def test_crop_moves_image_content_where_the_matrix_says():
    image = np.zeros((300, 400, 3), np.float32)
    image[150:153, 250:253] = 255.0  # a bright 3x3 dot centred on (251, 151)
    matrix = get_warp_matrix(np.array([[220.0, 140.0]]), np.array([[128.0, 128.0]]), (256, 256), 20.0)
    crop = warp_crop(image, matrix[0], (256, 256))
    ys, xs = np.nonzero(crop[..., 0] > 1)
    w = crop[ys, xs, 0]
    found = np.array([(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()])
    expected = apply_affine(np.array([[[251.0, 151.0]]]), matrix)[0, 0]
    assert np.abs(found - expected).max() < 0.5


def test_torch_crop_matches_opencv():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, size=(120, 160, 3)).astype(np.float32)
    image = np.ascontiguousarray(np.repeat(np.repeat(image, 2, 0), 2, 1))  # smoother, 240x320
    matrices = get_warp_matrix(
        np.array([[150.0, 100.0], [60.0, 200.0]]),
        np.array([[120.0, 160.0], [90.0, 120.0]]),
        (96, 128),
        np.array([10.0, -30.0]),
    )
    crops = warp_crops_torch(
        [torch.from_numpy(image).permute(2, 0, 1)], [0, 0], torch.from_numpy(matrices).float(), (96, 128)
    )
    for i in range(2):
        ref = warp_crop(image, matrices[i], (96, 128))
        got = crops[i].permute(1, 2, 0).numpy()
        inner = (slice(4, -4), slice(4, -4))
        assert np.abs(got[inner] - ref[inner]).mean() < 0.05


def test_decode_to_image_inverts_the_crop():
    center, scale = np.array([[300.0, 200.0]]), np.array([[150.0, 150.0]])
    fwd = get_warp_matrix(center, scale, (256, 256), 15.0)
    inv = get_warp_matrix(center, scale, (256, 256), 15.0, inv=True)
    image_points = np.array([[[280.0, 190.0], [320.0, 230.0]]])
    input_points = torch.from_numpy(apply_affine(image_points, fwd)).float()
    heatmaps, _ = CFG.encode(input_points, torch.ones(1, 2))
    keypoints, _ = decode_to_image(CFG, heatmaps, inv)
    # DARK on an exact Gaussian: well under a heatmap pixel, i.e. under 0.6 image px at this scale
    np.testing.assert_allclose(keypoints.double().numpy(), image_points, atol=0.05)


def test_codec_round_trips_through_a_mapping_and_refuses_nonsense():
    codec = HeatmapCodec(input_size=(96, 128), sigma=3.0, bbox_padding=1.4, decode_method="argmax", shift_heatmap=False)
    assert HeatmapCodec.from_dict(codec.to_dict()) == codec
    assert codec.heatmap_size == (24, 32) and codec.aspect_ratio == 0.75
    with pytest.raises(ValueError, match="unknown codec key"):
        HeatmapCodec.from_dict({**codec.to_dict(), "gamma": 1})
    for bad in ({"decode_method": "soft-argmax"}, {"sigma": 0}, {"input_size": (98, 128)}, {"blur_kernel": 4}):
        with pytest.raises(ValueError):
            HeatmapCodec(**bad)


def test_codec_decode_is_in_input_pixels():
    kps = random_keypoints(n=4)
    heatmaps, _ = CFG.encode(kps, torch.ones(4, 17))
    decoded, _ = CFG.decode(heatmaps)
    assert (decoded - kps).norm(dim=-1).max() < 0.2


def test_flip_pairs():
    assert (5, 6) in COCO17.flip_pairs and (15, 16) in COCO17.flip_pairs and len(COCO17.flip_pairs) == 8
    assert (3, 2) in MPII16.flip_pairs and (13, 12) in MPII16.flip_pairs and len(MPII16.flip_pairs) == 6
    assert COCO17.flip_index[0] == 0 and COCO17.flip_index[1] == 2


def test_flip_test_on_mirror_symmetric_input_is_mirror_symmetric():
    torch.manual_seed(0)
    model = build_model("hevitpose-t", 17).eval()
    torch.nn.init.normal_(model.head[-1].weight, std=0.1)  # peaks away from zero
    half = torch.randn(1, 3, 128, 64)
    image = torch.cat([half, half.flip(-1)], dim=-1)  # mirror-symmetric 128x128
    with torch.no_grad():
        heatmaps = forward_heatmaps(model, image, CFG, COCO17.flip_index)
    # flip_back shifts by one pixel, so the result is symmetric about heatmap x = W/2
    mirrored = heatmaps.flip(-1)[:, COCO17.flip_index]
    torch.testing.assert_close(heatmaps[..., 1:], torch.roll(mirrored, 1, dims=-1)[..., 1:], atol=1e-6, rtol=1e-5)
    keypoints, _ = decode_heatmaps(heatmaps, "argmax")
    left, right = keypoints[0, [a for a, _ in COCO17.flip_pairs]], keypoints[0, [b for _, b in COCO17.flip_pairs]]
    inside = (left[:, 0] >= 2) & (right[:, 0] >= 2)
    torch.testing.assert_close(left[inside, 0] + right[inside, 0], torch.full_like(left[inside, 0], 32.0))
    torch.testing.assert_close(left[inside, 1], right[inside, 1])


def test_flip_back_undoes_a_flip():
    heatmaps = torch.rand(2, 17, 8, 8)
    flipped = heatmaps.flip(-1)[:, COCO17.flip_index]
    torch.testing.assert_close(flip_back(flipped, COCO17.flip_index, shift=False), heatmaps)
