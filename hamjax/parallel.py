"""Data-parallel training over devices and processes, on JAX's own sharding and multi-process runtime.

A :class:`DataParallel` is a one-axis ``jax.sharding.Mesh`` over the batch:
every device holds ``batch_size / device_count`` rows of each batch, the
params and optimizer state are replicated (or sharded by a rule, as
``NamedSharding``), and XLA inserts the gradient all-reduce. The step is the
same jitted function as on one device, so the loss curve equals the
single-device one within float rounding (the reductions sum in another order).

Across processes (several GPU hosts, or several processes on one machine)
each process calls :func:`initialize` first; the mesh then spans every
process's devices, each process reads only its rows of every batch
(:meth:`DataParallel.process_rows`) and :meth:`DataParallel.global_batch`
assembles the global array from them. No transport of hamjax's own is
involved: the coordinator is ``jax.distributed``'s, the collectives XLA's
(gloo on the CPU, NCCL on GPUs).
"""

from __future__ import annotations

import dataclasses
import math
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hamjax._checks import check_int, check_positive

__all__ = ["BATCH_AXIS", "DataParallel", "initialize", "shard_by_size"]

BATCH_AXIS = "batch"
ParamRule = Callable[[tuple, Any], PartitionSpec | None]


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A mesh over the batch axis: where a training state and each batch live.

    Batches are split across ``devices`` along their first axis. Params and
    optimizer state are replicated on every device, unless ``param_rule``
    names a ``PartitionSpec`` for a leaf (over the one mesh axis,
    ``BATCH_AXIS``): that leaf is then stored sharded (a ``NamedSharding``)
    and XLA gathers it where the step needs it, which saves memory for large
    layers. Scalar leaves (step counters) are always replicated.

    Under ``jax.distributed`` (:func:`initialize`), ``devices=None`` is every
    device of every process, ordered by process, so process ``i`` holds the
    ``i``-th contiguous block of each batch.

    Args:
      devices: the devices of the mesh; ``None`` is ``jax.devices()``.
      param_rule: ``None`` (replicate everything) or a callable
        ``(path, leaf) -> PartitionSpec | None`` called on every leaf of
        ``ndim >= 1`` of the params and optimizer state (``path`` is its
        ``jax.tree_util`` key path); ``None`` replicates that leaf. See
        :func:`shard_by_size`.

    Attributes:
      mesh: the ``jax.sharding.Mesh`` with the one axis ``BATCH_AXIS``.

    Examples:
      >>> import jax, numpy as np
      >>> from hamjax.parallel import DataParallel
      >>> dp = DataParallel()
      >>> dp.device_count == jax.device_count()
      True
      >>> x = dp.global_batch(np.ones((4, 3), np.float32))
      >>> x.shape, x.sharding.spec
      ((4, 3), P('batch',))
    """

    devices: Sequence[Any] | None = None
    param_rule: ParamRule | None = None
    mesh: Mesh = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        devices = jax.devices() if self.devices is None else list(self.devices)
        if not devices or not all(isinstance(d, jax.Device) for d in devices):
            raise ValueError(
                f"DataParallel: devices must be a non-empty sequence of jax devices (jax.devices()), got {devices!r}"
            )
        if len({d.id for d in devices}) != len(devices):
            raise ValueError(f"DataParallel: devices must be distinct, got {devices!r}")
        if self.param_rule is not None and not callable(self.param_rule):
            raise ValueError(
                "DataParallel: param_rule must be None or a callable (path, leaf) -> PartitionSpec, "
                f"got {self.param_rule!r}"
            )
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        object.__setattr__(self, "devices", tuple(ordered))
        object.__setattr__(self, "mesh", Mesh(np.array(ordered), (BATCH_AXIS,)))

    @property
    def device_count(self) -> int:
        """How many devices share each batch."""
        return self.mesh.size

    def check_batch(self, where: str, batch_size: int) -> int:
        """``batch_size`` if it splits evenly over the devices, else a ``ValueError`` naming both.

        Args:
          where: the caller label (``"fit"``).
          batch_size: examples per step, over all devices and processes.

        Returns:
          The rows each device holds.

        Examples:
          >>> from hamjax.parallel import DataParallel
          >>> DataParallel().check_batch("fit", 64) == 64 // DataParallel().device_count
          True
        """
        batch_size = check_int(where, "batch_size", batch_size, minimum=1)
        if batch_size % self.device_count:
            low = batch_size - batch_size % self.device_count
            raise ValueError(
                f"{where}: data parallel batch_size={batch_size} is not divisible by the {self.device_count} "
                f"devices; use a multiple of {self.device_count} (for example {low or self.device_count} "
                f"or {low + self.device_count})"
            )
        return batch_size // self.device_count

    def process_rows(self, indices: Any) -> np.ndarray:
        """The part of a global batch that this process reads: its contiguous block of ``indices``.

        With ``P`` processes of equal device counts, process ``i`` reads the
        ``i``-th of ``P`` equal slices; in one process, all of ``indices``.

        Args:
          indices: the global batch's example indices (or any sequence of
            rows), a length divisible by the device count.

        Returns:
          This process's slice, as a numpy array.

        Examples:
          >>> import numpy as np
          >>> from hamjax.parallel import DataParallel
          >>> DataParallel().process_rows(np.arange(8)).tolist()  # one process reads everything
          [0, 1, 2, 3, 4, 5, 6, 7]
        """
        indices = np.asarray(indices)
        per_device = self.check_batch("DataParallel.process_rows", len(indices))
        here = jax.process_index()
        before = sum(1 for d in self.devices if d.process_index < here)
        mine = sum(1 for d in self.devices if d.process_index == here)
        return indices[before * per_device : (before + mine) * per_device]

    def global_batch(self, tree: Any) -> Any:
        """Turn this process's rows (numpy arrays, a pytree) into global arrays sharded over the batch axis.

        Each process passes the rows :meth:`process_rows` gave it; the global
        arrays have every process's rows, in process order.

        Args:
          tree: a pytree of arrays with a leading batch axis (inputs, labels,
            per-example targets); ``None`` passes through.

        Returns:
          The same pytree of ``jax.Array`` sharded as ``PartitionSpec(BATCH_AXIS)``.
        """
        sharding = NamedSharding(self.mesh, PartitionSpec(BATCH_AXIS))
        return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)

    def sharding_of(self, path: tuple, leaf: Any) -> NamedSharding:
        """The ``NamedSharding`` a params or optimizer-state leaf is placed with (replicated unless the rule says)."""
        spec = None
        if self.param_rule is not None and np.ndim(leaf) >= 1:
            spec = self.param_rule(path, leaf)
            if spec is not None and not isinstance(spec, PartitionSpec):
                raise ValueError(
                    f"DataParallel: param_rule returned {spec!r} for {jax.tree_util.keystr(path)}; "
                    "expected a jax.sharding.PartitionSpec or None"
                )
        return NamedSharding(self.mesh, spec if spec is not None else PartitionSpec())

    def place(self, tree: Any) -> Any:
        """Put a pytree (params, a train state) on the mesh: replicated, or as ``param_rule`` shards it.

        Leaves already placed as asked are returned as they are, so placing
        the state after every step costs nothing unless XLA chose another
        layout. Under several processes every process must pass the same
        values (they are replicas of one another).

        Args:
          tree: a pytree of arrays.

        Returns:
          The pytree of global ``jax.Array``.

        Examples:
          >>> import jax.numpy as jnp
          >>> from hamjax.parallel import DataParallel
          >>> placed = DataParallel().place({"w": jnp.ones((2, 2))})
          >>> placed["w"].sharding.is_fully_replicated
          True
        """

        def put(path, leaf):
            target = self.sharding_of(path, leaf)
            if isinstance(leaf, jax.Array) and leaf.sharding.is_equivalent_to(target, leaf.ndim):
                return leaf
            return jax.device_put(leaf, target)

        return jax.tree_util.tree_map_with_path(put, tree)


def shard_by_size(device_count: int, *, min_size: int = 1024) -> ParamRule:
    """A ``param_rule`` that shards each large leaf along its first axis divisible by ``device_count``.

    Leaves with fewer than ``min_size`` entries, or with no axis divisible
    by ``device_count``, stay replicated. This is the fully sharded
    (ZeRO-3 / FSDP) layout of params and optimizer moments: each device
    stores ``1 / device_count`` of them and XLA gathers a layer when the step
    uses it.

    Args:
      device_count: the mesh's device count (``DataParallel().device_count``).
      min_size: the least number of entries a leaf needs to be sharded.

    Returns:
      ``rule(path, leaf) -> PartitionSpec | None`` for :class:`DataParallel`.

    Examples:
      >>> import numpy as np
      >>> from hamjax.parallel import shard_by_size
      >>> rule = shard_by_size(8, min_size=64)
      >>> rule((), np.zeros((64, 10))), rule((), np.zeros(10))
      (P('batch', None), None)
    """
    device_count = check_int("shard_by_size", "device_count", device_count, minimum=1)
    min_size = check_int("shard_by_size", "min_size", min_size, minimum=1)

    def rule(path, leaf):
        del path
        shape = np.shape(leaf)
        if math.prod(shape) < min_size:
            return None
        for axis, size in enumerate(shape):
            if size % device_count == 0:
                return PartitionSpec(*([None] * axis), BATCH_AXIS, *([None] * (len(shape) - axis - 1)))
        return None

    return rule


def _host_port(address: Any) -> tuple[str, int]:
    """``("host", port)`` from ``"host:port"`` (``"[::1]:port"`` for IPv6), or a ``ValueError``."""
    text = address if isinstance(address, str) else ""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"initialize: coordinator_address must be 'host:port' with a port in [1, 65535], got {address!r}"
        )
    return host, int(port)


def _wait_for(host: str, port: int, timeout_s: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout_s`` (tried every 0.1 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            with socket.create_connection((host, port), timeout=min(left, 1.0)):
                return True
        except OSError:
            time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    timeout_s: float = 60.0,
    local_device_count: int | None = None,
    bind_address: str | None = None,
) -> None:
    """Join this process to a group of ``num_processes`` through ``jax.distributed``; call it before any JAX work.

    Process 0 runs the coordinator, which listens on ``coordinator_address``
    itself (``127.0.0.1:PORT`` keeps it on this machine), not on every
    interface as ``jax.distributed`` does by default; give ``bind_address``
    (``"0.0.0.0:PORT"``) to listen more widely. The other processes first
    wait up to ``timeout_s`` for the coordinator's port to accept a TCP
    connection, and raise a one-line error if it does not: ``jax.distributed``
    itself would end the process with a fatal log instead. Once connected,
    every process waits up to ``timeout_s`` for the whole group; a group
    that never completes ends in ``jax.distributed``'s own fatal
    ``DEADLINE_EXCEEDED`` error.

    After it returns, ``jax.devices()`` lists every process's devices and
    :class:`DataParallel` spans them. On the CPU the collectives use gloo
    (``jax_cpu_collectives_implementation``, the default in this JAX, set
    here explicitly).

    Args:
      coordinator_address: ``"host:port"`` of process 0, the same in every process.
      num_processes: how many processes form the group, >= 1.
      process_id: this process's rank in ``[0, num_processes)``.
      timeout_s: seconds to wait for the coordinator and for the group, > 0.
      local_device_count: simulate this many CPU devices in this process
        (``jax_num_cpu_devices``), for tests on one machine; ``None`` uses the
        devices there are (the GPUs of a host).
      bind_address: where process 0's coordinator listens; ``None`` is
        ``coordinator_address``.

    Raises:
      ValueError: for a malformed address or rank, a coordinator port
        already in use (process 0), or a coordinator that does not accept a
        connection within ``timeout_s`` (other processes); raised before
        ``jax.distributed`` is touched.
      RuntimeError: when JAX already ran a computation in this process (the
        group must be joined first) or this process already joined one.

    Examples:
      >>> from hamjax.parallel import initialize
      >>> initialize("127.0.0.1", num_processes=2, process_id=1)
      Traceback (most recent call last):
      ...
      ValueError: initialize: coordinator_address must be 'host:port' with a port in [1, 65535], got '127.0.0.1'
    """
    where = "initialize"
    host, port = _host_port(coordinator_address)
    num_processes = check_int(where, "num_processes", num_processes, minimum=1)
    process_id = check_int(where, "process_id", process_id, minimum=0, maximum=num_processes - 1)
    timeout_s = check_positive(where, "timeout_s", timeout_s)
    if local_device_count is not None:
        local_device_count = check_int(where, "local_device_count", local_device_count, minimum=1)
    if bind_address is None:
        bind_address = coordinator_address
    bind_host, bind_port = _host_port(bind_address)
    if process_id == 0 and not _port_free("127.0.0.1" if bind_host == "localhost" else bind_host, bind_port):
        raise ValueError(
            f"{where}: the coordinator cannot listen on {bind_address}: the port is in use or the address is "
            "not this machine's; pick a free port"
        )
    if process_id != 0 and not _wait_for(host, port, timeout_s):
        raise ValueError(
            f"{where}: the coordinator {coordinator_address} did not accept a connection within {timeout_s:g} s "
            f"(process {process_id} of {num_processes}); start process 0 first, check the address and port, "
            "or raise timeout_s"
        )
    if local_device_count is not None:
        try:
            jax.config.update("jax_num_cpu_devices", local_device_count)
        except RuntimeError as err:
            raise RuntimeError(f"{where}: call it before any JAX computation in this process ({err})") from None
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=max(1, math.ceil(timeout_s)),
        coordinator_bind_address=bind_address,
    )
