"""Sweeps: a grid of config values × seeds, grouped into as few compiled programs as shapes allow.

Every grid point that differs only in ``optim.lr`` joins the same group (learning rates and seeds are
the vmapped run axis of one ``train.train`` call); other keys (shapes, tasks, schedules) make new
groups. Each group trains in its own workdir under ``out/groups/``, so an interrupted sweep resumes
mid-group from its checkpoints and skips finished groups. Results: ``out/results.csv`` and ``.json``,
one row per (grid point, seed).
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
from typing import Any

import numpy as np

from jaxicl import configs, evaluate, train

VMAPPED_KEYS = ("optim.lr",)


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
  """Groups of the sweep: (the group's grid assignment without vmapped keys, its Config with seeds/lrs set)."""
  if n_seeds < 1:
    raise ValueError(f"seeds={n_seeds}: must be >= 1")
  shape_keys = [k for k in grid if k not in VMAPPED_KEYS]
  lrs = grid.get("optim.lr")
  groups = []
  for values in itertools.product(*(grid[k] for k in shape_keys)):
    assignment = dict(zip(shape_keys, values))
    sets = list(overrides) + [f"{k}={v}" for k, v in assignment.items()]
    sets.append("train.seeds=" + ",".join(str(s) for s in range(n_seeds)))
    if lrs:
      sets.append("train.lrs=" + ",".join(lrs))
    groups.append((assignment, configs.get_config(config, sets)))
  return groups


def _group_dir(out: str, cfg: configs.Config) -> str:
  digest = hashlib.sha1(json.dumps(configs.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(out, "groups", digest)


def run_group(cfg: configs.Config, workdir: str, progress: bool = False) -> list[dict[str, Any]]:
  """Trains (or resumes, or just reads) one group; one result row per run."""
  done_path = os.path.join(workdir, "results.json")
  if os.path.exists(done_path):
    with open(done_path) as f:
      return json.load(f)
  result = train.train(cfg, workdir, progress=progress)
  prompts = evaluate.eval_prompts(cfg.task, cfg.train.eval_prompts)
  risks = evaluate.run_risks(result.model, result.state.params, prompts)  # [R, P], one program for all runs
  rows = []
  for r, (seed, lr) in enumerate(cfg.runs):
    risk = risks[r]
    rows.append({"seed": seed, "optim.lr": lr, "final_loss": result.history[-1]["loss"][r],
                 "excess_risk_last": float(risk[-1]), "excess_risk_mean": float(np.mean(risk)),
                 "steps": cfg.train.steps})
  with open(done_path, "w") as f:
    json.dump(rows, f)
  return rows


def run_sweep(config: str, grid: list[str], n_seeds: int, out: str, overrides: list[str] | tuple[str, ...] = (),
              progress: bool = True) -> list[dict[str, Any]]:
  """``jaxicl sweep``: runs every group (skipping finished ones); writes and returns the results table."""
  groups = plan(config, parse_grid(grid), n_seeds, overrides)
  os.makedirs(out, exist_ok=True)
  rows: list[dict[str, Any]] = []
  for i, (assignment, cfg) in enumerate(groups):
    if progress:
      print(f"[sweep] group {i + 1}/{len(groups)} {assignment or '(base)'}: {len(cfg.runs)} runs in one program",
            flush=True)
    for row in run_group(cfg, _group_dir(out, cfg), progress=progress):
      rows.append({**assignment, **row})
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(rows, f, indent=1)
  with open(os.path.join(out, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return rows
