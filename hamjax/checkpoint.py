"""Orbax checkpoints of pytrees plus JSON metadata, for resuming long jobs.

Every save is atomic: orbax writes into a temporary directory and renames it
when complete, so a process killed mid-save leaves the previous checkpoint
intact. Nothing is ever read with pickle: arrays go through orbax's
tensorstore format, metadata through JSON.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
import warnings
from typing import Any

import jax
import numpy as np

from hamjax._checks import check_int, check_number

PyTree = Any


def _abstract(tree: PyTree) -> PyTree:
    """Shapes, dtypes and, for ``jax.Array`` leaves, shardings: a sharded state restores onto its own devices."""

    def spec(a):
        if isinstance(a, jax.Array):  # a global array spanning processes cannot become a numpy array here
            return jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)
        return jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype)

    return jax.tree.map(spec, tree)


def _into(like: PyTree, restored: PyTree, what: str) -> PyTree:
    """Rebuild ``restored``'s leaves in ``like``'s structure (orbax returns NamedTuples as tuples)."""
    leaves, want = jax.tree.leaves(restored), jax.tree.structure(like)
    if len(leaves) != want.num_leaves:
        raise ValueError(f"{what} has {len(leaves)} arrays, expected {want.num_leaves}")
    return jax.tree.unflatten(want, leaves)


def _label(where: str) -> str:
    """The error prefix for the caller label ``where``; none for ``""`` (a CLI option, which the CLI prefixes)."""
    return f"{where}: " if where else ""


def check_directory(where: str, arg: str, path: str | os.PathLike) -> str:
    """``path`` as an absolute path, or raises if it cannot be a directory hamjax reads and writes.

    ``path`` may be an existing directory that this process can list, read
    and write, or a path not yet there whose nearest existing parent is such a
    directory (it is then created when first written, not here). A regular
    file, or a directory without the permissions, is a ``ValueError`` naming
    ``arg`` and the path, raised before any work is spent.

    Args:
      where: the caller label (the public function or class a user called);
        ``""`` for a command-line option, whose errors the CLI prefixes.
      arg: the argument's name (``"--out"`` for an option).
      path: the directory to check.

    Returns:
      The absolute path.

    Examples:
      >>> import pathlib, tempfile
      >>> from hamjax.checkpoint import check_directory
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> check_directory("fit", "checkpoint_dir", root / "new") == str(root / "new")
      True
      >>> (root / "notes.txt").write_text("x")
      1
      >>> check_directory("fit", "checkpoint_dir", root / "notes.txt")
      Traceback (most recent call last):
      ...
      ValueError: fit: checkpoint_dir must be a directory, got the regular file ...notes.txt'
    """
    try:
        path = os.path.abspath(os.fspath(path))
    except TypeError as err:
        raise ValueError(f"{_label(where)}{arg} must be a path to a directory, got {path!r}") from err
    if os.path.exists(path) and not os.path.isdir(path):
        kind = "the regular file" if os.path.isfile(path) else "a path that is not a directory"
        raise ValueError(f"{_label(where)}{arg} must be a directory, got {kind} {path!r}")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{_label(where)}{arg} {path!r} cannot be created: {existing!r} is a file, not a directory")
    if not os.access(existing, os.R_OK | os.W_OK | os.X_OK):
        what = "is" if existing == path else f"would be created in {existing!r}, which is"
        raise ValueError(f"{_label(where)}{arg} {path!r} {what} not a directory this process can read and write")
    return path


def check_file(where: str, arg: str, path: str | os.PathLike) -> str:
    """``path`` as an absolute path, or raises if hamjax could not write a file there.

    Refused before any work: an existing directory, and a parent that
    :func:`check_directory` refuses (a regular file on the way, no
    permission to write).

    Args:
      where: the caller label (``""`` for a command-line option).
      arg: the argument's name.
      path: the file to be written.

    Returns:
      The absolute path.

    Examples:
      >>> import pathlib, tempfile
      >>> from hamjax.checkpoint import check_file
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> check_file("build", "out", root / "m.engine") == str(root / "m.engine")
      True
      >>> check_file("build", "out", root)
      Traceback (most recent call last):
      ...
      ValueError: build: out '...' is a directory, not a file to write
    """
    try:
        path = os.path.abspath(os.fspath(path))
    except TypeError as err:
        raise ValueError(f"{_label(where)}{arg} must be a path to a file, got {path!r}") from err
    if os.path.isdir(path):
        raise ValueError(f"{_label(where)}{arg} {path!r} is a directory, not a file to write")
    check_directory(where, f"{arg} {path!r}: its directory", os.path.dirname(path))
    return path


def check_inside(where: str, what: str, root: str | os.PathLike, path: str | os.PathLike) -> str:
    """``path`` unless it resolves, through symbolic links, outside the directory ``root`` (or to ``root`` itself).

    Every path hamjax derives under an output directory (checkpoint folders,
    exported files, saved models) passes through here before anything is
    written, so a link planted inside the output directory cannot send a
    write, or orbax's pruning of old steps, elsewhere.

    Args:
      where: the caller label.
      what: what would be written there, for the error (``"the export folder"``).
      root: the output directory.
      path: the derived path.

    Returns:
      ``path`` as given, as a string.

    Raises:
      ValueError: naming ``what``, where it would go and ``root``.

    Examples:
      >>> import os, pathlib, tempfile
      >>> from hamjax.checkpoint import check_inside
      >>> root = pathlib.Path(tempfile.mkdtemp())
      >>> check_inside("optimize", "the export folder", root, root / "export") == str(root / "export")
      True
      >>> os.symlink(tempfile.gettempdir(), root / "model")
      >>> check_inside("optimize", "the saved model", root, root / "model")
      Traceback (most recent call last):
      ...
      ValueError: optimize: the saved model would go to ..., outside the output directory ...
    """
    base, resolved = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([base, resolved]) != base or resolved == base:
        raise ValueError(f"{_label(where)}{what} would go to {resolved}, outside the output directory {base}")
    return os.fspath(path)


def _reason(err: BaseException) -> str:
    """One line saying why a checkpoint step could not be restored."""
    lines = str(err).strip().splitlines()
    text = lines[0] if lines else ""
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


class Checkpointer:
    """Save and restore ``(tree, metadata)`` pairs by step.

    A corrupt newest step (a truncated array file, broken metadata, a tree
    that does not match) is skipped with a ``RuntimeWarning`` naming it and
    why, and the newest intact step is restored instead; saving a step that
    is already there (the skipped one, when the resumed run reaches it again)
    replaces it.

    Args:
      directory: where checkpoints live (created if absent); a regular file or
        a directory this process cannot read and write is a ``ValueError``.
      every: save when ``step % every == 0`` (``maybe_save``); ``None`` never.
      min_interval_s: ``maybe_save`` also waits until this many seconds
        have passed since the last save (or since the checkpointer was
        made), unless told the step is the last.
      max_to_keep: how many recent checkpoints to keep.

    Examples:
      >>> import tempfile, jax.numpy as jnp
      >>> from hamjax.checkpoint import Checkpointer
      >>> ckpt = Checkpointer(tempfile.mkdtemp(), every=1)
      >>> ckpt.save(3, {"w": jnp.ones(2)}, {"note": "x"})
      >>> step, tree, meta = ckpt.restore_latest({"w": jnp.zeros(2)})
      >>> step, tree["w"].tolist(), meta["note"]
      (3, [1.0, 1.0], 'x')
      >>> ckpt.close()
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        every: int | None = None,
        min_interval_s: float = 0.0,
        max_to_keep: int = 2,
    ):
        import orbax.checkpoint as ocp

        if every is not None:
            every = check_int("Checkpointer", "every", every, minimum=1)
        max_to_keep = check_int("Checkpointer", "max_to_keep", max_to_keep, minimum=1)
        self.directory = check_directory("Checkpointer", "directory", directory)
        self.every = every
        self.min_interval_s = check_number("Checkpointer", "min_interval_s", min_interval_s, minimum=0)
        self._last_save = time.monotonic()
        self._ocp = ocp
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=False, cleanup_tmp_directories=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest complete checkpoint, or ``None``."""
        return self._manager.latest_step()

    def save(self, step: int, tree: PyTree, metadata: dict | None = None) -> None:
        """Write ``tree`` (arrays) and ``metadata`` (JSON) for ``step``, atomically."""
        args = self._ocp.args.Composite(
            tree=self._ocp.args.StandardSave(tree),
            meta=self._ocp.args.JsonSave(metadata or {}),
        )
        step = int(step)
        if step in self._manager.all_steps():
            self._manager.delete(step)  # a step written again supersedes the old one (a skipped corrupt one)
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()
        self._last_save = time.monotonic()

    def maybe_save(self, step: int, tree: PyTree, metadata: dict | None = None, *, last: bool = False) -> bool:
        """Save when ``step`` is a multiple of ``every`` and ``min_interval_s`` have passed, or when ``last``.

        Returns whether it saved. With ``every=None`` nothing is saved, ``last`` or not.
        """
        if self.every is None:
            return False
        due = step % self.every == 0 and time.monotonic() - self._last_save >= self.min_interval_s
        if not (due or last):
            return False
        self.save(step, tree, metadata)
        return True

    def restore_latest(self, like: PyTree) -> tuple[int, PyTree, dict] | None:
        """Restore the newest intact checkpoint into the structure of ``like``.

        Steps are tried newest first; one that cannot be restored (a
        truncated or missing array file, broken JSON metadata, a tree that
        does not match ``like``) is skipped, and when an older step is
        restored instead a ``RuntimeWarning`` names each skipped step and why.

        Args:
          like: a pytree with the structure, shapes and dtypes to restore.

        Returns:
          ``(step, tree, metadata)``, or ``None`` when there is no checkpoint.

        Raises:
          ValueError: when no step can be restored; it names the directory and
            each step with its reason.
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        skipped = []
        for step in steps:
            try:
                tree, meta = self._restore(step, like)
            except Exception as err:  # a corrupt step raises anything from orbax, tensorstore or json
                skipped.append(f"step {step} ({_reason(err)})")
                continue
            for what in skipped:
                warnings.warn(
                    f"Checkpointer: skipped the checkpoint at {what} in {self.directory}; "
                    f"restored step {step}, the newest intact one",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return step, tree, meta
        raise ValueError(
            f"Checkpointer: no intact checkpoint in {self.directory} matches the expected tree: " + "; ".join(skipped)
        )

    def _restore(self, step: int, like: PyTree) -> tuple[PyTree, dict]:
        args = self._ocp.args.Composite(
            tree=self._ocp.args.StandardRestore(_abstract(like)),
            meta=self._ocp.args.JsonRestore(),
        )
        restored = self._manager.restore(step, args=args)
        meta = restored["meta"]
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"the metadata is a {type(meta).__name__}, not a JSON object")
        return _into(like, restored["tree"], "the tree"), dict(meta or {})

    def close(self) -> None:
        """Release the underlying orbax manager."""
        self._manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _stale_temporaries(directory: str, name: str) -> list[str]:
    """Temporary files of earlier writes of ``name`` whose writing process is gone (killed mid-write)."""
    prefix, stale = f".{name}.", []
    with contextlib.suppress(OSError):
        for entry in os.listdir(directory):
            if not (entry.startswith(prefix) and entry.endswith(".tmp")):
                continue
            pid = entry[len(prefix) : -len(".tmp")].partition("-")[0]
            if not pid.isdigit() or not _alive(int(pid)):
                stale.append(os.path.join(directory, entry))
    return stale


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def atomic_write(path: str | os.PathLike, data: str | bytes | memoryview) -> None:
    """Write ``data`` (text as UTF-8) to a temporary file beside ``path``, sync it, then rename it over ``path``.

    A reader sees the old file or the new one, never a partial one; the
    temporary file is removed if the write fails, and one that a killed
    process left behind (``.NAME.PID-XXXX.tmp``, its process gone) is removed
    by the next write of the same ``path``. The file gets the process umask's
    permissions like any other tool's output (0644 under the usual umask 022).

    Args:
      path: the file to write; its folder is created.
      data: ``str`` (written as UTF-8), ``bytes`` or a ``memoryview``.

    Examples:
      >>> import pathlib, tempfile
      >>> from hamjax.checkpoint import atomic_write
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "out" / "notes.txt"
      >>> atomic_write(path, "done\\n")
      >>> path.read_text()
      'done\\n'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    os.makedirs(directory, exist_ok=True)
    for stale in _stale_temporaries(directory, name):
        with contextlib.suppress(OSError):
            os.unlink(stale)
    # Opened by hand rather than with tempfile.mkstemp, whose fixed 0600 would ignore the umask.
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_tree(path: str | os.PathLike, tree: PyTree) -> None:
    """Save one pytree of arrays to ``path`` with orbax (atomic)."""
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(os.path.abspath(os.fspath(path)), tree, force=True)


def load_tree(path: str | os.PathLike, like: PyTree | None = None) -> PyTree:
    """Load a pytree saved by :func:`save_tree`, optionally into the structure of ``like``."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"load_tree: no checkpoint directory at {path}")
    with ocp.StandardCheckpointer() as ckptr:
        if like is None:
            return ckptr.restore(path)
        return _into(like, ckptr.restore(path, _abstract(like)), f"checkpoint {path}")
