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
from matplotlib.ticker import Formatter, FuncFormatter, LogLocator, NullFormatter

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


class _ShortSpanLabels(Formatter):
  """Labels the 2× and 5× minor ticks of a log axis only while its view spans fewer than ``max_decades`` decades
  (decided at draw time, after the data and limits are set): 20, 50 between 10 and 100 on a short axis, none on a
  long one."""

  def __init__(self, max_decades: float = 1.5):
    self.max_decades = max_decades

  def __call__(self, value: float, pos=None) -> str:
    lo, hi = sorted(self.axis.get_view_interval())
    if lo <= 0 or math.log10(hi / lo) >= self.max_decades:
      return ""
    return plain_number(value)


def log_axis(ax: Axes, which: str = "y", minor_labels: bool | None = None, base: int = 10) -> None:
  """Log scale on ``which`` ('x', 'y' or 'xy') with plain-number tick labels (10, 100, 0.01 rather than 10^k).

  ``minor_labels`` (base 10): True labels the 2× and 5× ticks too (20, 50, 200, ...), False never, None (default)
  when the axis spans less than 1.5 decades at draw time, so a short axis is never left with one or no label."""
  for axis_name in which:
    axis = ax.xaxis if axis_name == "x" else ax.yaxis
    (ax.set_xscale if axis_name == "x" else ax.set_yscale)("log", base=base)
    axis.set_major_locator(LogLocator(base=base))
    axis.set_major_formatter(FuncFormatter(plain_number))
    if minor_labels is not False and base == 10:
      axis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))
      axis.set_minor_formatter(FuncFormatter(plain_number) if minor_labels else _ShortSpanLabels())
    else:
      axis.set_minor_formatter(NullFormatter())


def theory_line(ax: Axes, value: float, label: str, color: str = "k", ls: str = "--", lw: float = 1.0,
                annotate: bool = True, legend: bool = True) -> None:
  """A horizontal theory line at ``value``, labelled in the legend (``legend``) and (``annotate``) written on the
  line itself at the right edge of the panel, so it reads without the legend."""
  ax.axhline(value, color=color, ls=ls, lw=lw, label=label if legend else None)
  if annotate:
    ax.annotate(label, xy=(1.0, value), xycoords=("axes fraction", "data"), xytext=(-2, 2),
                textcoords="offset points", ha="right", va="bottom", fontsize=6, color=color)


def save(fig: Figure, path: str, dpi: int = 110, formats: tuple[str, ...] = FORMATS,
         rect: tuple[float, float, float, float] | None = None) -> str:
  """Writes ``path`` + ``.png`` and ``.pdf`` (any extension on ``path`` is replaced), each atomically (temp file +
  rename), after ``tight_layout`` (within ``rect``, figure fractions, when space is kept for a figure legend);
  returns the PNG path."""
  stem = os.path.splitext(path)[0]
  fig.tight_layout(rect=rect)
  written = []
  for fmt in formats:
    written.append(files.atomic_write(f"{stem}.{fmt}", lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt)))
  return written[0]
