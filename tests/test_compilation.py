"""hamjax.compilation: the persistent compilation cache's folder, its setup, and the compile log."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

from hamjax import compilation


def test_cache_dir_prefers_the_option_then_the_environment_then_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HAMJAX_COMPILE_CACHE", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compilation.cache_dir(tmp_path / "opt") == tmp_path / "opt"
    assert compilation.cache_dir() == tmp_path / "env"
    monkeypatch.setenv("HAMJAX_COMPILE_CACHE", "")
    assert compilation.cache_dir() is None  # set and empty: off
    monkeypatch.delenv("HAMJAX_COMPILE_CACHE")
    assert compilation.cache_dir() == tmp_path / "xdg" / "hamjax" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert compilation.cache_dir() == tmp_path / "home" / ".cache" / "hamjax" / "jax"


def test_a_cache_folder_that_is_a_file_is_refused_before_configuring(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"^use_cache: directory must be a directory, got the regular file"):
        compilation.use_cache(tmp_path / "file")
    with pytest.raises(ValueError, match="cannot be created"):
        compilation.use_cache(tmp_path / "file" / "sub")
    assert jax.config.jax_compilation_cache_dir == before


def test_compile_log_counts_compilations_and_nothing_after_the_block():
    with compilation.compile_log() as log:
        jax.jit(lambda a: jnp.sin(a) * 5.0)(jnp.ones(11)).block_until_ready()
    assert log.compiles >= 1 and log.seconds > 0 and log.cache_hits == 0
    seen = log.compiles
    jax.jit(lambda a: jnp.cos(a) * 7.0)(jnp.ones(13)).block_until_ready()
    assert log.compiles == seen
    assert set(log.to_dict()) == {"seconds", "compiles", "cache_hits", "cache_misses"}


_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp
    from hamjax import compilation
    path = compilation.use_cache(sys.argv[1])
    with compilation.compile_log() as log:
        jax.jit(lambda a: jnp.tanh(a @ a.T) + 1.0)(jnp.ones((8, 8))).block_until_ready()
    print(log.cache_hits, log.cache_misses, len(list(path.iterdir())))
    """
)


def test_a_second_process_reads_what_the_first_compiled(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}

    def run():
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tmp_path / "cache")], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return [int(v) for v in done.stdout.split()]

    hits, misses, files = run()
    assert hits == 0 and misses >= 1 and files >= 1  # a program that compiles in milliseconds is kept too
    hits, misses, _ = run()
    assert hits >= 1 and misses == 0
