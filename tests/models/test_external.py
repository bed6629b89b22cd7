"""Tests for hamjax.models.external: import_model specs and check_model, on the happy path and every refusal."""

import re
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.models import ImportedModel, ModelImportError, check_model, import_model

MLP_SOURCE = """
import jax
import jax.numpy as jnp


def apply_fn(params, x):
    h = x.reshape(x.shape[0], -1)
    for i, layer in enumerate(params):
        h = h @ layer["w"] + layer["b"][None]
        if i < len(params) - 1:
            h = jax.nn.relu(h)
    return h


def build():
    sizes = (64, 32, 10)
    keys = jax.random.split(jax.random.key(0), len(sizes) - 1)
    params = [
        {"w": jax.random.normal(k, (m, n)) / m**0.5, "b": jnp.zeros(n)}
        for k, m, n in zip(keys, sizes[:-1], sizes[1:])
    ]
    return apply_fn, params, jnp.ones((2, 8, 8, 1))
"""


def _write(folder, name: str, source: str):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def _mlp_reference(params, x):
    """MLP_SOURCE's apply_fn written out for its two layers, so the file is checked against more than its own copy."""
    first, second = params
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ first["w"] + first["b"][None])
    return h @ second["w"] + second["b"][None]


def build_linear():
    """A factory in this test module, imported by its module name."""
    return (lambda p, x: x @ p["w"]), {"w": jnp.arange(6.0).reshape(3, 2)}, jnp.ones((4, 3))


def not_a_triple():
    return (lambda p, x: x), {"w": jnp.ones(2)}


# --------------------------------------------------------------------------- happy paths


def test_file_spec_imports_a_plain_jnp_mlp(tmp_path):
    path = _write(tmp_path, "user_mlp.py", MLP_SOURCE)
    path_before = list(sys.path)
    model = import_model(f"{path}:build")
    assert sys.path == path_before  # the file's folder was on sys.path only while it ran
    assert isinstance(model, ImportedModel)
    apply_fn, params, example = model
    assert example.shape == (2, 8, 8, 1)
    assert [layer["w"].shape for layer in params] == [(64, 32), (32, 10)]
    logits = apply_fn(params, example)
    np.testing.assert_allclose(logits, _mlp_reference(params, example), rtol=1e-6)
    assert check_model(apply_fn, params, example, 10) == (2, 10)
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 1))
    np.testing.assert_allclose(jax.jit(apply_fn)(params, x), _mlp_reference(params, x), rtol=1e-5, atol=1e-6)


def test_file_spec_may_import_its_neighbours(tmp_path):
    _write(tmp_path, "layers.py", "SCALE = 2.0\n")
    path = _write(
        tmp_path,
        "factory.py",
        """
        import jax.numpy as jnp
        import layers

        def make():
            return (lambda p, x: x @ p["w"] * layers.SCALE), {"w": jnp.ones((3, 2))}, jnp.ones((1, 3))
        """,
    )
    apply_fn, params, example = import_model(f"{path}:make")
    np.testing.assert_array_equal(apply_fn(params, example), [[6.0, 6.0]])
    sys.modules.pop("layers", None)


def test_module_spec_names_a_function_of_an_importable_module():
    apply_fn, params, example = import_model(f"{build_linear.__module__}:build_linear")
    np.testing.assert_array_equal(apply_fn(params, example), np.tile([[6.0, 9.0]], (4, 1)))


def test_module_spec_in_a_package_and_a_dotted_attribute(tmp_path, monkeypatch):
    _write(tmp_path, "userpkg_ext/__init__.py", "")
    _write(
        tmp_path,
        "userpkg_ext/nets.py",
        """
        import jax.numpy as jnp

        class Factory:
            @staticmethod
            def build():
                return (lambda p, x: x * p["s"][None]), {"s": jnp.full((3,), 2.0)}, jnp.ones((2, 3))
        """,
    )
    monkeypatch.chdir(tmp_path)  # importable from the working directory, as with python -m
    apply_fn, params, example = import_model("userpkg_ext.nets:Factory.build")
    np.testing.assert_array_equal(apply_fn(params, example), np.full((2, 3), 2.0))
    assert str(tmp_path) not in sys.path


def test_linen_and_nnx_models_through_the_contract(tmp_path):
    path = _write(
        tmp_path,
        "flax_models.py",
        """
        import jax
        import jax.numpy as jnp
        import flax.linen as nn
        from flax import nnx
        import hamjax

        def linen():
            m = nn.Dense(5)
            return (*hamjax.linen_functional(m, m.init(jax.random.key(0), jnp.ones((1, 4)))), jnp.ones((3, 4)))

        def nnx_model():
            return (*hamjax.functional(nnx.Linear(4, 5, rngs=nnx.Rngs(0))), jnp.ones((3, 4)))
        """,
    )
    for name in ("linen", "nnx_model"):
        apply_fn, params, example = import_model(f"{path}:{name}")
        assert check_model(apply_fn, params, example, 5) == (3, 5)


def test_check_model_takes_numpy_inputs_and_a_caller_label():
    apply_fn, params, _ = build_linear()
    assert check_model(apply_fn, params, np.ones((7, 3), np.float32), np.int64(2)) == (7, 2)
    with pytest.raises(ValueError, match="^optimize: the model gives 2 logits per example"):
        check_model(apply_fn, params, np.ones((7, 3), np.float32), 3, where="optimize")


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("spec", ["json", "", ":build", "json:", "json:1fn", "my module:fn", "a..b:fn", "mod:fn()"])
def test_bad_spec_syntax(spec):
    with pytest.raises(ModelImportError, match=re.escape(f"spec must look like {_FORMS}, got {spec!r}")):
        import_model(spec)


_FORMS = "'package.module:function' or 'path/to/file.py:function'"


def test_a_spec_that_is_not_a_string():
    with pytest.raises(ModelImportError, match=re.escape(f"import_model: spec must be a string {_FORMS}, got int")):
        import_model(42)


def _refusal(spec: str) -> str:
    with pytest.raises(ModelImportError) as info:
        import_model(spec)
    message = str(info.value)
    assert "\n" not in message and message.startswith("import_model: ")
    assert isinstance(info.value, ValueError)  # the CLI turns ValueErrors into one-line errors
    return message


def test_module_that_cannot_be_imported_names_it_and_the_import_error():
    message = _refusal("no_such_pkg_hamjax.models:build")
    assert message == (
        "import_model: cannot import module 'no_such_pkg_hamjax.models' (spec 'no_such_pkg_hamjax.models:build'): "
        "ModuleNotFoundError: No module named 'no_such_pkg_hamjax'"
    )


def test_files_that_cannot_be_imported(tmp_path):
    missing = tmp_path / "nope.py"
    assert _refusal(f"{missing}:build") == (
        f"import_model: spec '{missing}:build' names the file {missing}, which does not exist"
    )
    raising = _write(tmp_path, "raising.py", "import numpy\nraise RuntimeError('no GPU here')\n")
    assert _refusal(f"{raising}:build") == (
        f"import_model: cannot import the file {raising} (spec '{raising}:build'): RuntimeError: no GPU here"
    )
    broken = _write(tmp_path, "broken.py", "def build(:\n    pass\n")
    assert _refusal(f"{broken}:build").startswith(
        f"import_model: cannot import the file {broken} (spec '{broken}:build'): SyntaxError: "
    )
    needs = _write(tmp_path, "needs.py", "import no_such_dependency_hamjax\n")
    assert _refusal(f"{needs}:build").endswith("ModuleNotFoundError: No module named 'no_such_dependency_hamjax'")


def test_missing_or_uncallable_attribute(tmp_path):
    path = _write(tmp_path, "few.py", "WIDTH = 3\n\ndef make():\n    pass\n\ndef other():\n    pass\n")
    assert _refusal(f"{path}:build") == (
        f"import_model: the file {path} has no attribute 'build' (spec '{path}:build'); its callables: make, other"
    )
    assert _refusal(f"{path}:make.inner") == (
        f"import_model: the file {path}:make has no attribute 'inner' (spec '{path}:make.inner'); its callables: none"
    )
    assert _refusal(f"{path}:WIDTH") == f"import_model: {path}:WIDTH is int, not a function"
    module = build_linear.__module__
    assert _refusal(f"{module}:missing_factory").startswith(
        f"import_model: {module} has no attribute 'missing_factory' (spec '{module}:missing_factory'); its callables: "
    )


FACTORIES = """
import jax.numpy as jnp
import numpy as np

W = {"w": jnp.ones((3, 2))}
X = jnp.ones((4, 3))

def raises():
    raise RuntimeError("weights file missing")

def needs_arguments(width):
    return None

def pair():
    return (lambda p, x: x @ p["w"]), W

def mapping():
    return {"apply_fn": None}

def bad_apply():
    return 3, W, X

def list_leaf():
    return (lambda p, x: x), {"w": [1.0, 2.0]}, X

def empty_params():
    return (lambda p, x: x), {}, X

def list_example():
    return (lambda p, x: x), W, [[1.0, 2.0, 3.0]]

def flat_example():
    return (lambda p, x: x), W, jnp.ones(3)

def wrong_input():
    return (lambda p, x: x @ p["w"]), W, jnp.ones((4, 5))

def vector_output():
    return (lambda p, x: (x @ p["w"]).sum(-1)), W, X

def batch_lost():
    return (lambda p, x: (x @ p["w"])[:1]), W, X

def tuple_output():
    return (lambda p, x: (x @ p["w"], x)), W, X

def int_output():
    return (lambda p, x: (x @ p["w"]).astype(jnp.int32)), W, X
"""


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("raises", "calling {f}() raised RuntimeError: weights file missing"),
        ("needs_arguments", "calling {f}() raised TypeError: needs_arguments() missing 1 required positional"),
        ("pair", "{f}() must return (apply_fn, params, example_input), got a tuple of 2 items"),
        ("mapping", "{f}() must return (apply_fn, params, example_input), got dict"),
        ("bad_apply", "{f}(): apply_fn is int; expected a callable apply_fn(params, x)"),
        ("list_leaf", "{f}(): params['w'][0] is float; expected a pytree of numeric arrays"),
        ("empty_params", "{f}(): params holds no arrays; expected a pytree of arrays (got dict)"),
        ("list_example", "{f}(): example_input is a list of 1 items; expected an array (batch, *input_shape)"),
        ("flat_example", "{f}(): example_input has shape (3,); expected (batch >= 1, *input_shape)"),
        ("wrong_input", "{f}(): apply_fn(params, example_input) raised TypeError: "),
        (
            "vector_output",
            "{f}(): apply_fn(params, example_input) returned shape (4,); expected logits (batch=4, classes)",
        ),
        (
            "batch_lost",
            "{f}(): apply_fn(params, example_input) returned shape (1, 2); expected logits (batch=4, classes)",
        ),
        (
            "tuple_output",
            "{f}(): apply_fn(params, example_input) returned a tuple of 2 items; expected one array of logits "
            "(batch=4, classes)",
        ),
        ("int_output", "{f}(): apply_fn(params, example_input) returned dtype int32; expected float logits"),
    ],
)
def test_factories_that_break_the_contract(tmp_path, function, message):
    path = _write(tmp_path, "factories.py", FACTORIES)
    got = _refusal(f"{path}:{function}")
    assert got.startswith("import_model: " + message.format(f=f"{path}:{function}")), got


def test_a_module_spec_whose_function_returns_the_wrong_thing():
    module = not_a_triple.__module__
    assert _refusal(f"{module}:not_a_triple") == (
        f"import_model: {module}:not_a_triple() must return (apply_fn, params, example_input), got a tuple of 2 items"
    )


@pytest.mark.parametrize(
    ("classes", "num_classes", "message"),
    [
        (
            10,
            3,
            "check_model: the model gives 10 logits per example, but the labels have 3 classes; expected logits (batch, 3)",
        ),
        (2, 0, "check_model: num_classes must be an integer >= 1, got 0"),
        (2, 2.0, "check_model: num_classes must be an integer >= 1, got 2.0"),
    ],
)
def test_check_model_refuses_a_class_count_mismatch_before_training(classes, num_classes, message):
    params = {"w": jnp.zeros((3, classes))}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_model(lambda p, x: x @ p["w"], params, jnp.ones((2, 3)), num_classes)


def test_check_model_refuses_inputs_the_model_cannot_take():
    params = {"w": jnp.zeros((3, 4))}
    with pytest.raises(ValueError, match=r"^check_model: apply_fn\(params, example_input\) raised TypeError: ") as info:
        check_model(lambda p, x: x @ p["w"], params, jnp.ones((2, 8, 8, 1)), 4)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"^check_model: example_input is a list of 1 items; expected an array"):
        check_model(lambda p, x: x @ p["w"], params, [1.0], 4)
