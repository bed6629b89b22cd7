"""Before/after reports: one row per stage (dense, pruned, int8, onnx, ...).

A :class:`Stage` is the small interface every later step implements to add
a row: a name, a way to build a :class:`hamjax.measure.Runner` and the bytes
the model needs. :func:`measure_stages` measures them all the same way and
:func:`write_report` writes ``report.json`` and ``report.md`` atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hamjax import checkpoint, measure

COLUMNS = ("stage", "params", "size MB", "latency p50 @1 (ms)", "throughput @256 (samples/s)", "test accuracy")
MEMORY_COLUMN = "memory @256 (MB)"
"""The column of what XLA plans for one call at the throughput batch, shown where the backend reports it."""


def columns(measurements: Sequence[measure.Measurement]) -> tuple[str, ...]:
    """``COLUMNS``, with ``MEMORY_COLUMN`` before the accuracy where a measurement has compiled memory.

    Args:
      measurements: the rows.

    Returns:
      The column names, in table order.

    Examples:
      >>> from hamjax.measure import Measurement
      >>> columns([Measurement("m", 1, 4, None, (), None, None, compiled_memory_bytes=64)])[-2:]
      ('memory @256 (MB)', 'test accuracy')
      >>> columns([Measurement("m", 1, 4, None, (), None, None)]) == COLUMNS
      True
    """
    if all(m.compiled_memory_bytes is None for m in measurements):
        return COLUMNS
    return (*COLUMNS[:-1], MEMORY_COLUMN, COLUMNS[-1])


@dataclasses.dataclass(frozen=True)
class Stage:
    """A model worth a row in the report.

    Attributes:
      name: the row's label (``"dense"``, ``"pruned"``, ``"onnx int8"``).
      make_runner: builds the :class:`~hamjax.measure.Runner` that runs it.
      params: its params pytree, for the parameter count (``None`` if not
        meaningful, for example an ONNX file).
      size_bytes: bytes of its stored weights; defaults to the params' bytes.
      param_count: the parameter count to report; defaults to every element
        of ``params`` (a pruned stage reports its nonzeros).
      notes: a short remark shown in the markdown report.
      timed: measure latency and throughput; ``False`` leaves them out (a
        simulated model whose JAX speed says nothing about its runtime's).

    Examples:
      >>> import jax.numpy as jnp
      >>> from hamjax.report import Stage
      >>> s = Stage.from_model("dense", lambda p, x: x @ p["w"], {"w": jnp.ones((3, 2))})
      >>> s.size_bytes
      24
    """

    name: str
    make_runner: Callable[[], Any]
    params: Any = None
    size_bytes: int | None = None
    param_count: int | None = None
    notes: str = ""
    timed: bool = True

    def __post_init__(self):
        if self.size_bytes is None and self.params is not None:
            object.__setattr__(self, "size_bytes", measure.param_bytes(self.params))

    @classmethod
    def from_model(cls, name: str, apply_fn, params, **kw) -> Stage:
        """A stage that runs ``(apply_fn, params)`` under ``jax.jit``; ``kw`` sets the other fields."""
        return cls(name, lambda: measure.JaxRunner(apply_fn, params, name=name), params, **kw)


def measure_stages(
    stages: Sequence[Stage],
    x_test,
    y_test,
    *,
    latency_batch: int = 1,
    throughput_batch: int = 256,
    runs: int = 50,
) -> list[measure.Measurement]:
    """Measure every stage on the same data with the same settings.

    Args:
      stages: the :class:`Stage` values, in report order.
      x_test, y_test: test inputs and integer labels.
      latency_batch: the batch size of the latency column.
      throughput_batch: the batch size of the throughput column.
      runs: timed calls per latency and throughput figure (after warm-up).

    Returns:
      One :class:`~hamjax.measure.Measurement` per stage.
    """
    if not stages:
        raise ValueError("measure_stages: no stages to measure")
    out = []
    for stage in stages:
        runner = stage.make_runner()
        m = measure.measure(
            runner,
            name=stage.name,
            params=stage.params,
            size_bytes=stage.size_bytes,
            example=x_test[:1],
            x_test=x_test,
            y_test=y_test,
            latency_batch=latency_batch if stage.timed else None,
            throughput_batches=(throughput_batch,) if stage.timed else (),
            runs=runs,
        )
        if stage.param_count is not None:
            m = dataclasses.replace(m, params=stage.param_count)
        out.append(m)
    return out


def rows(measurements: Sequence[measure.Measurement]) -> list[list[str]]:
    """The table cells, formatted, one row per measurement, in :func:`columns` order."""
    memory = MEMORY_COLUMN in columns(measurements)
    table = []
    for m in measurements:
        planned = m.compiled_memory_bytes
        table.append(
            [
                m.name,
                f"{m.params:,}" if m.params else "-",
                f"{m.size_bytes / 1e6:.3f}",
                f"{m.latency.p50_ms:.3f}" if m.latency else "-",
                f"{m.throughput[0].samples_per_s:,.0f}" if m.throughput else "-",
                *([f"{planned / 1e6:.2f}" if planned is not None else "-"] if memory else []),
                f"{m.accuracy:.4f}" if m.accuracy is not None else "-",
            ]
        )
    return table


def markdown(measurements: Sequence[measure.Measurement], *, title: str = "hamjax report", notes: str = "") -> str:
    """A markdown report: a title, optional notes and the table."""
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes, ""]
    lines.append("| " + " | ".join(columns(measurements)) + " |")
    lines.append("|" + "|".join(" --- " for _ in columns(measurements)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows(measurements)]
    return "\n".join(lines) + "\n"


def print_table(measurements: Sequence[measure.Measurement], *, title: str = "hamjax report") -> None:
    """Print the table to the terminal with rich."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns(measurements)):
        table.add_column(col, justify="left" if i == 0 else "right")
    for r in rows(measurements):
        table.add_row(*r)
    console = Console()
    if not console.is_terminal:  # rich falls back to 80 columns, which would wrap the headers of a log
        console = Console(width=120)
    console.print(table)


def write_report(out_dir: str | os.PathLike, measurements: Sequence[measure.Measurement], meta: dict) -> Path:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (each atomically).

    Args:
      out_dir: the output directory (created if absent).
      measurements: the rows.
      meta: run facts for the JSON (model, data, recipe, seed, versions).

    Returns:
      The directory written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "columns": list(columns(measurements)), "stages": [m.to_dict() for m in measurements]}
    checkpoint.atomic_write(out / "report.json", json.dumps(payload, indent=2) + "\n")
    facts = ", ".join(f"{k}: {v}" for k, v in meta.items() if not isinstance(v, dict | list))
    notes = [facts, *meta.get("notes", [])]
    checkpoint.atomic_write(out / "report.md", markdown(measurements, notes="\n\n".join(n for n in notes if n)))
    return out
