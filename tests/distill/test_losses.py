"""Distillation losses on outputs against float64 numpy references, their documented properties and their errors;
the shared behaviour of every loss of the family (jit, bf16, vmap, finiteness and hyperparameter checks)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import distill

RNG = np.random.default_rng(0)
S = RNG.normal(size=(2, 3, 5)).astype(np.float32) * 2
T = RNG.normal(size=(2, 3, 5)).astype(np.float32) * 2
LABELS = RNG.integers(0, 5, size=(2, 3)).astype(np.int32)


def _lsm(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_soft(s, t, temp):
    lp, lq = _lsm(np.asarray(t, np.float64) / temp), _lsm(np.asarray(s, np.float64) / temp)
    return temp**2 * np.mean(np.sum(np.exp(lp) * (lp - lq), -1))


def _np_ce(logits, labels):
    return -np.mean(np.take_along_axis(_lsm(logits), labels[..., None], -1))


def _close(a, b, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=atol)


# --- soft targets (Hinton) -------------------------------------------------------------------------


@pytest.mark.parametrize("temp", [1.0, 4.0, 10.0])
def test_soft_target_loss_matches_numpy(temp):
    _close(distill.soft_target_loss(S, T, temperature=temp), _np_soft(S, T, temp))


def test_soft_target_loss_is_zero_for_equal_logits_and_shift_invariant():
    assert float(distill.soft_target_loss(T, T)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill.soft_target_loss(T + 3.0, T)) == pytest.approx(0.0, abs=1e-5)
    assert float(distill.soft_target_loss(S, T)) > 0


@pytest.mark.parametrize("temp", [1.0, 2.5, 8.0])
def test_soft_target_gradient_is_hinton_property(temp):
    g = jax.grad(lambda s: distill.soft_target_loss(s, T, temperature=temp))(jnp.asarray(S))
    q, p = np.exp(_lsm(S / temp)), np.exp(_lsm(T / temp))
    n = S.shape[0] * S.shape[1]
    _close(g, temp * (q - p) / n, atol=1e-6)


def test_soft_target_loss_tends_to_logit_matching_at_high_temperature():
    # T^2 scaling: for large T the loss is T-independent, mean_rows ||d - mean d||^2 / (2C).
    s, t = S - S.mean(-1, keepdims=True), T - T.mean(-1, keepdims=True)
    d = s - t
    limit = np.mean(np.sum((d - d.mean(-1, keepdims=True)) ** 2, -1)) / (2 * S.shape[-1])
    _close(distill.soft_target_loss(s, t, temperature=100.0), limit, rtol=2e-2)
    _close(distill.soft_target_loss(s, t, temperature=200.0), limit, rtol=1e-2)


def test_distillation_loss_mixes_soft_and_hard_terms():
    soft, ce = _np_soft(S, T, 3.0), _np_ce(S, LABELS)
    for alpha in (0.0, 0.3, 0.9, 1.0):
        _close(distill.distillation_loss(S, T, LABELS, temperature=3.0, alpha=alpha), alpha * soft + (1 - alpha) * ce)
    _close(distill.distillation_loss(S, T, LABELS, alpha=1.0), distill.soft_target_loss(S, T))


def test_distillation_loss_checks_labels():
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(2, 3\)"):
        distill.distillation_loss(S, T, LABELS.astype(np.float32))
    with pytest.raises(ValueError, match="labels must be integers"):
        distill.distillation_loss(S, T, LABELS[:, :2])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\)"):
        distill.distillation_loss(S, T, LABELS + 5)


def test_logit_shapes_must_match():
    with pytest.raises(ValueError, match=r"student_logits and teacher_logits .*\(2, 3, 5\) and \(2, 3, 4\)"):
        distill.soft_target_loss(S, T[..., :4])


def test_cross_entropy_matches_numpy_in_float32():
    _close(distill.cross_entropy(S, LABELS), _np_ce(S, LABELS))
    _close(jax.jit(distill.cross_entropy)(S, LABELS), _np_ce(S, LABELS))
    low = distill.cross_entropy(jnp.asarray(S, jnp.bfloat16), LABELS)
    assert low.dtype == jnp.float32 and low.shape == ()
    _close(low, _np_ce(S, LABELS), rtol=2e-2)


# --- ensembles --------------------------------------------------------------------------------------

TEACHERS = [RNG.normal(size=(4, 5)).astype(np.float32) * 2 for _ in range(3)]


def test_ensemble_targets_are_weighted_mean_probabilities():
    w = np.array([1.0, 2.0, 5.0])
    want = sum(wk / w.sum() * np.exp(_lsm(t / 2.0)) for wk, t in zip(w, TEACHERS, strict=True))
    _close(distill.ensemble_targets(TEACHERS, temperature=2.0, weights=w), want)
    _close(distill.ensemble_targets(np.stack(TEACHERS), temperature=2.0, weights=w), want)
    _close(distill.ensemble_targets(TEACHERS).sum(-1), np.ones(4))


def test_multi_teacher_loss_reduces_to_single_teacher():
    s = TEACHERS[0] + RNG.normal(size=(4, 5)).astype(np.float32)
    single = distill.soft_target_loss(s, TEACHERS[1], temperature=3.0)
    _close(distill.multi_teacher_loss(s, [TEACHERS[1]], temperature=3.0), single)
    _close(distill.multi_teacher_loss(s, TEACHERS[1][None], temperature=3.0), single)
    _close(distill.multi_teacher_loss(s, TEACHERS[1:], temperature=3.0, weights=[1.0, 0.0]), single)
    p = sum(np.exp(_lsm(t / 4.0)) for t in TEACHERS) / 3  # the default temperature is 4
    _close(distill.multi_teacher_loss(s, TEACHERS), 16 * np.mean(np.sum(p * (np.log(p) - _lsm(s / 4.0)), -1)))


def test_multi_teacher_loss_errors():
    with pytest.raises(ValueError, match=r"weights must have length K = 3 .*got shape \(2,\)"):
        distill.multi_teacher_loss(TEACHERS[0], TEACHERS, weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="weights must be finite, >= 0"):
        distill.multi_teacher_loss(TEACHERS[0], TEACHERS, weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="positive sum"):
        distill.ensemble_targets(TEACHERS, weights=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="one shape"):
        distill.multi_teacher_loss(TEACHERS[0], [TEACHERS[0], TEACHERS[1][:2]])
    with pytest.raises(ValueError, match=r"student_logits and each of teacher_logits"):
        distill.multi_teacher_loss(TEACHERS[0][:2], TEACHERS)


# --- self-distillation ------------------------------------------------------------------------------

EXITS = [RNG.normal(size=(4, 5)).astype(np.float32) for _ in range(2)]
FINAL, Y = TEACHERS[0], np.array([0, 1, 2, 3], np.int32)


def test_self_distillation_loss_matches_composition():
    want = _np_ce(FINAL, Y) + np.mean(
        [0.7 * _np_ce(e, Y) + 0.3 * _np_soft(e, FINAL, 2.0) for e in EXITS]  # alpha = 0.3, T = 2
    )
    _close(distill.self_distillation_loss(EXITS, FINAL, Y, temperature=2.0, alpha=0.3), want)


def test_self_distillation_final_logits_get_only_their_cross_entropy_gradient():
    g = jax.jit(jax.grad(lambda f: distill.self_distillation_loss(EXITS, f, Y, alpha=0.8)))(FINAL)
    q = np.exp(_lsm(FINAL))
    _close(g, (q - np.eye(5)[Y]) / 4, atol=1e-6)
    ge = jax.jit(jax.grad(lambda e: distill.self_distillation_loss(e, FINAL, Y, alpha=0.8)))(EXITS)
    assert all(float(jnp.abs(x).max()) > 1e-3 for x in ge)


def test_self_distillation_errors():
    with pytest.raises(ValueError, match="non-empty list"):
        distill.self_distillation_loss([], FINAL, Y)
    with pytest.raises(ValueError, match=r"exit_logits\[1\] and final_logits"):
        distill.self_distillation_loss([EXITS[0], EXITS[1][:, :3]], FINAL, Y)


# --- shared behaviour: jit, vmap, dtypes, hyperparameter and finiteness checks ----------------------

E_S = RNG.normal(size=(6, 5)).astype(np.float32)
E_T = RNG.normal(size=(6, 2, 4)).astype(np.float32)  # flattened to D = 8


def _probs(shape, seed):
    return np.exp(_lsm(2 * np.random.default_rng(seed).normal(size=shape))).astype(np.float32)


PROJ = {"kernel": RNG.normal(size=(3, 5)).astype(np.float32), "bias": np.linspace(-1, 1, 5, dtype=np.float32)}
F_S, F_T = RNG.normal(size=(2, 4, 4, 3)).astype(np.float32), RNG.normal(size=(2, 4, 4, 5)).astype(np.float32)
P_S, P_T = _probs((2, 2, 4, 4), 5), _probs((2, 4, 4, 4), 6)

# name -> (loss of (student, teacher), student, teacher); teacher is the argument checked for finiteness.
CASES = {
    "soft_target_loss": (lambda s, t: distill.soft_target_loss(s, t, temperature=2.0), S, T),
    "distillation_loss": (lambda s, t: distill.distillation_loss(s, t, LABELS, alpha=0.4), S, T),
    "feature_loss": (lambda s, t: distill.feature_loss(s, t, projection=PROJ, normalize=True), F_S, F_T),
    "attention_transfer_loss": (distill.attention_transfer_loss, F_S, F_T),
    "attention_probs_loss": (distill.attention_probs_loss, P_S, P_T),
    "rkd_distance_loss": (distill.rkd_distance_loss, E_S, E_T),
    "rkd_angle_loss": (distill.rkd_angle_loss, E_S, E_T),
    "multi_teacher_loss": (lambda s, t: distill.multi_teacher_loss(s, [t, t + 1.0, -t], weights=[1, 2, 3]), S, T),
    "self_distillation_loss": (lambda s, t: distill.self_distillation_loss([s, 2 * s], t, LABELS), S, T),
}


@pytest.mark.parametrize("name", CASES)
def test_jit_equals_eager_and_bf16_gives_finite_float32(name):
    fn, s, t = CASES[name]
    eager = fn(s, t)
    assert eager.shape == () and eager.dtype == jnp.float32
    _close(jax.jit(fn)(s, t), eager, rtol=1e-5, atol=1e-6)
    low = fn(jnp.asarray(s, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
    assert low.dtype == jnp.float32 and np.isfinite(float(low))
    _close(low, eager, rtol=0.1, atol=0.02)


@pytest.mark.parametrize("name", CASES)
def test_concrete_non_finite_teacher_raises(name):
    fn, s, t = CASES[name]
    bad = np.array(t, copy=True)
    bad.flat[0], bad.flat[3] = np.nan, np.inf
    with pytest.raises(ValueError, match=r"(teacher_\w+|final_logits) holds [26] non-finite values"):
        fn(s, bad)
    assert not np.isfinite(float(jax.jit(fn)(s, bad)))  # traced: unchecked, documented


def test_vmap_over_temperatures_equals_loop():
    temps = jnp.array([0.5, 1.0, 4.0, 20.0])
    for fn in (
        lambda tmp: distill.soft_target_loss(S, T, temperature=tmp),
        lambda tmp: distill.multi_teacher_loss(S, [T, -T], temperature=tmp, weights=jnp.array([0.3, 0.7])),
        lambda tmp: distill.distillation_loss(S, T, LABELS, temperature=tmp, alpha=0.5),
        lambda tmp: distill.self_distillation_loss([S], T, LABELS, temperature=tmp),
    ):
        _close(jax.jit(jax.vmap(fn))(temps), [jax.jit(fn)(tmp) for tmp in temps], rtol=1e-5)
    alphas = jnp.array([0.0, 0.25, 1.0])
    fn = lambda a: distill.distillation_loss(S, T, LABELS, alpha=a)  # noqa: E731
    _close(jax.jit(jax.vmap(fn))(alphas), [jax.jit(fn)(a) for a in alphas])


def test_traced_temperature_does_not_retrace():
    traces = []

    @jax.jit
    def f(tmp):
        traces.append(1)
        return distill.soft_target_loss(S, T, temperature=tmp)

    assert float(f(2.0)) != float(f(3.0)) and len(traces) == 1


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: distill.soft_target_loss(S, T, temperature=0.0),
            r"soft_target_loss: temperature must be a finite number > 0, got 0.0",
        ),
        (lambda: distill.soft_target_loss(S, T, temperature=-1.0), "temperature must be a finite number > 0, got -1.0"),
        (
            lambda: distill.soft_target_loss(S, T, temperature=float("nan")),
            "temperature must be a finite number > 0, got nan",
        ),
        (lambda: distill.soft_target_loss(S, T, temperature=jnp.ones(2)), r"temperature must be a scalar, got shape"),
        (
            lambda: distill.distillation_loss(S, T, LABELS, alpha=1.5),
            r"distillation_loss: alpha must be a scalar in \[0, 1\], got 1.5",
        ),
        (lambda: distill.distillation_loss(S, T, LABELS, alpha=-0.1), r"alpha must be a scalar in \[0, 1\], got -0.1"),
        (lambda: distill.self_distillation_loss([S], T, LABELS, alpha=2), r"alpha must be a scalar in \[0, 1\], got 2"),
        (
            lambda: distill.multi_teacher_loss(S, [T], temperature=-2),
            "multi_teacher_loss: temperature must be a finite number > 0, got -2",
        ),
        (lambda: distill.ensemble_targets([T], weights=[-1.0]), "weights must be finite, >= 0"),
        (
            lambda: distill.ema_update({"w": 1.0}, {"w": 2.0}, decay=-0.5),
            r"decay must be a scalar in \[0, 1\], got -0.5",
        ),
        (lambda: distill.attention_map(F_S, p=0), "attention_map: p must be a finite number > 0, got 0"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_grad_with_traced_hyperparameters_is_finite():
    def loss(s, tmp, alpha):
        return distill.distillation_loss(s, T, LABELS, temperature=tmp, alpha=alpha)

    g = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(jnp.asarray(S), 3.0, 0.5)
    chex.assert_tree_all_finite(g)
