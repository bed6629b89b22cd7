"""XLA compilation: the persistent compilation cache, and how long a run spent compiling.

:func:`use_cache` points JAX's persistent compilation cache at a directory
and lowers its thresholds so that the small programs of a CPU run are kept
too (by default JAX keeps only programs that took a second or more to
compile); a second process compiling the same programs then reads them
from disk. :func:`cache_dir` says which directory ``hamjax optimize`` uses:
``--compile-cache DIR``, else ``$HAMJAX_COMPILE_CACHE`` (empty: no cache),
else ``$XDG_CACHE_HOME/hamjax/jax`` (``~/.cache/hamjax/jax``).
:func:`compile_log` counts the compile seconds and cache hits of a block
of work, which is how a report shows the cache at work.

The cache is trusted code: a directory others can write lets them run code
in your process (JAX's own warning), so it lives in the user's cache folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import jax

from hamjax.checkpoint import check_directory

__all__ = ["ENV", "CompileLog", "cache_dir", "compile_log", "use_cache"]

ENV = "HAMJAX_COMPILE_CACHE"
"""The environment variable naming the cache directory; set and empty, it turns the cache off."""

_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_HIT_EVENT = "/jax/compilation_cache/cache_hits"
_MISS_EVENT = "/jax/compilation_cache/cache_misses"


def cache_dir(option: str | os.PathLike | None = None) -> Path | None:
    """The persistent cache directory ``hamjax optimize`` uses; ``None`` when the cache is off.

    Args:
      option: the directory given on the command line (``--compile-cache``),
        which wins; ``None`` reads ``$HAMJAX_COMPILE_CACHE`` (set and empty:
        off), then ``$XDG_CACHE_HOME/hamjax/jax``, then ``~/.cache/hamjax/jax``.

    Returns:
      An absolute path (not created here), or ``None``.

    Examples:
      >>> from hamjax.compilation import cache_dir
      >>> str(cache_dir("/tmp/jaxcache"))
      '/tmp/jaxcache'
    """
    if option is not None:
        return Path(os.path.abspath(os.fspath(option)))
    if ENV in os.environ:
        value = os.environ[ENV]
        return Path(os.path.abspath(value)) if value else None
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(os.path.abspath(root)) / "hamjax" / "jax"


def use_cache(directory: str | os.PathLike | None, *, where: str = "use_cache", arg: str = "directory") -> Path | None:
    """Keep every program this process compiles in ``directory``, and read it from there next time.

    Sets ``jax_compilation_cache_dir``, and lowers
    ``jax_persistent_cache_min_compile_time_secs`` to 0 and
    ``jax_persistent_cache_min_entry_size_bytes`` to -1 (no size limit), so
    programs that compile in milliseconds are kept as well. The directory is
    checked first (:func:`hamjax.checkpoint.check_directory`: a regular file,
    or a place this process cannot write, is refused in one line) and created.

    Args:
      directory: the cache directory; ``None`` turns the cache off.
      where: the caller label (``""`` for a command-line option).
      arg: the argument's name.

    Returns:
      The absolute directory, or ``None``.

    Raises:
      ValueError: naming ``arg`` and the path, before anything is configured.

    Examples:
      >>> import tempfile
      >>> import jax
      >>> from hamjax.compilation import use_cache
      >>> path = use_cache(tempfile.mkdtemp())
      >>> jax.config.jax_compilation_cache_dir == str(path)
      True
      >>> use_cache(None) is None
      True
    """
    from jax.experimental.compilation_cache import compilation_cache

    if directory is None:
        jax.config.update("jax_compilation_cache_dir", None)
        compilation_cache.reset_cache()
        return None
    path = Path(check_directory(where, arg, directory))
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compilation_cache.reset_cache()  # a process that compiled before decided "no cache" once; decide again
    return path


@dataclasses.dataclass
class CompileLog:
    """What :func:`compile_log` counted: XLA compile seconds and persistent-cache hits and misses.

    Attributes:
      seconds: time in XLA's backend compilation (reading a cached program counts, and is short).
      compiles: programs compiled or read from the cache.
      cache_hits: programs read from the persistent cache.
      cache_misses: programs looked up in the cache and compiled.

    Examples:
      >>> CompileLog().to_dict()
      {'seconds': 0.0, 'compiles': 0, 'cache_hits': 0, 'cache_misses': 0}
    """

    seconds: float = 0.0
    compiles: int = 0
    cache_hits: int = 0
    cache_misses: int = 0

    def to_dict(self) -> dict:
        """Plain values for a JSON report (seconds rounded to milliseconds)."""
        return {**dataclasses.asdict(self), "seconds": round(self.seconds, 3)}


@contextlib.contextmanager
def compile_log() -> Iterator[CompileLog]:
    """Count the compilations inside a ``with`` block, through ``jax.monitoring``.

    Returns:
      A context manager yielding the :class:`CompileLog` it fills.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from hamjax.compilation import compile_log
      >>> with compile_log() as log:
      ...     _ = jax.jit(lambda a: a * 3.0 + 1.0)(jnp.ones(7))
      >>> log.compiles >= 1 and log.seconds > 0
      True
    """
    log = CompileLog()

    def on_duration(event: str, seconds: float, **kwargs) -> None:
        del kwargs
        if event == _COMPILE_EVENT:
            log.seconds += seconds
            log.compiles += 1

    def on_event(event: str, **kwargs) -> None:
        del kwargs
        if event == _HIT_EVENT:
            log.cache_hits += 1
        elif event == _MISS_EVENT:
            log.cache_misses += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield log
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
