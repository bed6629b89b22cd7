"""What a model occupies and where it runs: parameter counts and bytes, peak memory, versions and devices.

:func:`param_count` and :func:`param_bytes` read any pytree of arrays (each
leaf by its own dtype, so int8 codes count one byte); :func:`peak_memory_bytes`
asks a jax device for its high-water mark and :func:`process_peak_rss_bytes`
the operating system for the process's; :func:`environment` records the
versions and device a measurement was taken with; :func:`compiled_memory`
reads what XLA plans for a compiled program (a training step's activations). :mod:`hamjax.measure`
reports them beside latency and accuracy and re-exports them.
"""

from __future__ import annotations

import math
import resource
import sys
from typing import Any, NamedTuple

import jax
import numpy as np


def _array_leaves(params: Any) -> list[Any]:
    return [leaf for leaf in jax.tree_util.tree_leaves(params) if hasattr(leaf, "shape") and hasattr(leaf, "dtype")]


def param_count(params: Any) -> int:
    """Number of elements in the array leaves of ``params`` (``None`` leaves ignored).

    Args:
      params: any pytree of arrays (``jax.ShapeDtypeStruct`` leaves count too).

    Returns:
      The total element count.

    Examples:
      >>> import numpy as np
      >>> param_count({"w": np.zeros((3, 4)), "b": np.zeros(4), "mask": None})
      16
    """
    return sum(math.prod(leaf.shape) for leaf in _array_leaves(params))


def param_bytes(params: Any) -> int:
    """Bytes held by the array leaves of ``params``, by each leaf's own dtype.

    Args:
      params: any pytree of arrays; an int8 leaf counts one byte per element,
        bfloat16 two.

    Returns:
      The total ``nbytes``.

    Examples:
      >>> import numpy as np
      >>> param_bytes({"w": np.zeros((3, 4), np.int8), "b": np.zeros(4, np.float32)})
      28
    """
    total = 0
    for leaf in _array_leaves(params):
        nbytes = getattr(leaf, "nbytes", None)
        total += int(nbytes) if nbytes is not None else math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    return total


def peak_memory_bytes(device: Any = None) -> int | None:
    """Peak bytes in use on a jax device, where the backend reports it.

    GPU backends report ``peak_bytes_in_use`` in ``device.memory_stats()``, the
    high-water mark since the process started (jax offers no reset). On CPU,
    jax 0.10's ``memory_stats()`` returns ``None``, so this returns ``None``
    rather than a guess; see :func:`process_peak_rss_bytes` for host memory.

    Args:
      device: a ``jax.Device``; defaults to ``jax.devices()[0]``.

    Returns:
      The peak in bytes, or None where the backend does not report it.

    Examples:
      >>> import jax
      >>> jax.default_backend() != "cpu" or peak_memory_bytes() is None
      True
    """
    device = jax.devices()[0] if device is None else device
    try:
        stats = device.memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return int(stats["peak_bytes_in_use"])


class CompiledMemory(NamedTuple):
    """What a compiled XLA program allocates, from ``compiled.memory_analysis()``, in bytes.

    Attributes:
      argument_bytes: its inputs.
      output_bytes: its outputs.
      temp_bytes: its scratch buffers: the activations a training step keeps for the backward pass.
      alias_bytes: outputs that reuse a donated input's buffer.
      total_bytes: ``argument + output + temp - alias``, what it needs at once.

    Examples:
      >>> CompiledMemory(8, 8, 0, 8, 8).total_bytes
      8
    """

    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    total_bytes: int


def compiled_memory(fn: Any, *args: Any, **kwargs: Any) -> CompiledMemory | None:
    """The memory XLA plans for ``fn(*args, **kwargs)``, read from the compiled program (nothing runs).

    A jitted ``fn`` keeps its options (donated arguments alias outputs);
    another function is jitted first. Compiling again is cheap where the
    call compiled already: JAX caches the executable.

    Args:
      fn: a function of arrays, jitted or not.
      *args: example arguments (arrays or ``jax.ShapeDtypeStruct``); not consumed when donated.
      **kwargs: example keyword arguments.

    Returns:
      A :class:`CompiledMemory`, or ``None`` where the backend reports no memory analysis.

    Examples:
      >>> import jax.numpy as jnp
      >>> m = compiled_memory(lambda a: a @ a, jnp.ones((4, 4)))
      >>> m is None or (m.argument_bytes, m.output_bytes)
      (64, 64)
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    return memory_analysis(jitted.lower(*args, **kwargs).compile())


def memory_analysis(compiled: Any) -> CompiledMemory | None:
    """The memory XLA plans for an executable already compiled (``jax.jit(f).lower(...).compile()``).

    Args:
      compiled: a ``jax.stages.Compiled``.

    Returns:
      A :class:`CompiledMemory`, or ``None`` where the backend reports no memory analysis.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> m = memory_analysis(jax.jit(lambda a: a + 1).lower(jnp.ones(4)).compile())
      >>> m is None or m.argument_bytes
      16
    """
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):  # a backend without the analysis
        return None
    if stats is None:
        return None
    sizes = [int(getattr(stats, f"{name}_size_in_bytes", 0) or 0) for name in ("argument", "output", "temp", "alias")]
    return CompiledMemory(*sizes, max(0, sizes[0] + sizes[1] + sizes[2] - sizes[3]))


def process_peak_rss_bytes() -> int:
    """Peak resident set size of this process, in bytes (``getrusage`` max RSS).

    Returns:
      Bytes; Linux reports KiB and macOS bytes, both converted.

    Examples:
      >>> process_peak_rss_bytes() > 0
      True
    """
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) if sys.platform == "darwin" else int(rss) * 1024


def environment() -> dict:
    """Versions and device facts to store beside measured figures.

    Returns:
      ``{"python", "platform", "cpu_count", "device", "hamjax", "jax", "jaxlib", "flax", "optax",
      "orbax-checkpoint", "onnxruntime"}`` (``None`` for a package that is not installed).

    Examples:
      >>> "jax" in environment()
      True
    """
    import os
    import platform
    from importlib import metadata

    device = jax.devices()[0]
    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": f"{device.platform}:{device.device_kind}",
    }
    for pkg in ("hamjax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out
