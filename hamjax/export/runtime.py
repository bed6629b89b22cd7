"""Run an exported ONNX model with onnxruntime behind the :class:`hamjax.measure.Runner` interface.

:class:`Session` wraps an ``onnxruntime.InferenceSession`` of a model with one
input and one output, so :func:`hamjax.measure.measure`, ``latency``,
``throughput`` and ``accuracy`` time and score it with the same code as a jax
model. Inputs are host numpy arrays; they are checked against the model's
input shape and dtype before anything runs, floating inputs are cast to the
model's float type, and batches are split into chunks of ``batch_size`` rows.
A model exported with a fixed batch still takes any number of rows: the last
chunk is zero-padded to that batch and the padding rows are dropped from the
output.

:meth:`Session.optimized_ops` lists the operators onnxruntime actually runs
after its graph optimizations, and :meth:`Session.integer_ops` the ones among
them that run integer kernels: a quantize/dequantize (QDQ) export that still
shows only ``MatMul`` there computes in float, however small its weights.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from hamjax._checks import check_choice, check_int

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}

INTEGER_OPS = frozenset(
    {
        "QGemm",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "DynamicQuantizeMatMul",
        "QLinearConv",
        "ConvInteger",
        "MatMulNBits",
        "QAttention",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearGlobalAveragePool",
        "QLinearAveragePool",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "QLinearWhere",
    }
)

_PREFERENCE = ("tensorrt", "cuda", "cpu")
_CPU = PROVIDERS["cpu"]
_TENSORRT = PROVIDERS["tensorrt"]

_OPTIMIZATION_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def available_providers() -> tuple[str, ...]:
    """Short names of the known execution providers this onnxruntime build offers, best first.

    Returns:
      A subset of ``("tensorrt", "cuda", "cpu")`` in that order.

    Examples:
      >>> "cpu" in available_providers()
      True
    """
    present = set(ort.get_available_providers())
    return tuple(short for short in _PREFERENCE if PROVIDERS[short] in present)


def _full_name(name: Any) -> str:
    if isinstance(name, str):
        if name.lower() in PROVIDERS:
            return PROVIDERS[name.lower()]
        if name in PROVIDERS.values():
            return name
    raise ValueError(f"providers: unknown provider {name!r}; known: {', '.join(PROVIDERS)} (or 'auto')")


def resolve_providers(providers: str | Sequence[str]) -> list[str]:
    """Full onnxruntime provider names for a provider choice, CPU last as the fallback.

    Args:
      providers: ``"auto"`` (every available one, TensorRT before CUDA before
        CPU), one short name (``"cpu"``, ``"cuda"``, ``"tensorrt"``) or full
        onnxruntime name (``"CUDAExecutionProvider"``), or a sequence of them
        in order of preference.

    Returns:
      Full provider names without repeats, ending with ``"CPUExecutionProvider"``.

    Raises:
      ValueError: for an unknown name (the message lists the known short
        names), an empty sequence, or a provider this machine lacks (the
        message lists the available ones).

    Examples:
      >>> resolve_providers("cpu")
      ['CPUExecutionProvider']
      >>> resolve_providers("auto")[-1]
      'CPUExecutionProvider'
    """
    if isinstance(providers, str) and providers.lower() == "auto":
        names = [PROVIDERS[short] for short in available_providers()]
    else:
        requested = [providers] if isinstance(providers, str) else list(providers)
        if not requested:
            raise ValueError("providers must name at least one provider, got an empty sequence")
        names = [_full_name(p) for p in requested]
    present = set(ort.get_available_providers())
    missing = [n for n in names if n not in present]
    if missing:
        raise ValueError(
            f"providers: {', '.join(missing)} not available on this machine; "
            f"available: {', '.join(available_providers())}"
        )
    resolved = list(dict.fromkeys(names))
    if _CPU not in resolved:
        resolved.append(_CPU)
    return resolved


def _model_source(model: Any) -> str | bytes:
    """A path or serialized bytes that ``InferenceSession`` accepts; paths stay paths for external data."""
    if isinstance(model, onnx.ModelProto):
        return model.SerializeToString()
    if isinstance(model, bytes | bytearray | memoryview):
        return bytes(model)
    if isinstance(model, str | os.PathLike):
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"model: no ONNX file at {path!r}")
        return path
    raise TypeError(f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")


def _graph_ops(graph: onnx.GraphProto) -> Iterator[str]:
    """Op types of ``graph`` and of the subgraphs inside its If/Loop/Scan nodes."""
    for node in graph.node:
        yield node.op_type
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graph_ops(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graph_ops(sub)


# onnxruntime turns DequantizeLinear -> MatMul on int8 weights into MatMulNBits and, at its default
# accuracy level 4, quantizes the activations too: a weight-only model would no longer compute what
# it says (argmax agreement fell to 99.2% on a random MLP). Level 0 keeps float activations.
DEFAULT_CONFIG = {"session.qdq_matmulnbits_accuracy_level": "0"}


class Session:
    """A :class:`hamjax.measure.Runner` over an onnxruntime ``InferenceSession``, with batching.

    Args:
      model: path to an ``.onnx`` file, the serialized model as bytes, or an
        ``onnx.ModelProto``. It must have exactly one input, with a leading
        batch axis, and one output, whose leading axis is the same batch.
      providers: see :func:`resolve_providers`.
      batch_size: most rows per onnxruntime call, or None for one call per
        input. A model with a fixed batch runs that many rows per call, so a
        different ``batch_size`` is an error there.
      threads: intra-op threads, or None for onnxruntime's default.
      name: label for reports.
      optimization: graph optimization level: ``"none"``, ``"basic"``,
        ``"extended"`` or ``"all"``.
      config: onnxruntime session config entries, over :data:`DEFAULT_CONFIG`.

    Attributes:
      input_name, output_name: the graph's input and output names.
      input_shape: the input shape, None for a symbolic or unknown dimension.
      input_dtype: the numpy dtype the model takes.
      static_batch: the fixed leading input dimension, or None when symbolic.
      providers: the providers the session actually uses.

    Raises:
      FileNotFoundError: if ``model`` is a path to no file.
      ValueError: for a model onnxruntime cannot load (with its reason), one
        without exactly one input and one output, or a bad argument.

    Examples:
      >>> import numpy as np, onnx
      >>> from onnx import TensorProto, helper
      >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2])
      >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2])
      >>> graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
      >>> session = Session(helper.make_model(graph), batch_size=2)
      >>> session(np.array([[-1.0, 2.0], [3.0, -4.0], [5.0, 6.0]])).tolist()
      [[0.0, 2.0], [3.0, 0.0], [5.0, 6.0]]
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes | onnx.ModelProto,
        *,
        providers: str | Sequence[str] = "cpu",
        batch_size: int | None = None,
        threads: int | None = None,
        name: str = "onnxruntime",
        optimization: str = "all",
        config: Mapping[str, str] | None = None,
    ):
        if batch_size is not None:
            batch_size = check_int("Session", "batch_size", batch_size, minimum=1)
        if threads is not None:
            threads = check_int("Session", "threads", threads, minimum=1)
        check_choice("Session", "optimization", optimization, _OPTIMIZATION_LEVELS)
        self._source = _model_source(model)
        self._requested = resolve_providers(providers)
        self._threads = threads
        self._optimization = optimization
        self._config = {**DEFAULT_CONFIG, **dict(config or {})}
        self._optimized_graph: onnx.GraphProto | None = None
        self._optimized_ops: tuple[str, ...] | None = None
        try:
            self._sess = ort.InferenceSession(self._source, self._options(), providers=self._requested)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            raise ValueError(f"model: onnxruntime could not load it: {e}") from e
        inputs, outputs = self._sess.get_inputs(), self._sess.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(
                f"model must have exactly one input and one output, got {len(inputs)} inputs "
                f"({', '.join(i.name for i in inputs)}) and {len(outputs)} outputs"
            )
        if inputs[0].type not in _ORT_DTYPES:
            raise ValueError(f"model input {inputs[0].name!r} has type {inputs[0].type}, which numpy cannot hold")
        self.name = name
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in inputs[0].shape)
        self.input_dtype = np.dtype(_ORT_DTYPES[inputs[0].type])
        if not self.input_shape:
            raise ValueError(f"model input {self.input_name!r} must have a leading batch axis, got a scalar")
        self.static_batch = self.input_shape[0]
        if self.static_batch is not None and batch_size not in (None, self.static_batch):
            raise ValueError(f"batch_size={batch_size} conflicts with the model's fixed batch of {self.static_batch}")
        self.batch_size = batch_size
        self.providers = list(self._sess.get_providers())

    def _options(self, optimized_model_filepath: str | None = None) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = _OPTIMIZATION_LEVELS[self._optimization]
        if self._threads is not None:
            options.intra_op_num_threads = self._threads
        for key, value in self._config.items():
            options.add_session_config_entry(key, str(value))
        if optimized_model_filepath is not None:
            options.optimized_model_filepath = optimized_model_filepath
        return options

    def __repr__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.input_shape)
        return (
            f"Session({self.name!r}, {self.input_name}: {self.input_dtype}[{dims}], "
            f"batch_size={self.batch_size}, providers={self.providers})"
        )

    def _prepare(self, x: Any) -> np.ndarray:
        """``x`` as an array of the model's dtype, after checking its shape and dtype."""
        x = np.asarray(x)
        fixed_ok = all(
            want is None or want == got for want, got in zip(self.input_shape[1:], x.shape[1:], strict=False)
        )
        if x.ndim != len(self.input_shape) or not fixed_ok:
            raise ValueError(
                f"x: expected {len(self.input_shape)} dims, (rows, *{self.input_shape[1:]}) with None any size, "
                f"got shape {x.shape}"
            )
        if x.shape[0] == 0:
            raise ValueError(f"x must have at least one row, got shape {x.shape}")
        if x.dtype == self.input_dtype:
            return x
        if np.issubdtype(self.input_dtype, np.floating):
            if not np.issubdtype(x.dtype, np.floating):
                raise ValueError(f"x: the model takes {self.input_dtype}, got non-floating {x.dtype}")
        elif not np.can_cast(x.dtype, self.input_dtype, casting="safe"):
            raise ValueError(f"x: the model takes {self.input_dtype}, got {x.dtype}, which does not cast safely")
        return x.astype(self.input_dtype)

    def _infer(self, x: np.ndarray) -> np.ndarray:
        (y,) = self._sess.run([self.output_name], {self.input_name: x})
        return y

    def _check_rows(self, y: np.ndarray, rows: int) -> None:
        if y.ndim == 0 or y.shape[0] != rows:
            raise ValueError(
                f"output {self.output_name!r} has shape {y.shape} for {rows} input rows; batches can only be "
                "split, merged or padded when the output keeps the input's batch axis"
            )

    def _run_chunk(self, x: np.ndarray) -> np.ndarray:
        """One onnxruntime call; a short chunk is zero-padded to the fixed batch and the output trimmed."""
        rows = x.shape[0]
        if self.static_batch is not None and rows < self.static_batch:
            x = np.concatenate([x, np.zeros((self.static_batch - rows, *x.shape[1:]), x.dtype)])
        y = self._infer(x)
        self._check_rows(y, x.shape[0])
        return y[:rows]

    def _run(self, x: np.ndarray) -> np.ndarray:
        chunk = self.static_batch if self.static_batch is not None else self.batch_size
        if chunk is None or x.shape[0] == chunk:
            return self._infer(x)
        return np.concatenate([self._run_chunk(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Run the model on ``x``.

        Args:
          x: shape ``input_shape`` with any number >= 1 of rows; floating
            inputs are cast to ``input_dtype``.

        Returns:
          The output, one row per input row.

        Raises:
          ValueError: for a wrong rank or fixed dimension, no rows, or a
            non-floating ``x`` for a floating model.
        """
        return self._run(self._prepare(x))

    def run_many(self, xs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Run several inputs, merging consecutive small ones into calls of at most ``batch_size`` rows.

        Args:
          xs: inputs as :meth:`__call__` takes them; consecutive inputs whose
            trailing shapes differ (symbolic non-batch dims) run in separate calls.

        Returns:
          One output per input, each what ``self(x)`` returns for that input alone.
        """
        prepared = [self._prepare(x) for x in xs]
        limit = self.batch_size
        groups: list[list[np.ndarray]] = []
        rows = 0
        for x in prepared:
            fits = limit is None or rows + x.shape[0] <= limit
            if groups and fits and x.shape[1:] == groups[-1][0].shape[1:]:
                groups[-1].append(x)
                rows += x.shape[0]
            else:
                groups.append([x])
                rows = x.shape[0]
        outputs: list[np.ndarray] = []
        for group in groups:
            if len(group) == 1:
                outputs.append(self._run(group[0]))
                continue
            y = self._run(np.concatenate(group))
            self._check_rows(y, sum(x.shape[0] for x in group))
            outputs.extend(np.split(y, np.cumsum([x.shape[0] for x in group[:-1]])))
        return outputs

    def block(self, y: np.ndarray) -> np.ndarray:
        """``y`` itself: onnxruntime returns finished host arrays."""
        return y

    def to_numpy(self, y: np.ndarray) -> np.ndarray:
        """``y`` as a numpy array."""
        return np.asarray(y)

    def peak_memory_bytes(self) -> int | None:
        """None: onnxruntime reports no peak memory for a session."""
        return None

    def optimized_graph(self) -> onnx.GraphProto:
        """The graph onnxruntime runs after its optimizations, as it writes it (cached).

        A second session of the same model, providers and level saves its
        optimized graph to a temporary file, which is read back. TensorRT
        compiles nodes into engines that cannot be saved, so with TensorRT in
        use this is the graph the remaining providers (CUDA, CPU) optimize.

        Returns:
          An ``onnx.GraphProto``.
        """
        if self._optimized_graph is None:
            providers = [p for p in self.providers if p != _TENSORRT] or [_CPU]
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "optimized.onnx")
                ort.InferenceSession(self._source, self._options(path), providers=providers)
                self._optimized_graph = onnx.load(path, load_external_data=False).graph
        return self._optimized_graph

    def optimized_ops(self) -> tuple[str, ...]:
        """Sorted op types of :meth:`optimized_graph` (subgraphs included; cached).

        Returns:
          Distinct op types, sorted.
        """
        if self._optimized_ops is None:
            self._optimized_ops = tuple(sorted(set(_graph_ops(self.optimized_graph()))))
        return self._optimized_ops

    def integer_ops(self) -> tuple[str, ...]:
        """The ops of :meth:`optimized_ops` that run integer kernels (those in :data:`INTEGER_OPS`)."""
        return tuple(op for op in self.optimized_ops() if op in INTEGER_OPS)
