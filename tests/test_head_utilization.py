"""Tests of study 2 (jaxicl/studies/head_utilization): the tiny preset end to end through the CLI (summary.json
checked against the checkpointed models and its own rules), an interrupted reproduction resumed to the same
results, the σ grid fused into one program equal to separate trainings, config validation (``--set``), and the
notebook.

The CLI run and the notebook share a persistent XLA compilation cache (and fast, unoptimised XLA), so the
notebook's run of the same tiny preset mostly reuses compiled programs.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, reproduce, run_notebook_in_venv, subprocess_env

from jaxicl import cli, interpret, train
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
  p = run.configure("tiny")
  L, H, seeds, sigma0 = p.study.layers[0], p.study.heads, p.config.train.seeds, p.study.noise_stds[0]
  multi, single = run.model_tag(sigma0, L, H), run.model_tag(sigma0, L, 1)
  sigma = f"sigma{sigma0:g}"
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
  R = len(seeds)
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
    assert v["seed"] == seeds[r]
    assert v["layer1_all_heads_matter"] == (eff["per_seed"][r][0] is not None and eff["per_seed"][r][0] >= H / 2)
    full, pruned = m["mean_risk"]["per_seed"][r], m["pruned_risk"]["per_seed"][r]
    assert v["pruned_risk_increase"] == pytest.approx((pruned - full) / full, rel=1e-9, abs=1e-12)
    assert v["later_layers_one_head_suffices"] == ((pruned - full) <= run.PRUNE_TOLERANCE * full)
    assert v["off_plateau"] == m["off_plateau"][r]
    assert v["claim_holds"] == (v["layer1_all_heads_matter"] and v["later_layers_one_head_suffices"]
                                and v["mirror_costs_more"] and v["off_plateau"])
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
  assert m["workdir"] == os.path.relpath(run.run_dir(tiny_out, run.model_config(p, L, H)), tiny_out)
  result = train.load_run(os.path.join(tiny_out, m["workdir"]))
  assert result.config == run.model_config(p, L, H) and int(result.state.step[0]) == p.config.train.steps
  params = jax.tree.map(lambda a: a[np.asarray(run.variant_runs(result.config, 0))], result.state.params)
  sets = run.prompt_sets(p, run.task_config(p, sigma0))
  direct = interpret.masked_risk_runs(result.model, params, sets.eval, masks.astype(np.float32))
  np.testing.assert_allclose(direct.mean(-1), m["pruned_risk"]["per_seed"], rtol=1e-5)
  full = interpret.masked_risk_runs(result.model, params, sets.eval, None)
  np.testing.assert_allclose(full.mean(-1), m["mean_risk"]["per_seed"], rtol=1e-5)

  rows = open(os.path.join(tiny_out, "risk_vs_n.csv")).read().strip().splitlines()
  assert len(rows) == 1 + p.config.task.n_points * (1 + 3 + 1)  # multi (+ 3 pruned variants) and single
  probe_rows = open(os.path.join(tiny_out, "probe.csv")).read().strip().splitlines()
  assert len(probe_rows) == 1 + (L + 1) * 3  # full and pruned multi-head, single-head


def _numbers(tree):
  """The numeric leaves of a summary (timings and elapsed times left out), flattened in key order."""
  if isinstance(tree, dict):
    return [x for k in sorted(tree) if k not in ("timings_s", "elapsed_s") for x in _numbers(tree[k])]
  if isinstance(tree, (list, tuple)):
    return [x for v in tree for x in _numbers(v)]
  return [float(tree)] if isinstance(tree, (int, float)) and not isinstance(tree, bool) else []


def test_claim_verdict_needs_a_model_off_the_plateau():
  """Two seeds with the same head pattern (layer 1 spread over 4 heads, later layers cheap to prune, the mirror
  control costly): the claim holds for the seed that regresses and not for the one on the plateau."""
  risk = np.ones((2, 5))
  rec = {"risk": risk, "pruned_risk": 1.1 * risk, "layer1_cut_risk": 2.0 * risk,
         "usage": [{"effective_heads": [4.0, 1.0]}, {"effective_heads": [4.0, 1.0]}]}
  verdicts = run.claim_verdicts(rec, (0, 1), 4, [True, False])
  assert [v["claim_holds"] for v in verdicts] == [True, False]
  assert all(v["layer1_all_heads_matter"] and v["later_layers_one_head_suffices"] and v["mirror_costs_more"]
             for v in verdicts)
  assert [v["off_plateau"] for v in verdicts] == [True, False]


def test_a_step_size_unstable_on_a_held_out_prompt_is_never_chosen():
  """The stability rule holds on every prompt a path estimator runs on: a step size stable on the tuning prompts
  but with η·λ_max > margin on a held-out one (whose λ_max comes from its context alone) is not chosen there, though
  its tuning risk is the lowest; T = 0 and T = inf (η-free) stay eligible. Found at d = 8: PtO's held-out risk NaN."""
  lrs, steps, n = (1e-3, 1e-2), (0, 10, math.inf), 3
  tune_r = np.array([[[3.0, 2.0, 1.0], [3.0, 1.5, 0.9], [3.0, 1.2, 1.1]],  # η = 1e-3: T = 0, 10, inf
                     [[3.0, 2.0, 1.0], [3.0, 1.0, 0.5], [3.0, 1.2, 1.1]]])  # η = 1e-2: T = 10 best at n = 1, 2
  test_r = tune_r + 0.01
  test_r[1, 1, 2] = np.nan  # diverged on a held-out prompt
  tune_ratio = np.array([[0.0, 0.01, 0.01], [0.0, 0.1, 0.1]])
  test_ratio = np.array([[0.0, 0.01, 0.02], [0.0, 0.1, 2.5]])  # η = 1e-2 unstable on a held-out prompt at n = 2
  got = run._path_tuned((tune_r, tune_ratio), (test_r, test_ratio), lrs, steps, None, n)
  assert got["hparams"][1] == {"lr": 1e-2, "steps": 10}  # stable everywhere at n = 1: the tuning winner
  assert got["hparams"][2] == {"lr": 1e-3, "steps": 10}  # not η = 1e-2 (tuning risk 0.5, held-out NaN)
  assert np.isfinite(got["risk"]).all() and got["risk"][2] == pytest.approx(0.91)
  before = run._path_tuned((tune_r, tune_ratio), (test_r, tune_ratio), lrs, steps, None, n)  # tuning ratios only
  assert before["hparams"][2] == {"lr": 1e-2, "steps": 10} and math.isnan(before["risk"][2])


def test_interrupted_reproduction_resumes_to_the_uninterrupted_results(tiny_out, xla_cache, tmp_path):
  """`--stop-after 10` stops every program at a checkpoint and writes no results; the same command without it
  resumes, and its summary and parameters equal the uninterrupted run's (the engine resumes bit-identically)."""
  out = str(tmp_path / "resumed")
  proc = reproduce("head-utilization", out, xla_cache, "--stop-after", "10")
  assert "stopped at step 10" in proc.stdout and not os.path.exists(os.path.join(out, "summary.json"))
  p = run.configure("tiny")
  for heads in p.study.model_heads:
    workdir = run.run_dir(out, run.model_config(p, p.study.layers[0], heads))
    assert int(train.load_run(workdir).state.step[0]) == 10
  reproduce("head-utilization", out, xla_cache)
  with open(os.path.join(out, "summary.json")) as f:
    resumed = json.load(f)
  with open(os.path.join(tiny_out, "summary.json")) as f:
    reference = json.load(f)
  assert resumed["models"].keys() == reference["models"].keys()
  np.testing.assert_array_equal(_numbers(resumed["models"]), _numbers(reference["models"]))
  for tag, m in reference["models"].items():
    a, b = train.load_run(os.path.join(out, m["workdir"])), train.load_run(os.path.join(tiny_out, m["workdir"]))
    jax.tree.map(np.testing.assert_array_equal, a.state.params, b.state.params)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]


def test_records_alone_resume_the_study_without_training(tiny_out, tmp_path, monkeypatch):
  """``records/`` copied into a fresh folder (another machine, no workdirs): no program is trained or read back, the
  models' numbers equal the original run's and the attention maps are drawn again; the baselines kept in
  ``baselines/`` are read back by a later run; a record of another analysis setting is not taken, and a damaged
  one only sends its program back to training."""
  out = str(tmp_path / "carried")
  shutil.copytree(os.path.join(tiny_out, "records"), os.path.join(out, "records"))
  monkeypatch.setattr(run.train, "train", lambda *a, **k: pytest.fail("a program with a record trained again"))
  monkeypatch.setattr(run.train, "load_run", lambda *a, **k: pytest.fail("a program read from its workdir"))
  run.main("tiny", out, progress=False)
  resumed, reference = (json.load(open(os.path.join(o, "summary.json"))) for o in (out, tiny_out))
  assert not os.path.exists(os.path.join(out, "runs")) and resumed["models"].keys() == reference["models"].keys()
  # every number of every model (risks, importance, pruning, probes, effective heads, claim), from the records alone
  np.testing.assert_array_equal(_numbers(resumed["models"]), _numbers(reference["models"]))
  assert {os.path.basename(f) for f in resumed["files"] if "attention_" in f} == \
      {os.path.basename(f) for f in reference["files"] if "attention_" in f} != set()

  # the baselines that run computed are read back by the next, to the bit; another grid computes them again (and,
  # the models' records not depending on the baseline grids, still trains nothing)
  csv_text = open(os.path.join(out, "baselines.csv")).read()
  monkeypatch.setattr(run, "baseline_curves", lambda *a, **k: pytest.fail("baselines computed again"))
  run.main("tiny", out, progress=False)
  again = json.load(open(os.path.join(out, "summary.json")))
  assert again["baselines"] == resumed["baselines"] and open(os.path.join(out, "baselines.csv")).read() == csv_text

  class Trained(Exception):
    pass

  def trained(*a, **k):
    raise Trained
  monkeypatch.setattr(run, "baseline_curves", trained)
  with pytest.raises(Trained):
    run.main("tiny", out, overrides=["study.ridge_lams=0.1,3"], progress=False)
  monkeypatch.setattr(run.train, "train", trained)
  with pytest.raises(Trained):
    run.main("tiny", out, overrides=["study.probe_lam=1e-5"], progress=False)
  p = run.configure("tiny")
  first = run.record_path(out, run.model_config(p, p.study.layers[0], p.study.model_heads[0]))
  with open(first, "w") as f:
    f.write('{"key": ')
  assert run.read_record(p, run.model_config(p, p.study.layers[0], p.study.model_heads[0]), out) is None
  assert run.read_record(p, run.model_config(p, p.study.layers[0], p.study.model_heads[-1]), out) is not None
  with pytest.raises(Trained):
    run.main("tiny", out, progress=False)


def test_baselines_only_tunes_and_keeps_the_baselines_and_trains_nothing(tmp_path, capsys):
  out = str(tmp_path / "baselines")
  cmd = ["reproduce", "head-utilization", "--preset", "tiny", "--out", out, "--quiet", "--baselines-only"]
  assert cli.main(cmd) == 0
  assert not os.path.exists(os.path.join(out, "runs")) and not os.path.exists(os.path.join(out, "summary.json"))
  p = run.configure("tiny")
  for sigma in p.study.noise_stds:
    kept = run.read_baselines(out, p, sigma)
    assert kept is not None and set(kept) == {"PtO", "GD", "iterated PtO", "ridge", "Lasso", "OLS", "Bayes"}
  capsys.readouterr()
  for bad, needle in ((["--stop-after", "5"], "stop_after=5"), (["--set", "study.noise_stds=-1"], "study.noise_stds"),
                      (["--set", "study.heads=1", "--set", "study.single_head=true"], "study.single_head=True"),
                      (["--preset", "quick"], "holds another study head-utilization (preset tiny)")):
    assert cli.main(cmd + bad) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
  assert cli.main(["reproduce", "multihead", "--preset", "tiny", "--out", out, "--baselines-only"]) == 2
  assert "--baselines-only" in capsys.readouterr().err
  assert cli.main(["reproduce", "multihead", "--preset", "tiny", "--out", out, "--quiet"]) == 2
  assert "holds a study head-utilization, not a study multihead" in capsys.readouterr().err


_FUSED_SCRIPT = """
import sys
import numpy as np
import jax
from jaxicl import train
from jaxicl.studies.head_utilization import run

sets = sys.argv[2:]
arrays = {}
fused = run.model_config(run.configure("tiny", sets + ["study.noise_stds=0,0.5"]), 1, 2)
programs = [("fused", fused)] + [(f"alone{v}", run.model_config(run.configure("tiny", sets + [f"study.noise_stds={s}"]), 1, 2))
                                 for v, s in enumerate((0, 0.5))]
for name, cfg in programs:
  result = train.train(cfg)
  arrays[name + "/loss"] = np.asarray(result.history[-1]["loss"])
  for path, leaf in zip(train.param_paths(result.state.params), jax.tree.leaves(result.state.params)):
    arrays[name + "/" + path] = np.asarray(leaf)
np.savez(sys.argv[1], **arrays)
"""


def test_noise_levels_fused_in_one_program_equal_separate_trainings(xla_cache, tmp_path):
  """One (L, H) program trains every σ as a task variant (dims curriculum on, so the sparse support follows the
  active dims): each σ's runs equal the same seeds trained alone at that σ (float32 tolerance: a different
  vmapped batch of runs may reorder XLA's reductions). The three trainings run in a subprocess with the tests'
  fast XLA flags and compilation cache (a gpt2 program compiles for tens of seconds under full optimisation)."""
  sets = ["train.steps=4", "train.log_every=2", "train.batch_size=8", "curriculum.dims_start=3", "curriculum.every=2",
          "model.width=8", "model.mlp=false"]
  p = run.configure("tiny", sets + ["study.noise_stds=0,0.5"])
  fused_cfg = run.model_config(p, 1, 2)
  assert fused_cfg.train.task_variants == ("noise_var=0.0", "noise_var=0.25") and len(fused_cfg.runs) == 4
  path = str(tmp_path / "params.npz")
  proc = subprocess.run([sys.executable, "-c", _FUSED_SCRIPT, path, *sets], cwd=REPO, env=subprocess_env(xla_cache),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  arrays = np.load(path)
  names = [k[len("fused/"):] for k in arrays.files if k.startswith("fused/") and k != "fused/loss"]
  assert len(names) > 5
  for v in range(len(p.study.noise_stds)):
    runs = np.asarray(run.variant_runs(fused_cfg, v))
    assert [fused_cfg.runs[r][0] for r in runs] == list(p.config.train.seeds)
    for name in names:
      np.testing.assert_allclose(arrays["fused/" + name][runs], arrays[f"alone{v}/" + name], rtol=1e-5, atol=1e-6,
                                 err_msg=name)
    np.testing.assert_allclose(arrays["fused/loss"][runs], arrays[f"alone{v}/loss"], rtol=1e-5)
    assert not np.allclose(arrays["fused/loss"][runs], arrays[f"alone{1 - v}/loss"], rtol=1e-3)  # σ matters


@pytest.mark.parametrize("override,field", [
    ("task.sparsity=9", "TaskConfig.sparsity=9"), ("curriculum.dims_start=1", "curriculum.dims_start=1"),
    ("study.pto_steps=1,-3", "study.pto_steps="), ("study.noise_stds=", "study.noise_stds="),
    ("study.noise_stds=0.1,nan", "study.noise_stds[1]="), ("study.heads=2.5", "study.heads="),
    ("study.nope=1", "study.nope"), ("model.n_layers=3", "model.n_layers"), ("model.heads=4", "model.heads"),
    ("task.noise_var=0.5", "task.noise_var"), ("task.family=linear", "family 'linear'"),
    ("task.n_points=1", "task.n_points="), ("model.name=softmax_icl", "model"), ("train.steps=0", "train.steps=0"),
    ("study.layers=0", "study.layers="), ("study.probe_lam=0", "study.probe_lam="),
])
def test_bad_settings_are_one_line_errors_naming_the_field(override, field, tmp_path, capsys):
  """``configure`` refuses a bad ``--set`` naming the field (old StudyConfig checks included: sparsity <= d and
  dims_start >= sparsity now come from the config vocabulary); the CLI prints one line and exits 2, before
  writing anything."""
  with pytest.raises(ValueError, match=re.escape(field)):
    run.configure("tiny", [override])
  out = tmp_path / "out"
  assert cli.main(["reproduce", "head-utilization", "--preset", "tiny", "--out", str(out), "--set", override]) == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err and field in lines[0], err
  assert not out.exists()


def test_study_settings_parse_like_config_overrides():
  """``study.*`` values take the ``--set`` syntax: lists comma-separated, ``inf`` in the step grids, ``none``."""
  p = run.configure("tiny", ["study.noise_stds=0.1,0.5", "study.pto_steps=0,10,inf", "study.importance_batch=none",
                             "study.single_head=false", "train.steps=30", "optim.lr=3e-4"])
  assert p.study.noise_stds == (0.1, 0.5) and p.study.pto_steps == (0, 10, math.inf)
  assert p.study.importance_batch is None and p.study.model_heads == (p.study.heads,)
  assert p.config.train.steps == 30 and p.config.optim.lr == 3e-4
  assert run.configure("tiny") == run.PRESETS["tiny"]()  # no overrides: the preset itself


def test_notebook_runs_in_the_venv_and_prints_the_study_numbers(venv):
  """The study-2 notebook, opened alone in the fresh venv holding the wheel (``conftest.venv``): it prints the
  summary's numbers, effective heads that follow from the saved importances, and the PtO transformer equal to
  ``estimators.pto``."""
  nb_out = os.path.join(venv["cwd"], "hu_nb_out")
  text = run_notebook_in_venv(venv, "head_utilization.ipynb", JAXICL_OUT=nb_out, JAXICL_PRESET="tiny")
  assert "preset=tiny" in text and "Study 2 notebook done: tiny" in text
  with open(os.path.join(nb_out, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(nb_out, "importance.json")) as f:
    importance = json.load(f)
  printed = re.findall(r"risk \(mean over n\): full ([\d.]+)  pruned ([\d.]+)  mirror ([\d.]+)", text)
  eff_printed = re.findall(r"effective heads by layer \(seed mean\): \[([^\]]*)\]", text)
  multi = [m for m in summary["models"].values() if "effective_heads" in m]
  assert len(printed) == len(eff_printed) == len(multi) > 0
  for (full, pruned, mirror), eff, (tag, m) in zip(printed, eff_printed,
                                                   [(t, m) for t, m in summary["models"].items() if m in multi]):
    for got, key in ((full, "mean_risk"), (pruned, "pruned_risk"), (mirror, "mirror_pruned_risk")):
      assert float(got) == pytest.approx(m[key]["mean"], abs=6e-5)
    imp = np.clip(np.nan_to_num(np.asarray(importance[tag]["importance"], np.float64)), 0, None)  # [R, L, H]
    total = imp.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
      per_seed = np.where(total > 0, total ** 2 / (imp ** 2).sum(-1), np.nan)  # (ΣI⁺)² / Σ(I⁺)² [R, L]
      expected = np.nanmean(per_seed, axis=0)  # seed mean (a layer no seed uses: nan)
    assert [float(x) for x in eff.split(",")] == pytest.approx(np.round(expected, 2).tolist(), abs=0.0051, nan_ok=True)
  (rel,) = re.findall(r"max relative difference to estimators.pto: ([\d.e+-]+)", text)
  assert float(rel) < 1e-5