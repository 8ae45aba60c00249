"""Study 1 (multi-head superiority): head extraction, planning, the tiny preset end to end.

The tiny preset runs through the real command line (``jaxicl reproduce multihead``) in a subprocess; the
notebook runs it again from an installed wheel (tests/test_wheel.py). Both share a persistent XLA compilation
cache and cheap XLA CPU flags, so later runs mostly load compiled programs (the tiny preset's numbers are
meaningless; only plumbing is tested).
"""

import csv
import json
import math
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import reproduce

from jaxicl.studies.multihead import heads as H
from jaxicl.studies.multihead import presets, run
from jaxicl import configs, evaluate, tasks
from jaxicl.models import ModelConfig, build_model


def _prompts(d: int, D: int, n: int, seed: int = 0):
  return tasks.sample_batch(jax.random.PRNGKey(seed), tasks.TaskConfig(d=d, n_points=D + 1, noise_var=0.1), n)


def _softmax_smoother(xs, ys, w, c):
  """ŷ = Σ_k c_k Σ_i y_i softmax_i(w_k x_iᵀx): theory.md's predictor, written out independently."""
  xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  out = np.zeros(xs.shape[0])
  for b in range(xs.shape[0]):
    dots = xs[b, :-1] @ xs[b, -1]
    for wk, ck in zip(w, c):
      a = np.exp(wk * dots - np.max(wk * dots))
      out[b] += ck * np.sum(a / a.sum() * ys[b, :-1])
  return out


@pytest.mark.parametrize("read_in", [True, False])
def test_handset_heads_are_extracted_exactly(read_in):
  d, w, c = 2, [0.4, -0.25], [1.5, -2.0]
  model_cfg = ModelConfig(name="softmax_icl", embed_dim=8, heads=(2,), read_in=read_in)
  params = H.handset_params(d, model_cfg, w, c)
  hp = H.extract_heads(params, d, model_cfg)
  np.testing.assert_allclose(hp.A, np.asarray(w)[:, None, None] * np.eye(d), atol=1e-6)
  np.testing.assert_allclose(hp.w, w, atol=1e-6)
  np.testing.assert_allclose(hp.c, c, atol=1e-6)
  np.testing.assert_allclose(hp.b, 0.0, atol=1e-7)
  np.testing.assert_allclose(hp.u, 0.0, atol=1e-7)
  np.testing.assert_allclose(hp.anisotropy, 0.0, atol=1e-6)
  summary = H.summarize_heads(hp)
  assert summary["sum_cw"] == pytest.approx(0.4 * 1.5 + 0.25 * 2.0, abs=1e-6)
  assert summary["sum_c"] == pytest.approx(-0.5, abs=1e-6)
  # The hand-set model computes exactly the theory's kernel smoother with these (w, c).
  prompts = _prompts(d, 12, 16)
  model = build_model(model_cfg, tasks.TaskConfig(d=d, n_points=13))
  preds = np.asarray(model.apply(params, prompts.xs, prompts.ys))[:, 0]
  np.testing.assert_allclose(preds, _softmax_smoother(prompts.xs, prompts.ys, w, c), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["softmax_icl", "linear_icl"])
def test_extracted_heads_reproduce_random_models(name):
  """For arbitrary parameters (all terms A_k, b_k, c_k, u_k non-zero) the extracted kernel smoother, evaluated
  without the model code, gives the model's predictions: the extraction formula is the model."""
  d, D = 3, 10
  model_cfg = ModelConfig(name=name, embed_dim=12, heads=(3,))
  model = build_model(model_cfg, tasks.TaskConfig(d=d, n_points=D + 1))
  params = jax.tree.map(np.asarray, model.init(jax.random.PRNGKey(3)))
  params["W_out"]["kernel"] = params["W_out"]["kernel"] * 100.0  # undo the small read-out init
  hp = H.extract_heads(params, d, model_cfg)
  assert np.all(np.abs(hp.b) > 0) and np.all(np.abs(hp.u) > 0)
  prompts = _prompts(d, D, 32, seed=1)
  preds = np.asarray(model.apply(params, prompts.xs, prompts.ys))[:, 0]
  np.testing.assert_allclose(H.kernel_predict(hp, prompts.xs, prompts.ys, softmax=name == "softmax_icl"), preds,
                             rtol=2e-4, atol=2e-5)


def test_plan_shares_groups_and_every_config_builds():
  for name in ("tiny", "quick", "full"):
    spec = presets.configure(name)
    planned = run.plan(spec)
    names = [g.name for g in planned]
    assert len(names) == len(set(names))
    for g, entry in planned.items():
      cfg = g.config(spec, tuple(entry["seeds"]))
      build_model(cfg.model, cfg.task)  # validates p, h, read-in (no compilation)
      assert cfg.task.n_points == g.D + 1
  quick = run.plan(presets.configure("quick"))
  assert len(quick) == 19
  shared = quick[run.Group(5, 50, 4, 32)]
  assert set(shared["sections"]) == {"main", "hsweep", "psweep", "scenario", "ablation"} and len(shared["seeds"]) == 3
  strong = next(g for g in quick if g.variant == "prior_strong")
  assert strong.config(presets.configure("quick"), (0,)).task.tau2 == pytest.approx(1.0 / strong.D)


def test_groups_fuse_into_programs_whose_variants_are_the_groups_tasks():
  """Groups differing only in D, scenario and lazy training share a program; its variants reproduce each group's
  own task and frozen parameters; overrides reach every program through the preset's base config."""
  spec = presets.configure("quick", ["train.steps=10", "optim.lr=0.01"])
  planned = run.plan(spec)
  grouped = run.programs(planned)
  assert len(grouped) == 6 and sum(len(g) for g in grouped.values()) == 19
  for groups in grouped.values():
    cfg = run.program_config(spec, groups, planned)
    assert cfg.task.n_points == max(g.D for g in groups) + 1 and cfg.train.steps == 10 and cfg.optim.lr == 0.01
    assert cfg.optim.freeze == ()
    for v, (group, task, freeze) in enumerate(zip(groups, configs.variant_tasks(cfg), configs.variant_freeze(cfg))):
      assert task == group.config(spec, (0,)).task
      assert freeze == group.config(spec, (0,)).optim.freeze == (("W_in",) if group.lazy else ())
      runs = run.group_runs(cfg, v, tuple(planned[group]["seeds"]))
      assert [cfg.runs[r][0] for r in runs] == sorted(planned[group]["seeds"])
  assert len(run.program_config(spec, grouped[(5, 4, 32, True)], planned).train.task_variants) == 3 + 4 + 1


def test_lr_selection_uses_training_loss_per_seed():
  cfg = configs.Config(train=configs.TrainConfig(seeds=(0, 1), lrs=(1e-3, 1e-2)))
  # runs are lr-major: (0, 1e-3), (1, 1e-3), (0, 1e-2), (1, 1e-2)
  assert run.select_runs(cfg, np.array([0.5, 0.1, 0.2, 0.3])) == [2, 1]
  assert run.mean_se([1.0, 3.0]) == pytest.approx((2.0, 1.0))


@pytest.fixture(scope="module")
def tiny_out(tmp_path_factory, xla_cache):
  out = str(tmp_path_factory.mktemp("mh_tiny"))
  proc = reproduce("multihead", out, xla_cache)
  assert "Study 1 summary" in proc.stdout and "C_single" in proc.stdout
  return out


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and math.isfinite(x)


def test_tiny_preset_writes_figures_and_tables(tiny_out):
  with open(os.path.join(tiny_out, "summary.json")) as f:
    summary = json.load(f)
  for key in ("preset", "main_table", "ordering", "notes", "sweeps", "scenarios", "ablations", "heads", "figures",
              "timing_s", "protocol"):
    assert key in summary, key
  assert summary["preset"] == "tiny" and summary["n_groups"] == len(run.plan(presets.configure("tiny")))
  assert {(r["D"], r["h"]) for r in summary["main_table"]} == {(8, 1), (8, 2)}
  for r in summary["main_table"]:
    for k in ("dl_mean", "dl_se", "C_single", "C_multi", "mc_single_dl", "mc_pair_dl"):
      assert _finite(r[k]), (k, r)
    assert r["C_multi"] == pytest.approx(3.0) and r["C_single"] == pytest.approx(11.09, abs=0.01)  # d = 2, σ² = 0
  assert all(_finite(r["theory_rank_limited_dl"]) for r in summary["sweeps"])
  assert {r["variant"] for r in summary["scenarios"]} == {"clean", "noise1", "prior_strong"}
  assert {r["mode"] for r in summary["ablations"]} == {"full", "lazy"}
  assert {hg["h"] for hg in summary["heads"]} == {1, 2}
  for path in summary["figures"].values():
    assert os.path.getsize(path) > 5000 and open(path, "rb").read(4) == b"\x89PNG"
  for table in ("main_table.csv", "sweeps.csv", "scenarios.csv", "ablations.csv", "heads.csv"):
    with open(os.path.join(tiny_out, table)) as f:
      rows = list(csv.DictReader(f))
    assert rows and all(math.isfinite(float(r["dl_mean" if table != "heads.csv" else "w"])) for r in rows), table
  with open(os.path.join(tiny_out, "heads.csv")) as f:
    assert len(list(csv.DictReader(f))) == 2 * (1 + 2)  # seeds × (heads of h=1 + heads of h=2)


def test_table_rows_agree_with_reevaluating_saved_params(tiny_out):
  """D·L in the table (one fused, padded evaluation per program) = the library's ``evaluate.model_risk`` of the saved
  parameters, with the group's own unpadded model, on the group's prompts cut to its own D."""
  with open(os.path.join(tiny_out, "summary.json")) as f:
    row = next(r for r in json.load(f)["main_table"] if r["h"] == 2)
  name = run.Group(row["d"], row["D"], row["h"], row["p"]).name
  record, params = run.load_group(tiny_out, name)
  cfg, model = run.group_model(record)
  program = configs.load(os.path.join(tiny_out, record["program"]["workdir"], "config.json"))
  padded, n_context = evaluate.variant_prompts(program, record["eval_prompts"])
  v, D = record["program"]["variant"], row["D"]
  assert n_context[v] == D and cfg.task.n_points == D + 1
  prompts = tasks.Prompt(*(np.concatenate([np.asarray(a[v])[:, :D], np.asarray(a[v])[:, -1:]], axis=1)
                           for a in (padded.xs, padded.ys, padded.targets)), w=np.asarray(padded.w[v]))
  dl, prompt_se = [], []
  for r in record["selected"]:
    risk = float(evaluate.model_risk(model, run.run_params(params, r), prompts)[0])
    assert risk == pytest.approx(record["runs"][r]["risk"], rel=1e-4)
    preds = model.apply(run.run_params(params, r), jnp.asarray(prompts.xs), jnp.asarray(prompts.ys))
    err2 = (np.asarray(preds)[:, 0] - prompts.targets[:, -1]) ** 2
    assert record["runs"][r]["risk_prompt_se"] == pytest.approx(err2.std() / np.sqrt(err2.size), rel=1e-3)
    dl.append(row["D"] * risk)
    prompt_se.append(row["D"] * err2.std() / np.sqrt(err2.size))
  assert np.mean(dl) == pytest.approx(row["dl_mean"], rel=1e-4)
  assert np.std(dl, ddof=1) / np.sqrt(len(dl)) == pytest.approx(row["dl_se"], rel=1e-3, abs=1e-6)
  assert np.mean(prompt_se) == pytest.approx(row["dl_prompt_se"], rel=1e-3)


def test_resumed_reproduction_equals_the_uninterrupted_one(tiny_out, xla_cache, tmp_path):
  """``reproduce --stop-after 15`` leaves checkpoints mid-program and no summary; the rerun resumes them and ends
  with the same per-run risks as the uninterrupted run (same flags and cache: bit-identical training)."""
  out = str(tmp_path / "resumed")
  reproduce("multihead", out, xla_cache, "--stop-after", "15")
  assert not os.path.exists(os.path.join(out, "summary.json"))
  workdirs = os.listdir(os.path.join(out, "programs"))
  assert workdirs and all(os.path.exists(os.path.join(out, "programs", w, "checkpoints", "15")) for w in workdirs)
  reproduce("multihead", out, xla_cache)
  with open(os.path.join(out, "groups.json")) as f:
    resumed = json.load(f)
  with open(os.path.join(tiny_out, "groups.json")) as f:
    straight = json.load(f)
  assert resumed.keys() == straight.keys()
  for name, rec in straight.items():
    np.testing.assert_allclose([r["risk"] for r in resumed[name]["runs"]], [r["risk"] for r in rec["runs"]],
                               rtol=1e-6, err_msg=name)


def test_groups_alone_resume_the_study_without_training(tiny_out, tmp_path, monkeypatch):
  """``groups/`` carried to another machine without ``programs/``: every program is read from its records (the head
  analysis from the parameters files of the groups it reads), nothing trains, and the tables equal the original
  run's; records written by another program config are not taken."""
  spec = presets.configure("tiny")
  planned = run.plan(spec)
  want_params = {g.name + ".params.npz" for g, e in planned.items() if run.reads_params(g, e["sections"], spec)}
  assert want_params and {f for f in os.listdir(os.path.join(tiny_out, "groups")) if f.endswith(".npz")} == want_params
  out = str(tmp_path / "carried")
  shutil.copytree(os.path.join(tiny_out, "groups"), os.path.join(out, "groups"))
  monkeypatch.setattr(run.train, "train", lambda *a, **k: pytest.fail("a program with records trained again"))
  monkeypatch.setattr(run.train, "load_run", lambda *a, **k: pytest.fail("a program read from its workdir"))
  summary = run.main("tiny", out, verbose=False)
  assert not os.path.exists(os.path.join(out, "programs"))
  with open(os.path.join(tiny_out, "summary.json")) as f:
    want = json.load(f)
  assert [(r["D"], r["h"], r["dl_mean"]) for r in summary["main_table"]] == \
      [(r["D"], r["h"], r["dl_mean"]) for r in want["main_table"]]
  rows = [list(csv.DictReader(open(os.path.join(o, "heads.csv")))) for o in (out, tiny_out)]
  assert len(rows[0]) == len(rows[1]) == 2 * (1 + 2)
  for a, b in zip(*rows):
    for k in ("w", "c", "anisotropy", "b_norm", "u_norm"):
      assert float(a[k]) == pytest.approx(float(b[k]), rel=1e-6, abs=1e-9), k

  class Trained(Exception):
    pass

  def trained(*a, **k):
    raise Trained
  monkeypatch.setattr(run.train, "train", trained)
  with pytest.raises(Trained):  # 31 steps: another program config, so the 30-step records are not its results
    run.main("tiny", out, verbose=False, overrides=["train.steps=31"])


def test_damaged_records_send_only_their_program_back_to_training(tiny_out, tmp_path):
  spec = presets.configure("tiny")
  planned = run.plan(spec)
  grouped = list(run.programs(planned).values())
  out = str(tmp_path / "damaged")
  shutil.copytree(os.path.join(tiny_out, "groups"), os.path.join(out, "groups"))
  assert all(run.finished_program(spec, groups, planned, out) is not None for groups in grouped)
  head = next(g for g, e in planned.items() if run.reads_params(g, e["sections"], spec))
  other = next(g for g in planned if run.program_key(g) != run.program_key(head))
  with open(os.path.join(out, "groups", other.name + ".json"), "w") as f:
    f.write('{"name": ')
  with open(os.path.join(out, "groups", head.name + ".params.npz"), "wb") as f:
    f.write(b"PK\x03\x04 torn")
  for groups in grouped:
    damaged = other in groups or head in groups
    assert (run.finished_program(spec, groups, planned, out) is None) == damaged, groups
  with pytest.raises(ValueError, match=other.name + ".json: not valid JSON"):
    run.load_group(out, other.name)


def test_reproduce_overrides_reach_every_program(tmp_path):
  from jaxicl import cli
  assert cli.main(["reproduce", "multihead", "--preset", "tiny", "--out", str(tmp_path), "--set",
                   "model.width=8"]) == 2  # a gpt2 field on the study's one-layer model: named error, exit 2
  assert not os.path.exists(tmp_path / "programs")


@pytest.mark.parametrize("override, needles", [
    ("task.noise_var=1", ["task.noise_var", "study.ds / study.Ds / study.scenarios"]),
    ("model.heads=8", ["model.heads", "study.hs"]),
    ("optim.freeze=W_in", ["optim.freeze", "study.ablations"]),
    ("model.read_in=false", ["model.read_in", "study.ablations"]),
    ("study.scenarios=noise7", ["study.scenarios", "noise7"]),
    ("study.head_d=3", ["study.head_d=3", "study.ds"]),
    ("study.Ds=0", ["study.Ds", "integers >= 1"]),
    ("study.nope=1", ["study.nope", "unknown study setting"]),
    ("model.name=linear_icl", ["model.name", "softmax_icl"]),
    (["study.scenarios=", "study.scenario_d=3"], ["study.scenario_d=3", "does not apply without study.scenarios"]),
    (["study.ablations=", "study.scenarios=", "study.scenario_seeds=7"], ["study.scenario_seeds=(7,)"]),
    (["study.hsweep_hs=", "study.hsweep_ps=", "study.psweep_ps=", "study.psweep_hs=", "study.sweep_D=20"],
     ["study.sweep_D=20", "does not apply"]),
])
def test_configure_names_the_field_of_a_bad_or_grid_set_override(override, needles):
  with pytest.raises(ValueError) as e:
    presets.configure("quick", override if isinstance(override, list) else [override])
  assert all(n in str(e.value) for n in needles), str(e.value)


def test_study_overrides_change_the_grid_and_config_overrides_every_group():
  spec = presets.configure("quick", ["study.Ds=20,40", "study.scenarios=noise1", "study.ablations=lazy",
                                     "model.embed_dim=16", "train.batch_size=8", "study.psweep_ps=8,16"])
  planned = run.plan(spec)
  assert {g.D for g in planned if "main" in planned[g]["sections"]} == {20, 40}
  assert {g.variant for g in planned} == {"clean", "noise1"} and not any(not g.read_in for g in planned)
  for g, entry in planned.items():
    cfg = g.config(spec, tuple(entry["seeds"]))
    assert cfg.train.batch_size == 8 and (cfg.model.embed_dim == 16 or "psweep" in entry["sections"]
                                          or "hsweep" in entry["sections"])
  assert len(run.programs(planned)) < len(planned)
