"""Loss terms: their fields are checked when built, and each term's loss is the family's loss on its inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax import distill
from hamjax.distill.terms import PairTerm, TermInputs

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 5)).astype(np.float32)
TEACHER = RNG.normal(size=(6, 5)).astype(np.float32)
LABELS = np.arange(6, dtype=np.int32) % 5
FEATURES = RNG.normal(size=(6, 4, 3)).astype(np.float32)
TEACHER_FEATURES = RNG.normal(size=(6, 4, 8)).astype(np.float32)


def _inputs(teacher_logits=(TEACHER,), adapter=None, teacher_weights=None):
    taps = {"h": FEATURES, "embedding": FEATURES.reshape(6, -1)}
    teacher_taps = [{"h": TEACHER_FEATURES, "embedding": TEACHER_FEATURES.reshape(6, -1)} for _ in teacher_logits]
    return TermInputs(LOGITS, taps, list(teacher_logits), teacher_taps, LABELS, adapter, teacher_weights)


def _close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_output_terms_are_the_losses_they_name():
    _close(distill.SoftTargets(2.0).loss(_inputs()), distill.soft_target_loss(LOGITS, TEACHER, temperature=2.0))
    two = _inputs((TEACHER, -TEACHER), teacher_weights=(3.0, 1.0))
    want = distill.multi_teacher_loss(LOGITS, [TEACHER, -TEACHER], temperature=2.0, weights=(3.0, 1.0))
    _close(distill.SoftTargets(2.0).loss(two), want)
    _close(distill.HardLabels().loss(_inputs()), distill.cross_entropy(LOGITS, LABELS))


def test_pair_terms_compare_the_named_intermediates():
    feats = distill.Features("h", "h")
    projection = feats.init(
        jax.random.key(0), jax.ShapeDtypeStruct((6, 4, 3), jnp.float32), jax.ShapeDtypeStruct((6, 4, 8), jnp.float32)
    )
    assert projection["kernel"].shape == (3, 8)
    want = distill.feature_loss(FEATURES, TEACHER_FEATURES, projection=projection)
    _close(feats.loss(_inputs(adapter=projection)), want)
    same = jax.ShapeDtypeStruct((6, 4, 3), jnp.float32)
    assert feats.init(jax.random.key(0), same, same) is None
    _close(
        distill.AttentionTransfer("h", "h", p=1.0).loss(_inputs()),
        distill.attention_transfer_loss(FEATURES, TEACHER_FEATURES, p=1.0),
    )
    rel = distill.Relational(distance=0.5, angle=3.0).loss(_inputs())
    s, t = FEATURES.reshape(6, -1), TEACHER_FEATURES.reshape(6, -1)
    _close(rel, 0.5 * distill.rkd_distance_loss(s, t) + 3.0 * distill.rkd_angle_loss(s, t))
    assert all(issubclass(c, PairTerm) for c in (distill.Features, distill.AttentionProbs, distill.Relational))


def test_self_distillation_projects_each_exit_to_the_classes():
    term = distill.SelfDistillation(exits=["h"], temperature=2.0, alpha=0.3)
    heads = term.init(jax.random.key(1), {"h": jax.ShapeDtypeStruct((6, 4, 3), jnp.float32)}, 5)
    assert term.exits == ("h",) and heads["h"]["kernel"].shape == (3, 5)
    exit_logits = distill.project(heads["h"], FEATURES.mean(axis=1))
    want = distill.self_distillation_loss([exit_logits], LOGITS, LABELS, temperature=2.0, alpha=0.3)
    _close(term.loss(_inputs(adapter=heads)), want)


def test_terms_list_every_kind():
    assert set(distill.TERMS) == {
        distill.SoftTargets,
        distill.HardLabels,
        distill.Features,
        distill.AttentionTransfer,
        distill.AttentionProbs,
        distill.Relational,
        distill.SelfDistillation,
    }


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: distill.SoftTargets(temperature=0.0), "SoftTargets: temperature must be a finite number > 0, got 0.0"),
        (lambda: distill.SoftTargets(weight=-1), "SoftTargets: weight must be a finite number >= 0, got -1"),
        (lambda: distill.HardLabels(weight="1"), "HardLabels: weight must be a finite number >= 0, got '1'"),
        (lambda: distill.Features(3, "h"), r"Features: student must be an intermediate name \(a string\), got 3"),
        (lambda: distill.Features("h", "h", teacher_index=-1), "Features: teacher_index must be an integer >= 0"),
        (lambda: distill.Relational(angle=-2.0), "Relational: angle must be a finite number >= 0, got -2.0"),
        (
            lambda: distill.SelfDistillation(),
            r"SelfDistillation: exits must be one or more intermediate names, got \(\)",
        ),
        (
            lambda: distill.SelfDistillation(exits=("h",), alpha=2.0),
            r"SelfDistillation: alpha must be a finite number >= 0 and <= 1, got 2.0",
        ),
    ],
)
def test_bad_fields_are_named_when_a_term_is_built(build, match):
    with pytest.raises(ValueError, match=match):
        build()
