"""Figure helpers shared by the studies: object-oriented matplotlib, PNG + PDF, readable log axes.

Figures are ``matplotlib.figure.Figure`` objects made without ``pyplot``, so no global backend or figure
registry is touched (nothing calls ``matplotlib.use``; notebooks keep their inline backend, scripts need no
display). ``save`` writes a PNG (for README / notebooks) and a PDF (vector, for papers) atomically.

    fig, axes = plotting.panels(2, ncols=2)
    axes[0].plot(D, dl); plotting.log_axis(axes[0], "x")
    png = plotting.save(fig, "out/fig1_dl_vs_D")   # -> out/fig1_dl_vs_D.png and .pdf
"""

from __future__ import annotations

import math
import os

import numpy as np

from jaxicl import files
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

FORMATS = ("png", "pdf")


def figure(width: float, height: float) -> Figure:
  """A standalone figure of ``width`` × ``height`` inches (no pyplot state)."""
  return Figure(figsize=(width, height))


def panels(n: int, ncols: int = 3, size: tuple[float, float] = (4.6, 3.6)) -> tuple[Figure, list[Axes]]:
  """A figure with ``n`` panels on a grid of ``ncols`` columns (each ``size`` inches); unused cells hidden."""
  ncols = max(1, min(ncols, n))
  nrows = max(1, math.ceil(n / ncols))
  fig = figure(size[0] * ncols, size[1] * nrows)
  axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False)).ravel()
  for ax in axes[n:]:
    ax.axis("off")
  return fig, list(axes[:max(n, 1)])


def plain_number(value: float, _pos=None) -> str:
  """Tick label: 1000 -> '1000', 0.01 -> '0.01', 2e-05 -> '2e-05' (``%g``: plain decimals where they are short)."""
  if not math.isfinite(value):
    return ""
  return f"{value:g}"


def log_axis(ax: Axes, which: str = "y", minor_labels: bool = False, base: int = 10) -> None:
  """Log scale on ``which`` ('x', 'y' or 'xy') with plain-number tick labels (10, 100, 0.01 rather than 10^k);
  with ``minor_labels`` (base 10) the 2× and 5× ticks are labelled too (axes spanning a decade or two)."""
  for axis_name in which:
    axis = ax.xaxis if axis_name == "x" else ax.yaxis
    (ax.set_xscale if axis_name == "x" else ax.set_yscale)("log", base=base)
    axis.set_major_locator(LogLocator(base=base))
    axis.set_major_formatter(FuncFormatter(plain_number))
    if minor_labels and base == 10:
      axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
      axis.set_minor_formatter(FuncFormatter(plain_number))
    else:
      axis.set_minor_formatter(NullFormatter())


def save(fig: Figure, path: str, dpi: int = 110, formats: tuple[str, ...] = FORMATS) -> str:
  """Writes ``path`` + ``.png`` and ``.pdf`` (any extension on ``path`` is replaced), each atomically (temp file +
  rename); returns the PNG path."""
  stem = os.path.splitext(path)[0]
  fig.tight_layout()
  written = []
  for fmt in formats:
    written.append(files.atomic_write(f"{stem}.{fmt}", lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt)))
  return written[0]
