"""Study 1, multi-head superiority: train one-layer softmax attention over D × h (× d, scenarios, ablations),
measure D·L on held-out prompts, and compare with the theory's O(1/D) constants.

Protocol (shared/studies.md, theory.md): x ~ N(0, I_d), θ ~ N(0, I_d/d), y = θᵀx + ε, tokens z_i = [x_i; y_i],
query [x; 0]; the model is ``jaxicl.models`` ``softmax_icl`` (read-in W_in, h heads of width p/h, W_out; no
residual, bias, MLP or LayerNorm), trained with Adam on fresh prompts every step (MSE against the noisy label y),
and evaluated by the excess risk L = E(ŷ − θᵀx)² on ``eval_prompts`` held-out prompts of the group's own task
(``evaluate.variant_risks``: all groups of a program in one compiled evaluation, padded contexts masked). A
group is one (d, D, h, p, scenario, read-in, lazy) of the preset's grid (``presets.StudySettings``) on its base
config; the groups that share (d, h, p, read-in) are ONE ``jaxicl.train.train`` call (``program_config``): their
D, scenario values and lazy training are per-run ``train.task_variants`` (contexts padded to the largest D and
masked, a lazy group's W_in frozen by a per-run mask, so each run trains exactly as it would alone), with all
seeds (× learning rates) vmapped too. Reported: mean over seeds ± standard error (SE = std/√n_seeds) of D·L.

Outputs in ``out``:
  * ``summary.json`` — preset, timings, the main table, the ordering check and the notes on gaps to theory;
    ``summary.md`` — the same tables and notes in markdown, with links to every figure;
  * ``main_table.csv`` (d, D, h, D·L ± SE, C_single, C_multi, finite-D Monte Carlo optima), ``sweeps.csv``,
    ``scenarios.csv``, ``ablations.csv``, ``heads.csv`` + ``heads.json``, ``theory.json``, ``groups.json``
    (every group: config, per-run risks, learning rates, training-loss history);
  * ``programs/<d,h,p,mode>_<hash>/`` — one ``jaxicl.train`` workdir per compiled program (config.json,
    metrics.jsonl, Orbax checkpoints): the groups that differ only in D and task scenario train together as
    ``train.task_variants`` (padded to the largest D, masked), so an interrupted run resumes mid-program from
    its last checkpoint and a finished program is read back instead of retrained;
    ``groups/<group>.json`` — the record of that group (its runs' indices in the program's workdir), and for the
    groups whose parameters the analysis reads (the head analysis: ``reads_params``) ``groups/<group>.params.npz``.
    A program whose groups all have records written by the same program config (and those parameters) is not
    trained, evaluated or even read again: ``groups/`` alone, carried to another machine without ``programs/``,
    resumes a study where it stopped (``finished_program``);
  * figures ``fig1_dl_vs_D.png``, ``fig2_heads_vs_embedding.png``, ``fig3_scenarios.png``,
    ``fig4_ablations.png``, ``fig5_head_parameters.png``, ``fig0_loss_curves.png``.

Entry point ``main(preset, out)``; command line ``jaxicl reproduce multihead --preset tiny|quick|full --out DIR``
or ``python -m jaxicl.studies.multihead.run --preset quick --out DIR``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import time
import zipfile
from typing import Any, Iterable

import jax
import numpy as np
from flax import traverse_util

from jaxicl.studies.multihead import analysis, heads as heads_lib, plots
from jaxicl.studies.multihead.presets import VARIANTS, Preset, configure
from jaxicl import configs, evaluate, files, report, tasks, train
from jaxicl.models import ICLModel, build_model
from jaxicl.progress import Bar, JobProgress


# ----------------------------------------------------------------------------------------------------- groups


@dataclasses.dataclass(frozen=True, order=True)
class Group:
  """One shape of the study = one compiled training program (seeds and learning rates vmapped inside).

  Attributes: d input dimension, D context examples, h heads, p embedding dimension, variant a key of
  ``presets.VARIANTS``, read_in (False: fixed zero-padding read-in), lazy (W_in frozen at its random init).
  """

  d: int
  D: int
  h: int
  p: int
  variant: str = "clean"
  read_in: bool = True
  lazy: bool = False

  @property
  def name(self) -> str:
    return (f"d{self.d}_D{self.D}_h{self.h}_p{self.p}_{self.variant}" + ("" if self.read_in else "_noreadin")
            + ("_lazy" if self.lazy else ""))

  @property
  def mode(self) -> str:
    """``full`` (learned read-in, all parameters trained), ``no_read_in`` or ``lazy``."""
    return "no_read_in" if not self.read_in else ("lazy" if self.lazy else "full")

  def config(self, spec: Preset, seeds: tuple[int, ...]) -> configs.Config:
    """The training ``Config`` of this group: the preset's base config with the group's task, heads, p, read-in
    and (lazy) frozen W_in."""
    base = spec.config
    return dataclasses.replace(
        base, task=VARIANTS[self.variant].task(self.d, self.D),
        model=dataclasses.replace(base.model, embed_dim=self.p, heads=(self.h,), read_in=self.read_in),
        optim=dataclasses.replace(base.optim, freeze=("W_in",) if self.lazy else ()),
        train=dataclasses.replace(base.train, seeds=seeds))


def plan(spec: Preset) -> dict[Group, dict[str, Any]]:
  """Every group of the preset -> {"seeds", "sections"}; a group shared by sections is trained once
  (with the larger seed set)."""
  groups: dict[Group, dict[str, Any]] = {}
  st, seeds, side_seeds = spec.study, spec.config.train.seeds, spec.side_seeds

  def add(group: Group, section: str, seeds: tuple[int, ...]):
    entry = groups.setdefault(group, {"seeds": seeds, "sections": []})
    if len(seeds) > len(entry["seeds"]):
      entry["seeds"] = seeds
    if section not in entry["sections"]:
      entry["sections"].append(section)

  for d in st.ds:
    for D in st.Ds:
      for h in st.hs:
        add(Group(d, D, h, spec.p), "main", seeds)
  for p in st.hsweep_ps:
    for h in st.hsweep_hs:
      add(Group(st.sweep_d, st.sweep_D, h, p), "hsweep", seeds)
  for h in st.psweep_hs:
    for p in st.psweep_ps:
      add(Group(st.sweep_d, st.sweep_D, h, p), "psweep", seeds)
  for variant in ("clean",) + tuple(st.scenarios):
    for D in st.scenario_Ds:
      for h in st.scenario_hs:
        add(Group(st.scenario_d, D, h, spec.p, variant), "scenario", side_seeds)
  for mode in ("full",) + tuple(st.ablations):
    for D in st.ablation_Ds:
      for h in st.ablation_hs:
        add(Group(st.ablation_d, D, h, spec.p, read_in=mode != "no_read_in", lazy=mode == "lazy"), "ablation",
            side_seeds)
  return groups


# ------------------------------------------------------------------------------------------------ evaluation


def select_runs(cfg: configs.Config, final_loss: np.ndarray) -> list[int]:
  """Per seed, the run (learning rate) with the lowest final training loss (training data only)."""
  runs = cfg.runs
  chosen = []
  for seed in cfg.train.seeds:
    idx = [r for r, (s, _) in enumerate(runs) if s == seed]
    chosen.append(min(idx, key=lambda r: final_loss[r]))
  return chosen


def mean_se(values: Iterable[float]) -> tuple[float, float]:
  """Mean and standard error (std with ddof=1 over √n; 0 for one value)."""
  v = np.asarray(list(values), np.float64)
  if v.size == 0:
    return math.nan, math.nan
  se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else 0.0
  return float(v.mean()), se


# ------------------------------------------------------------------------------------------------ programs


def program_key(group: Group) -> tuple:
  """Groups with the same key share one compiled program: only D, the task scenario and lazy training differ
  between them (``train.task_variants``: padded to the largest D and masked, scenario values passed as arrays,
  a lazy group's frozen W_in as a per-run mask)."""
  return (group.d, group.h, group.p, group.read_in)


def variant_string(group: Group, task: tasks.TaskConfig) -> str:
  """The ``train.task_variants`` entry of a group (every traced task field, so the variant is explicit; lazy
  groups add ``freeze=W_in``)."""
  def fmt(v):
    return "none" if v is None else repr(v)
  fields = ("n_points", "noise_var", "w_var", "prior_mean_norm", "cov", "rho", "local_radius")
  text = ";".join(f"{f}={fmt(getattr(task, f))}" for f in fields).replace("'", "")
  return text + (";freeze=W_in" if group.lazy else "")


def programs(planned: dict[Group, dict[str, Any]]) -> dict[tuple, list[Group]]:
  """The groups of ``plan`` by compiled program (``program_key``), in plan order."""
  out: dict[tuple, list[Group]] = {}
  for group in planned:
    out.setdefault(program_key(group), []).append(group)
  return out


def program_config(spec: Preset, groups: list[Group], planned: dict[Group, dict[str, Any]]) -> configs.Config:
  """One ``train.train`` config for ``groups``: one task variant per group, the union of their seeds."""
  seeds = tuple(sorted({s for g in groups for s in planned[g]["seeds"]}))
  group_cfgs = [g.config(spec, seeds) for g in groups]
  base = dataclasses.replace(group_cfgs[0], optim=dataclasses.replace(group_cfgs[0].optim, freeze=()))
  return dataclasses.replace(
      base, task=tasks.TaskConfig(d=groups[0].d, n_points=max(c.task.n_points for c in group_cfgs)),
      train=dataclasses.replace(base.train, task_variants=tuple(
          variant_string(g, c.task) for g, c in zip(groups, group_cfgs))))


def program_dir(out: str, cfg: configs.Config) -> str:
  """The train workdir of a program: ``out/programs/<d,h,p,mode>_<config hash>``."""
  digest = hashlib.sha1(json.dumps(configs.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:10]
  m = cfg.model
  mode = "" if m.read_in else "_noreadin"
  return os.path.join(out, "programs", f"d{cfg.task.d}_h{m.heads[0]}_p{m.embed_dim}{mode}_{digest}")


def group_runs(cfg: configs.Config, variant: int, seeds: tuple[int, ...]) -> list[int]:
  """Indices (in the program's runs) of ``variant``'s runs with a seed in ``seeds``."""
  return [r for r, ((s, _), v) in enumerate(zip(cfg.runs, cfg.run_variants)) if v == variant and s in seeds]


def reads_params(group: Group, sections: Iterable[str], spec: Preset) -> bool:
  """Whether the analysis reads this group's parameters: the head analysis of the main groups at d = ``head_d`` and
  the largest D (``build_tables``)."""
  return "main" in sections and group.d == spec.study.head_d and group.D == max(spec.study.Ds)


def _record_path(out: str, name: str) -> str:
  return os.path.join(out, "groups", name + ".json")


def _params_path(out: str, name: str) -> str:
  return os.path.join(out, "groups", name + ".params.npz")


def _write_params(path: str, params: dict) -> None:
  buf = io.BytesIO()
  np.savez(buf, **traverse_util.flatten_dict(jax.tree.map(np.asarray, params), sep="/"))
  files.write_bytes(path, buf.getvalue())


def _read_params(path: str) -> dict:
  with np.load(path) as z:
    return traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep="/")


def load_group(out: str, name: str) -> tuple[dict, dict]:
  """(record, its runs' params [R, ...]) of a finished group written by ``main``: params from
  ``groups/<name>.params.npz`` where the record names one, else from the program's train workdir."""
  record = files.read_json(_record_path(out, name))
  if "params" in record:
    return record, _read_params(os.path.join(out, record["params"]))
  result = train.load_run(os.path.join(out, record["program"]["workdir"]))
  runs = np.asarray(record["program"]["runs"])
  return record, jax.tree.map(lambda a: np.asarray(a)[runs], result.state.params)


def finished_program(spec: Preset, groups: list[Group], planned: dict[Group, dict[str, Any]], out: str
                     ) -> dict[Group, tuple[dict, dict | None]] | None:
  """{group: (record, params or None)} when every group of the program has a record written by this program config
  (same workdir name, which holds the config's hash) and, where ``reads_params``, its parameters file; else None
  (the program is trained, resumed or read back by ``run_program``). An unreadable record or parameters file
  counts as missing: the program is run again and rewrites them."""
  workdir = os.path.relpath(program_dir(out, program_config(spec, groups, planned)), out)
  done = {}
  for group in groups:
    try:
      record = files.read_json(_record_path(out, group.name))
      if record["program"]["workdir"] != workdir:
        return None
      params = None
      if reads_params(group, planned[group]["sections"], spec):
        params = _read_params(os.path.join(out, record["params"]))
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
      return None
    done[group] = (record, params)
  return done


def group_model(record: dict) -> tuple[configs.Config, ICLModel]:
  """The (unpadded) config and model of a group record."""
  cfg = configs.from_dict(record["config"])
  return cfg, build_model(cfg.model, cfg.task)


def run_params(params: dict, run: int) -> dict:
  """One run's parameters (drops the leading run axis)."""
  return jax.tree.map(lambda a: a[run], params)


# ------------------------------------------------------------------------------------------------ one program


def run_program(spec: Preset, groups: list[Group], planned: dict[Group, dict[str, Any]], out: str,
                log=print, stop_after: int | None = None,
                progress: Bar | None = None) -> dict[Group, tuple[dict, dict]] | None:
  """Trains (or resumes, or reads) the program of ``groups`` in its train workdir and evaluates every group's runs
  on held-out prompts of its own (unpadded) task; returns {group: (record, params [R_group, ...])}, or None when
  ``stop_after`` ended training early (the workdir holds a checkpoint to resume from). ``progress``: a job's bar,
  advanced by the program's steps (``train.train``)."""
  cfg = program_config(spec, groups, planned)
  workdir = program_dir(out, cfg)
  t0 = time.perf_counter()
  result = train.train(cfg, workdir, stop_after=stop_after, progress=progress)
  if int(np.asarray(result.state.step)[0]) < cfg.train.steps:
    return None
  t1 = time.perf_counter()
  params_all = jax.tree.map(np.asarray, result.state.params)
  final_loss = np.asarray(result.history[-1]["loss"])
  risks = evaluate.variant_risks(result.model, result.state.params, cfg, cfg.train.eval_prompts)
  risk_all, risk_se_all = risks.risk[:, -1], risks.se[:, -1]  # [R]
  eval_s = time.perf_counter() - t1
  out_records = {}
  for v, (group, task) in enumerate(zip(groups, configs.variant_tasks(cfg))):
    seeds = tuple(s for s in cfg.train.seeds if s in planned[group]["seeds"])
    runs = group_runs(cfg, v, seeds)
    group_cfg = group.config(spec, seeds)
    params = jax.tree.map(lambda a: a[np.asarray(runs)], params_all)
    risk, risk_se = risk_all[runs], risk_se_all[runs]
    chosen = select_runs(group_cfg, final_loss[runs])
    D = task.n_points - 1
    dl = [float(D * risk[r]) for r in chosen]
    dl_mean, dl_se = mean_se(dl)
    # The seeds share one prompt set, so the seed SE leaves out the prompt-sampling error of the mean; it is at
    # most the mean of the runs' own SEs (errors on common prompts are positively correlated across seeds).
    dl_prompt_se = float(D * np.mean([risk_se[r] for r in chosen]))
    record = {
        "name": group.name, "group": dataclasses.asdict(group), "sections": planned[group]["sections"],
        "seeds": list(seeds), "lrs": list(group_cfg.lrs),
        "runs": [{"seed": s, "lr": lr, "risk": float(risk[r]), "risk_prompt_se": float(risk_se[r]),
                  "dl": float(D * risk[r]),
                  "final_train_loss": float(final_loss[runs[r]])} for r, (s, lr) in enumerate(group_cfg.runs)],
        "selected": chosen, "dl": dl, "dl_mean": dl_mean, "dl_se": dl_se, "dl_prompt_se": dl_prompt_se,
        "loss_mean": dl_mean / D,
        "train_s": t1 - t0, "eval_s": eval_s, "eval_prompts": cfg.train.eval_prompts,
        "eval": "evaluate.variant_prompts(program config)[variant]: the held-out prompts of the group's task",
        "history": {"step": [h["step"] for h in result.history],
                    "loss": [[h["loss"][r] for r in runs] for h in result.history]},
        "config": configs.to_dict(group_cfg),
        "program": {"workdir": os.path.relpath(workdir, out), "runs": runs, "variant": v, "n_groups": len(groups)},
    }
    os.makedirs(os.path.join(out, "groups"), exist_ok=True)
    if reads_params(group, planned[group]["sections"], spec):  # before the record that names it
      _write_params(_params_path(out, group.name), params)
      record["params"] = os.path.relpath(_params_path(out, group.name), out)
    files.write_json(_record_path(out, group.name), record)
    log(f"  {group.name}: D·L = {dl_mean:.3f} ± {dl_se:.3f} (seeds) ± {dl_prompt_se:.3f} (prompts)")
    out_records[group] = (record, params)
  log(f"  program {os.path.basename(workdir)}: {len(groups)} groups, {len(cfg.runs)} runs, "
      f"train {t1 - t0:.1f} s")
  return out_records


# -------------------------------------------------------------------------------------------------- tables


def _write_csv(path: str, rows: list[dict]) -> None:
  keys = list(rows[0]) if rows else []
  for row in rows[1:]:
    keys += [k for k in row if k not in keys]
  buf = io.StringIO(newline="")
  if rows:
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: _fmt(row.get(k)) for k in keys})
  files.write_text(path, buf.getvalue())


def _fmt(v):
  if isinstance(v, float):
    return f"{v:.6g}"
  return v


def _theory_for(group: Group, cache: dict) -> dict:
  key = (group.variant, group.d, group.D if VARIANTS[group.variant].kappa is not None else 0)
  if key not in cache:
    cache[key] = analysis.variant_theory(VARIANTS[group.variant], group.d, group.D)
  return cache[key]


def _reference(h: int, theory: dict) -> float:
  return theory["C_single"] if h == 1 else theory["C_multi"]


def build_tables(spec: Preset, records: dict[Group, dict], params: dict[Group, dict], log=print) -> dict:
  """All tables of the study (lists of row dicts) plus theory extras; see the module docstring."""
  log("theory constants, finite-D Monte Carlo optima, rank-limited optima and head analysis ...")
  cache: dict = {}
  theory = {g.name: _theory_for(g, cache) for g in records}
  finite = {}
  st = spec.study
  if st.mc_prompts > 0:
    for d in st.ds:
      finite[d] = analysis.finite_d_curves(d, 0.0, st.Ds, st.mc_prompts)
  main_rows = []
  for g, rec in sorted(records.items()):
    if "main" not in rec["sections"]:
      continue
    th = theory[g.name]
    row = {"d": g.d, "D": g.D, "h": g.h, "p": g.p, "n_seeds": len(rec["dl"]), "dl_mean": rec["dl_mean"],
           "dl_se": rec["dl_se"], "dl_prompt_se": rec["dl_prompt_se"], "C_single": th["C_single"], "C_multi": th["C_multi"],
           "ratio_to_constant": rec["dl_mean"] / _reference(g.h, th)}
    if g.d in finite:
      j = finite[g.d]["D"].index(g.D)
      row["mc_single_dl"] = finite[g.d]["single"][j]
      row["mc_pair_dl"] = finite[g.d]["pair"][j]
      row["ratio_to_finite_d"] = rec["dl_mean"] / (row["mc_single_dl"] if g.h == 1 else row["mc_pair_dl"])
    main_rows.append(row)

  sweep_rows = []
  for kind in ("hsweep", "psweep"):
    for g, rec in sorted(records.items()):
      if kind in rec["sections"]:
        rl = analysis.rank_limited(g.d, g.p, g.h, VARIANTS[g.variant].noise_var, g.D)
        th = theory[g.name]
        sweep_rows.append({"sweep": kind, "d": g.d, "D": g.D, "h": g.h, "p": g.p, "p_over_h": g.p // g.h,
                           "rank_limited": g.p // g.h < g.d, "dl_mean": rec["dl_mean"], "dl_se": rec["dl_se"], "dl_prompt_se": rec["dl_prompt_se"],
                           "theory_rank_limited_dl": rl["dl"], "theory_bias_floor_dl": rl["bias_floor_dl"],
                           "theory_full_rank_dl": rl["full_rank_dl"], "theory_single_dl": rl["single_dl"],
                           "C_single": th["C_single"], "C_multi": th["C_multi"]})

  scenario_rows = []
  for g, rec in sorted(records.items(), key=lambda kv: (kv[0].variant, kv[0].D, kv[0].h)):
    if "scenario" not in rec["sections"]:
      continue
    v = VARIANTS[g.variant]
    th = theory[g.name]
    row = {"variant": g.variant, "scenario": v.scenario, "label": v.label, "d": g.d, "D": g.D, "h": g.h, "p": g.p,
           "n_seeds": len(rec["dl"]), "dl_mean": rec["dl_mean"], "dl_se": rec["dl_se"], "dl_prompt_se": rec["dl_prompt_se"], "C_single": th["C_single"],
           "C_multi": th["C_multi"]}
    row.update({f"extra_{k}": val for k, val in th["extras"].items()})
    scenario_rows.append(row)

  ablation_rows = []
  for g, rec in sorted(records.items(), key=lambda kv: (kv[0].mode, kv[0].D, kv[0].h)):
    if "ablation" not in rec["sections"]:
      continue
    th = theory[g.name]
    ablation_rows.append({"mode": g.mode, "d": g.d, "D": g.D, "h": g.h, "p": g.p, "n_seeds": len(rec["dl"]),
                          "dl_mean": rec["dl_mean"], "dl_se": rec["dl_se"], "dl_prompt_se": rec["dl_prompt_se"], "C_single": th["C_single"],
                          "C_multi": th["C_multi"]})

  head_rows, head_groups = [], []
  optima = {}
  for g, rec in sorted(records.items()):
    if not reads_params(g, rec["sections"], spec):
      continue
    cfg = configs.from_dict(rec["config"])
    noise = cfg.task.noise_var
    if g.h not in optima:
      optima[g.h] = analysis.optimal_heads(g.h, g.d, noise)
    per_seed = []
    for run in rec["selected"]:
      hp = heads_lib.canonical(heads_lib.extract_heads(run_params(params[g], run), g.d, cfg.model))
      summary = heads_lib.summarize_heads(hp)
      summary.update(analysis.head_theory(hp, g.d, noise, g.D))
      summary["seed"] = rec["runs"][run]["seed"]
      summary["measured_dl"] = rec["runs"][run]["dl"]
      per_seed.append(summary)
      for k in range(g.h):
        head_rows.append({"d": g.d, "D": g.D, "h": g.h, "seed": summary["seed"], "head": k, "w": summary["w"][k],
                          "c": summary["c"][k], "c_times_w": summary["c"][k] * summary["w"][k],
                          "anisotropy": summary["anisotropy"][k], "b_norm": summary["b_norm"][k],
                          "u_norm": summary["u_norm"][k], "sum_cw": summary["sum_cw"], "sum_c": summary["sum_c"]})
    fin = finite.get(g.d)
    fin_w = None
    if fin and g.D in fin["D"] and noise == 0.0:
      fin_w = fin["single_w" if g.h == 1 else "pair_w"][fin["D"].index(g.D)]
    head_groups.append({"group": g.name, "d": g.d, "D": g.D, "h": g.h, "per_seed": per_seed, "optimum": optima[g.h],
                        "finite_d_optimal_w": fin_w,
                        "abs_w_mean": mean_se(float(np.mean(np.abs(s["w"]))) for s in per_seed),
                        "sum_cw_mean": mean_se(s["sum_cw"] for s in per_seed),
                        "sum_c_mean": mean_se(s["sum_c"] for s in per_seed),
                        "learned_heads_constant": mean_se(s["isotropic_constant"] for s in per_seed),
                        "theory_predicted_dl": mean_se(s["predicted_dl"] for s in per_seed)})
  return {"main": main_rows, "sweeps": sweep_rows, "scenarios": scenario_rows, "ablations": ablation_rows,
          "heads": head_rows, "head_groups": head_groups, "finite_d": finite, "theory": theory}


# --------------------------------------------------------------------------------------------------- notes


def ordering(main_rows: list[dict]) -> list[dict]:
  """Per (d, D): single-head D·L vs the best multi-head D·L, and whether multi is lower by more than 2 SE (seed and
  prompt SEs of both combined, conservatively: both are evaluated on the same prompts)."""
  out = []
  for d in sorted({r["d"] for r in main_rows}):
    for D in sorted({r["D"] for r in main_rows if r["d"] == d}):
      rows = [r for r in main_rows if r["d"] == d and r["D"] == D]
      single = [r for r in rows if r["h"] == 1]
      multi = [r for r in rows if r["h"] > 1]
      if not single or not multi:
        continue
      best = min(multi, key=lambda r: r["dl_mean"])
      s = single[0]
      gap_se = math.hypot(s["dl_se"], best["dl_se"], s["dl_prompt_se"], best["dl_prompt_se"])  # conservative
      out.append({"d": d, "D": D, "single_dl": s["dl_mean"], "single_se": s["dl_se"], "best_multi_h": best["h"],
                  "multi_dl": best["dl_mean"], "multi_se": best["dl_se"],
                  "multi_below_single": bool(best["dl_mean"] < s["dl_mean"]),
                  "significant": bool(s["dl_mean"] - best["dl_mean"] > 2 * gap_se)})
  return out


def gap_notes(tables: dict) -> list[str]:
  """Plain-language statements of how far training is from the constants, and why (numbers from the tables)."""
  notes = []
  main = tables["main"]
  for d in sorted({r["d"] for r in main}):
    for h in sorted({r["h"] for r in main if r["d"] == d}):
      rows = sorted((r for r in main if r["d"] == d and r["h"] == h), key=lambda r: r["D"])
      ref_name = "C_single" if h == 1 else "C_multi"
      ref = rows[0][ref_name]
      dls = ", ".join(f"{r['dl_mean']:.2f}±{r['dl_se']:.2f} (D={r['D']})" for r in rows)
      pct = ", ".join(f"{100 * r['dl_mean'] / ref:.0f}%" for r in rows)
      text = f"d={d}, h={h}: D·L = {dls} vs {ref_name} = {ref:.3f} ({pct} of it)."
      if "mc_single_dl" in rows[0]:
        key, fam = ("mc_single_dl", "single head") if h == 1 else ("mc_pair_dl", "symmetric pair of heads")
        fin = ", ".join(f"{r[key]:.2f}" for r in rows)
        rel = ", ".join(f"{100 * r['dl_mean'] / r[key]:.0f}%" for r in rows)
        text += (f" The best {fam} at the same finite D (Monte Carlo, A = wI) has D·L = {fin}; the trained D·L is "
                 f"{rel} of that finite-D optimum. The D·L limit itself is reached only as D → ∞ (finite-D bias "
                 "of the softmax ratio estimator).")
      if h > 1 and rows[0]["p"] // h < d:
        text += f" Here p/h = {rows[0]['p'] // h} < d = {d}: heads are rank-limited."
      notes.append(text)
  for hg in tables["head_groups"]:
    cw, cw_se = hg["sum_cw_mean"]
    sc, sc_se = hg["sum_c_mean"]
    const, const_se = hg["learned_heads_constant"]
    pred, pred_se = hg["theory_predicted_dl"]
    opt_c = "1/w* = {:.3f}".format(hg["optimum"]["c"][0]) if hg["h"] == 1 else "0 (zero-sum heads)"
    text = (f"d={hg['d']}, D={hg['D']}, h={hg['h']} heads (sign-canonical): Σc_k w_k = {cw:.3f}±{cw_se:.3f} "
            f"(theory: 1, unbiased; < 1 is shrinkage, optimal at finite D), Σc_k = {sc:.3f}±{sc_se:.3f} "
            f"(theory: {opt_c}); theory's asymptotic D·L of the learned kernels = {pred:.2f}±{pred_se:.2f} "
            f"(measured at D={hg['D']}: {np.mean([s['measured_dl'] for s in hg['per_seed']]):.2f}).")
    aw, aw_se = hg["abs_w_mean"]
    text += f" Mean |w_k| = {aw:.3f}±{aw_se:.3f} vs the asymptotic optimum {np.mean(np.abs(hg['optimum']['w'])):.3f}"
    if hg.get("finite_d_optimal_w") is not None:
      fam = "single head" if hg["h"] == 1 else "symmetric pair"
      text += f" and the best {fam} at D={hg['D']} (Monte Carlo grid): |w| = {hg['finite_d_optimal_w']:.3f}"
    text += "."
    if abs(cw - 1) < 0.2 and np.isfinite(const):
      if hg["h"] > 1:
        text += (f" Kernels A_k = w_k I at the learned (c, w) have the D·L limit {const:.2f}±{const_se:.2f} vs "
                 f"C_multi = {hg['optimum']['constant']:.2f} at |w| ≥ {hg['optimum'].get('w_min', 0):.3f}: "
                 "the excess "
                 "is the cost of the finite kernel scale the heads learned (C → C_multi only as w → 0, c ~ 1/w).")
      else:
        text += (f" The learned head's own D·L limit is {const:.2f}±{const_se:.2f} vs C_single = "
                 f"{hg['optimum']['constant']:.2f} at w* = {hg['optimum']['w'][0]:.3f}.")
    else:
      text += " The heads are not (yet) the unbiased kernel smoother of the theory (Σc_k w_k far from 1)."
    notes.append(text)
  notes += section_notes(tables)
  return notes


EXTRA_LABELS = {
    "isotropic_kernel_floor": "O(1) loss floor of heads with A_k ∝ I (no adaptation to Σ)",
    "plain_average": "D·L of the plain average of the local labels",
    "single_without_prior_path": "C_single without a prior path",
    "multi_without_prior_path": "C_multi without a prior path",
}


def section_notes(tables: dict) -> list[str]:
  """Notes on the sweeps, scenarios and ablations (measured D·L next to the theory's numbers)."""
  notes = []
  for sweep in sorted({r["sweep"] for r in tables["sweeps"]}):
    rows = [r for r in tables["sweeps"] if r["sweep"] == sweep]
    parts = [f"h={r['h']}, p={r['p']} (p/h={r['p_over_h']}{' < d' if r['rank_limited'] else ''}): "
             f"{r['dl_mean']:.2f}±{r['dl_se']:.2f} [theory {r['theory_rank_limited_dl']:.2f}]" for r in rows]
    notes.append(f"{sweep} (d={rows[0]['d']}, D={rows[0]['D']}): D·L " + "; ".join(parts) + ". Theory: best "
                 "leading-order loss of heads on coordinate blocks (p/h < d costs only when p < d, or for one head, "
                 "if training finds heads on complementary blocks with zero-sum weights).")
  for variant in sorted({r["variant"] for r in tables["scenarios"]}):
    rows = sorted((r for r in tables["scenarios"] if r["variant"] == variant), key=lambda r: (r["D"], r["h"]))
    parts = [f"D={r['D']}, h={r['h']}: {r['dl_mean']:.2f}±{r['dl_se']:.2f}" for r in rows]
    extras = {k[6:]: v for k, v in rows[0].items() if k.startswith("extra_") and _is_number(v)}
    extra = ("; " + ", ".join(f"{EXTRA_LABELS.get(k, k)} = {v:.3g}" for k, v in extras.items())) if extras else ""
    notes.append(f"scenario {variant} ({rows[0]['label']}): D·L " + "; ".join(parts) +
                 f" vs C_single = {rows[0]['C_single']:.3g}, C_multi = {rows[0]['C_multi']:.3g}{extra}.")
  for h in sorted({r["h"] for r in tables["ablations"]}):
    rows = sorted((r for r in tables["ablations"] if r["h"] == h), key=lambda r: (r["mode"], r["D"]))
    notes.append(f"ablation h={h}: " + "; ".join(f"{r['mode']} D={r['D']}: {r['dl_mean']:.2f}±{r['dl_se']:.2f}"
                                                  for r in rows) + f" (C_single = {rows[0]['C_single']:.3g}, "
                 f"C_multi = {rows[0]['C_multi']:.3g}).")
  return notes


def outlier_notes(records: dict) -> list[str]:
  """Seeds whose D·L is > 1.5× the group's best seed: runs that did not converge within the step budget."""
  notes = []
  for g, rec in sorted(records.items()):
    dl = np.asarray(rec["dl"])
    if dl.size < 2:
      continue
    best = float(dl.min())
    for r, value in zip(rec["selected"], dl):
      if value > 1.5 * best:
        run_rec = rec["runs"][r]
        notes.append(f"{g.name}: seed {run_rec['seed']} has D·L = {value:.2f} vs {best:.2f} for the group's best seed "
                     f"(final training loss {run_rec['final_train_loss']:.4g}): it did not converge within "
                     f"{rec['config']['train']['steps']} steps (a plateau); it is kept in the mean ± SE.")
  return notes


def _is_number(v) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------------- main


def main(preset: str = "quick", out: str = "results/multihead_superiority", *, verbose: bool = True,
         progress: bool = True, overrides: list[str] | tuple[str, ...] = (),
         stop_after: int | None = None) -> dict | None:
  """Runs study 1 with ``preset`` (``tiny`` | ``quick`` | ``full``, see ``presets``), writes everything to ``out``
  and returns the summary dict (also written to ``out/summary.json`` and, as tables and figure links,
  ``out/summary.md``).

  ``verbose``: print the summary table at the end. ``progress`` (with ``verbose``): one progress bar over every
  program's steps (``jaxicl.progress.JobProgress``, current loss in its postfix) and one line per finished group.
  ``overrides``: ``section.field=value`` (as ``jaxicl train --set``) to the base config of every group,
  ``study.field=value`` to the grid (``presets.configure``).
  ``stop_after``: stop every program's training at that step (checkpointed) and return None; a later call
  resumes each program from its checkpoint. One process at a time writes in ``out`` (``train.workdir_lock``).
  """
  spec = configure(preset, overrides)
  train.check_stop_after(stop_after, spec.config)
  os.makedirs(out, exist_ok=True)
  with train.workdir_lock(out, "running a study", "out"):
    return _main(spec, preset, out, verbose, progress, stop_after)


def _main(spec: Preset, preset: str, out: str, verbose: bool, progress: bool, stop_after: int | None
          ) -> dict | None:
  t_start = time.perf_counter()
  files.check_folders(out, ("programs", "groups"))  # a file in the way fails here, before anything trains
  files.claim_folder(out, "study multihead", "out", preset, f"preset {preset}")
  planned = plan(spec)
  grouped = programs(planned)
  steps = [spec.config.train.steps] * len(grouped)
  total = sum(s if stop_after is None else min(s, stop_after) for s in steps)
  records: dict[Group, dict] = {}
  params: dict[Group, dict] = {}
  stopped = False
  with JobProgress(total, f"study 1 ({preset})", enabled=verbose and progress) as job:
    log = job.line
    log(f"study 1 (multi-head superiority), preset {preset!r}: {len(planned)} groups in {len(grouped)} compiled "
        f"programs ({total} steps in all) on {jax.default_backend()}")
    for i, groups in enumerate(grouped.values()):
      job.stage(f"program {i + 1}/{len(grouped)}")
      done = finished_program(spec, groups, planned, out)
      if done is not None:
        job.skip(steps[i] if stop_after is None else min(steps[i], stop_after))
        log(f"  program {i + 1}: {len(groups)} groups read from their records")
      else:
        done = run_program(spec, groups, planned, out, log, stop_after, progress=job.bar)
      if done is None:
        stopped = True
        continue
      for group, (record, group_params) in done.items():
        records[group], params[group] = record, group_params
  log = print if verbose and progress else (lambda *a, **k: None)
  if stopped:
    if verbose:
      print(f"stopped at step {stop_after}; run again to resume")
    return None
  records = {g: records[g] for g in planned}
  params = {g: params[g] for g in planned}
  t_train = time.perf_counter()
  tables = build_tables(spec, records, params, log)
  t_theory = time.perf_counter()
  figures = plots.make_figures(spec, records, tables, out)
  t_plots = time.perf_counter()

  _write_csv(os.path.join(out, "main_table.csv"), tables["main"])
  _write_csv(os.path.join(out, "sweeps.csv"), tables["sweeps"])
  _write_csv(os.path.join(out, "scenarios.csv"), tables["scenarios"])
  _write_csv(os.path.join(out, "ablations.csv"), tables["ablations"])
  _write_csv(os.path.join(out, "heads.csv"), tables["heads"])
  files.write_json(os.path.join(out, "heads.json"), tables["head_groups"])
  files.write_json(os.path.join(out, "theory.json"),
                   {"per_group": tables["theory"], "finite_d": {str(k): v for k, v in tables["finite_d"].items()}})
  files.write_json(os.path.join(out, "groups.json"), {g.name: rec for g, rec in records.items()})

  order = ordering(tables["main"])
  base = spec.config
  summary = {
      "study": "multihead_superiority", "preset": preset, "preset_doc": spec.doc.strip(), "out": out,
      "backend": jax.default_backend(), "n_groups": len(records), "n_programs": len(grouped),
      "timing_s": {"total": time.perf_counter() - t_start, "train_and_eval": t_train - t_start,
                   "theory_and_tables": t_theory - t_train, "figures": t_plots - t_theory},
      "protocol": {"p": spec.p, "seeds": list(base.train.seeds), "lrs": list(base.lrs), "steps": base.train.steps,
                   "batch_size": base.train.batch_size, "schedule": base.optim.schedule,
                   "warmup_steps": base.optim.warmup_steps, "eval_prompts": base.train.eval_prompts,
                   "error_bars": "mean over seeds ± SE (std/sqrt(n)) on one held-out prompt set; dl_prompt_se: the "
                                 "prompt-sampling SE of that mean (the mean of the runs' own SEs over prompts)",
                   "lr_selection": "per seed, lowest final training loss" if len(base.lrs) > 1 else "single lr"},
      "config": configs.to_dict(base), "study_settings": dataclasses.asdict(spec.study),
      "main_table": tables["main"], "ordering": order, "notes": gap_notes(tables) + outlier_notes(records),
      "sweeps": tables["sweeps"], "scenarios": tables["scenarios"], "ablations": tables["ablations"],
      "heads": [{k: v for k, v in hg.items() if k != "per_seed"} for hg in tables["head_groups"]],
      "figures": figures,
      "tables": ["summary.md", "main_table.csv", "sweeps.csv", "scenarios.csv", "ablations.csv", "heads.csv",
                 "heads.json", "theory.json", "groups.json"],
  }
  files.write_json(os.path.join(out, "summary.json"), summary)
  write_summary_md(summary, os.path.join(out, "summary.md"))
  if verbose:
    print(format_summary(summary))
  return summary


MAIN_COLUMNS = {"d": "d", "D": "D", "h": "h", "p": "p", "n_seeds": "seeds", "dl_mean": "D·L mean",
                "dl_se": "D·L SE (seeds)", "dl_prompt_se": "SE (prompts)", "C_single": "C_single", "C_multi": "C_multi", "mc_single_dl": "MC 1-head",
                "mc_pair_dl": "MC pair"}


def write_summary_md(summary: dict, path: str) -> str:
  """``summary.md``: the printed tables (main table, ordering), the sweeps, scenarios and ablations, the notes and
  links to every figure (``jaxicl.report``)."""
  main_rows = [{label: r.get(key) for key, label in MAIN_COLUMNS.items()} for r in summary["main_table"]]
  t = summary["timing_s"]
  intro = (f"Preset `{summary['preset']}`: {summary['n_groups']} groups in {summary['n_programs']} compiled programs, "
           f"{t['total']:.0f} s on {summary['backend']}. D·L: mean over seeds ± SE (std/√n) of D × the excess "
           f"risk "
           f"on {summary['protocol']['eval_prompts']} held-out prompts shared by the seeds (SE prompts: the sampling "
           "error of those prompts, which the seed SE leaves out); C_single, C_multi: the theory's O(1/D) constants; MC: the best single head / symmetric pair at that finite D (Monte Carlo).")
  tables = {"Main table": main_rows, "Single vs multi-head": summary["ordering"], "Sweeps": summary["sweeps"],
            "Scenarios": summary["scenarios"], "Ablations": summary["ablations"]}
  return report.write_summary_md(path, "Study 1: multi-head superiority", {k: v for k, v in tables.items() if v},
                                 summary["notes"], list(summary["figures"].values()), intro)


def format_summary(summary: dict) -> str:
  """The printed summary table: D, h, D·L mean ± SE, C_single, C_multi (+ finite-D optima), ordering, notes."""
  lines = [f"\nStudy 1 summary (preset {summary['preset']}, {summary['n_groups']} groups in "
           f"{summary.get('n_programs', summary['n_groups'])} programs, "
           f"{summary['timing_s']['total']:.0f} s on {summary['backend']})"]
  head = (f"{'d':>3} {'D':>5} {'h':>3} {'D·L mean ± SE':>18} {'SE prompts':>10} {'C_single':>9} {'C_multi':>8} "
          f"{'MC 1-head':>10} {'MC pair':>8}")
  lines.append(head)
  lines.append("-" * len(head))
  for r in summary["main_table"]:
    dl = f"{r['dl_mean']:.3f} ± {r['dl_se']:.3f}"
    mc1 = f"{r['mc_single_dl']:.2f}" if "mc_single_dl" in r else "-"
    mc2 = f"{r['mc_pair_dl']:.2f}" if "mc_pair_dl" in r else "-"
    lines.append(f"{r['d']:>3} {r['D']:>5} {r['h']:>3} {dl:>18} {r['dl_prompt_se']:>10.3f} {r['C_single']:>9.3f} "
                 f"{r['C_multi']:>8.3f} {mc1:>10} {mc2:>8}")
  for o in summary["ordering"]:
    verdict = "multi < single" if o["multi_below_single"] else "multi >= single"
    lines.append(f"d={o['d']} D={o['D']}: single {o['single_dl']:.2f}±{o['single_se']:.2f}, best multi "
                 f"(h={o['best_multi_h']}) {o['multi_dl']:.2f}±{o['multi_se']:.2f}: {verdict}"
                 f"{' (> 2 SE)' if o['significant'] else ''}")
  lines += ["notes:"] + [f"  - {n}" for n in summary["notes"]]
  return "\n".join(lines)


if __name__ == "__main__":  # the same as `jaxicl reproduce multihead ...` (its errors: one line, exit 2)
  import sys

  from jaxicl import cli
  raise SystemExit(cli.entry(["reproduce", "multihead", *sys.argv[1:]]))
