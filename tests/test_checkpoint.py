import os
import re
import stat
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hamjax.checkpoint import Checkpointer, load_tree, save_tree


def test_checkpointer_round_trips_optimizer_state_structure(tmp_path):
    params = {"a": {"kernel": jnp.arange(6.0).reshape(2, 3)}, "b": jnp.ones(3)}
    opt_state = optax.adam(1e-3).init(params)
    tree = {"params": params, "opt": opt_state, "step": jnp.asarray(7, jnp.int32)}
    with Checkpointer(tmp_path, every=5) as ckpt:
        assert ckpt.restore_latest(tree) is None
        assert not ckpt.maybe_save(3, tree)
        assert ckpt.maybe_save(5, tree, {"history": [1.5]})
        step, restored, meta = ckpt.restore_latest(tree)
    assert step == 5 and meta == {"history": [1.5]}
    assert type(restored["opt"][0]) is type(opt_state[0])
    np.testing.assert_array_equal(restored["params"]["a"]["kernel"], params["a"]["kernel"])
    assert int(restored["step"]) == 7


def test_checkpointer_keeps_the_newest_and_rejects_mismatched_trees(tmp_path):
    with Checkpointer(tmp_path, every=1, max_to_keep=2) as ckpt:
        for step in range(1, 5):
            ckpt.save(step, {"w": jnp.full(2, float(step))})
        step, tree, _ = ckpt.restore_latest({"w": jnp.zeros(2)})
        assert step == 4 and tree["w"].tolist() == [4.0, 4.0]
        with pytest.raises(ValueError, match="no intact checkpoint in .*step 4 .*step 3 "):
            ckpt.restore_latest({"w": jnp.zeros(2), "extra": jnp.zeros(1)})
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["3", "4"]


def test_maybe_save_waits_out_the_minimum_interval_unless_the_step_is_the_last(tmp_path, monkeypatch):
    import hamjax.checkpoint as checkpoint

    now = [100.0]
    monkeypatch.setattr(checkpoint.time, "monotonic", lambda: now[0])
    with Checkpointer(tmp_path, every=2, min_interval_s=10.0) as ckpt:
        tree = {"w": jnp.zeros(2)}
        assert not ckpt.maybe_save(2, tree)  # due by step, not by time
        now[0] += 10.0
        assert not ckpt.maybe_save(3, tree)  # due by time, not by step
        assert ckpt.maybe_save(4, tree)
        now[0] += 5.0
        assert not ckpt.maybe_save(6, tree)
        assert ckpt.maybe_save(7, tree, last=True)
        assert ckpt.latest_step() == 7
    with Checkpointer(tmp_path / "never") as ckpt:
        assert not ckpt.maybe_save(1, {"w": jnp.zeros(2)}, last=True)


def test_checkpointer_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="Checkpointer: min_interval_s must be a finite number >= 0, got -1"):
        Checkpointer(tmp_path, min_interval_s=-1)
    with pytest.raises(ValueError, match="Checkpointer: every must be an integer >= 1, got 0"):
        Checkpointer(tmp_path, every=0)
    with pytest.raises(ValueError, match="Checkpointer: every must be an integer >= 1, got 2.5"):
        Checkpointer(tmp_path, every=2.5)
    with pytest.raises(ValueError, match="Checkpointer: max_to_keep must be an integer >= 1, got 0"):
        Checkpointer(tmp_path, max_to_keep=0)


def _two_steps(directory):
    with Checkpointer(directory, every=1, max_to_keep=3) as ckpt:
        ckpt.save(1, {"w": jnp.full(3, 1.0)}, {"record": 1})
        ckpt.save(2, {"w": jnp.full(3, 2.0)}, {"record": 2})


def _truncate_arrays(step_dir):
    files = [p for p in (step_dir / "tree").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    for path in files:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size // 2)


def test_restore_latest_falls_back_from_a_truncated_array_file(tmp_path):
    _two_steps(tmp_path)
    _truncate_arrays(tmp_path / "2")
    with Checkpointer(tmp_path, every=1, max_to_keep=3) as ckpt:
        with pytest.warns(RuntimeWarning, match=r"skipped the checkpoint at step 2 \(.+\) in .*restored step 1"):
            step, tree, meta = ckpt.restore_latest({"w": jnp.zeros(3)})
        assert step == 1 and tree["w"].tolist() == [1.0, 1.0, 1.0] and meta == {"record": 1}
        # The resumed run writes step 2 again: it replaces the corrupt one, which then restores.
        ckpt.save(2, {"w": jnp.full(3, 5.0)}, {"record": 5})
        step, tree, meta = ckpt.restore_latest({"w": jnp.zeros(3)})
    assert step == 2 and tree["w"].tolist() == [5.0, 5.0, 5.0] and meta == {"record": 5}


@pytest.mark.parametrize("broken", ["{not json", "[1, 2]"])
def test_restore_latest_falls_back_from_broken_metadata(tmp_path, broken):
    _two_steps(tmp_path)
    (tmp_path / "2" / "meta" / "metadata").write_text(broken)
    with Checkpointer(tmp_path) as ckpt, pytest.warns(RuntimeWarning, match="step 2") as caught:
        step, tree, meta = ckpt.restore_latest({"w": jnp.zeros(3)})
    assert step == 1 and tree["w"].tolist() == [1.0, 1.0, 1.0] and meta == {"record": 1}
    assert len(caught) == 1


def test_restore_latest_falls_back_from_a_step_missing_its_files(tmp_path):
    _two_steps(tmp_path)
    for path in sorted((tmp_path / "2").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    with Checkpointer(tmp_path) as ckpt, pytest.warns(RuntimeWarning, match="step 2"):
        step, tree, _ = ckpt.restore_latest({"w": jnp.zeros(3)})
    assert step == 1 and tree["w"].tolist() == [1.0, 1.0, 1.0]


def test_restore_latest_names_the_directory_when_no_step_is_intact(tmp_path):
    _two_steps(tmp_path)
    _truncate_arrays(tmp_path / "2")
    (tmp_path / "1" / "meta" / "metadata").write_text("{not json")
    with (
        Checkpointer(tmp_path) as ckpt,
        pytest.raises(ValueError, match=r"no intact checkpoint in (.+) .*step 2 .*; step 1 ") as err,
    ):
        ckpt.restore_latest({"w": jnp.zeros(3)})
    assert str(tmp_path) in str(err.value)


def test_checkpointer_refuses_a_regular_file_or_an_unusable_directory(tmp_path):
    path = tmp_path / "ckpt"
    path.write_text("not a directory")
    with pytest.raises(
        ValueError, match=re.escape(f"Checkpointer: directory must be a directory, got the regular file '{path}'")
    ):
        Checkpointer(path)
    with pytest.raises(
        ValueError, match=re.escape(f"Checkpointer: directory '{path / 'sub'}' cannot be created: '{path}' is a file")
    ):
        Checkpointer(path / "sub")
    assert path.read_text() == "not a directory"
    if os.geteuid() != 0:  # root reads and writes any directory
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="Checkpointer: directory .*locked' is not a directory this process can"):
            Checkpointer(locked)


def test_save_and_load_tree(tmp_path):
    tree = {"w": jnp.arange(4, dtype=jnp.int8), "s": jnp.float32(2.5)}
    save_tree(tmp_path / "t", tree)
    out = load_tree(tmp_path / "t", tree)
    assert out["w"].dtype == jnp.int8 and out["w"].tolist() == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_tree(tmp_path / "missing")


def test_atomic_write_replaces_whole_files_and_cleans_up_on_failure(tmp_path):
    from hamjax.checkpoint import atomic_write

    path = tmp_path / "sub" / "f.txt"
    atomic_write(path, "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    with pytest.raises(TypeError):
        atomic_write(path, 3)
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.txt"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_write_creates_files_with_the_process_umask(tmp_path, umask, mode):
    from hamjax.checkpoint import atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "report.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == mode


def test_atomic_write_removes_the_temporary_file_a_killed_write_left(tmp_path):
    from hamjax.checkpoint import atomic_write

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = tmp_path / f".report.json.{child.pid}-0123456789ab.tmp"
    stale.write_text("partial")
    legacy = tmp_path / ".report.json.k2j4h1x_.tmp"
    legacy.write_text("partial")
    live = tmp_path / f".report.json.{os.getpid()}-feedfacecafe.tmp"
    live.write_text("being written")
    other = tmp_path / ".other.json.1-0123456789ab.tmp"
    other.write_text("another target's")
    atomic_write(tmp_path / "report.json", "{}\n")
    assert (tmp_path / "report.json").read_text() == "{}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.json", live.name, other.name])
