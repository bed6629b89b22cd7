"""One served model: loaded and checked at start-up, its inputs validated, its batches padded to a few shapes.

:class:`ServedModel` loads an ONNX file through
:class:`hamjax.export.runtime.Session` or a directory written by ``hamjax
optimize`` (:func:`hamjax.models.saved.save`) through
:class:`hamjax.measure.JaxRunner`. Whatever fails to load stops the server
before it binds a port, with the reason (``ValueError``).

Every batch runs at a *bucket* size (:func:`buckets`: the powers of two up to
``max_batch``, and ``max_batch``): a batch is zero-padded to the next bucket
and the padding rows dropped from the output. :meth:`ServedModel.warm` runs
each bucket once, so JAX compiles and onnxruntime plans every shape the
batcher can produce before the server reports ready, and no request pays for
it later.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from hamjax._checks import check_int

SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}
"""onnxruntime session entries for serving: its intra-op threads sleep between calls instead of spinning (a spinning
pool burns the CPU quota the event loop and the other requests need; measured, it doubled the p99 under load)."""


class BadInput(ValueError):
    """An input the model cannot take: the HTTP status to answer, a message, and a short reason for metrics.

    Examples:
      >>> err = BadInput(422, "inputs: expected shape (rows, 4), got (2, 3)", reason="shape")
      >>> err.status, err.reason, str(err)
      (422, 'shape', 'inputs: expected shape (rows, 4), got (2, 3)')
    """

    def __init__(self, status: int, message: str, *, reason: str = "invalid"):
        super().__init__(message)
        self.status = status
        self.reason = reason


def buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes batches are padded to: powers of two below ``max_batch``, and ``max_batch``.

    Examples:
      >>> buckets(12)
      (1, 2, 4, 8, 12)
      >>> buckets(1)
      (1,)
    """
    max_batch = check_int("buckets", "max_batch", max_batch, minimum=1)
    sizes = [1 << i for i in range(max_batch.bit_length()) if (1 << i) < max_batch]
    return (*sizes, max_batch)


def file_version(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the sha256 of a file's bytes, or of a folder's files (relative names and bytes).

    Examples:
      >>> import tempfile
      >>> with tempfile.NamedTemporaryFile(suffix=".onnx") as f:
      ...     len(file_version(f.name))
      16
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _saved_input_shape(config: Any, where: str) -> tuple[int, ...]:
    """One example's shape for a reference model's config: its image shape, else its flat input size."""
    if hasattr(config, "input_shape"):
        return tuple(int(d) for d in config.input_shape)
    if hasattr(config, "input_size"):
        return (int(config.input_size),)
    if hasattr(config, "sizes"):
        return (int(config.sizes[0]),)
    raise ValueError(f"{where}: cannot tell the input shape of a {type(config).__name__}")


class ServedModel:
    """A model ``hamjax serve`` runs: loaded, version-stamped, validated, padded to bucket sizes.

    Args:
      path: an ``.onnx`` file (one input with a leading batch axis, one output)
        or a directory written by ``hamjax optimize`` (``model.json`` and ``variables``).
      threads: onnxruntime's intra-op threads (inter-op work stays on the
        calling thread: the session runs sequentially); ignored for a JAX model.
      max_batch: most rows per call; larger requests are refused.
      name: the variant's name, for messages.

    Attributes:
      input_shape: one example's shape (fixed: only the batch dimension may be symbolic).
      input_dtype: the numpy dtype the model computes in.
      version: 16 hex digits of the sha256 of the model's file(s).
      reference: the saved input statistics (``hamjax.serve.reference.InputStats``
        read from ``<model>.stats.json``), or None.
      kind: ``"onnx"`` or ``"jax"``.

    Raises:
      ValueError: a missing path, a file that is not ONNX or that onnxruntime
        refuses (with its reason), a directory that is not a saved model, or a
        model with a fixed batch smaller than ``max_batch`` or a symbolic dimension besides the batch.

    Examples:
      >>> import tempfile, onnx
      >>> from onnx import TensorProto, helper
      >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 2])
      >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 2])
      >>> graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
      >>> path = tempfile.mkdtemp() + "/relu.onnx"
      >>> onnx.save(helper.make_model(graph), path)
      >>> model = ServedModel(path, threads=1, max_batch=4)
      >>> model.input_shape, model.buckets
      ((2,), (1, 2, 4))
      >>> model.predict(model.validate(np.array([[-1.0, 2.0]]))).tolist()
      [[0.0, 2.0]]
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 1, max_batch: int = 32, name: str = "default"):
        where = f"model {name!r}"
        self.name = name
        self.path = Path(path)
        self.max_batch = check_int(where, "max_batch", max_batch, minimum=1)
        self.threads = check_int(where, "threads", threads, minimum=1)
        if not self.path.exists():
            raise ValueError(f"{where}: no file or directory at {str(self.path)!r}")
        if self.path.is_dir():
            self._load_saved(where)
        else:
            self._load_onnx(where)
        self.buckets = (self._static,) if self._static is not None else buckets(self.max_batch)
        self.version = file_version(self.path)
        self.reference = self._load_reference()

    def _load_onnx(self, where: str) -> None:
        from hamjax.export import runtime

        with open(self.path, "rb") as f:
            head = f.read(1)
        # A serialized ModelProto starts with a protobuf field tag; text, JSON, npz and empty files do not parse.
        if not head:
            raise ValueError(f"{where}: {self.path} is empty, not an ONNX model")
        try:
            session = runtime.Session(self.path, threads=self.threads, name=self.name, config=SESSION_CONFIG)
        except ValueError as err:
            raise ValueError(f"{where}: {self.path} is not a model onnxruntime can run: {err}") from None
        self.kind = "onnx"
        self._runner = session
        self.input_shape = tuple(session.input_shape[1:])
        self.input_dtype = session.input_dtype
        self._static = session.static_batch
        if any(d is None for d in self.input_shape):
            raise ValueError(
                f"{where}: {self.path} takes inputs of shape (batch, {', '.join(map(str, self.input_shape))}); "
                "hamjax serve batches rows of one fixed shape, so only the batch dimension may be symbolic"
            )
        if self._static is not None and self._static < self.max_batch:
            raise ValueError(
                f"{where}: {self.path} has a fixed batch of {self._static} rows, below max_batch={self.max_batch}; "
                "export it with a symbolic batch or lower --max-batch"
            )

    def _load_saved(self, where: str) -> None:
        from hamjax.measure import JaxRunner
        from hamjax.models import saved

        try:
            apply_fn, variables, config, _ = saved.load(self.path)
        except FileNotFoundError as err:
            raise ValueError(f"{where}: {self.path} is not a saved model: {err}") from None
        except ValueError as err:
            raise ValueError(f"{where}: {self.path} is not a saved model: {err}") from None
        self.kind = "jax"
        self._runner = JaxRunner(apply_fn, variables, name=self.name)
        self.input_shape = _saved_input_shape(config, where)
        self.input_dtype = np.dtype(np.float32)
        self._static = None

    def _load_reference(self):
        from hamjax.serve import reference

        path = reference.stats_path(self.path)
        if not Path(path).is_file():
            return None
        stats = reference.InputStats.load(path)
        try:  # statistics of other inputs than this model's would make every drift figure meaningless
            stats.flatten(np.zeros((1, *self.input_shape), np.float32))
        except ValueError as err:
            raise ValueError(f"model {self.name!r}: {path} does not describe this model's inputs: {err}") from None
        return stats

    def __repr__(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.input_shape)
        return f"ServedModel({self.name!r}, {self.kind}, ({dims}) {self.input_dtype}, version {self.version})"

    def validate(self, x: Any) -> np.ndarray:
        """``x`` as the model's dtype after checking it, or raises :class:`BadInput`.

        Args:
          x: ``(rows, *input_shape)``, numbers; integers are cast to a floating model's dtype.

        Returns:
          A C-contiguous array of ``input_dtype``.

        Raises:
          BadInput: 422 for a wrong shape, a non-numeric or unsafe dtype, no rows or
            NaN/inf values; 413 for more rows than ``max_batch``.
        """
        x = np.asarray(x)
        if x.ndim >= 1 and x.shape[0] == 0:
            raise BadInput(422, "inputs: empty batch; send at least one row", reason="empty")
        want = "(" + ", ".join(["rows", *map(str, self.input_shape)]) + ")"
        if x.shape[1:] != self.input_shape:
            raise BadInput(422, f"inputs: expected shape {want}, got {x.shape}", reason="shape")
        if x.dtype.kind not in "fiu":
            raise BadInput(422, f"inputs: expected numbers ({self.input_dtype}), got {x.dtype}", reason="dtype")
        if self.input_dtype.kind in "iu":
            if x.dtype.kind == "f":
                raise BadInput(
                    422, f"inputs: the model takes integers ({self.input_dtype}), got {x.dtype}", reason="dtype"
                )
            info = np.iinfo(self.input_dtype)
            if x.size and (x.min() < info.min or x.max() > info.max):
                raise BadInput(422, f"inputs: values outside {self.input_dtype}'s range", reason="dtype")
        if x.shape[0] > self.max_batch:
            raise BadInput(
                413, f"inputs: {x.shape[0]} rows, more than max_batch={self.max_batch}; split them", reason="batch"
            )
        with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, refused just below
            x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if x.dtype.kind == "f" and not np.isfinite(x).all():
            raise BadInput(422, "inputs: NaN or infinite values", reason="nonfinite")
        return x

    def bucket(self, rows: int) -> int:
        """The smallest bucket size holding ``rows`` rows."""
        return next((b for b in self.buckets if b >= rows), self.buckets[-1])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run one batch (synchronously, one runtime call), padded to its bucket.

        Args:
          x: validated rows, at most ``max_batch``.

        Returns:
          The output, one row per row of ``x``.
        """
        rows = x.shape[0]
        size = self.bucket(rows)
        if size > rows:
            x = np.concatenate([x, np.zeros((size - rows, *x.shape[1:]), x.dtype)])
        runner = self._runner  # a Session or a JaxRunner: both block and convert through the Runner interface
        return np.asarray(runner.to_numpy(runner.block(runner(x))))[:rows]

    def warm(self) -> tuple[int, ...]:
        """Run every bucket size twice: the first call compiles (JAX) or plans and allocates (onnxruntime),
        the second runs as every later call will. Returns the sizes run."""
        for size in self.buckets:
            for _ in range(2):
                self.predict(np.zeros((size, *self.input_shape), self.input_dtype))
        return self.buckets
