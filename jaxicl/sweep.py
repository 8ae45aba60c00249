"""Sweeps: a grid of config values × seeds, grouped into as few compiled programs as shapes allow.

Every grid point that differs only in run-axis keys joins the same group, one ``train.train`` call whose
runs carry their own values: ``optim.lr`` (``train.lrs``), seeds, and the task keys that can be traced
(``task.noise_var``, ``task.rho``, ``task.cov``, ``task.local_radius``, ``task.prior_mean_norm``,
``task.w_var``, ``task.prior_mean``, for one-layer models ``task.n_points``, padded to the group's largest and
masked, and ``optim.freeze``, a per-run mask: ``optim.freeze=none,W_in`` compares full and lazy training in one
program): they become ``train.task_variants``. Other keys (model shapes, d, schedules) make new
groups. Each group trains in its own workdir under ``out/groups/``, so an interrupted sweep resumes
mid-group from its checkpoints and skips finished groups. Results: ``out/results.csv`` and ``.json``,
one row per (grid point, seed).
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import os
from typing import Any

import numpy as np

from jaxicl import configs, evaluate, files, train
from jaxicl.progress import Bar, JobProgress

VMAPPED_KEYS = ("optim.lr",)
VARIANT_KEYS = {field: key for key, field in configs.VARIANT_FIELDS.items()}  # config key -> task variant key


def parse_grid(grid: list[str]) -> dict[str, list[str]]:
  """["task.d=2,5", "optim.lr=1e-3,3e-3"] -> {"task.d": ["2", "5"], "optim.lr": ["1e-3", "3e-3"]}."""
  out: dict[str, list[str]] = {}
  for item in grid:
    if "=" not in item:
      raise ValueError(f"grid {item!r}: expected section.field=v1,v2,...")
    key, values = item.split("=", 1)
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not vals:
      raise ValueError(f"grid {key!r}: no values")
    out[key.strip()] = vals
  return out


def plan(config: str, grid: dict[str, list[str]], n_seeds: int, overrides: list[str] | tuple[str, ...] = ()
         ) -> list[tuple[dict[str, str], configs.Config]]:
  """Groups of the sweep: (the group's grid assignment without run-axis keys, its Config with seeds, lrs and
  task variants set)."""
  if n_seeds < 1:
    raise ValueError(f"seeds={n_seeds}: must be >= 1")
  base = configs.get_config(config, overrides)
  task_keys = [k for k in grid if k in VARIANT_KEYS and (k != "task.n_points" or base.model.one_layer)]
  shape_keys = [k for k in grid if k not in VMAPPED_KEYS and k not in task_keys]
  lrs = grid.get("optim.lr")
  variants = [dict(zip(task_keys, values)) for values in itertools.product(*(grid[k] for k in task_keys))]
  groups = []
  for values in itertools.product(*(grid[k] for k in shape_keys)):
    assignment = dict(zip(shape_keys, values))
    sets = list(overrides) + [f"{k}={v}" for k, v in assignment.items()]
    sets.append("train.seeds=" + ",".join(str(s) for s in range(n_seeds)))
    if lrs:
      sets.append("train.lrs=" + ",".join(lrs))
    if task_keys:
      if "task.n_points" in task_keys:  # the padded length: the largest
        sets.append(f"task.n_points={max(int(v) for v in grid['task.n_points'])}")
      sets.append("train.task_variants=" + ",".join(
          ";".join(f"{VARIANT_KEYS[k]}={v}" for k, v in variant.items()) for variant in variants))
    groups.append((assignment, configs.get_config(config, sets)))
  return groups


def _group_dir(out: str, cfg: configs.Config) -> str:
  digest = hashlib.sha1(json.dumps(configs.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(out, "groups", digest)


def run_group(cfg: configs.Config, workdir: str, progress: bool | Bar | None = False) -> list[dict[str, Any]]:
  """Trains (or resumes, or just reads) one group; one result row per run. ``progress``: as ``train.train``'s
  (a job's bar is advanced by the group's steps, also when the finished group is only read)."""
  done_path = os.path.join(workdir, "results.json")
  if os.path.exists(done_path):
    with open(done_path) as f:
      rows = json.load(f)
    if progress is not None and not isinstance(progress, bool):
      progress.update(cfg.train.steps)
    return rows
  result = train.train(cfg, workdir, progress=progress)
  if cfg.train.task_variants:  # every run on held-out prompts of its own variant, one compiled evaluation
    risks = evaluate.variant_risks(result.model, result.state.params, cfg, cfg.train.eval_prompts).risk  # [R, P]
  else:
    risks = evaluate.run_risks(result.model, result.state.params, evaluate.eval_prompts(cfg.task, cfg.train.eval_prompts))
  variants = [{configs.VARIANT_FIELDS[k]: val for k, val in configs.parse_variant(v).items()}
              for v in cfg.train.task_variants]
  rows = []
  for r, (seed, lr) in enumerate(cfg.runs):
    risk = risks[r]
    rows.append({**(variants[cfg.run_variants[r]] if variants else {}), "seed": seed, "optim.lr": lr,
                 "final_loss": result.history[-1]["loss"][r], "excess_risk_last": float(risk[-1]),
                 "excess_risk_mean": float(np.mean(risk)), "steps": cfg.train.steps})
  files.write_json(done_path, rows, indent=None)
  return rows


def run_sweep(config: str, grid: list[str], n_seeds: int, out: str, overrides: list[str] | tuple[str, ...] = (),
              progress: bool = True) -> list[dict[str, Any]]:
  """``jaxicl sweep``: runs every group (skipping finished ones); writes and returns the results table.

  ``progress``: one bar over all groups' steps (loss in its postfix) and one line per finished group."""
  groups = plan(config, parse_grid(grid), n_seeds, overrides)
  os.makedirs(out, exist_ok=True)
  rows: list[dict[str, Any]] = []
  with JobProgress(sum(cfg.train.steps for _, cfg in groups), "sweep", enabled=progress) as job:
    for i, (assignment, cfg) in enumerate(groups):
      job.stage(f"group {i + 1}/{len(groups)}")
      group_rows = run_group(cfg, _group_dir(out, cfg), progress=job.bar)
      rows += [{**assignment, **row} for row in group_rows]
      losses = [r["final_loss"] for r in group_rows]
      job.line(f"[sweep] group {i + 1}/{len(groups)} {assignment or '(base)'}: {len(cfg.runs)} runs in one "
               f"program; final loss {min(losses):.4g} to {max(losses):.4g}")
  files.write_json(os.path.join(out, "results.json"), rows)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(os.path.join(out, "results.csv"), buf.getvalue())
  return rows
