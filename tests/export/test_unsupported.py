"""export.onnx refuses, before converting anything, an output path it could not write and a model it could not export."""

import functools
import os
import re

import jax
import jax.extend.core as jcore
import jax.numpy as jnp
import jax2onnx
import numpy as np
import pytest

from hamjax import checkpoint, export, quant
from hamjax.export import graph

W = np.ones((8, 3), np.float32) / 8


def _x(rows=16, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, size=(rows, 8)).astype(np.float32)


def _linear(p, x):
    return x @ p


@pytest.fixture
def no_conversion(monkeypatch):
    """Fail the test if anything reaches jax2onnx's conversion or calibrates a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("conversion or calibration was reached")

    monkeypatch.setattr(jax2onnx, "to_onnx", refuse)
    monkeypatch.setattr(quant, "quantize_model", refuse)


@pytest.fixture
def no_tracing(no_conversion, monkeypatch):
    """Fail the test if the model is even traced."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was traced")

    monkeypatch.setattr(graph, "trace", refuse)
    monkeypatch.setattr(graph, "convert", refuse)


# The output path: checked before tracing.


def test_a_directory_named_like_the_file_is_refused(tmp_path, no_tracing):
    (tmp_path / "m.onnx").mkdir()
    with pytest.raises(ValueError, match=r"export\.onnx: path '.*m\.onnx' is a directory, not a file to write"):
        export.onnx(_linear, W, _x(), tmp_path / "m.onnx")


def test_a_parent_that_is_a_regular_file_is_refused(tmp_path, no_tracing):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"path '.*notes\.txt/m\.onnx': its directory must be a directory, got the"):
        export.onnx(_linear, W, _x(), tmp_path / "notes.txt" / "m.onnx")
    with pytest.raises(ValueError, match=r"notes\.txt' is a file, not a directory"):
        export.onnx(_linear, W, _x(), tmp_path / "notes.txt" / "sub" / "m.onnx")


def test_an_unwritable_directory_is_refused(tmp_path, monkeypatch, no_tracing):
    # Tests run as root, for whom every directory is writable: os.access stands in for a read-only one.
    real = os.access
    monkeypatch.setattr(
        checkpoint.os, "access", lambda p, mode: False if os.fspath(p) == str(tmp_path) else real(p, mode)
    )
    with pytest.raises(ValueError, match=r"path '.*m\.onnx': its directory '.*' is not a directory this process can"):
        export.onnx(_linear, W, _x(), tmp_path / "m.onnx")


def test_a_missing_directory_is_still_file_not_found(tmp_path, no_tracing):
    with pytest.raises(FileNotFoundError, match=r"the directory '.*missing' of path .* does not exist"):
        export.onnx(_linear, W, _x(), tmp_path / "missing" / "m.onnx")


def test_a_path_that_is_not_a_path_is_refused(no_tracing):
    with pytest.raises(ValueError, match="path must be a path to a .onnx file, got None"):
        export.onnx(_linear, W, _x(), None)


# The model: every refused primitive named with this file's line, before conversion.


def _fft(p, x):
    return jnp.abs(jnp.fft.fft(x)) @ p


def _rfft(p, x):
    return jnp.fft.irfft(jnp.fft.rfft(x), n=8) @ p


def _complex(p, x):
    return jnp.real(jax.lax.complex(x, x) * jnp.complex64(1 + 2j)) @ p


def _random_key(p, x):
    return (x + jax.random.normal(jax.random.key(0), x.shape)) @ p


def _random_prng_key(p, x):
    return (x * jax.random.bernoulli(jax.random.PRNGKey(0), 0.5, x.shape).astype(x.dtype)) @ p


def _line(fn) -> str:
    return rf"\S*test_unsupported\.py:{fn.__code__.co_firstlineno + 1} \({fn.__name__}\)"


@pytest.mark.parametrize(
    ("fn", "phrases"),  # "@" stands for " at <this file>:<the function's line> (<its name>)"
    [
        (_fft, [r"FFT \(jnp\.fft", "fft@", r"complex numbers \(", "convert_element_type@"]),
        (_rfft, [r"FFT \(jnp\.fft", "fft@"]),
        (_complex, [r"complex numbers \(onnxruntime has no complex tensors", "complex@"]),
        (_random_key, ["must be deterministic", "dropout off", "random_seed@", "random_bits@"]),
        (_random_prng_key, ["must be deterministic", "random_wrap@", "random_bits@"]),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_a_model_that_cannot_export_is_refused_with_its_line(tmp_path, no_conversion, fn, phrases):
    with pytest.raises(export.ExportError) as info:
        export.onnx(fn, W, _x(), tmp_path / "m.onnx")
    message = str(info.value)
    assert message.startswith("export: the model cannot be exported: ") and "\n" not in message
    for phrase in phrases:
        assert re.search(phrase.replace("@", " at " + _line(fn)), message), (phrase, message)
    assert not (tmp_path / "m.onnx").exists()


def test_an_int8_float_model_is_refused_before_calibrating(tmp_path, no_conversion):
    with pytest.raises(export.ExportError, match="random_bits at .*" + _line(_random_key)):
        export.onnx(_random_key, W, _x(), tmp_path / "m.onnx", precision="int8", calibration=[_x(32, 1)])


def test_an_int8_quantized_model_goes_through_the_same_check(tmp_path, monkeypatch):
    qapply, qparams = quant.quantize_model(_fft, W, calibration=[_x(32, 1)])
    monkeypatch.setattr(jax2onnx, "to_onnx", lambda *a, **k: pytest.fail("conversion was reached"))
    with pytest.raises(export.ExportError, match="fft at .*" + _line(_fft)):
        export.onnx(qapply, qparams, _x(), tmp_path / "m.onnx", precision="int8")


def test_a_pooled_model_keeps_the_line_through_the_pool_rewrite(tmp_path, no_conversion):
    from flax import nnx

    def pooled(p, x):
        y = nnx.max_pool(x.reshape(x.shape[0], 4, 2, 1), (2, 2), strides=(2, 2)).reshape(x.shape[0], 2)
        return (y + jax.random.uniform(jax.random.key(1), y.shape)) @ p[:2]

    with pytest.raises(export.ExportError, match=r"random_bits at \S*test_unsupported\.py:\d+ \(\S*pooled\)"):
        export.onnx(pooled, W, _x(), tmp_path / "m.onnx")


def test_refusals_is_empty_for_an_exportable_model_and_one_walk_names_every_reason():
    spec = graph.input_spec(_x())
    assert graph.refusals(graph.trace(lambda x: jnp.tanh(x @ W), spec)) == {}

    def mixed(x):
        return jnp.fft.fft(x + jax.random.normal(jax.random.key(0), x.shape)).real @ W

    found = graph.refusals(graph.trace(mixed, spec))
    assert list(found) == [graph.REFUSED["random"][1], graph.REFUSED["fft"][1], graph.COMPLEX_REASON]
    assert all(entry.endswith(".mixed)") and ":" in entry for entries in found.values() for entry in entries)
    assert graph.unsupported(graph.trace(mixed, spec)) == [e for entries in found.values() for e in entries]


@pytest.mark.parametrize("module", ["prng", "core", "threefry2x32", "threefry4x32"])
def test_every_random_primitive_jax_defines_is_refused(module):
    defined = pytest.importorskip(f"jax._src.random.{module}")  # private: skipped where jax moved it
    names = {p.name for p in vars(defined).values() if isinstance(p, jcore.Primitive)}
    assert names <= graph.REFUSED["random"][0]


def test_the_good_path_is_unchanged(tmp_path):
    result = export.onnx(_linear, W, _x(), tmp_path / "m.onnx")
    assert result.path == tmp_path / "m.onnx" and all(c.passed for c in result.checks)


# A failure inside jax2onnx names the primitive it was lowering.

_failing_p = jcore.Primitive("hamjax_test_failing_lowering")
_failing_p.def_impl(lambda x: x)
_failing_p.def_abstract_eval(lambda aval: aval)


@functools.cache
def _register_failing_plugin() -> None:
    from jax2onnx.plugins.plugin_system import PrimitiveLeafPlugin, register_primitive

    @register_primitive(
        jaxpr_primitive=_failing_p.name, since="hamjax", context="hamjax", component="test_failing", testcases=[]
    )
    class _FailingPlugin(PrimitiveLeafPlugin):
        def lower(self, ctx, eqn) -> None:
            raise RuntimeError("this lowering always fails\nwith a second line")


def _uses_failing(x):
    return _failing_p.bind(x) * 2.0


def test_a_conversion_failure_names_the_primitive_being_lowered_and_its_line():
    _register_failing_plugin()
    spec = graph.input_spec(_x())
    closed = graph.trace(lambda x: jax.jit(_uses_failing)(x), spec)
    assert graph.refusals(closed) == {}
    with pytest.raises(
        export.ExportError,
        match=r"jax2onnx failed to convert the model while lowering hamjax_test_failing_lowering at "
        + _line(_uses_failing)
        + r": RuntimeError: this lowering always fails$",
    ):
        graph.convert(closed, spec)
