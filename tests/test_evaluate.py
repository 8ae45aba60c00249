"""Evaluation: a short CPU training run beats the averaging baseline; the report is consistent."""

import json

import numpy as np

from jaxicl import configs, evaluate, estimators, tasks, train


def test_short_cpu_run_beats_averaging_and_eval_writes_table_and_plot(tmp_path):
  cfg = configs.get_config("tiny", ["task.d=2", "task.n_points=10", "model.width=64", "model.heads=4",
                                    "train.steps=2000", "train.log_every=500", "optim.lr=1e-3"])
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
