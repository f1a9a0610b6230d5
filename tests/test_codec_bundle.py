"""The codec travels from the recipe through the bundle to the service: one set of values by construction."""

import json
import logging

import numpy as np
import pytest
from _service_util import make_bundle, noise_image, service_settings
from _training_data import make_coco, write_config

from model.bundle import load_bundle, load_meta
from model.codec import HeatmapCodec
from model.runtime import RuntimeConfig
from model.topdown import crop_matrices, predict_bboxes
from service.pose_model import PoseModel
from service.settings import Settings
from training.cli import export_main, train_main
from training.config import ConfigError, codec_from_config, config_from_dict, load_config

CHANGED = {"sigma": 3.0, "bbox_padding": 1.4, "decode_method": "argmax"}
BOXES = np.array([[20.0, 10.0, 70.0, 110.0], [90.0, 30.0, 150.0, 100.0]])


pytestmark = pytest.mark.usefixtures("restore_torch_threads")


def test_a_recipe_codec_reaches_the_bundle_and_the_service(tmp_path):
    root = make_coco(tmp_path / "coco", n_train=4, n_val=2)
    recipe = write_config(tmp_path / "c.yaml", "coco", root, tmp_path / "run", {"codec": CHANGED})
    assert train_main([str(recipe), "run.max_steps=1"]) == 0
    assert export_main([str(tmp_path / "run" / "last.pt"), str(tmp_path / "bundle"), "--no-onnx"]) == 0

    expected = codec_from_config(load_config(recipe))
    assert (expected.sigma, expected.bbox_padding, expected.decode_method) == (3.0, 1.4, "argmax")
    assert load_meta(tmp_path / "bundle" / "tiny").codec == expected

    pose = PoseModel(tmp_path / "bundle" / "tiny", RuntimeConfig(device="cpu", backend="torch"))
    assert pose.codec == expected
    image = noise_image(160, 120, seed=1)
    job = pose.prepare_job(image, BOXES, flip_test=False, deadline=float("inf"))
    np.testing.assert_allclose(job.matrices, crop_matrices(expected, BOXES))
    (result,) = pose.run_jobs([job], max_batch_size=8)

    model, meta = load_bundle(tmp_path / "bundle" / "tiny")
    want, _ = predict_bboxes(model, image, BOXES, expected, meta.mean, meta.std)
    np.testing.assert_allclose(result.keypoints, want, atol=1e-3)
    default, _ = predict_bboxes(model, image, BOXES, HeatmapCodec(input_size=expected.input_size), meta.mean, meta.std)
    assert not np.allclose(result.keypoints, default, atol=1e-2)  # the padding and decoding did change the answer
    pose.close()


def test_a_setting_overrides_only_the_field_it_names(tmp_path):
    bundle = make_bundle(tmp_path)
    settings = Settings(weights=bundle, bbox_padding=1.1)
    assert settings.codec_overrides() == {"bbox_padding": 1.1}
    pose = PoseModel(bundle, RuntimeConfig(device="cpu", backend="torch"), settings.codec_overrides())
    assert pose.codec.bbox_padding == 1.1 and pose.codec.decode_method == load_meta(bundle).codec.decode_method
    pose.close()
    assert Settings(weights=bundle).codec_overrides() == {}


@pytest.fixture(scope="module")
def settings(bundle):
    return service_settings(bundle, bbox_padding=1.3)


def test_models_route_reports_the_codec_in_use(client, bundle):
    (info,) = client.get("/v1/models").json()["models"]
    assert info["codec"] == {**load_meta(bundle).codec.to_dict(), "bbox_padding": 1.3}


def test_a_bundle_without_a_codec_section_loads_with_the_default_codec(tmp_path, caplog):
    bundle = make_bundle(tmp_path)
    meta_path = bundle.with_suffix(".json")
    data = json.loads(meta_path.read_text())
    codec = data.pop("codec")
    data["input_size"], data["heatmap_stride"] = codec["input_size"], codec["heatmap_stride"]
    meta_path.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="model.bundle"):
        meta = load_meta(bundle)
    assert meta.codec == HeatmapCodec(input_size=tuple(codec["input_size"]))
    assert "no codec section" in caplog.text


def test_old_recipe_keys_move_into_the_codec_section():
    old = {
        "model": {"name": "hevitpose-t", "sigma": 3.0},
        "augment": {"bbox_padding": 1.5},
        "eval": {"decode": "argmax"},
    }
    with pytest.warns(FutureWarning, match="model.sigma is now codec.sigma"):
        cfg = config_from_dict(old)
    assert (cfg.codec.sigma, cfg.codec.bbox_padding, cfg.codec.decode_method) == (3.0, 1.5, "argmax")
    with pytest.raises(ConfigError, match="disagrees"):
        config_from_dict({"model": {"sigma": 3.0}, "codec": {"sigma": 2.0}})
    with pytest.raises(ConfigError, match="codec.decode_method"):
        config_from_dict({"codec": {"decode_method": "soft"}})
