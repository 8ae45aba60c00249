"""Sweeps: grouping into vmapped programs, equality with separate runs, resume, CLI."""

import json
import os

import numpy as np
import pytest

from jaxicl import cli, configs, evaluate, sweep, train

BASE = ["train.steps=20", "train.log_every=10", "optim.eps=1e-5", "train.eval_prompts=64"]


def test_plan_groups_shapes_and_vmaps_learning_rates_and_seeds():
  groups = sweep.plan("tiny", sweep.parse_grid(["task.d=2,3", "optim.lr=0.001,0.003"]), 2, BASE)
  assert [g[0] for g in groups] == [{"task.d": "2"}, {"task.d": "3"}]
  cfg = groups[0][1]
  assert cfg.runs == [(0, 0.001), (1, 0.001), (0, 0.003), (1, 0.003)] and cfg.task.d == 2


def test_sweep_equals_separate_runs_and_resumes_without_retraining(tmp_path):
  out = str(tmp_path / "sw")
  assert cli.main(["sweep", "--config", "tiny", "--grid", "task.d=2,3", "--grid", "optim.lr=0.001,0.003",
                   "--seeds", "2", "--out", out, "--quiet"] + sum((["--set", b] for b in BASE), [])) == 0
  rows = json.loads(open(os.path.join(out, "results.json")).read())
  assert len(rows) == 8 and os.path.exists(os.path.join(out, "results.csv"))
  for row in (rows[0], rows[-1]):
    alone = train.train(configs.get_config("tiny", BASE + [f"task.d={row['task.d']}", f"optim.lr={row['optim.lr']}",
                                                          f"train.seeds={row['seed']}"]))
    np.testing.assert_allclose(row["final_loss"], alone.history[-1]["loss"][0], rtol=1e-4)
  metrics = [os.path.join(out, "groups", g, "metrics.jsonl") for g in os.listdir(os.path.join(out, "groups"))]
  stamps = [os.path.getmtime(m) for m in metrics]
  again = sweep.run_sweep("tiny", ["task.d=2,3", "optim.lr=0.001,0.003"], 2, out, BASE, progress=False)
  assert again == rows and [os.path.getmtime(m) for m in metrics] == stamps


def test_bad_grid_is_named():
  with pytest.raises(ValueError, match="task.nope"):
    sweep.plan("tiny", sweep.parse_grid(["task.nope=1,2"]), 1)
  with pytest.raises(ValueError, match="grid 'task.d'"):
    sweep.parse_grid(["task.d="])


def test_sweep_fuses_context_lengths_and_noise_into_one_program(tmp_path):
  """A grid over D (one-layer model) and σ² is ONE group: one train.train call whose runs carry (n_points, σ²);
  each row equals the run trained alone at its own unpadded length."""
  base = ["train.steps=6", "train.log_every=3", "train.ckpt_every=0", "train.batch_size=8", "train.eval_prompts=64",
          "task.d=2", "model.embed_dim=4", "model.heads=2"]
  grid = ["task.n_points=5,9", "task.noise_var=0,0.5"]
  groups = sweep.plan("study1", sweep.parse_grid(grid), 1, base)
  assert len(groups) == 1 and groups[0][0] == {} and groups[0][1].task.n_points == 9
  assert len(groups[0][1].train.task_variants) == 4
  rows = sweep.run_sweep("study1", grid, 1, str(tmp_path), base, progress=False)
  assert {(r["task.n_points"], r["task.noise_var"]) for r in rows} == {("5", "0"), ("5", "0.5"), ("9", "0"),
                                                                         ("9", "0.5")}
  row = next(r for r in rows if r["task.n_points"] == "5" and r["task.noise_var"] == "0.5")
  alone = train.train(configs.get_config("study1", base + ["task.n_points=5", "task.noise_var=0.5",
                                                           "train.task_variants=noise_var=0.5"]))
  np.testing.assert_allclose(row["final_loss"], alone.history[-1]["loss"][0], rtol=2e-4)
  # its held-out risk: the padded, fused evaluation = the alone run's on its own (unpadded) prompts
  own = evaluate.variant_risks(alone.model, alone.state.params, alone.config, 64).risk[0, -1]
  np.testing.assert_allclose(row["excess_risk_last"], own, rtol=2e-4)
  assert len(sweep.plan("tiny", sweep.parse_grid(["task.n_points=4,8"]), 1)) == 2  # gpt2: n_points is a shape


def test_sweep_over_freeze_is_one_program_with_per_run_masks(tmp_path):
  base = ["train.steps=6", "train.log_every=3", "train.ckpt_every=0", "train.batch_size=8", "train.eval_prompts=64",
          "task.d=2",
          "task.n_points=6", "model.embed_dim=4", "model.heads=2"]
  (group,) = sweep.plan("study1", sweep.parse_grid(["optim.freeze=none,W_in"]), 2, base)
  assert group[1].train.task_variants == ("freeze=none", "freeze=W_in") and len(group[1].runs) == 4
  rows = sweep.run_sweep("study1", ["optim.freeze=none,W_in"], 2, str(tmp_path), base, progress=False)
  assert [r["optim.freeze"] for r in rows] == ["none", "none", "W_in", "W_in"]
  result = train.load_run(os.path.join(str(tmp_path), "groups", os.listdir(os.path.join(str(tmp_path), "groups"))[0]))
  init = train.Engine(group[1]).init()
  w_in, w0 = np.asarray(result.state.params["W_in"]["kernel"]), np.asarray(init.params["W_in"]["kernel"])
  np.testing.assert_array_equal(w_in[2:], w0[2:])
  assert not np.allclose(w_in[:2], w0[:2])
