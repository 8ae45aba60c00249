"""Tests of study 2 (jaxicl/studies/head_utilization): the tiny preset end to end through the CLI (summary.json
checked against the checkpointed models and its own rules), config validation, and the notebook.

The CLI run and the notebook share a persistent XLA compilation cache (and fast, unoptimised XLA), so the
notebook's run of the same tiny preset mostly reuses compiled programs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, reproduce, subprocess_env

from jaxicl import interpret, train
from jaxicl.studies.head_utilization import run


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
  R = len(sc.seeds)
  for key in ("mean_risk", "pruned_risk", "mirror_pruned_risk", "one_per_layer_risk"):
    assert len(m[key]["per_seed"]) == R and all(math.isfinite(v) and v > 0 for v in m[key]["per_seed"]), key
    assert m[key]["mean"] == pytest.approx(np.mean(m[key]["per_seed"]), rel=1e-12), key
  assert len(m["probe_full_by_layer"]) == L + 1 and len(m["probe_pruned_by_layer"]) == L + 1
  assert len(s["probe_full_by_layer"]) == L + 1 and "effective_heads" not in s and "claim" not in s
  assert _all_finite(m["probe_full_by_layer"]) and _all_finite(s["probe_full_by_layer"])
  sigma_base = summary["baselines"][sigma]
  assert set(sigma_base) == {"PtO", "iterated PtO", "GD", "ridge", "Lasso", "OLS", "Bayes"}
  assert all(math.isfinite(b["mean_risk"]) for b in sigma_base.values())
  assert all(isinstance(w, str) for w in summary["warnings"])
  ridge = sigma_base["ridge"]["mean_risk"]
  assert m["beats_ridge"] == [v <= ridge for v in m["mean_risk"]["per_seed"]]

  # effective heads: one value per layer and seed, each in [1, H] (null only if no head of the layer matters)
  eff = m["effective_heads"]
  assert np.asarray(eff["per_seed"], dtype=float).shape == (R, L)
  for value in [v for row in eff["per_seed"] for v in row] + eff["mean"]:
    assert value is None or 1 - 1e-9 <= value <= H + 1e-9
  # the per-seed verdict follows the stated rule from the numbers next to it
  assert len(m["claim"]) == R and summary["claim_rule"]
  for r, v in enumerate(m["claim"]):
    assert v["seed"] == sc.seeds[r]
    assert v["layer1_all_heads_matter"] == (eff["per_seed"][r][0] is not None and eff["per_seed"][r][0] >= H / 2)
    full, pruned = m["mean_risk"]["per_seed"][r], m["pruned_risk"]["per_seed"][r]
    assert v["pruned_risk_increase"] == pytest.approx((pruned - full) / full, rel=1e-9, abs=1e-12)
    assert v["later_layers_one_head_suffices"] == ((pruned - full) <= run.PRUNE_TOLERANCE * full)
    assert v["claim_holds"] == (v["layer1_all_heads_matter"] and v["later_layers_one_head_suffices"]
                                and v["mirror_costs_more"])
  assert m["seeds_showing_claim"] == sum(v["claim_holds"] for v in m["claim"])

  with open(os.path.join(tiny_out, "importance.json")) as f:
    imp = json.load(f)[multi]
  per_seed = np.asarray(imp["importance"])
  assert per_seed.shape == (R, L, H) and np.all(np.isfinite(per_seed))
  assert np.all(per_seed >= -0.05 * m["mean_risk"]["mean"])  # masking a head cannot help much
  np.testing.assert_allclose(np.asarray(imp["mean"]), per_seed.mean(0), rtol=1e-6)
  masks = np.asarray(imp["pruned_masks"])
  assert masks.shape == (R, L, H)
  assert np.all(masks[:, 0] == 1) and np.all(masks[:, 1:].sum(-1) == 1)  # layer 1 whole, one head later

  # pruned risk = a direct masked evaluation of the checkpointed models on the held-out prompts
  result = train.load_run(os.path.join(tiny_out, "runs", multi))
  sets = run.prompt_sets(sc, run.task_config(sc, sc.noise_stds[0]))
  direct = interpret.masked_risk_runs(result.model, result.state.params, sets.eval, masks.astype(np.float32))
  np.testing.assert_allclose(direct.mean(-1), m["pruned_risk"]["per_seed"], rtol=1e-5)
  full = interpret.masked_risk_runs(result.model, result.state.params, sets.eval, None)
  np.testing.assert_allclose(full.mean(-1), m["mean_risk"]["per_seed"], rtol=1e-5)

  rows = open(os.path.join(tiny_out, "risk_vs_n.csv")).read().strip().splitlines()
  assert len(rows) == 1 + sc.n_points * (1 + 3 + 1)  # multi (+ 3 pruned variants) and single
  probe_rows = open(os.path.join(tiny_out, "probe.csv")).read().strip().splitlines()
  assert len(probe_rows) == 1 + (L + 1) * 3  # full and pruned multi-head, single-head


@pytest.mark.parametrize("change,field", [(dict(sparsity=9), "sparsity"), (dict(dims_start=1), "dims_start"),
                                         (dict(pto_steps=(1, -3)), "pto_steps"), (dict(noise_stds=()), "noise_stds")])
def test_bad_study_config_names_the_field(change, field):
  with pytest.raises(ValueError, match=rf"StudyConfig\.{field}="):
    dataclasses.replace(run.tiny(), **change)


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
