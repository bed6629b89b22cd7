"""Reference models in Flax NNX: MLP, CNN, ViT and HAMNet, plus :func:`build`.

Every model takes images ``x`` of shape ``(N, H, W, C)`` float32 and returns
logits ``(N, num_classes)``; its configuration is a frozen dataclass that
:func:`config_of` returns, so a search can vary widths, depths and heads.
"""

from __future__ import annotations

import dataclasses
import math

from flax import nnx

from hamjax.models.cnn import CNN, CNNConfig
from hamjax.models.external import ImportedModel, ModelImportError, check_model, import_model
from hamjax.models.hamnet import HAMNet, HAMNetConfig
from hamjax.models.mlp import MLP, MLPConfig
from hamjax.models.student import from_config, make_student, param_count
from hamjax.models.vit import ViT, ViTConfig

__all__ = [
    "CNN",
    "MLP",
    "MODELS",
    "CNNConfig",
    "HAMNet",
    "HAMNetConfig",
    "ImportedModel",
    "MLPConfig",
    "ModelImportError",
    "ViT",
    "ViTConfig",
    "build",
    "check_model",
    "config_of",
    "for_data",
    "from_config",
    "import_model",
    "make_student",
    "param_count",
]

MODELS = ("mlp", "cnn", "vit", "hamnet")

_CLASSES = {"mlp": (MLP, MLPConfig), "cnn": (CNN, CNNConfig), "vit": (ViT, ViTConfig), "hamnet": (HAMNet, HAMNetConfig)}


def _default_patch_size(height: int, width: int) -> int:
    return next(p for p in (7, 4, 2, 1) if height % p == 0 and width % p == 0)


def _default_num_tokens(input_size: int) -> int:
    # The largest token count <= 16 whose chunks are at least as long as the count: 16 for 784, 8 for 64.
    return max(t for t in range(1, 17) if input_size % t == 0 and t * t <= input_size)


def _defaults(name: str, input_shape: tuple[int, ...], num_classes: int) -> dict:
    size = math.prod(input_shape)
    if name == "mlp":
        return {"sizes": (size, 512, 512, num_classes)}
    if name == "cnn":
        return {"input_shape": input_shape, "num_classes": num_classes}
    if name == "vit":
        return {
            "input_shape": input_shape,
            "patch_size": _default_patch_size(*input_shape[:2]),
            "num_classes": num_classes,
        }
    return {"input_size": size, "num_tokens": _default_num_tokens(size), "num_classes": num_classes}


def build(name: str, *, seed: int = 0, input_shape=(28, 28, 1), num_classes: int = 10, **overrides) -> nnx.Module:
    """Build a reference model with its default configuration for an input shape.

    Defaults adapt to ``input_shape``: the MLP gets sizes
    ``(prod(input_shape), 512, 512, num_classes)``, the ViT a patch size that
    divides the image (7 for 28x28, 4 for 8x8), HAMNet
    ``input_size=prod(input_shape)`` with ``num_tokens`` dividing it (16 for
    784, 8 for 64). ``overrides`` replace config fields after that.

    Args:
      name: one of :data:`MODELS`.
      seed: seed of the ``nnx.Rngs`` used for initialization and dropout.
      input_shape: ``(H, W, C)`` of one image.
      num_classes: number of logits.
      **overrides: config fields to set, e.g. ``hidden_size=32``.

    Returns:
      The ``nnx.Module``; :func:`config_of` gives its config.

    Raises:
      ValueError: for an unknown ``name`` or override, or an invalid config.

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.models import build
      >>> model = build("vit", input_shape=(8, 8, 1), hidden_size=32)
      >>> model(jnp.ones((2, 8, 8, 1))).shape
      (2, 10)
    """
    if name not in _CLASSES:
        raise ValueError(f"build: unknown model name={name!r}; expected one of {MODELS}")
    cls, config_cls = _CLASSES[name]
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"build: input_shape={input_shape!r}; expected (height, width, channels)")
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"build: unknown override(s) {unknown} for {config_cls.__name__}; expected among {sorted(fields)}"
        )
    config = config_cls(**{**_defaults(name, input_shape, num_classes), **overrides})
    return cls(config, rngs=nnx.Rngs(seed))


def config_of(module: nnx.Module):
    """Return the configuration dataclass of a reference model.

    Args:
      module: an :class:`MLP`, :class:`CNN`, :class:`ViT` or :class:`HAMNet`.

    Returns:
      Its frozen config (e.g. a :class:`ViTConfig`).

    Raises:
      TypeError: if ``module`` is not one of the reference models.

    Examples:
      >>> from hamjax.models import build, config_of
      >>> config_of(build("mlp", input_shape=(8, 8, 1))).sizes
      (64, 512, 512, 10)
    """
    if not isinstance(module, tuple(cls for cls, _ in _CLASSES.values())):
        raise TypeError(f"config_of: expected one of MLP, CNN, ViT, HAMNet; got {type(module).__name__}")
    return module.config


def for_data(spec: str, dataset, *, seed: int = 0, where: str | None = None):
    """A model for ``dataset``: a reference model built for its inputs and classes, or an imported one, checked.

    Args:
      spec: a reference model's name (:data:`MODELS`) or ``"package.module:function"``
        (:func:`import_model`).
      dataset: the :class:`hamjax.data.Dataset` the model will see.
      seed: the reference model's initialization seed.
      where: how a failed check names the model (the CLI passes ``"--model NAME"``);
        ``None``: ``"model NAME"``.

    Returns:
      ``(apply_fn, params, config)``; ``config`` is ``None`` for an imported model.

    Raises:
      ValueError: an imported model whose output does not give one logit per
        class of ``dataset`` (:func:`check_model`), naming ``where``.

    Examples:
      >>> import hamjax
      >>> apply_fn, params, config = for_data("mlp", hamjax.data.load("digits"))
      >>> config.sizes[0], config.sizes[-1]
      (64, 10)
    """
    from hamjax._base import functional

    if spec in MODELS:
        module = build(spec, seed=seed, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
        apply_fn, params = functional(module)
        return apply_fn, params, config_of(module)
    apply_fn, params, _ = import_model(spec)
    check_model(apply_fn, params, dataset.train.x[:2], dataset.num_classes, where=where or f"model {spec}")
    return apply_fn, params, None
