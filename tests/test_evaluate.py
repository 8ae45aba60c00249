"""Evaluation: a short CPU training run beats the averaging baseline; the report is consistent."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, subprocess_env
from jaxicl import configs, evaluate, estimators, shifts, tasks, train


def test_short_cpu_run_beats_averaging_and_eval_writes_table_and_plot(tmp_path):
  # 1200 steps at width 32 end at 0.40 × averaging's risk (width 64 × 2000 steps: 0.32; 500 steps: 0.96)
  cfg = configs.get_config("tiny", ["task.d=2", "task.n_points=10", "model.width=32", "model.heads=4",
                                    "train.steps=1200", "train.log_every=400", "optim.lr=1e-3"])
  train.train(cfg, str(tmp_path))
  report = evaluate.evaluate_workdir(str(tmp_path), n_prompts=2000)
  model = np.asarray(report["model"])
  avg = np.asarray(report["baselines"]["averaging"])
  assert report["n_context"] == list(range(10))
  # Averaged over 1..9 in-context examples, the trained model's excess risk is well below averaging's.
  assert model[1:].mean() < 0.8 * avg[1:].mean(), (model, avg)
  # ... and far below predicting 0 (risk E(wᵀx)² = d·w_var = 2).
  assert model[1:].mean() < 0.65 * 2.0
  saved = json.loads((tmp_path / "eval.json").read_text())
  assert saved["model"] == report["model"] and (tmp_path / "eval.png").stat().st_size > 1000
  assert open(tmp_path / "eval.pdf", "rb").read(5) == b"%PDF-"  # the same figure as a vector file


def test_baseline_rows_equal_the_estimators_on_the_same_prompts():
  task = tasks.TaskConfig(d=3, n_points=6, noise_var=0.1)
  cfg = configs.Config(task=task, model=configs.ModelConfig(name="gpt2", width=16, n_layers=1, heads=(2,),
                                                            max_points=8))
  engine = train.Engine(cfg)
  params = train.run_params(engine.init())
  report = evaluate.evaluate(engine.model, params, task, n_prompts=64)
  prompts = evaluate.eval_prompts(task, 64)
  ols = estimators.predict("ols", prompts.xs, prompts.ys)
  np.testing.assert_allclose(report["baselines"]["OLS"], np.mean((np.asarray(ols) - prompts.targets) ** 2, 0),
                             rtol=1e-5)
  preds = engine.model.apply(params, prompts.xs, prompts.ys)
  np.testing.assert_allclose(report["model"], np.mean((np.asarray(preds) - prompts.targets) ** 2, 0), rtol=1e-5)
  assert set(report["baselines"]) == {"OLS", "averaging", "3-NN", "Bayes"}


# ---------------------------------------------------------------------------------------------------- uncertainty


def _coverage_tolerance(m, level=0.95):
  """4 binomial standard deviations of the fraction of m independent intervals covering the truth."""
  return 4 * np.sqrt(level * (1 - level) / m)


def test_bootstrap_interval_covers_a_known_mean_about_95_percent_of_the_time():
  rng = np.random.default_rng(0)
  m = 1000  # independent data sets, one per column: one vectorised call gives m intervals
  normal = rng.normal(1.0, 2.0, size=(100, m))
  squared = rng.normal(0.0, 1.0, size=(400, m)) ** 2  # squared errors, mean 1
  for data, mean in ((normal, 1.0), (squared, 1.0)):
    lo, hi = evaluate.bootstrap_ci(data, n_boot=1000, level=0.95, seed=1)
    covered = np.mean((lo <= mean) & (mean <= hi))
    assert abs(covered - 0.95) < _coverage_tolerance(m), covered
  # the interval narrows as 1/√B and contains the sample mean
  lo, hi = evaluate.bootstrap_ci(normal, n_boot=500)
  assert np.all((lo <= normal.mean(0)) & (normal.mean(0) <= hi))
  width = np.median(hi - lo)
  assert width == pytest.approx(2 * 1.96 * 2.0 / np.sqrt(100), rel=0.1)
  with pytest.raises(ValueError, match="n_boot=0"):
    evaluate.bootstrap_ci(normal, n_boot=0)
  with pytest.raises(ValueError, match="ci_level=1.5"):
    evaluate.bootstrap_ci(normal, level=1.5)


@pytest.mark.parametrize("name, hparams", [("ols", {}), ("bayes", {}), ("lasso", {"alpha": 0.05}), ("knn", {"k": 2})])
def test_query_predictions_equal_the_prefixwise_estimators(name, hparams):
  task = tasks.TaskConfig(d=3, n_points=7, noise_var=0.1)
  prompts = evaluate.eval_prompts(task, 32)
  xs = np.stack([np.asarray(prompts.xs)] * 3)
  ys = np.stack([np.asarray(prompts.ys)] * 3)
  query = np.array([1, 4, 6])
  got = evaluate.query_predictions(name, xs, ys, query, task_cfg=task, **hparams)
  want = np.asarray(estimators.predict(name, prompts.xs, prompts.ys, task_cfg=task, **hparams))[:, query].T
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- shifts


def _tiny_gpt2(task):
  cfg = configs.Config(task=task, model=configs.ModelConfig(name="gpt2", width=16, n_layers=1, heads=(2,),
                                                            max_points=task.n_points))
  engine = train.Engine(cfg)
  return engine.model, train.run_params(engine.init())


def _within_ci(report_entry, label, n, formula):
  """|risk − formula| <= 2 × the CI's half-width on that side (≈ 4 standard errors)."""
  risk = np.asarray(report_entry["baselines"][label])[n]
  lo, hi = np.asarray(report_entry["baselines_ci"][label])[:, n]
  tol = 2 * np.where(formula > risk, hi - risk, risk - lo)
  assert np.all(np.abs(risk - formula) <= tol), (label, n, risk, formula, lo, hi)


def test_ols_and_averaging_under_scaled_inputs_follow_their_closed_forms():
  """x ← c·x, y = wᵀx + ε with the same ε, w ~ N(0, τ²I), x ~ N(0, I_d):
  OLS (min-norm):  c²τ²(d − n) + σ² n/(d − n − 1) for n < d − 1;  σ² d/(n − d − 1) for n > d + 1 (no c: exactly
                   the same per-prompt errors as c = 1 when n >= d);
  averaging:       c²τ²d (c⁴(n + d + 1)/n − 2c² + 1) + c⁴σ²d/n for n >= 1 (E(XᵀX)² = n(n + d + 1)I)."""
  d, tau2, sigma2, c = 5, 1.0, 0.25, 2.0
  task = tasks.TaskConfig(d=d, n_points=14, w_var=tau2, noise_var=sigma2)
  model, params = _tiny_gpt2(task)
  baselines = {"OLS": ("ols", {}), "averaging": ("averaging", {})}
  report = evaluate.evaluate(model, params, task, n_prompts=4000, baselines=baselines, shifts=f"scaled={c:g}")
  shifted = report["shifts"]["scaled=2"]
  high = np.arange(d + 4, 14)
  np.testing.assert_allclose(shifted["baselines"]["OLS"][d + 2:], report["baselines"]["OLS"][d + 2:], rtol=1e-3)
  for entry, scale in ((report, 1.0), (shifted, c)):
    low = np.array([0, 1])
    _within_ci(entry, "OLS", low, scale**2 * tau2 * (d - low) + sigma2 * low / (d - low - 1))
    _within_ci(entry, "OLS", high, sigma2 * d / (high - d - 1))
    n = np.arange(1, 14)
    _within_ci(entry, "averaging", n, scale**2 * tau2 * d * (scale**4 * (n + d + 1) / n - 2 * scale**2 + 1)
               + scale**4 * sigma2 * d / n)
  assert np.all(np.asarray(shifted["model_ci"])[0] <= shifted["model"])


def test_cli_eval_every_shift_with_seeds_writes_finite_cis(tmp_path, capsys, xla_cache):
  from jaxicl import cli
  workdir = str(tmp_path / "tiny")
  cfg = configs.get_config("tiny", ["train.steps=20", "train.log_every=10", "train.seeds=0,1"])
  train.train(cfg, workdir)
  proc = subprocess.run([sys.executable, "-m", "jaxicl.cli", "eval", "--workdir", workdir, "--shift", "all",
                         "--prompts", "48", "--bootstrap", "200"], cwd=REPO, env=subprocess_env(xla_cache),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(open(tmp_path / "tiny" / "eval.json").read())
  assert list(report["shifts"]) == [str(s) for s in shifts.parse("all")]
  d, n_context = cfg.task.d, report["n_context"]
  entries = [report] + list(report["shifts"].values())
  for entry in entries:
    curves = [(entry["model"], entry["model_ci"])]
    curves += [(entry["baselines"][k], entry["baselines_ci"][k]) for k in entry["baselines"]]
    for risk, (lo, hi) in curves:
      for p, value in enumerate(risk):
        if value is None:
          assert lo[p] is None and hi[p] is None
          continue
        assert np.isfinite([lo[p], hi[p]]).all() and lo[p] <= value * (1 + 1e-9) and value <= hi[p] * (1 + 1e-9)
    seeds = entry["model_seeds"]  # two seeds: mean ± SE of the per-seed risks; run 0 is the reported model
    runs = np.array(seeds["risk"], dtype=float)
    np.testing.assert_allclose(runs[0], np.array(entry["model"], dtype=float), rtol=1e-12)
    np.testing.assert_allclose(np.array(seeds["mean"], dtype=float), runs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(np.array(seeds["se"], dtype=float), runs.std(0, ddof=1) / np.sqrt(2), rtol=1e-12)
  # query shifts are undefined where they cannot hold (orthogonal needs n < d; in_context n >= 1)
  orth = report["shifts"]["orthogonal"]["model"]
  assert [v is None for v in orth] == [n >= d for n in n_context]
  assert report["shifts"]["in_context"]["model"][0] is None
  rows = (tmp_path / "tiny" / "eval.csv").read_text().strip().splitlines()
  assert len(rows) == 1 + len(entries) * (1 + len(report["baselines"])) * len(n_context)
  assert (tmp_path / "tiny" / "eval.png").stat().st_size > 1000
  capsys.readouterr()
  for bad in ("skewed,sclaed=3", "scaled=-1", "orthogonal=1"):
    assert cli.main(["eval", "--workdir", workdir, "--shift", bad]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad.split(",")[-1] in err, err
  assert cli.main(["eval", "--workdir", workdir, "--bootstrap", "0"]) == 2
  assert "--bootstrap=0" in capsys.readouterr().err
