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

A group with many seeds need not be one program: ``runs_per_program`` (``group_split``) splits its seeds into
balanced programs that fit in memory (and, on accelerators, are no slower per run-step than larger ones); an
``auto`` choice is written to ``out/plans/``, so a resumed sweep splits the group the same way.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import os
import time
from typing import Any

import jax
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
    key = key.strip()
    vals = [v.strip() for v in values.split(",") if v.strip()]
    if not vals:
      raise ValueError(f"grid {key!r}: no values")
    if key in out:
      raise ValueError(f"grid {key!r}: given twice; list its values once ({key}=v1,v2,...)")
    out[key] = vals
  return out


# Keys the sweep sets itself: seeds from --seeds, learning rates and task variants from the grid.
_OWN_KEYS = {"train.seeds": "--seeds N (seeds 0..N-1)", "train.lrs": "--grid optim.lr=...",
             "train.task_variants": "--grid with the task fields themselves"}


def check_grid(grid: dict[str, list[str]], overrides: list[str] | tuple[str, ...] = ()) -> None:
  """``ValueError`` naming the key for a grid or override that the sweep would not honour: an unknown key, a value
  its field does not take, a value listed twice (``1e-3`` and ``0.001`` are one value), a key the sweep sets
  itself (``_OWN_KEYS``), or a key both in the grid and in ``overrides`` (the grid would win silently)."""
  for key, values in grid.items():
    if key in _OWN_KEYS:
      raise ValueError(f"grid {key!r}: the sweep sets it; use {_OWN_KEYS[key]}")
    annotation = configs.field_type(key)
    seen: dict[Any, str] = {}
    for v in values:
      parsed = configs.parse_value(v, annotation, f"grid {key}")
      if parsed in seen:
        raise ValueError(f"grid {key!r}: {v!r} repeats {seen[parsed]!r}; list each value once")
      seen[parsed] = v
  set_keys = [o.split("=", 1)[0].strip() for o in overrides]
  for key in set_keys:
    if key == "train.seeds":
      raise ValueError(f"--set {key}: the sweep sets it; use {_OWN_KEYS[key]}")
    clash = key if key in grid else None
    if key == "train.lrs" and "optim.lr" in grid:
      clash = "optim.lr"
    if key == "train.task_variants" and any(k in VARIANT_KEYS for k in grid):
      clash = next(k for k in grid if k in VARIANT_KEYS)
    if clash:
      raise ValueError(f"--set {key}: the grid sets {clash} too and would win; set it in one place")


def plan(config: str, grid: dict[str, list[str]], n_seeds: int, overrides: list[str] | tuple[str, ...] = ()
         ) -> list[tuple[dict[str, str], configs.Config]]:
  """Groups of the sweep: (the group's grid assignment without run-axis keys, its Config with seeds, lrs and
  task variants set)."""
  if n_seeds < 1:
    raise ValueError(f"seeds={n_seeds}: must be >= 1")
  check_grid(grid, overrides)
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
        sets.append(f"task.n_points={max(configs.parse_value(v, int, 'task.n_points') for v in grid['task.n_points'])}")
      sets.append("train.task_variants=" + ",".join(
          ";".join(f"{VARIANT_KEYS[k]}={v}" for k, v in variant.items()) for variant in variants))
    groups.append((assignment, configs.get_config(config, sets)))
  return groups


def _group_dir(out: str, cfg: configs.Config) -> str:
  digest = hashlib.sha1(json.dumps(configs.to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]
  return os.path.join(out, "groups", digest)


def split_seeds(cfg: configs.Config, runs_per_program: int) -> list[configs.Config]:
  """``cfg`` as consecutive slices of its seeds, as few as keep each program at most ``runs_per_program`` runs
  and as equal as possible (every lr and task variant of a seed stay together: at least one seed per program)."""
  per_seed = len(cfg.runs) // len(cfg.train.seeds)
  seeds = cfg.train.seeds
  n_programs = math.ceil(len(seeds) / max(1, runs_per_program // per_seed))
  n = math.ceil(len(seeds) / n_programs)  # balanced: 9 seeds at 4 per program -> 3 programs of 3
  return [_with_seeds(cfg, seeds[i:i + n]) for i in range(0, len(seeds), n)]


def _with_seeds(cfg: configs.Config, seeds: tuple[int, ...]) -> configs.Config:
  return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seeds=tuple(seeds)))


def program_bytes(cfg: configs.Config) -> int:
  """Bytes ``cfg``'s training program holds (XLA's memory analysis: arguments + outputs − aliased + temporaries),
  compiled for the abstract state (nothing allocated) at its chunk length, so that with the persistent
  compilation cache the training that follows reads this compilation instead of compiling again."""
  engine = train.Engine(cfg)
  m = engine.lower(engine.abstract_state(), min(cfg.train.log_every, cfg.train.steps)).compile().memory_analysis()
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def memory_budget(devices: list, fraction: float = 0.5) -> int:
  """``fraction`` of the memory the devices hold: their ``bytes_limit`` (accelerators) or the host's RAM (CPU
  devices share it)."""
  limits = [(d.memory_stats() or {}).get("bytes_limit") for d in devices]
  if all(limits):
    return int(fraction * sum(limits))
  return int(fraction * os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def run_steps_per_s(cfg: configs.Config, steps: int = 10, repeats: int = 2) -> float:
  """Measured run-steps/s of ``cfg``'s training program (best of ``repeats`` timed chunks after a warm one)."""
  engine = train.Engine(cfg)
  state = engine.init()
  chunk = engine.bind(engine.lower(state, steps).compile())
  best = math.inf
  for _ in range(repeats + 1):
    t0 = time.perf_counter()
    state, losses = chunk(state)
    jax.block_until_ready(losses)
    best = min(best, time.perf_counter() - t0)
  return steps * len(cfg.runs) / best


def choose_runs_per_program(cfg: configs.Config, devices: list | None = None, memory_fraction: float = 0.5,
                            min_gain: float = 1.1, measure: bool | None = None) -> dict[str, Any]:
  """How many runs of the group ``cfg`` to vmap per program: {"runs_per_program", "bytes", "measured":
  {runs: run-steps/s}, "compile_s", "why"}.

  Memory: all seeds, or as many as fit in ``memory_budget(devices, memory_fraction)`` at XLA's bytes for the
  group's program ÷ seeds. Throughput (``measure``; default: on accelerators): programs of c, c/2, c/4, … seeds
  (not fewer than the n devices) are timed in turn while each halving gains ≥ ``min_gain``× run-steps/s; the
  last one that gained wins. Every program costs a trace, an evaluation and checkpoints, so the largest program is
  kept unless a smaller one is measurably faster per run-step. A halving is timed only when the least gain it would
  be kept for could pay for its compile: when the group's training at the best rate so far, T = steps × runs ÷
  rate, satisfies T·(1 − 1/``min_gain``) > the compile time of the group's program (``compile_s``, measured with
  its memory analysis). Short groups (64 seeds × 1000 steps of a small model: T ≈ 3 s on an H100 against a ~10 s
  compile) thus stay one program without timing a second. On a CPU nothing is timed: with one device per core, a
  bigger vmap neither gains nor loses there (``benchmarks/bench_sweep.py``), while the timing costs two compiles.
  A group of fewer than 4n seeds stays one program.
  """
  devices = devices or jax.devices()
  n_seeds = len(cfg.train.seeds)
  per_seed = len(cfg.runs) // n_seeds
  if n_seeds < 4 * len(devices):
    return {"runs_per_program": len(cfg.runs), "bytes": None, "measured": {}, "why": "fewer than 4 seeds per device"}
  if measure is None:
    measure = jax.default_backend() != "cpu"
  first = lambda c: _with_seeds(cfg, cfg.train.seeds[:c])  # a program of the group's first c seeds
  t0 = time.perf_counter()
  total = program_bytes(cfg)
  compile_s = time.perf_counter() - t0
  best = int(min(n_seeds, max(1, memory_budget(devices, memory_fraction) * n_seeds // max(total, 1))))
  measured: dict[int, float] = {}
  why = "memory" if best < n_seeds else "all seeds fit in memory"
  if not measure:
    why += "; not timed"
  elif best // 2 < len(devices):
    why += "; no smaller program to time"
  else:
    measured[best * per_seed] = run_steps_per_s(first(best))
    while best // 2 >= len(devices):
      train_s = cfg.train.steps * len(cfg.runs) / measured[best * per_seed]
      if train_s * (1 - 1 / min_gain) <= compile_s:
        why += f"; training ~{train_s:.3g} s at {best * per_seed} runs per program: a smaller program cannot repay " \
               f"its compile (~{compile_s:.3g} s)"
        break
      c = best // 2
      measured[c * per_seed] = run_steps_per_s(first(c))
      if measured[c * per_seed] < min_gain * measured[best * per_seed]:
        why += f"; {c * per_seed} runs per program gained < {min_gain}x"
        break
      best = c
  return {"runs_per_program": best * per_seed, "bytes": total, "measured": measured, "compile_s": compile_s,
          "why": why}


def run_group(cfg: configs.Config, workdir: str, progress: bool | Bar | None = False) -> list[dict[str, Any]]:
  """Trains (or resumes, or just reads) one group; one result row per run. ``progress``: as ``train.train``'s
  (a job's bar is advanced by the group's steps, also when the finished group is only read)."""
  done_path = os.path.join(workdir, "results.json")
  try:
    rows = files.read_json(done_path)
  except (FileNotFoundError, ValueError):  # not written yet, or damaged: evaluated again from the workdir
    rows = None
  if isinstance(rows, list) and len(rows) == len(cfg.runs):
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


def group_split(cfg: configs.Config, out: str, choice: int | str | None = "auto") -> dict[str, Any]:
  """The group's split: ``choice`` runs per program (an int), all at once (None or "all"), or "auto":
  ``choose_runs_per_program``, measured once and kept in ``out/plans/<group>.json`` for resumed sweeps."""
  if choice is None or choice == "all" or len(cfg.train.seeds) == 1:
    return {"runs_per_program": len(cfg.runs)}
  if choice != "auto":
    if isinstance(choice, bool) or not isinstance(choice, int) or choice < 1:
      raise ValueError(f"runs_per_program={choice!r}: expected an integer >= 1, 'auto' or 'all'")
    return {"runs_per_program": choice}
  path = os.path.join(out, "plans", os.path.basename(_group_dir(out, cfg)) + ".json")
  if os.path.exists(path):
    chosen = files.read_json(path)
    if not (isinstance(chosen, dict) and isinstance(chosen.get("runs_per_program"), int)
            and chosen["runs_per_program"] >= 1):
      raise ValueError(f"{path}: not a split (no runs_per_program >= 1); delete it to choose the split again")
    return chosen
  chosen = choose_runs_per_program(cfg)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.write_json(path, chosen)
  return chosen


def run_split_group(cfg: configs.Config, out: str, k: int, progress: Bar | None = None) -> list[dict[str, Any]]:
  """``run_group`` over ``split_seeds(cfg, k)``, each program in its own workdir; rows in ``cfg.runs`` order."""
  by_run = {}
  for part in split_seeds(cfg, k):
    for r, row in enumerate(run_group(part, _group_dir(out, part), progress=progress)):
      by_run[(part.run_variants[r], row["optim.lr"], row["seed"])] = row
  return [by_run[(v, lr, seed)] for v, (seed, lr) in zip(cfg.run_variants, cfg.runs)]


def run_sweep(config: str, grid: list[str], n_seeds: int, out: str, overrides: list[str] | tuple[str, ...] = (),
              progress: bool = True, runs_per_program: int | str | None = "auto") -> list[dict[str, Any]]:
  """``jaxicl sweep``: runs every group (skipping finished ones); writes and returns the results table.

  ``runs_per_program``: how each group's runs are split into programs (``group_split``); ``progress``:
  one bar over all programs' steps (loss in its postfix) and one line per finished group. One process at a time
  writes in ``out`` (``train.workdir_lock``)."""
  parsed = parse_grid(grid)
  groups = plan(config, parsed, n_seeds, overrides)
  identity = hashlib.sha1(json.dumps([[a, configs.to_dict(c)] for a, c in groups], sort_keys=True).encode()
                          ).hexdigest()
  about = f"--config {config}, grid {parsed}, {n_seeds} seed{'s' if n_seeds > 1 else ''}" + \
      (f", --set {list(overrides)}" if overrides else "")
  os.makedirs(out, exist_ok=True)
  with train.workdir_lock(out, "running a sweep", "out"):
    files.check_folders(out, ("groups", "plans"))  # a file in the way fails here, before anything trains
    files.claim_folder(out, "sweep", "out", identity, about)  # its results.* are this sweep's, not another's
    return _run_sweep(groups, out, progress, runs_per_program)


def _run_sweep(groups: list[tuple[dict[str, Any], configs.Config]], out: str, progress: bool,
               runs_per_program: int | str | None) -> list[dict[str, Any]]:
  splits = [group_split(cfg, out, runs_per_program)["runs_per_program"] for _, cfg in groups]
  total = sum(cfg.train.steps * len(split_seeds(cfg, k)) for (_, cfg), k in zip(groups, splits))
  rows: list[dict[str, Any]] = []
  with JobProgress(total, "sweep", enabled=progress) as job:
    for i, ((assignment, cfg), k) in enumerate(zip(groups, splits)):
      job.stage(f"group {i + 1}/{len(groups)}")
      group_rows = run_split_group(cfg, out, k, progress=job.bar)
      rows += [{**assignment, **row} for row in group_rows]
      losses = [r["final_loss"] for r in group_rows]
      n_prog = len(split_seeds(cfg, k))
      job.line(f"[sweep] group {i + 1}/{len(groups)} {assignment or '(base)'}: {len(cfg.runs)} runs in {n_prog} "
               f"program{'s' if n_prog > 1 else ''}; final loss {min(losses):.4g} to {max(losses):.4g}")
  files.write_json(os.path.join(out, "results.json"), rows)
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
  writer.writeheader()
  writer.writerows(rows)
  files.write_text(os.path.join(out, "results.csv"), buf.getvalue())
  return rows
