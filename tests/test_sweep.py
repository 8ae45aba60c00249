"""Sweeps: grouping into vmapped programs, equality with separate runs, resume, CLI."""

import json
import os

import numpy as np
import pytest

from jaxicl import cli, configs, sweep, train

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
