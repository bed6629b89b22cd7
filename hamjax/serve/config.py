"""What ``hamjax serve`` runs with: :class:`ServeConfig`, and the CPU quota its runtime threads stay under.

:class:`ServeConfig` is checked when it is made, so a bad option stops the
server before it loads a model or binds a port: a variant name, a traffic
split that names other variants than the models, a batch or queue bound out of
range, or a non-loopback host without a bearer token.

:func:`cpu_quota` is the number of CPUs this process may use: the smallest of
its CPU affinity and its cgroup's CPU quota (cgroup v2 ``cpu.max``, or v1
``cpu.cfs_quota_us / cpu.cfs_period_us``), at least 1. onnxruntime sizes its
thread pool by the machine's cores otherwise, and a container limited to 2
CPUs on a 64-core host then runs 64 threads that the quota throttles
(onnxruntime issue 9800).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from pathlib import Path

from hamjax._checks import check_int, check_number

LOOPBACK = ("127.0.0.1", "localhost", "::1")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def default_state_dir() -> Path:
    """Where the A/B record lives by default: ``$HAMJAX_DATA_DIR/serve`` or ``~/.local/share/hamjax/serve``.

    Examples:
      >>> default_state_dir().name
      'serve'
    """
    return Path(os.environ.get("HAMJAX_DATA_DIR") or Path.home() / ".local" / "share" / "hamjax") / "serve"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (``127.0.0.1``, ``localhost``, ``::1``).

    Examples:
      >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0")
      (True, False)
    """
    return host in LOOPBACK


def _cgroup_cpus(root: Path) -> float | None:
    """CPUs the cgroup quota allows (v2 ``cpu.max`` first, then v1 CFS), or None when unlimited or unreadable."""
    try:
        parts = (root / "cpu.max").read_text().split()
        if parts and parts[0] != "max":
            return int(parts[0]) / int(parts[1] if len(parts) > 1 else 100000)
        if parts:
            return None
    except (OSError, ValueError):
        pass
    for folder in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


def cpu_quota(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """The CPUs this process may use: min(affinity, cgroup quota rounded up), at least 1.

    Args:
      cgroup_root: the cgroup file system's mount point (tests point it at a folder of fake files).

    Returns:
      A positive int.

    Examples:
      >>> 1 <= cpu_quota() <= (os.cpu_count() or 1)
      True
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_cpus(Path(cgroup_root))
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """Options of ``hamjax serve``, checked when made.

    Attributes:
      models: variant name -> path of an ``.onnx`` file or a directory written by
        ``hamjax optimize`` / :func:`hamjax.models.saved.save`; a single model is named ``"default"``.
      split: variant -> traffic weight (>= 0, one at least > 0) for an A/B test; None splits evenly.
      host, port: where uvicorn binds.
      max_batch: most rows in one runtime call (a request with more is refused).
      max_wait_ms: how long a batch waits for more rows after its first request.
      max_queue: rows waiting per variant; a request beyond it gets 503.
      max_body_bytes: largest request body; a larger one gets 413.
      cache_size: responses kept in the LRU cache (0: no cache).
      threads: runtime threads of all variants together; None: :func:`cpu_quota`.
      token: the bearer token clients must send; required off loopback.
      state_dir: folder of the A/B test's SQLite record; None: :func:`default_state_dir`.
      feedback_ttl_s: how long a request id takes feedback.
      log_json: one JSON line per request on stderr (else plain text).
      graceful_s: how long a SIGTERM waits for in-flight requests.

    Raises:
      ValueError: naming the field, the value and what was expected.

    Examples:
      >>> ServeConfig(models={"default": "model.onnx"}).max_batch
      32
      >>> ServeConfig(models={"default": "model.onnx"}, host="0.0.0.0")
      Traceback (most recent call last):
      ...
      ValueError: ServeConfig: host '0.0.0.0' is not loopback; give a bearer token (--token-env or --token-file)
    """

    models: dict[str, str]
    split: dict[str, float] | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 32
    max_wait_ms: float = 2.0
    max_queue: int = 1024
    max_body_bytes: int = 1 << 20
    cache_size: int = 0
    threads: int | None = None
    token: str | None = None
    state_dir: str | None = None
    feedback_ttl_s: float = 86400.0
    log_json: bool = True
    graceful_s: float = 30.0

    def __post_init__(self):
        where = "ServeConfig"
        if not isinstance(self.models, dict) or not self.models:
            raise ValueError(
                f"{where}: models must be a non-empty mapping of variant name to path, got {self.models!r}"
            )
        for name, path in self.models.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(
                    f"{where}: variant name must be 1-64 letters, digits, '_', '.' or '-' "
                    f"(starting with a letter or digit), got {name!r}"
                )
            if not isinstance(path, str | os.PathLike) or not str(path):
                raise ValueError(f"{where}: models[{name!r}] must be a path, got {path!r}")
        object.__setattr__(self, "models", {k: str(v) for k, v in self.models.items()})
        if self.split is not None:
            if not isinstance(self.split, dict) or set(self.split) != set(self.models):
                raise ValueError(
                    f"{where}: split must give a weight to each variant ({', '.join(self.models)}), got {self.split!r}"
                )
            split = {k: check_number(where, f"split[{k!r}]", v, minimum=0) for k, v in self.split.items()}
            if not sum(split.values()) > 0:
                raise ValueError(f"{where}: split needs a weight > 0 for at least one variant, got {self.split!r}")
            object.__setattr__(self, "split", split)
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"{where}: host must be a host name or address, got {self.host!r}")
        check_int(where, "port", self.port, minimum=0, maximum=65535)
        check_int(where, "max_batch", self.max_batch, minimum=1, maximum=65536)
        check_number(where, "max_wait_ms", self.max_wait_ms, minimum=0, maximum=10_000)
        check_int(where, "max_queue", self.max_queue, minimum=self.max_batch)
        check_int(where, "max_body_bytes", self.max_body_bytes, minimum=64)
        check_int(where, "cache_size", self.cache_size, minimum=0)
        if self.threads is not None:
            check_int(where, "threads", self.threads, minimum=1)
        if self.token is not None and (not isinstance(self.token, str) or not self.token.strip()):
            raise ValueError(f"{where}: token must be a non-empty string when given")
        if self.token is None and not is_loopback(self.host):
            raise ValueError(
                f"{where}: host {self.host!r} is not loopback; give a bearer token (--token-env or --token-file)"
            )
        check_number(where, "feedback_ttl_s", self.feedback_ttl_s, minimum=0, exclusive_minimum=True)
        check_number(where, "graceful_s", self.graceful_s, minimum=0)
        if not isinstance(self.log_json, bool):
            raise ValueError(f"{where}: log_json must be True or False, got {self.log_json!r}")

    def __repr__(self) -> str:
        # The token stays out of reprs, tracebacks and logs.
        fields = ", ".join(
            f"{f.name}={'***' if f.name == 'token' and self.token else getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
        )
        return f"ServeConfig({fields})"

    @property
    def state_path(self) -> Path:
        """The A/B record's folder: ``state_dir`` or :func:`default_state_dir`."""
        return Path(self.state_dir) if self.state_dir is not None else default_state_dir()

    def threads_per_model(self) -> int:
        """Runtime threads of each variant: ``threads`` (or the CPU quota) shared by the variants, at least 1.

        Examples:
          >>> ServeConfig(models={"a": "a.onnx", "b": "b.onnx"}, threads=4).threads_per_model()
          2
        """
        total = self.threads if self.threads is not None else cpu_quota()
        return max(1, total // len(self.models))
