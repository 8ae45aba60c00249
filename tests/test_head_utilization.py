"""Tests of study 2 (jaxicl/studies/head_utilization): the tiny preset end to end through the CLI, the baseline
tuning machinery, and the notebook.

The CLI run and the notebook share a persistent XLA compilation cache (and fast, unoptimised XLA), so the
notebook's run of the same tiny preset mostly reuses compiled programs.
"""

from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, reproduce, subprocess_env

from jaxicl.studies.head_utilization import run
from jaxicl import estimators, tasks


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory, xla_cache):
  out = str(tmp_path_factory.mktemp("hu_tiny"))
  proc = reproduce("head-utilization", out, xla_cache)
  assert "Study 2 summary" in proc.stdout
  return out


def _all_finite(tree) -> bool:
  if isinstance(tree, dict):
    return all(_all_finite(v) for v in tree.values())
  if isinstance(tree, (list, tuple)):
    return all(_all_finite(v) for v in tree)
  if isinstance(tree, float):
    return math.isfinite(tree)
  return True


def test_tiny_preset_writes_figures_and_tables(tiny_out):
  sc = run.tiny()
  L, H = sc.layers[0], sc.heads
  multi, single = run.model_tag(sc.noise_stds[0], L, H), run.model_tag(sc.noise_stds[0], L, 1)
  sigma = f"sigma{sc.noise_stds[0]:g}"
  expected = ["risk_vs_n.png", "risk_vs_n.csv", f"importance_{multi}.png", "importance.json", f"probe_{sigma}_L{L}.png",
              "probe.csv", f"pto_vs_baselines_{sigma}.png", "baselines.csv", f"attention_{multi}.png", "summary.json"]
  for name in expected:
    path = os.path.join(tiny_out, name)
    assert os.path.exists(path) and os.path.getsize(path) > 0, name

  with open(os.path.join(tiny_out, "summary.json")) as f:
    summary = json.load(f)
  assert summary["preset"] == "tiny"
  assert set(summary["models"]) == {multi, single}
  m, s = summary["models"][multi], summary["models"][single]
  for key in ("risk_mean_over_n", "pruned_risk_mean_over_n", "layer1_cut_risk_mean_over_n",
              "one_per_layer_risk_mean_over_n"):
    assert math.isfinite(m[key]) and m[key] > 0, key
  assert len(m["probe_full_by_layer"]) == L + 1 and len(m["probe_pruned_by_layer"]) == L + 1
  assert len(s["probe_full_by_layer"]) == L + 1 and "importance_mean" not in s
  assert _all_finite(m["probe_full_by_layer"]) and _all_finite(s["probe_full_by_layer"])
  assert _all_finite(summary["baselines"])
  assert set(summary["baselines"][sigma]) == {"PtO", "GD", "ridge", "Lasso", "OLS"}

  with open(os.path.join(tiny_out, "importance.json")) as f:
    imp = json.load(f)[multi]
  per_seed = np.asarray(imp["importance"])
  assert per_seed.shape == (len(sc.seeds), L, H) and np.all(np.isfinite(per_seed))
  assert np.all(per_seed >= -0.05 * m["risk_mean_over_n"])  # masking a head cannot help much
  np.testing.assert_allclose(np.asarray(imp["mean"]), per_seed.mean(0), rtol=1e-6)
  masks = np.asarray(imp["pruned_masks"])
  assert masks.shape == (len(sc.seeds), L, H)
  assert np.all(masks[:, 0] == 1) and np.all(masks[:, 1:].sum(-1) == 1)  # layer 1 whole, one head later

  rows = open(os.path.join(tiny_out, "risk_vs_n.csv")).read().strip().splitlines()
  assert len(rows) == 1 + sc.n_points * (1 + 3 + 1)  # multi (+ 3 pruned variants) and single
  probe_rows = open(os.path.join(tiny_out, "probe.csv")).read().strip().splitlines()
  assert len(probe_rows) == 1 + (L + 1) * 3  # full and pruned multi-head, single-head


def test_gd_path_risks_equal_the_estimators():
  """The trajectory-based tuner reads exactly estimators.gd / estimators.pto at every checkpoint."""
  cfg = tasks.TaskConfig(family="sparse", d=4, sparsity=2, w_var=1.0, n_points=6, noise_var=0.01)
  prompts = tasks.sample_batch(jax.random.PRNGKey(0), cfg, 16)
  lrs, checkpoints = (0.01, 0.05), (0, 2, 7)
  for preprocess, name in ((True, "pto"), (False, "gd")):
    risks = run.gd_path_risks(prompts, lrs, checkpoints, preprocess)
    assert risks.shape == (2, 3, cfg.n_points)
    fn = estimators.ESTIMATORS[name]
    reference = jax.jit(lambda lr, steps: estimators.excess_risk(  # one compile: lr and steps traced
        jax.vmap(lambda x, y: fn(x, y, lr=lr, steps=steps))(prompts.xs, prompts.ys), prompts.targets))
    for i, lr in enumerate(lrs):
      for j, steps in enumerate(checkpoints):
        np.testing.assert_allclose(risks[i, j], reference(lr, steps), rtol=1e-4, atol=1e-7)


def test_tuning_is_per_n_and_reads_the_test_set():
  tune = np.array([[1.0, 5.0, np.nan], [2.0, 1.0, 3.0]])
  test = np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
  out = run._tuned(tune, test, [{"a": 0}, {"a": 1}])
  assert out["risk"] == [10.0, 50.0, 60.0]
  assert [h["a"] for h in out["hparams"]] == [0, 1, 1]


def test_notebook_executes_with_tiny_preset(tiny_out, xla_cache, tmp_path, monkeypatch):
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  # a kernelspec named python3 that runs *this* interpreter, found first through JUPYTER_PATH
  spec_dir = tmp_path / "jupyter" / "kernels" / "python3"
  spec_dir.mkdir(parents=True)
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "Python 3 (test)", "language": "python"}))
  for key, value in subprocess_env(xla_cache).items():
    monkeypatch.setenv(key, value)
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter") + os.pathsep + os.environ.get("JUPYTER_PATH", ""))
  monkeypatch.setenv("JAXICL_PRESET", "tiny")
  monkeypatch.setenv("JAXICL_OUT", str(tmp_path / "nb_out"))
  nb = nbformat.read(os.path.join(REPO, "notebooks", "head_utilization.ipynb"), as_version=4)
  client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
  client.execute()
  with open(tmp_path / "nb_out" / "summary.json") as f:
    assert json.load(f)["preset"] == "tiny"
  outputs = "".join(o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
  assert "Study 2 summary" in outputs and "Study 2 notebook done: tiny" in outputs
  assert f"python={sys.executable}" in outputs  # the kernel ran this interpreter
