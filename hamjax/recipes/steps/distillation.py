"""The ``distill`` recipe step: train a smaller student of the same family from the current model.

The current model is the teacher; the student (about ``param_ratio`` of its
parameters) is :func:`hamjax.models.make_student` of the current reference
config (``student = "config"``: the depth can shrink too) or, for any model,
:func:`hamjax.prune.make_student`: the same structure narrowed through its
channel groups, inheriting the teacher's most important channels
(``"inherit"``) or drawn afresh (``"fresh"``); ``"auto"`` takes the config
where the model has one. It is trained with Hinton's soft targets and
the labels, plus optional relational (RKD) and feature terms on the
models' ``embedding``. With ``augment`` (a :func:`hamjax.augment.parse` spec) or ``mixup`` the
teacher runs online on the student's augmented view (function matching); ``teacher_method`` and
``teacher_noise`` regularise the teacher (:mod:`hamjax.distill.matching`). ``continue_with`` says whether later steps work on
the student (the default, so that pruning, quantization and export compound
on it) or go on with the teacher.
"""

from __future__ import annotations

from hamjax import augment, distill, models, prune, report, train
from hamjax._base import functional, trainable
from hamjax.footprint import param_count
from hamjax.recipes.schema import Context, Field, RecipeError, StepKind

STUDENTS = ("auto", "config", "inherit", "fresh")
"""How the student is built: from the reference config, or from the channel groups (inherited or fresh)."""

FIELDS = {
    "param_ratio": Field(float, 0.25, above=0.0, high=1.0, doc="student parameters / teacher parameters"),
    "depth_ratio": Field(float, 1.0, above=0.0, high=1.0, doc="student depth / teacher depth (student config)"),
    "student": Field(
        str, "auto", choices=STUDENTS, doc="config (reference models), inherit or fresh (any model), or auto"
    ),
    "temperature": Field(float, 4.0, above=0.0, doc="softmax temperature of the soft targets"),
    "alpha": Field(float, 0.9, low=0.0, high=1.0, doc="weight of the soft targets; the labels get 1 - alpha"),
    "relational": Field(float, 0.0, low=0.0, doc="weight of relational KD (distance + 2 angle) on the embeddings"),
    "features": Field(float, 0.0, low=0.0, doc="weight of feature matching on the embeddings (projected)"),
    "epochs": Field(int, 20, low=1, doc="passes over the training split"),
    "batch_size": Field(int, 128, low=1, doc="examples per step"),
    "learning_rate": Field(float, 1e-3, above=0.0, doc="peak learning rate"),
    "warmup_steps": Field(int, 0, low=0, doc="linear warm-up then cosine decay; 0 keeps the rate constant"),
    "patience": Field(int, None, low=1, doc="early stopping after this many validations without improvement"),
    "augment": Field(str, None, doc="augmentation spec (hamjax.augment.parse) of the view student and teacher share"),
    "mixup": Field(float, 0.0, low=0.0, doc="Beta alpha of mixup on the shared view; 0 is off"),
    "teacher_method": Field(
        str, "eval", choices=distill.TEACHER_METHODS, doc="the teacher in eval mode, or in train mode with dropout"
    ),
    "teacher_noise": Field(float, 0.0, low=0.0, doc="standard deviation of Gaussian jitter on the teacher's input"),
    "continue_with": Field(str, "student", choices=("student", "teacher"), doc="the model later steps work on"),
    "stage": Field(str, "distilled", doc="name of the row this step adds to the report"),
}


def reference(f: dict) -> str | None:
    """The fields that make the step need a reference model (a student from the config), else ``None``.

    Examples:
      >>> from hamjax.recipes.steps import distillation
      >>> distillation.reference({"param_ratio": 0.25, "student": "config", "depth_ratio": 1.0})
      "param_ratio=0.25, student='config'"
      >>> distillation.reference({"param_ratio": 0.25, "student": "auto", "depth_ratio": 1.0}) is None
      True
    """
    if f["student"] == "config":
        return f"param_ratio={f['param_ratio']:g}, student='config'"
    if f["depth_ratio"] != 1.0:
        return f"depth_ratio={f['depth_ratio']:g}"
    return None


def check(f: dict) -> str | None:
    """The augmentation spec, parsed: a message for a spec :func:`hamjax.augment.parse` refuses.

    Examples:
      >>> from hamjax.recipes.steps import distillation
      >>> distillation.check({"augment": "shift=2,rotate=10"}) is None
      True
      >>> distillation.check({"augment": "spin=3"}).startswith("augment: parse('spin=3'): ")
      True
    """
    try:
        augment.parse(f["augment"])
    except ValueError as err:
        return f"augment: {err}"
    if f.get("student") in ("inherit", "fresh") and f.get("depth_ratio", 1.0) != 1.0:
        return (
            f"depth_ratio={f['depth_ratio']:g} needs student='config' (channel groups narrow, they do not drop layers)"
        )
    return None


def _view_notes(f: dict) -> str:
    parts = [f"augment {augment.parse(f['augment'])!r}"] if f["augment"] else []
    parts += [f"mixup {f['mixup']:g}"] if f["mixup"] else []
    parts += [f"{f['teacher_method']} teacher"] if f["teacher_method"] != "eval" else []
    parts += [f"teacher noise {f['teacher_noise']:g}"] if f["teacher_noise"] else []
    return f"; {', '.join(parts)}" if parts else ""


def _terms(f: dict) -> tuple:
    terms = [distill.SoftTargets(f["temperature"], f["alpha"]), distill.HardLabels(1 - f["alpha"])]
    if f["relational"]:
        terms.append(distill.Relational(weight=f["relational"]))
    if f["features"]:
        terms.append(distill.Features("embedding", "embedding", weight=f["features"]))
    return tuple(terms)


def run(f: dict, context: Context) -> Context:
    """Distill ``context``'s model into a narrower student; add the student's report row.

    Args:
      f: the step's validated fields (:data:`FIELDS`).
      context: the run so far; ``student = "config"`` needs ``context.config``.

    Returns:
      ``context``, working on the student when ``continue_with = "student"``.

    Raises:
      RecipeError: ``student = "config"`` on a model without a reference config.

    Examples:
      >>> import hamjax
      >>> from hamjax import recipes
      >>> module = hamjax.models.build("mlp", input_shape=(8, 8, 1))
      >>> apply_fn, params = hamjax.functional(module)
      >>> context = recipes.Context(apply_fn, params, hamjax.data.load("digits"), progress=False,
      ...                           config=hamjax.models.config_of(module))
      >>> fields = recipes.validate({"name": "r", "steps": [{"kind": "distill", "epochs": 1}]}).steps[0].params
      >>> run(dict(fields), context).stages[-1].name  # doctest: +SKIP
      'distilled'
    """
    stage, mode = f["stage"], f["student"]
    if mode == "auto":
        mode = "config" if context.config is not None or f["depth_ratio"] != 1.0 else "inherit"
    if mode == "config":
        apply_fn, params, student_config = _config_student(f, context)
    else:
        x = context.dataset.train.x[:2]
        apply_fn, params = prune.make_student(
            context.apply_fn, context.params, x, param_ratio=f["param_ratio"], init=mode, seed=context.seed
        )
        student_config = None
    config = train.TrainConfig(
        epochs=f["epochs"],
        batch_size=f["batch_size"],
        learning_rate=f["learning_rate"],
        warmup_steps=f["warmup_steps"],
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
        augment=f["augment"],
        mixup=f["mixup"],
        teacher_method=f["teacher_method"],
        teacher_noise=f["teacher_noise"],
        checkpoint_dir=context.checkpoint_dir(stage),
        progress=context.progress,
    )
    context.note_resumed(stage, result)
    student = param_count(trainable(apply_fn, result.params))
    teacher = param_count(trainable(context.apply_fn, context.params))
    how = "from its config" if student_config is not None else f"{mode} through its channel groups"
    notes = (
        f"student {student:,} params ({student / teacher:.0%} of the teacher, {how}), "
        f"distilled at T={f['temperature']:g}, alpha={f['alpha']:g}{_view_notes(f)}"
    )
    context.stages.append(report.Stage.from_model(stage, apply_fn, result.params, notes=notes))
    if f["continue_with"] == "student":
        context.apply_fn, context.params, context.config = apply_fn, result.params, student_config
    return context


def _config_student(f: dict, context: Context):
    what = reference(f) or f"param_ratio={f['param_ratio']:g}"
    if context.config is None:
        raise RecipeError(
            f"distill ({what}) needs a hamjax reference model ({', '.join(models.MODELS)}) to build "
            "its student from; this model has no config: use student = 'inherit' or 'fresh' with depth_ratio = 1"
        )
    try:
        student_config = models.make_student(context.config, param_ratio=f["param_ratio"], depth_ratio=f["depth_ratio"])
    except TypeError as err:  # a shrunk ViT or HAMNet keeps per-layer widths that no student config describes
        raise RecipeError(
            f"distill ({what}) cannot build a student of this model ({err}); put distill before a "
            "prune step with shrink = true, or use student = 'inherit'"
        ) from None
    apply_fn, params = functional(models.from_config(student_config, seed=context.seed))
    return apply_fn, params, student_config


KIND = StepKind(
    "distill",
    FIELDS,
    run,
    doc="train a narrower student of the current model (any model) with knowledge distillation from it",
    reference=reference,
    check=check,
)
