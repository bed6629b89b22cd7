import json
import shutil

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
    with pytest.raises(ValueError, match="format must be 'hamjax.model/1', got 'other'"):
        saved.load(tmp_path)
    (tmp_path / "model.json").write_text(json.dumps({"config": {}, "meta": {}}))
    with pytest.raises(ValueError, match="model.json has no format field; expected format = 'hamjax.model/1'"):
        saved.load(tmp_path)
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="model.json must hold a JSON object, got list"):
        saved.load(tmp_path)
    with pytest.raises(
        ValueError, match=r"saved: config\.type: unknown model kind 'ResNetConfig'; expected one of \['CNNConfig'"
    ):
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


@pytest.fixture(scope="module")
def saved_mlp(tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "m"
    module = models.build("mlp", seed=0, input_shape=(8, 8, 1), num_classes=4)
    saved.save(path, models.config_of(module), hamjax.functional(module)[1], meta={"data": "digits"})
    return path


def _tampered(saved_mlp, tmp_path, change):
    path = tmp_path / "m"
    shutil.copytree(saved_mlp, path)
    entry = json.loads((path / "model.json").read_text())
    change(entry)
    (path / "model.json").write_text(json.dumps(entry))
    return path


def _set(*keys, value):
    def change(entry):
        for key in keys[:-1]:
            entry = entry[key]
        entry[keys[-1]] = value

    return change


def _drop(*keys):
    def change(entry):
        for key in keys[:-1]:
            entry = entry[key]
        del entry[keys[-1]]

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            _set("config", "fields", "sizes", value="64,32,4"),
            r"config\.fields\.sizes must be a list of int, got '64,32,4'",
        ),
        (_set("config", "fields", "sizes", value=[64, 32.5, 4]), r"config\.fields\.sizes must be a list of int"),
        (_set("config", "fields", "sizes", value=[64, True, 4]), r"config\.fields\.sizes must be a list of int"),
        (_set("config", "fields", "activation", value=3), r"config\.fields\.activation must be str, got 3 \(int\)"),
        (_set("config", "fields", "dropout_rate", value="0.1"), r"config\.fields\.dropout_rate must be float"),
        (_set("config", "fields", "dropout_rate", value=float("nan")), r"config\.fields\.dropout_rate must be float"),
        (_set("config", "fields", "activation", value="swish"), r"config\.fields: MLPConfig\.activation='swish'"),
        (_set("config", "fields", "depth", value=3), r"config\.fields: MLPConfig has no field\(s\) \['depth'\]"),
        (
            _set("config", "fields", value=[1, 2]),
            r"config\.fields must be a mapping of field names to values, got list",
        ),
        (_set("config", "type", value="ResNetConfig"), r"config\.type: unknown model kind 'ResNetConfig'"),
        (_set("config", value="MLPConfig"), r"config must be a mapping \{type, fields\}, got str"),
        (_drop("config", "type"), r"config lacks the key\(s\) \['type'\]"),
        (_drop("config", "fields"), r"config lacks the key\(s\) \['fields'\]"),
        (_set("meta", value=["digits"]), r"meta must be a mapping, got list"),
        (_set("meta", value="digits"), r"meta must be a mapping, got str"),
        (_drop("meta"), r"lacks the key\(s\) \['meta'\]"),
        (_drop("config"), r"lacks the key\(s\) \['config'\]"),
        (_set("extra", value=1), r"has unknown key\(s\) \['extra'\]"),
    ],
)
def test_a_tampered_model_json_is_refused_naming_the_file_and_the_field(saved_mlp, tmp_path, change, message):
    path = _tampered(saved_mlp, tmp_path, change)
    with pytest.raises(ValueError, match=r"saved\.load: .*model\.json.*" + message):
        saved.load(path)


def test_a_config_that_does_not_match_the_variables_names_both_files(saved_mlp, tmp_path):
    path = _tampered(saved_mlp, tmp_path, _set("config", "fields", "sizes", value=[64, 16, 4]))
    with pytest.raises(
        ValueError, match=r"saved\.load: .*variables does not hold the variables of the MLPConfig that .*model\.json"
    ):
        saved.load(path)


def test_the_untampered_copy_still_loads(saved_mlp, tmp_path):
    path = _tampered(saved_mlp, tmp_path, lambda entry: None)
    assert saved.load(path)[3] == {"data": "digits"}
