import json

import jax
import numpy as np
import pytest

import hamjax
from hamjax import models
from hamjax.models import saved


@pytest.mark.parametrize("name", models.MODELS)
def test_save_then_load_gives_the_same_model(tmp_path, name):
    module = models.build(name, seed=3, input_shape=(8, 8, 1), num_classes=4)
    apply_fn, variables = hamjax.functional(module)
    config = models.config_of(module)
    saved.save(tmp_path / "m", config, variables, meta={"data": "digits"})
    apply2, variables2, config2, meta = saved.load(tmp_path / "m")
    assert config2 == config and meta == {"data": "digits"}
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(jax.jit(apply2)(variables2, x), jax.jit(apply_fn)(variables, x))


def test_config_round_trips_through_json():
    config = models.config_of(models.build("vit", input_shape=(8, 8, 1)))
    d = json.loads(json.dumps(saved.config_to_dict(config)))
    assert saved.config_from_dict(d) == config


def test_bad_files_and_configs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model.json"):
        saved.load(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        saved.load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="is not a hamjax.model/1 file"):
        saved.load(tmp_path)
    with pytest.raises(ValueError, match="unknown config type 'ResNetConfig'"):
        saved.config_from_dict({"type": "ResNetConfig", "fields": {}})
    with pytest.raises(ValueError, match=r"has no field\(s\) \['depth'\]"):
        saved.config_from_dict({"type": "MLPConfig", "fields": {"sizes": [64, 10], "depth": 3}})
    with pytest.raises(ValueError, match="expected a reference model config"):
        saved.config_to_dict({"sizes": (64, 10)})


def test_a_save_leaves_no_temporary_file(tmp_path):
    module = models.build("mlp", input_shape=(8, 8, 1))
    _, variables = hamjax.functional(module)
    saved.save(tmp_path, models.config_of(module), variables)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "variables"]
