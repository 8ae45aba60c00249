"""The tour notebook runs top to bottom in a fresh venv with the wheel installed, and what it computes is right:
the numbers it prints are checked against the library (theory constants), the task definitions (sparsity,
covariance) and the baselines."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import DEFAULT_XLA, run_notebook_in_venv

from jaxicl import theory


@pytest.fixture(scope="module")
def tour_text(venv) -> str:
  """What the tour printed, executed in the fresh venv holding the wheel (``conftest.venv``), outside the checkout."""
  # conftest.DEFAULT_XLA, not FAST_XLA: the tour's 1000 training steps run longer than they compile (its training
  # cell: 27 s at XLA's default level, 54 s at FAST_XLA's level 0; level 1 trains as fast as the default)
  return run_notebook_in_venv(venv, "tour.ipynb", XLA_FLAGS=DEFAULT_XLA)


def _floats(pattern: str, text: str) -> list[float]:
  match = re.search(pattern, text)
  assert match, f"{pattern!r} not in the notebook's output:\n{text[-2000:]}"
  return [float(g) for g in match.groups()]


def test_tasks_cell_samples_what_the_config_says(tour_text):
  assert "sparse w: non-zeros per task [2]" in tour_text
  (cov01,) = _floats(r"empirical cov\[0, 1\] = ([-\d.]+)", tour_text)
  # 2048 prompts × 24 points; the sample covariance's SE is about sqrt((1 + ρ²)/n) < 0.01.
  assert abs(cov01 - 0.8) < 0.05


def test_estimators_cell_lasso_beats_ols_below_d_on_sparse_tasks(tour_text):
  match = re.search(r"excess risk at n=6 \(< d=8\): (\{.*\})", tour_text)
  risks = eval(match.group(1))  # noqa: S307 -- the dict the notebook printed
  assert risks["Lasso α=0.01"] < risks["OLS"]


def test_training_and_evaluation_cells(tour_text):
  final = eval(re.search(r"final training loss per seed: (\[.*?\])", tour_text).group(1))  # noqa: S307
  start = eval(re.search(r"start: (\[.*?\])", tour_text).group(1))  # noqa: S307
  assert len(final) == 3 and all(f < s for f, s in zip(final, start))
  model, avg, _ = _floats(r"model ([\d.]+), averaging ([\d.]+), OLS ([\d.]+)", tour_text)
  assert model < avg


def test_theory_cell_prints_the_library_constants(tour_text):
  single, multi = _floats(r"C_single = ([\d.]+), C_multi = ([\d.]+)", tour_text)
  np.testing.assert_allclose(single, theory.c_single(5, noise_var=0.0).constant, atol=6e-5)
  np.testing.assert_allclose(multi, theory.c_multi(5, noise_var=0.0), atol=6e-5)
  heads = eval(re.search(r"optimal D·L constant with h heads: (\{.*\})", tour_text).group(1))  # noqa: S307
  assert heads[1] == pytest.approx(single, abs=1e-3)
  assert heads[1] >= heads[2] >= heads[4] >= multi - 1e-4  # more heads never hurt; C_multi is the limit


def test_head_masking_cell(tour_text):
  block = tour_text.split("head importance [layer, head]:")[1]
  values = [float(v) for v in re.findall(r"-?\d+\.\d+", block.split("\n\n")[0])]
  assert len(values) == 4 and all(np.isfinite(values))
