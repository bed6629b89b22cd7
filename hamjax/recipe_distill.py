"""The ``distill`` recipe step: train a smaller student of the same family from the current model.

The current model is the teacher; the student is
:func:`hamjax.models.make_student` of the current reference config (about
``param_ratio`` of its parameters), trained with Hinton's soft targets and
the labels, plus optional relational (RKD) and feature terms on the
models' ``embedding``. ``continue_with`` says whether later steps work on
the student (the default) or go on with the teacher.
"""

from __future__ import annotations

from hamjax import distill, models, report
from hamjax import train as train_lib
from hamjax._base import functional
from hamjax.recipe_steps import stage_checkpoint_dir
from hamjax.recipes import Context, Field, RecipeError, register_step

_DISTILL_FIELDS = {
    "param_ratio": Field(float, 0.25, above=0.0, high=1.0, doc="student parameters / teacher parameters"),
    "depth_ratio": Field(float, 1.0, above=0.0, high=1.0, doc="student depth / teacher depth"),
    "temperature": Field(float, 4.0, above=0.0, doc="softmax temperature of the soft targets"),
    "alpha": Field(float, 0.9, low=0.0, high=1.0, doc="weight of the soft targets; the labels get 1 - alpha"),
    "relational": Field(float, 0.0, low=0.0, doc="weight of relational KD (distance + 2 angle) on the embeddings"),
    "features": Field(float, 0.0, low=0.0, doc="weight of feature matching on the embeddings (projected)"),
    "epochs": Field(int, 20, low=1, doc="passes over the training split"),
    "batch_size": Field(int, 128, low=1, doc="examples per step"),
    "learning_rate": Field(float, 1e-3, above=0.0, doc="peak learning rate"),
    "patience": Field(int, None, low=1, doc="early stopping after this many validations without improvement"),
    "continue_with": Field(str, "student", choices=("student", "teacher"), doc="the model later steps work on"),
    "stage": Field(str, "distilled", doc="name of the row this step adds to the report"),
}


def _terms(f: dict) -> tuple:
    terms = [distill.SoftTargets(f["temperature"], f["alpha"]), distill.HardLabels(1 - f["alpha"])]
    if f["relational"]:
        terms.append(distill.Relational(weight=f["relational"]))
    if f["features"]:
        terms.append(distill.Features("embedding", "embedding", weight=f["features"]))
    return tuple(terms)


def _run_distill(f: dict, context: Context) -> Context:
    if context.config is None:
        raise RecipeError(
            "distill needs a reference model (hamjax.models) to build a student of the same family; "
            "this model has no config (a shrunk model has none: put distill before prune with shrink)"
        )
    stage = f["stage"]
    student_config = models.make_student(context.config, param_ratio=f["param_ratio"], depth_ratio=f["depth_ratio"])
    apply_fn, params = functional(models.from_config(student_config, seed=context.seed))
    config = train_lib.TrainConfig(
        epochs=f["epochs"],
        batch_size=f["batch_size"],
        learning_rate=f["learning_rate"],
        patience=f["patience"],
        seed=context.seed,
    )
    result = distill.fit(
        apply_fn,
        params,
        context.dataset,
        config,
        teachers=(context.apply_fn, context.params),
        terms=_terms(f),
        checkpoint_dir=stage_checkpoint_dir(context, stage),
        progress=context.progress,
    )
    notes = (
        f"student {models.param_count(student_config):,} params "
        f"({models.param_count(student_config) / models.param_count(context.config):.0%} of the teacher), "
        f"distilled at T={f['temperature']:g}, alpha={f['alpha']:g}"
    )
    context.stages.append(report.Stage.from_model(stage, apply_fn, result.params, notes=notes))
    if f["continue_with"] == "student":
        context.apply_fn, context.params, context.config = apply_fn, result.params, student_config
    return context


register_step(
    "distill",
    _DISTILL_FIELDS,
    _run_distill,
    doc="train a smaller student of the current reference model with knowledge distillation from it",
)
