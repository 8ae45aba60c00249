"""Sweeps: grouping into vmapped programs, equality with separate runs, resume, CLI."""

import json
import os
import types

import jax
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


@pytest.mark.parametrize("argv,named", [
    (["--grid", "task.d=2", "--grid", "task.d=3"], "grid 'task.d': given twice"),
    (["--grid", "optim.lr=1e-3,0.001"], "'0.001' repeats '1e-3'"),
    (["--grid", "task.n_points=3.5,4"], "grid task.n_points"),
    (["--grid", "train.seeds=5,6"], "grid 'train.seeds': the sweep sets it"),
    (["--set", "train.seeds=7,8", "--grid", "task.d=2,3"], "--set train.seeds: the sweep sets it"),
    (["--set", "task.d=3", "--grid", "task.d=2,4"], "--set task.d: the grid sets task.d too"),
    (["--set", "train.lrs=0.01", "--grid", "optim.lr=0.001,0.002"], "--set train.lrs: the grid sets optim.lr too"),
    (["--set", "train.steps=3", "--set", "train.steps=4", "--grid", "task.d=2,3"], "--set train.steps: given twice"),
])
def test_a_grid_the_sweep_would_not_honour_is_a_one_line_error(argv, named, tmp_path, capsys):
  """Each of these used to run something else than asked (the grid or --seeds silently won over --set, a repeated
  --grid key dropped the first, repeated values trained twice) or failed with an unnamed error."""
  out = tmp_path / "sw"
  assert cli.main(["sweep", "--config", "tiny", "--out", str(out), "--quiet"] + argv) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and named in lines[0], lines
  assert not out.exists()


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
  (group,) = sweep.plan("study1", sweep.parse_grid(["task.n_points=1e1,4"]), 1, base)  # read as --set reads it
  assert group[1].task.n_points == 10


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


def test_split_seeds_balances_programs_and_keeps_a_seeds_runs_together():
  cfg = configs.get_config("tiny", ["train.seeds=" + ",".join(map(str, range(9))), "train.lrs=0.001,0.003"])
  parts = sweep.split_seeds(cfg, 8)  # 2 runs per seed: at most 4 seeds per program -> 3 programs of 3
  assert [p.train.seeds for p in parts] == [(0, 1, 2), (3, 4, 5), (6, 7, 8)]
  assert all(p.lrs == cfg.lrs for p in parts)
  assert [p.train.seeds for p in sweep.split_seeds(cfg, 1)] == [(s,) for s in range(9)]  # never below one seed
  assert sweep.split_seeds(cfg, 100) == [cfg]


@pytest.mark.parametrize("seeds,rates,budget_seeds,want,timed", [
    (8, {8: 100.0, 4: 104.0}, 99, 8, [8, 4]),  # halving gains < 10 %: keep the largest program
    (8, {8: 100.0, 4: 150.0, 2: 200.0, 1: 210.0}, 99, 2, [8, 4, 2, 1]),  # gains down to 2 seeds
    (8, {8: 100.0, 4: 150.0, 2: 200.0, 1: 300.0}, 99, 1, [8, 4, 2, 1]),
    (5, {2: 100.0, 1: 100.0}, 2, 2, [2, 1]),  # memory for 2 seeds only
    (5, {}, 1, 1, []),  # memory for 1 seed: no smaller program, nothing timed
    (3, {}, 99, 3, []),  # fewer than 4 seeds per device: one program, nothing measured
    (8, None, 3, 3, []),  # not timed (a CPU's default): as many seeds as memory holds
])
def test_runs_per_program_follows_memory_and_measured_throughput(monkeypatch, seeds, rates, budget_seeds, want,
                                                                 timed):
  cfg = configs.get_config("tiny", ["train.seeds=" + ",".join(map(str, range(seeds)))])
  timed_runs = []

  def fake_rate(c):
    timed_runs.append(len(c.runs))
    return rates[len(c.runs)]
  monkeypatch.setattr(sweep, "run_steps_per_s", fake_rate)
  monkeypatch.setattr(sweep, "program_bytes", lambda c: 1000 * len(c.train.seeds))
  monkeypatch.setattr(sweep, "memory_budget", lambda devices, fraction: 1000 * budget_seeds)
  chosen = sweep.choose_runs_per_program(cfg, devices=jax.devices()[:1], measure=rates is not None)
  assert chosen["runs_per_program"] == want and timed_runs == timed


@pytest.mark.parametrize("steps,timed", [(100_000, [8, 4, 2]), (1000, [8])])
def test_a_halving_is_timed_only_when_its_least_kept_gain_repays_its_compile(monkeypatch, steps, timed):
  # 8 seeds (8 runs) at 100 run-steps/s train in steps × 8 / 100 s; the group's compile takes 30 s (a fake clock
  # advanced by program_bytes). A 4-seed program kept at ≥ 1.1× would save ≥ T·(1 − 1/1.1): 7273 s × 0.09 = 661 s
  # > 30 s at 100 000 steps (timed, and kept: 2× faster; then 2 seeds, timed, gain nothing), 73 s × 0.09 = 6.6 s
  # < 30 s at 1000 steps (not timed).
  cfg = configs.get_config("tiny", ["train.seeds=" + ",".join(map(str, range(8))), f"train.steps={steps}"])
  clock = types.SimpleNamespace(t=0.0)
  monkeypatch.setattr(sweep, "time", types.SimpleNamespace(perf_counter=lambda: clock.t))

  def fake_bytes(c):
    clock.t += 30.0
    return 1000 * len(c.train.seeds)
  timed_runs = []

  def fake_rate(c):
    timed_runs.append(len(c.runs))
    return {8: 100.0, 4: 200.0, 2: 200.0}[len(c.runs)]
  monkeypatch.setattr(sweep, "program_bytes", fake_bytes)
  monkeypatch.setattr(sweep, "run_steps_per_s", fake_rate)
  monkeypatch.setattr(sweep, "memory_budget", lambda devices, fraction: 10 ** 9)
  chosen = sweep.choose_runs_per_program(cfg, devices=jax.devices()[:1], measure=True)
  assert timed_runs == timed and chosen["compile_s"] == 30.0
  assert chosen["runs_per_program"] == (4 if steps == 100_000 else 8)


def test_split_sweep_equals_one_program_and_resumes_with_the_same_split(tmp_path, monkeypatch, capsys):
  args = ("tiny", ["optim.lr=0.001,0.003"], 4)
  whole = sweep.run_sweep(*args, str(tmp_path / "whole"), BASE, progress=False, runs_per_program="all")
  split = sweep.run_sweep(*args, str(tmp_path / "split"), BASE, progress=False, runs_per_program=4)  # 2 seeds each
  assert len(os.listdir(tmp_path / "split" / "groups")) == 2
  assert [(r["seed"], r["optim.lr"]) for r in split] == [(r["seed"], r["optim.lr"]) for r in whole]
  np.testing.assert_allclose([r["final_loss"] for r in split], [r["final_loss"] for r in whole], rtol=1e-4)
  # auto: 2 seeds (4 runs) per program measured fastest -> the same programs, found finished; the choice is kept
  # beside the group, so a resumed sweep splits it (and finds its workdirs) the same way without measuring again
  monkeypatch.setattr(sweep, "run_steps_per_s", lambda c: {8: 10.0, 4: 20.0, 2: 21.0}[len(c.runs)])
  choose = sweep.choose_runs_per_program
  monkeypatch.setattr(sweep, "choose_runs_per_program", lambda c: choose(c, measure=True))
  monkeypatch.setattr(train, "train", lambda *a, **k: pytest.fail("finished programs trained again"))
  assert sweep.run_sweep(*args, str(tmp_path / "split"), BASE, progress=False) == split
  monkeypatch.setattr(sweep, "run_steps_per_s", lambda c: pytest.fail("a resumed sweep measured again"))
  assert sweep.run_sweep(*args, str(tmp_path / "split"), BASE, progress=False) == split
  (plan_file,) = os.listdir(tmp_path / "split" / "plans")
  assert json.load(open(tmp_path / "split" / "plans" / plan_file))["runs_per_program"] == 4  # 2 seeds × 2 lrs
  # damaged files: a finished program's results.json is rebuilt from its workdir (the same rows); a damaged split
  # plan is a one-line error naming it (exit 2), since choosing again could split the group differently
  monkeypatch.undo()
  out = tmp_path / "split"
  results = [out / "groups" / g / "results.json" for g in sorted(os.listdir(out / "groups"))]
  results[0].write_text('[{"seed": 0, ')
  results[1].write_text("[]")
  assert sweep.run_sweep(*args, str(out), BASE, progress=False) == split
  for path in results:  # rewritten: its program's 4 runs (2 seeds × 2 lrs), rows of the sweep's table
    rewritten = json.loads(path.read_text())
    assert len(rewritten) == 4 and all(r in split for r in rewritten)
  plan = out / "plans" / plan_file
  capsys.readouterr()
  for garbage in ('{"runs_per_program": ', '{"runs_per_program": 0}'):
    plan.write_text(garbage)
    cmd = ["sweep", "--config", "tiny", "--grid", "optim.lr=0.001,0.003", "--seeds", "4", "--out", str(out), "--quiet"]
    assert cli.main(cmd + sum((["--set", x] for x in BASE), [])) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(plan) in err, err
