import dataclasses
import os

import pytest

from hamjax.serve.config import ServeConfig, cpu_quota, default_state_dir, is_loopback

MODELS = {"default": "model.onnx"}


def _affinity():
    return len(os.sched_getaffinity(0))


def test_defaults_are_the_documented_ones():
    c = ServeConfig(models=MODELS)
    assert (c.host, c.port, c.max_batch, c.max_wait_ms, c.max_queue) == ("127.0.0.1", 8000, 32, 2.0, 1024)
    assert (c.max_body_bytes, c.cache_size, c.threads, c.token, c.log_json) == (1 << 20, 0, None, None, True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.port = 1


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.org"])
def test_a_non_loopback_host_needs_a_token(host):
    with pytest.raises(ValueError, match="not loopback; give a bearer token"):
        ServeConfig(models=MODELS, host=host)
    assert ServeConfig(models=MODELS, host=host, token="s3cret").host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_hosts_need_no_token(host):
    assert is_loopback(host) and ServeConfig(models=MODELS, host=host).token is None


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("models", {}, "models must be a non-empty mapping"),
        ("models", {"bad name!": "m.onnx"}, "variant name must be"),
        ("models", {"a": ""}, r"models\['a'\] must be a path"),
        ("split", {"other": 1.0}, "split must give a weight to each variant"),
        ("split", {"default": -1.0}, r"split\['default'\] must be a finite number >= 0"),
        ("split", {"default": 0.0}, "split needs a weight > 0 for at least one variant"),
        ("port", 70000, "port must be an integer in"),
        ("max_batch", 0, "max_batch must be an integer in"),
        ("max_wait_ms", -1.0, "max_wait_ms must be a finite number >= 0"),
        ("max_queue", 8, "max_queue must be an integer >= 32"),
        ("max_body_bytes", 10, "max_body_bytes must be an integer >= 64"),
        ("cache_size", -1, "cache_size must be an integer >= 0"),
        ("threads", 0, "threads must be an integer >= 1"),
        ("token", "  ", "token must be a non-empty string"),
        ("feedback_ttl_s", 0, "feedback_ttl_s must be a finite number > 0"),
        ("log_json", "yes", "log_json must be True or False"),
    ],
)
def test_bad_fields_are_refused_by_name(field, value, match):
    kwargs = {"models": MODELS, field: value}
    with pytest.raises(ValueError, match=match):
        ServeConfig(**kwargs)


def test_the_token_never_shows_in_the_repr():
    assert "s3cret" not in repr(ServeConfig(models=MODELS, token="s3cret"))


def test_state_dir_defaults_under_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HAMJAX_DATA_DIR", str(tmp_path))
    assert default_state_dir() == tmp_path / "serve"
    assert ServeConfig(models=MODELS).state_path == tmp_path / "serve"
    assert ServeConfig(models=MODELS, state_dir=str(tmp_path / "x")).state_path == tmp_path / "x"


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "max 100000\n"}, None),
        ({"cpu.max": "150000 100000\n"}, 2),
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_cpu_quota_reads_cgroup_v2_and_v1(tmp_path, files, quota):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    expected = _affinity() if quota is None else min(_affinity(), quota)
    assert cpu_quota(tmp_path) == expected


def test_cpu_quota_follows_the_affinity(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cpu_quota(tmp_path) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert cpu_quota(tmp_path) == 1


def test_variants_share_the_threads():
    two = {"a": "a.onnx", "b": "b.onnx"}
    assert ServeConfig(models=two, threads=5).threads_per_model() == 2
    assert ServeConfig(models={**two, "c": "c.onnx"}, threads=2).threads_per_model() == 1
    assert ServeConfig(models=MODELS).threads_per_model() == cpu_quota()
