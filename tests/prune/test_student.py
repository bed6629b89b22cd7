"""Students of any model from its channel groups: size, structure, inherited or fresh weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hamjax
from hamjax import prune
from hamjax._base import trainable

from . import any_models


def _count(apply_fn, params):
    return sum(int(np.size(a)) for a in jax.tree.leaves(trainable(apply_fn, params)))


@pytest.mark.parametrize("name", ["resnet", "transformer", "concat_mlp"])
def test_the_student_has_at_most_the_asked_share_and_runs(name):
    apply_fn, params, x = any_models.BUILDERS[name]()
    student_fn, student = prune.make_student(apply_fn, params, x, param_ratio=0.6)
    share = _count(student_fn, student) / _count(apply_fn, params)
    assert 0.3 < share <= 0.6
    assert jax.jit(student_fn)(student, x).shape == hamjax.call_model(apply_fn, params, x)[0].shape


def test_inherit_keeps_the_teachers_most_important_channels_and_fresh_draws_new_ones():
    apply_fn, params, x = any_models.concat_mlp()
    _, inherited = prune.make_student(apply_fn, params, x, param_ratio=0.5)
    _, fresh = prune.make_student(apply_fn, params, x, param_ratio=0.5, init="fresh", seed=3)
    left = np.asarray(params["params"]["left"]["kernel"])
    kept = np.asarray(inherited["params"]["left"]["kernel"])
    importance = np.asarray(prune.group_importance(params, prune.channel_groups(apply_fn, params, x)[0]))
    chosen = [int(np.argmin(np.abs(left - kept[:, [j]]).sum(axis=0))) for j in range(kept.shape[1])]
    assert sorted(chosen) == sorted(np.argsort(-importance)[: kept.shape[1]].tolist())
    assert fresh["params"]["left"]["kernel"].shape == kept.shape
    assert not np.allclose(fresh["params"]["left"]["kernel"], kept)
    assert float(jnp.std(fresh["params"]["left"]["kernel"])) == pytest.approx(float(np.std(left)), rel=0.5)


def test_bad_students():
    apply_fn, params, x = any_models.concat_mlp()
    with pytest.raises(ValueError, match="param_ratio"):
        prune.make_student(apply_fn, params, x, param_ratio=0.0)
    with pytest.raises(ValueError, match="init must be one of"):
        prune.make_student(apply_fn, params, x, param_ratio=0.5, init="zeros")
    with pytest.raises(ValueError, match="no prunable channel group"):
        prune.make_student(lambda p, xx: xx @ p["w"], {"w": jnp.ones((5, 3))}, x, param_ratio=0.5)
