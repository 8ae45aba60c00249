"""jaxicl.plotting: no global matplotlib state, PNG + PDF written, plain log-axis tick labels."""

import matplotlib
import numpy as np

from jaxicl import plotting


def test_figures_leave_the_backend_alone_and_save_png_and_pdf(tmp_path):
  backend = matplotlib.get_backend()
  fig, axes = plotting.panels(3, ncols=2)
  assert len(axes) == 3 and not fig.axes[3].axison  # 2×2 grid, the 4th cell hidden
  axes[0].plot([10, 100, 1000], [1, 2, 3])
  png = plotting.save(fig, str(tmp_path / "fig.png"))
  assert png == str(tmp_path / "fig.png")
  assert open(png, "rb").read(4) == b"\x89PNG" and open(tmp_path / "fig.pdf", "rb").read(5) == b"%PDF-"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["fig.pdf", "fig.png"]  # no temp files left
  assert matplotlib.get_backend() == backend


def test_log_axis_labels_are_plain_numbers():
  fig = plotting.figure(4, 3)
  ax = fig.subplots()
  ax.plot([10, 500], [0.01, 30])
  plotting.log_axis(ax, "xy")
  ax.set_xlim(10, 500)
  ax.set_ylim(0.01, 30)
  xlabels = [plotting.plain_number(t) for t in ax.xaxis.get_majorticklocs() if 10 <= t <= 500]
  ylabels = [plotting.plain_number(t) for t in ax.yaxis.get_majorticklocs() if 0.01 <= t <= 30]
  assert xlabels == ["10", "100"] and ylabels == ["0.01", "0.1", "1", "10"]
  assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
  assert ax.xaxis.get_major_formatter()(1000.0) == "1000" and ax.yaxis.get_major_formatter()(2e-5) == "2e-05"
  assert np.isclose(float(ax.yaxis.get_major_formatter()(0.5)), 0.5)


def test_short_log_axis_labels_its_2x_and_5x_ticks_and_a_long_one_does_not():
  fig = plotting.figure(8, 3)
  short, long = fig.subplots(1, 2)
  for ax, lim in ((short, (15, 90)), (long, (1, 1e4))):
    ax.plot(lim, [1, 2])
    plotting.log_axis(ax, "x")
    ax.set_xlim(*lim)
  assert [short.xaxis.get_minor_formatter()(v) for v in (20.0, 50.0)] == ["20", "50"]
  assert [long.xaxis.get_minor_formatter()(v) for v in (20.0, 50.0)] == ["", ""]
  always = fig.add_subplot(2, 2, 4)
  plotting.log_axis(always, "x", minor_labels=True)
  always.set_xlim(1, 1e4)
  assert always.xaxis.get_minor_formatter()(200.0) == "200"


def test_theory_line_is_labelled_in_the_legend_and_on_the_line():
  fig = plotting.figure(4, 3)
  ax = fig.subplots()
  ax.plot([1, 2], [2, 4])
  plotting.theory_line(ax, 3.0, "C_multi = 3.00")
  plotting.theory_line(ax, 11.09, "C_single = 11.09", legend=False)
  assert ax.get_legend_handles_labels()[1] == ["C_multi = 3.00"]
  assert [t.get_text() for t in ax.texts] == ["C_multi = 3.00", "C_single = 11.09"]
  assert [line.get_ydata()[0] for line in ax.lines[1:]] == [3.0, 11.09]
