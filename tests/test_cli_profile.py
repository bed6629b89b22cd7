"""``hamjax optimize`` with a persistent compilation cache, per-stage profiles and the memory column."""

import gzip
import json
import os

import jax
import pytest

from hamjax import cli, compilation, train

_TINY = """
name = "tiny"
[[steps]]
kind = "train"
epochs = 1
batch_size = 64
"""


def _no_training(monkeypatch):
    def fit(*args, **kwargs):
        raise AssertionError("trained before refusing the arguments")

    monkeypatch.setattr(train, "fit", fit)


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("hamjax optimize: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "file"
    path.write_text("not a folder")
    return path


def test_a_cache_or_profile_folder_that_cannot_be_one_is_refused_before_training(tmp_path, a_file, monkeypatch, capsys):
    _no_training(monkeypatch)
    before = jax.config.jax_compilation_cache_dir
    argv = ["optimize", "--data", "digits", "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main([*argv, "--compile-cache", str(a_file)]) == 2
    assert f"--compile-cache must be a directory, got the regular file '{a_file}'" in _error(capsys)
    monkeypatch.setenv("HAMJAX_COMPILE_CACHE", str(a_file))
    assert cli.main(argv) == 2
    assert f"$HAMJAX_COMPILE_CACHE must be a directory, got the regular file '{a_file}'" in _error(capsys)
    monkeypatch.setenv("HAMJAX_COMPILE_CACHE", "")
    assert cli.main([*argv, "--profile", str(a_file)]) == 2
    assert f"--profile must be a directory, got the regular file '{a_file}'" in _error(capsys)
    assert cli.main([*argv, "--profile", str(a_file / "sub")]) == 2
    assert "--profile" in _error(capsys)
    assert jax.config.jax_compilation_cache_dir == before


def test_the_default_cache_folder_is_the_users_and_is_checked(tmp_path, monkeypatch, capsys):
    _no_training(monkeypatch)
    monkeypatch.delenv("HAMJAX_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "hamjax").mkdir(parents=True)
    (tmp_path / "xdg" / "hamjax" / "jax").write_text("x")
    argv = ["optimize", "--data", "digits", "--out", str(tmp_path / "out"), "--quiet"]
    assert cli.main(argv) == 2
    err = _error(capsys)
    assert "the compilation cache folder (choose one with --compile-cache DIR, or --no-compile-cache)" in err
    assert str(tmp_path / "xdg" / "hamjax" / "jax") in err


def test_cache_options_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["optimize", "--compile-cache", "c", "--no-compile-cache"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_optimize_writes_a_profile_per_stage_caches_programs_and_reports_memory(tmp_path, monkeypatch, capsys):
    (tmp_path / "tiny.toml").write_text(_TINY)
    out, profile, cache = tmp_path / "out", tmp_path / "profile", tmp_path / "cache"
    argv = ["optimize", "--data", "digits", "--recipe", str(tmp_path / "tiny.toml"), "--out", str(out), "--quiet"]
    try:
        assert cli.main([*argv, "--profile", str(profile), "--compile-cache", str(cache)]) == 0
    finally:
        compilation.use_cache(None)  # the rest of the suite compiles without the cache
    printed = capsys.readouterr().out
    payload = json.loads((out / "report.json").read_text())
    compiled = payload["meta"]["compile"]
    assert compiled["compiles"] > 0 and compiled["cache_misses"] > 0 and compiled["cache_dir"] == str(cache)
    assert any(cache.iterdir()) and f"programs in {compiled['seconds']:.1f} s, 0 read from the cache" in printed
    assert payload["meta"]["profiles"] == {"dense": str(profile / "dense")}
    (xplane,) = (profile / "dense").glob("plugins/profile/*/*.xplane.pb")
    (perfetto,) = (profile / "dense").glob("plugins/profile/*/perfetto_trace.json.gz")
    assert xplane.stat().st_size > 0 and "traceEvents" in json.loads(gzip.decompress(perfetto.read_bytes()))
    assert "memory @256 (MB)" in payload["columns"]
    (dense,) = payload["stages"]
    assert dense["compiled_memory_bytes"] > 256 * 64 * 4  # at least the batch of inputs
    assert "| memory @256 (MB) |" in (out / "report.md").read_text()
    assert os.path.isdir(out / "model")
